package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// K8sBinaries are the executables BinDir must hold.
var K8sBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubeadm", "kubectl", "kubelet", "etcd", "fake-cri"}

const modulePath = "github.com/kubeca/rotate"

// findSourceDir walks up from the working directory to rotate's go.mod.
func findSourceDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if raw, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			first, _, _ := bytes.Cut(raw, []byte("\n"))
			if strings.TrimSpace(strings.TrimPrefix(string(first), "module")) == modulePath {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("module %s not found above the working directory: pass the source dir", modulePath)
		}
		dir = parent
	}
}

// locateK8sBinaries returns binDir if it holds every binary, else runs
// e2e/scripts/build-binaries.sh (instant when cached) and uses its last line.
func locateK8sBinaries(ctx context.Context, binDir, src string) (string, error) {
	if binDir == "" {
		script := filepath.Join(src, "e2e", "scripts", "build-binaries.sh")
		cmd := exec.CommandContext(ctx, script)
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("%s: %w", script, err)
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		binDir = strings.TrimSpace(lines[len(lines)-1])
	}
	binDir, err := filepath.Abs(binDir)
	if err != nil {
		return "", err
	}
	for _, b := range K8sBinaries {
		if st, err := os.Stat(filepath.Join(binDir, b)); err != nil || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s missing in %s", b, binDir)
		}
	}
	return binDir, nil
}

// harnessBinaries puts e2e-node into <dir>/bin: copied from
// opts.HarnessBinDir or built from source. The copy keeps the inventory's
// restart command valid for the cluster's lifetime.
func (c *Cluster) harnessBinaries(ctx context.Context, opts Options, src string) (string, error) {
	dst := filepath.Join(c.st.Spec.Dir, "bin")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	if opts.HarnessBinDir != "" {
		from := filepath.Join(opts.HarnessBinDir, "e2e-node")
		if !fileExists(from) {
			return "", fmt.Errorf("%s missing", from)
		}
		if err := copyFile(from, filepath.Join(dst, "e2e-node"), 0o755); err != nil {
			return "", err
		}
		return dst, nil
	}
	pkgs := []string{"./e2e/cmd/e2e-node"}
	c.logf("building %s", strings.Join(pkgs, " "))
	args := append([]string{"build", "-o", dst + "/"}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", strings.Join(pkgs, " "), err, tail(out, 3000))
	}
	return dst, nil
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := to + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, to)
}
