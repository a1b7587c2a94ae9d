// Package localcp runs a single-node kubeadm-style control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler started from the
// static pod manifests kubeadm writes) for the integration tests of the
// node agent and the probes.
//
// Everything runs inside private namespaces: Main re-executes the test
// binary under `unshare --net --mount --pid` with its own loopback, a veth
// pair carrying the test's addresses (kubeadm refuses loopback addresses),
// and /etc overlaid on a temporary directory, so kubeadm writes
// /etc/kubernetes without touching the host's, nothing collides with
// other listeners on the host, and every process dies with the test.
package localcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

const envInside = "ROTATE_LOCALCP_INSIDE"

// Main runs the tests of m inside fresh network, mount and PID namespaces
// carrying the given addresses (CIDR notation, e.g. "10.77.0.1/24") on a
// veth pair, and returns the exit code. Without root, or with
// ROTATE_LOCALCP_SKIP set, it runs the tests in place (tests needing the
// namespace skip themselves via Require).
func Main(m *testing.M, addrs ...string) int {
	if dir := os.Getenv(envInside); dir != "" {
		if err := setupInside(dir, addrs); err != nil {
			fmt.Fprintln(os.Stderr, "localcp: namespace setup:", err)
			return 2
		}
		return m.Run()
	}
	if os.Geteuid() != 0 || os.Getenv("ROTATE_LOCALCP_SKIP") != "" {
		return m.Run()
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "localcp-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcp:", err)
		return 2
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcp:", err)
		return 2
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private", "--", self}, os.Args[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envInside+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "localcp:", err)
		return 2
	}
	return 0
}

// Inside reports whether the process runs in the namespaces Main set up.
func Inside() bool { return os.Getenv(envInside) != "" }

// Require skips t unless it runs inside Main's namespaces.
func Require(t testing.TB) {
	t.Helper()
	if !Inside() {
		t.Skip("needs root and localcp.Main in TestMain (private network and mount namespaces)")
	}
}

func setupInside(dir string, addrs []string) error {
	steps := [][]string{{"ip", "link", "set", "lo", "up"}}
	if len(addrs) > 0 {
		steps = append(steps, []string{"ip", "link", "add", "lcp0", "type", "veth", "peer", "name", "lcp1"})
		for i, a := range addrs {
			dev := "lcp0"
			if i > 0 {
				dev = "lcp1"
			}
			steps = append(steps, []string{"ip", "addr", "add", a, "dev", dev})
		}
		steps = append(steps, []string{"ip", "link", "set", "lcp0", "up"}, []string{"ip", "link", "set", "lcp1", "up"})
	}
	upper, work := filepath.Join(dir, "etc-upper"), filepath.Join(dir, "etc-work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	steps = append(steps, []string{"mount", "-t", "overlay", "overlay", "-o", "lowerdir=/etc,upperdir=" + upper + ",workdir=" + work, "/etc"})
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

// BinDir returns the directory of the real binaries: $ROTATE_E2E_BIN, else
// the last line of e2e/scripts/build-binaries.sh (cached builds take
// seconds). It skips t when neither works.
func BinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("ROTATE_E2E_BIN"); d != "" {
		return d
	}
	root, err := moduleRoot()
	if err != nil {
		t.Skipf("binaries: %v", err)
	}
	out, err := exec.Command(filepath.Join(root, "e2e", "scripts", "build-binaries.sh")).Output()
	if err != nil {
		t.Skipf("build-binaries.sh: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			if b, _ := os.ReadFile(filepath.Join(d, "go.mod")); bytes.Contains(b, []byte("module github.com/kubeca/rotate\n")) {
				return d, nil
			}
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("module root not found")
		}
		d = parent
	}
}

// Config describes the control plane.
type Config struct {
	BinDir   string
	Dir      string // work dir: logs, etcd data
	Address  string // advertise address (on the veth)
	NodeName string // the control-plane node's name (no kubelet runs for it)
	// BootstrapToken is created by `kubeadm init phase bootstrap-token`.
	BootstrapToken string
	// ExtraAPIServerArgs are appended to kubeadm's kube-apiserver flags.
	ExtraAPIServerArgs []string
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	cfg   Config
	procs []*proc
	// Server is https://ADDRESS:6443.
	Server string
}

// EtcKubernetes is where kubeadm wrote its files (inside the overlay).
const EtcKubernetes = "/etc/kubernetes"

// Start generates the PKI, kubeconfigs and manifests with kubeadm, starts
// the four components from the manifests' commands, waits for /readyz
// and creates the bootstrap token and its RBAC with kubeadm.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if !Inside() {
		return nil, errors.New("localcp: not inside the private namespaces (use localcp.Main)")
	}
	if cfg.NodeName == "" {
		cfg.NodeName = "cp1"
	}
	if cfg.BootstrapToken == "" {
		cfg.BootstrapToken = "abcdef.0123456789abcdef"
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	kcfg := filepath.Join(cfg.Dir, "kubeadm.yaml")
	if err := os.WriteFile(kcfg, []byte(fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: %[1]s
  bindPort: 6443
nodeRegistration:
  name: %[2]s
  criSocket: unix:///run/localcp-no-runtime.sock
bootstrapTokens:
- token: %[3]s
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.37.2
clusterName: localcp
controlPlaneEndpoint: %[1]s:6443
networking:
  serviceSubnet: 10.96.0.0/12
etcd:
  local:
    dataDir: %[4]s
`, cfg.Address, cfg.NodeName, cfg.BootstrapToken, filepath.Join(cfg.Dir, "etcd"))), 0o644); err != nil {
		return nil, err
	}
	kubeadm := filepath.Join(cfg.BinDir, "kubeadm")
	for _, phase := range [][]string{{"certs", "all"}, {"kubeconfig", "all"}, {"control-plane", "all"}, {"etcd", "local"}} {
		args := append(append([]string{"init", "phase"}, phase...), "--config", kcfg)
		if out, err := exec.CommandContext(ctx, kubeadm, args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("kubeadm %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	cp := &ControlPlane{cfg: cfg, Server: "https://" + cfg.Address + ":6443"}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		argv, err := manifestCommand(filepath.Join(EtcKubernetes, "manifests", name+".yaml"))
		if err != nil {
			cp.Stop()
			return nil, err
		}
		if name == "kube-apiserver" {
			argv = append(argv, "--enable-aggregator-routing=true")
			argv = append(argv, cfg.ExtraAPIServerArgs...)
		}
		if err := cp.start(name, argv); err != nil {
			cp.Stop()
			return nil, err
		}
	}
	if err := cp.waitReady(ctx, 3*time.Minute); err != nil {
		cp.Stop()
		return nil, err
	}
	args := []string{"init", "phase", "bootstrap-token", "--config", kcfg, "--kubeconfig", cp.AdminKubeconfig()}
	if out, err := exec.CommandContext(ctx, kubeadm, args...).CombinedOutput(); err != nil {
		cp.Stop()
		return nil, fmt.Errorf("kubeadm %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return cp, nil
}

func manifestCommand(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pod v1.Pod
	if err := yaml.Unmarshal(data, &pod); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if len(pod.Spec.Containers) == 0 || len(pod.Spec.Containers[0].Command) == 0 {
		return nil, fmt.Errorf("%s: no command", path)
	}
	return pod.Spec.Containers[0].Command, nil
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

func (cp *ControlPlane) start(name string, argv []string) error {
	log, err := os.Create(cp.LogPath(name))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(cp.cfg.BinDir, argv[0]), argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	cp.procs = append(cp.procs, p)
	return nil
}

// LogPath is the log file of component name.
func (cp *ControlPlane) LogPath(name string) string {
	return filepath.Join(cp.cfg.Dir, "logs", name+".log")
}

// AdminKubeconfig is kubeadm's admin.conf.
func (cp *ControlPlane) AdminKubeconfig() string { return filepath.Join(EtcKubernetes, "admin.conf") }

// AdminConfig is a client config from admin.conf.
func (cp *ControlPlane) AdminConfig() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", cp.AdminKubeconfig())
}

// CACert is the cluster CA (pki/ca.crt).
func (cp *ControlPlane) CACert() ([]byte, error) {
	return os.ReadFile(filepath.Join(EtcKubernetes, "pki", "ca.crt"))
}

// WriteBootstrapKubeconfig writes a kubeadm-join-style
// bootstrap-kubelet.conf: the cluster CA and the bootstrap token.
func (cp *ControlPlane) WriteBootstrapKubeconfig(path string) error {
	ca, err := cp.CACert()
	if err != nil {
		return err
	}
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"kubernetes": {Server: cp.Server, CertificateAuthorityData: ca}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"tls-bootstrap-token-user": {Token: cp.cfg.BootstrapToken}},
		Contexts:       map[string]*clientcmdapi.Context{"tls-bootstrap-token-user@kubernetes": {Cluster: "kubernetes", AuthInfo: "tls-bootstrap-token-user"}},
		CurrentContext: "tls-bootstrap-token-user@kubernetes",
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return clientcmd.WriteToFile(cfg, path)
}

func (cp *ControlPlane) waitReady(ctx context.Context, timeout time.Duration) error {
	cfg, err := cp.AdminConfig()
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, last = client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		cancel()
		if last == nil {
			return nil
		}
		for _, p := range cp.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited; see %s", p.name, p.log.Name())
			default:
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return fmt.Errorf("control plane not ready after %s: %v", timeout, last)
}

// Stop terminates the components (SIGTERM, then SIGKILL after 20 s).
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		p := cp.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		p.log.Close()
	}
	cp.procs = nil
}

// Get performs an HTTPS GET of path on the apiserver with the admin
// client and returns status and body (helper for assertions).
func (cp *ControlPlane) Get(ctx context.Context, path string) (int, []byte, error) {
	cfg, err := cp.AdminConfig()
	if err != nil {
		return 0, nil, err
	}
	tcfg, err := rest.TransportFor(cfg)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cp.Server+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := (&http.Client{Transport: tcfg, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}
