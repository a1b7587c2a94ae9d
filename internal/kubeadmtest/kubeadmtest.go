// Package kubeadmtest gives tests the files the real kubeadm writes on a
// control-plane node. Nothing kubeadm writes is checked in: the files are
// generated once per test binary with the kubeadm binary in the directory
// named by ROTATE_K8S_BIN (e.g. the output of
// e2e/scripts/build-binaries.sh; `make test` sets it). Without it, tests
// that ask for the files skip.
//
// kubeadm runs with --rootfs pointing at a private temp directory, so it
// chroots there before touching anything: the host's /etc/kubernetes and
// /var/lib/kubelet are never read or written, and no mount namespace (nor
// any directory on the host) is needed. The phases are those of
// `kubeadm init` that write files: certs, kubeconfig, control-plane, etcd,
// kubelet-start (which writes /var/lib/kubelet/config.yaml and finds no
// init system in the chroot to restart a kubelet with) and
// kubelet-finalize (which points kubelet.conf at
// /var/lib/kubelet/pki/kubelet-client-current.pem, as on a real node).
package kubeadmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// EnvBin names the environment variable holding the directory of the
// kubeadm binary.
const EnvBin = "ROTATE_K8S_BIN"

// NodeName is the node name kubeadm is given.
const NodeName = "cp-1"

// config uses a documentation address (TEST-NET-1): kubeadm refuses a
// loopback advertise address on a host without a default route, and the
// address is only written into files, never contacted.
const config = `apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 192.0.2.10
  bindPort: 6443
nodeRegistration:
  name: ` + NodeName + `
  criSocket: unix:///var/run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: %s
clusterName: kubernetes
controlPlaneEndpoint: 192.0.2.10:6443
`

var (
	once sync.Once
	root string
	err  error
)

// Root returns the directory kubeadm wrote into: a node's absolute path
// /p is Root()/p. The files are generated on first use; t skips without
// ROTATE_K8S_BIN and fails when kubeadm does. Callers must not change
// the files (they are shared by every test of the binary).
func Root(t testing.TB) string {
	t.Helper()
	bin := os.Getenv(EnvBin)
	if bin == "" {
		t.Skip(EnvBin + " is not set (directory with the kubeadm binary; make test sets it from e2e/scripts/build-binaries.sh)")
	}
	once.Do(func() { root, err = run(filepath.Join(bin, "kubeadm")) })
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// File returns a file (path relative to /) written by the real kubeadm.
func File(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Root(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Cleanup removes the generated files. Call it from TestMain after m.Run.
func Cleanup() {
	if root != "" {
		os.RemoveAll(root)
	}
}

func run(kubeadm string) (string, error) {
	ver, err := exec.Command(kubeadm, "version", "-o", "short").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", kubeadm, err)
	}
	root, err := os.MkdirTemp("", "rotate-kubeadm-")
	if err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(config, strings.TrimSpace(string(ver)))
	if err := os.WriteFile(filepath.Join(root, "kubeadm.yaml"), []byte(cfg), 0o600); err != nil {
		return root, err
	}
	run := func(args ...string) error {
		args = append(args, "--config", "/kubeadm.yaml", "--rootfs", root)
		out, err := exec.Command(kubeadm, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("kubeadm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	for _, phase := range []string{"certs all", "kubeconfig all", "control-plane all", "etcd local", "kubelet-start"} {
		if err := run(append([]string{"init", "phase"}, strings.Fields(phase)...)...); err != nil {
			return root, err
		}
	}
	// kubelet-finalize needs the client cert the kubelet would have
	// obtained by TLS bootstrap; any cert+key will do for the file layout.
	pki := filepath.Join(root, "var/lib/kubelet/pki")
	if err := os.MkdirAll(pki, 0o755); err != nil {
		return root, err
	}
	crt, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/apiserver-kubelet-client.crt"))
	key, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/pki/apiserver-kubelet-client.key"))
	if err := os.WriteFile(filepath.Join(pki, "kubelet-client-2026-01-01-00-00-00.pem"), append(crt, key...), 0o600); err != nil {
		return root, err
	}
	if err := os.Symlink("/var/lib/kubelet/pki/kubelet-client-2026-01-01-00-00-00.pem", filepath.Join(pki, "kubelet-client-current.pem")); err != nil {
		return root, err
	}
	if err := run("init", "phase", "kubelet-finalize", "all"); err != nil {
		return root, err
	}
	return root, nil
}
