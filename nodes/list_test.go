package nodes

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
)

// TestListFiles runs the script with this machine's /bin/sh on a real
// directory: files and links to files count, dot-files, directories and
// dangling links do not.
func TestListFiles(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"kube-apiserver.yaml", "etcd.yaml", ".kube-apiserver.yaml.tmp", "with space.json"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Mkdir(filepath.Join(dir, "sub"), 0o700))
	must(t, os.Symlink("etcd.yaml", filepath.Join(dir, "link.yaml")))
	must(t, os.Symlink("gone", filepath.Join(dir, "dangling.yaml")))
	r := NewMemRunner("n")
	r.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (Result, error) {
		out, err := exec.CommandContext(ctx, "/bin/sh", "-c", cmd).Output()
		return Result{Stdout: out}, err
	}
	got, err := ListFiles(context.Background(), r, dir)
	want := []string{dir + "/etcd.yaml", dir + "/kube-apiserver.yaml", dir + "/link.yaml", dir + "/with space.json"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ListFiles = %q, %v; want %q", got, err, want)
	}
	if got, err := ListFiles(context.Background(), r, dir+"/missing"); err != nil || len(got) != 0 {
		t.Errorf("missing directory: %q, %v", got, err)
	}
	if _, err := ListFiles(context.Background(), r, "relative"); err == nil {
		t.Error("relative path accepted")
	}
}
