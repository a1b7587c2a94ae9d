package nodes

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// runnerSuite is the Runner contract, run against the SSH client on a real
// sshd and against MemRunner so the fake cannot drift from the real thing.
// root is a directory the runner may use.
func runnerSuite(t *testing.T, r Runner, root string) {
	ctx := testCtx(t)
	p := func(name string) string { return root + "/" + name }

	t.Run("read missing", func(t *testing.T) {
		_, err := r.ReadFile(ctx, p("missing"))
		if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, ErrNotExist) {
			t.Fatalf("err = %v, want ErrNotExist", err)
		}
	})
	t.Run("stat missing", func(t *testing.T) {
		fi, err := r.Stat(ctx, p("missing"))
		if err != nil || fi.Exists {
			t.Fatalf("Stat = %+v, %v; want Exists=false, nil", fi, err)
		}
	})
	t.Run("write new defaults to 0600", func(t *testing.T) {
		if err := r.WriteFile(ctx, p("new"), []byte("a"), 0); err != nil {
			t.Fatal(err)
		}
		fi, err := r.Stat(ctx, p("new"))
		if err != nil || !fi.Exists || !fi.IsRegular || fi.Mode != 0o600 || fi.Size != 1 || fi.UID != 0 || fi.Owner != "root" {
			t.Fatalf("Stat = %+v, %v", fi, err)
		}
	})
	t.Run("write keeps mode when 0, sets it otherwise", func(t *testing.T) {
		must(t, r.WriteFile(ctx, p("m"), []byte("1"), 0o640))
		must(t, r.WriteFile(ctx, p("m"), []byte("22"), 0))
		if fi, _ := r.Stat(ctx, p("m")); fi.Mode != 0o640 {
			t.Errorf("mode = %v, want 0640 kept", fi.Mode)
		}
		must(t, r.WriteFile(ctx, p("m"), []byte("333"), 0o644))
		if fi, _ := r.Stat(ctx, p("m")); fi.Mode != 0o644 || fi.Size != 3 {
			t.Errorf("Stat = %+v, want 0644 size 3", fi)
		}
		got, err := r.ReadFile(ctx, p("m"))
		if err != nil || string(got) != "333" {
			t.Errorf("ReadFile = %q, %v", got, err)
		}
	})
	t.Run("binary and empty content", func(t *testing.T) {
		data := make([]byte, 70000)
		_, _ = rand.Read(data)
		must(t, r.WriteFile(ctx, p("bin"), data, 0))
		got, err := r.ReadFile(ctx, p("bin"))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("binary round trip failed: %v", err)
		}
		must(t, r.WriteFile(ctx, p("empty"), nil, 0))
		got, err = r.ReadFile(ctx, p("empty"))
		if err != nil || len(got) != 0 {
			t.Fatalf("empty = %q, %v", got, err)
		}
	})
	t.Run("symlink create, repoint, read through, stat", func(t *testing.T) {
		must(t, r.WriteFile(ctx, p("cert-1.pem"), []byte("one"), 0))
		must(t, r.WriteFile(ctx, p("cert-2.pem"), []byte("two"), 0))
		must(t, r.Symlink(ctx, p("cert-1.pem"), p("current.pem")))
		if got, _ := r.ReadFile(ctx, p("current.pem")); string(got) != "one" {
			t.Errorf("through link = %q", got)
		}
		must(t, r.Symlink(ctx, "cert-2.pem", p("current.pem"))) // relative
		if got, _ := r.ReadFile(ctx, p("current.pem")); string(got) != "two" {
			t.Errorf("through repointed link = %q", got)
		}
		fi, err := r.Stat(ctx, p("current.pem"))
		if err != nil || !fi.Exists || !fi.IsSymlink || fi.LinkTarget != "cert-2.pem" || fi.IsRegular {
			t.Fatalf("Stat link = %+v, %v", fi, err)
		}
		// Write through a link is refused; the target is untouched.
		if err := r.WriteFile(ctx, p("current.pem"), []byte("x"), 0); err == nil || !strings.Contains(err.Error(), "symlink") {
			t.Errorf("write through symlink: err = %v, want refusal", err)
		}
		if got, _ := r.ReadFile(ctx, p("cert-2.pem")); string(got) != "two" {
			t.Errorf("link target changed to %q", got)
		}
	})
	t.Run("dangling symlink reads as missing", func(t *testing.T) {
		must(t, r.Symlink(ctx, p("nowhere"), p("dangling")))
		if _, err := r.ReadFile(ctx, p("dangling")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v, want ErrNotExist", err)
		}
		if fi, err := r.Stat(ctx, p("dangling")); err != nil || !fi.Exists || !fi.IsSymlink {
			t.Errorf("Stat = %+v, %v", fi, err)
		}
	})
	t.Run("exact write replaces a symlink", func(t *testing.T) {
		must(t, r.Symlink(ctx, p("cert-1.pem"), p("exact")))
		must(t, r.(ExactWriter).WriteFileExact(ctx, p("exact"), []byte("file"), 0o444, 0, 0))
		fi, _ := r.Stat(ctx, p("exact"))
		if fi.IsSymlink || !fi.IsRegular || fi.Mode != 0o444 {
			t.Errorf("Stat = %+v", fi)
		}
		if got, _ := r.ReadFile(ctx, p("cert-1.pem")); string(got) != "one" {
			t.Errorf("old link target changed to %q", got)
		}
	})
	t.Run("remove file, link, missing; not a directory", func(t *testing.T) {
		must(t, r.WriteFile(ctx, p("rm"), []byte("x"), 0))
		must(t, r.Remove(ctx, p("rm")))
		must(t, r.Remove(ctx, p("rm")))
		must(t, r.Symlink(ctx, p("cert-1.pem"), p("rmlink")))
		must(t, r.Remove(ctx, p("rmlink")))
		if fi, _ := r.Stat(ctx, p("rmlink")); fi.Exists {
			t.Error("link still there")
		}
		if got, _ := r.ReadFile(ctx, p("cert-1.pem")); string(got) != "one" {
			t.Error("removing a link touched its target")
		}
		if err := r.Remove(ctx, root); err == nil {
			t.Error("Remove of a directory succeeded")
		}
		if fi, err := r.Stat(ctx, root); err != nil || !fi.IsDir {
			t.Errorf("Stat dir = %+v, %v", fi, err)
		}
	})
	t.Run("bad paths", func(t *testing.T) {
		for _, bad := range []string{"", "relative/x", root + "/../x", root + "/./x", root + "//x", root + "/", root + "/a\x00b"} {
			if err := r.WriteFile(ctx, bad, []byte("x"), 0); err == nil {
				t.Errorf("WriteFile(%q) succeeded", bad)
			}
			if _, err := r.ReadFile(ctx, bad); err == nil {
				t.Errorf("ReadFile(%q) succeeded", bad)
			}
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestRunnerContractSSH(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	runnerSuite(t, c, t.TempDir())
	t.Run("batch", func(t *testing.T) { batchSuite(t, c, t.TempDir()) })
}

func TestRunnerContractMem(t *testing.T) {
	t.Parallel()
	m := NewMemRunner("n")
	m.MkdirAll("/work/dir")
	m.MkdirAll("/work/batch")
	runnerSuite(t, m, "/work/dir")
	t.Run("batch", func(t *testing.T) { batchSuite(t, m, "/work/batch") })
}

func TestWriteFilePreservesOwnerAndMode(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	ctx := testCtx(t)
	dir := t.TempDir()
	f := filepath.Join(dir, "kubelet.conf")
	must(t, os.WriteFile(f, []byte("old"), 0o600))
	must(t, os.Chown(f, 1234, 2345))
	must(t, os.Chmod(f, 0o640|os.ModeSetgid))

	must(t, c.WriteFile(ctx, f, []byte("new"), 0))
	assertFile(t, f, "new", 0o640|os.ModeSetgid, 1234, 2345)
	fi, err := c.Stat(ctx, f)
	if err != nil || fi.UID != 1234 || fi.GID != 2345 || fi.Mode != 0o640|fs.ModeSetgid || fi.Owner != "UNKNOWN" {
		t.Errorf("Stat = %+v, %v", fi, err)
	}

	must(t, c.WriteFile(ctx, f, []byte("newer"), 0o600))
	assertFile(t, f, "newer", 0o600, 1234, 2345)

	must(t, c.WriteFileExact(ctx, f, []byte("exact"), 0o644, 7, 8))
	assertFile(t, f, "exact", 0o644, 7, 8)

	// New files: root-owned, 0600 by default.
	g := filepath.Join(dir, "new.key")
	must(t, c.WriteFile(ctx, g, []byte("k"), 0))
	assertFile(t, g, "k", 0o600, 0, 0)

	// No temp files left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want 2: %v", len(entries), entries)
	}
}

// TestNoShellInjection writes, reads, stats, links and removes paths and
// contents full of shell syntax; a canary file that any injected command
// would create must not appear.
func TestNoShellInjection(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	ctx := testCtx(t)
	dir := t.TempDir()
	// Injected commands would run in root's home (the session's cwd).
	inj := "touch PWNED"
	canaries := []string{"/root/PWNED", "/PWNED", filepath.Join(dir, "PWNED")}
	names := []string{
		"it's",
		`a"b`,
		"$(" + inj + ")",
		"`" + inj + "`",
		"; " + inj + " #",
		"' ; " + inj + " ; '",
		"line\nbreak",
		"-rf",
		"--",
		" leading space",
		"star*?[a]",
		"back\\slash",
		"tab\there",
		"ünïcödé",
	}
	content := []byte("-----BEGIN CERTIFICATE-----\n$(" + inj + ")\n`" + inj + "`\n'\"\\\n-----END CERTIFICATE-----\n")
	for _, n := range names {
		p := filepath.Join(dir, n)
		must(t, c.WriteFile(ctx, p, content, 0o644))
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("file %q: %q, %v", n, got, err)
		}
		rb, err := c.ReadFile(ctx, p)
		if err != nil || !bytes.Equal(rb, content) {
			t.Errorf("ReadFile %q: %v", n, err)
		}
		fi, err := c.Stat(ctx, p)
		if err != nil || !fi.IsRegular || fi.Path != p {
			t.Errorf("Stat %q = %+v, %v", n, fi, err)
		}
		link := p + ".link"
		must(t, c.Symlink(ctx, p, link))
		if fi, err := c.Stat(ctx, link); err != nil || fi.LinkTarget != p {
			t.Errorf("Stat link %q = %+v, %v", n, fi, err)
		}
		must(t, c.Remove(ctx, link))
		must(t, c.Remove(ctx, p))
	}
	for _, canary := range canaries {
		if _, err := os.Stat(canary); err == nil {
			os.Remove(canary)
			t.Fatal("an injected command ran")
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}

// TestDroppedConnectionMidWrite cuts the TCP connection while a large file
// is being sent: the file must be the old content afterwards (never a
// prefix of the new one), the temp file must go away, and the pool must
// re-dial for the next operation.
func TestDroppedConnectionMidWrite(t *testing.T) {
	t.Parallel()
	p, r := proxiedNode(t)

	dir := t.TempDir()
	f := filepath.Join(dir, "ca.crt")
	must(t, os.WriteFile(f, []byte("old CA\n"), 0o644))
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16) // 4 MiB

	p.budget.Store(1 << 20) // cut after ~1 MiB more from the client
	err := r.WriteFile(testCtx(t), f, big, 0)
	if err == nil {
		t.Fatal("WriteFile succeeded across a dropped connection")
	}
	if !errors.Is(err, ErrConnectionLost) {
		t.Logf("error (not ErrConnectionLost): %v", err)
	}
	// The node cleans up asynchronously once it sees EOF.
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, _ := os.ReadDir(dir)
		if len(entries) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("temp file not removed: %v", entries)
		}
		time.Sleep(50 * time.Millisecond)
	}
	assertFile(t, f, "old CA\n", 0o644, 0, 0)

	p.budget.Store(-1)
	must(t, r.WriteFile(testCtx(t), f, big, 0))
	if got, _ := os.ReadFile(f); !bytes.Equal(got, big) {
		t.Fatal("write after re-dial did not land")
	}
	if n := p.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestPartialStdinIsNeverInstalled runs the write script, and the batch
// script, directly with stdin shorter than announced (what a dropped
// connection looks like to the node): the file must keep its old content
// and no temp file may be left; in the batch the operation before it is
// applied and reported done, and a stream that ends between operations
// (without the final sync header) is an error too.
func TestPartialStdinIsNeverInstalled(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	full := []byte("the complete new content")
	sum := sha256hex(full)
	batchOp := func(arg int, data []byte, sent int) string {
		return fmt.Sprintf("write %d 1 %d %s - -\n%s", arg, len(data), sha256hex(data), data[:sent])
	}
	for _, tc := range []struct {
		name   string
		cmd    func(dir, f string) string
		stdin  string
		status int
		msg    string
		done   int // "ok" lines
	}{
		{"write", func(dir, f string) string { return shCommand(writeScript, f, "", "", "24", sum, "") }, string(full[:10]), 71, "received 10 of 24 bytes", 0},
		{"batch", func(dir, f string) string { return shCommand(applyFilesScript, dir+"/first", f, dir) },
			batchOp(1, []byte("a"), 1) + batchOp(2, full, 10), 71, "received 10 of 24 bytes", 1},
		{"batch ended between operations", func(dir, f string) string { return shCommand(applyFilesScript, dir+"/first", f, dir) },
			batchOp(1, []byte("a"), 1), 79, "batch input ended early", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			f := filepath.Join(dir, "admin.conf")
			must(t, os.WriteFile(f, []byte("old"), 0o644))
			res, err := c.run(testCtx(t), "write", tc.cmd(dir, f), []byte(tc.stdin))
			var xe *ExitError
			if !errors.As(err, &xe) || xe.Result.ExitStatus != tc.status || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want exit %d: %s", err, tc.status, tc.msg)
			}
			if got := bytes.Count(res.Stdout, []byte("ok\n")); got != tc.done {
				t.Errorf("%d operations reported done, want %d", got, tc.done)
			}
			assertFile(t, f, "old", 0o644, 0, 0)
			if entries, _ := os.ReadDir(dir); len(entries) != 1+tc.done {
				t.Errorf("left behind: %v", entries)
			}
			if tc.done > 0 {
				assertFile(t, dir+"/first", "a", 0o600, 0, 0)
			}
		})
	}
}

func TestErrorsNeverContainContent(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	secret := []byte("-----BEGIN PRIVATE KEY-----\nSEKRIT\n-----END PRIVATE KEY-----\n")
	err := c.WriteFile(testCtx(t), "/nonexistent-dir/ca.key", secret, 0o600)
	if err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
	if strings.Contains(err.Error(), "SEKRIT") {
		t.Fatalf("error leaks content: %v", err)
	}
	if !strings.Contains(err.Error(), "/nonexistent-dir") || !strings.Contains(err.Error(), "on n") {
		t.Errorf("error %q does not name path and node", err)
	}
}

func TestRunCanceled(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Run(ctx, "sleep 20", nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("cancel took %s", d)
	}
}
