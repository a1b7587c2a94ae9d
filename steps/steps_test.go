package steps

import (
	"bytes"
	"context"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
)

const kcmManifest = `apiVersion: v1
kind: Pod
metadata:
  labels:
    component: kube-controller-manager
    tier: control-plane
  name: kube-controller-manager
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-controller-manager
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt
    - --cluster-signing-key-file=/etc/kubernetes/pki/ca.key
    - --kubeconfig=/etc/kubernetes/controller-manager.conf
    - --requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt
    - --root-ca-file=/etc/kubernetes/pki/ca.crt
    image: registry.k8s.io/kube-controller-manager:v1.37.2
    name: kube-controller-manager
  hostNetwork: true
status: {}
`

// memNodes hands out in-memory nodes (a *nodes.MemRunner, or a test's
// wrapper of one); fakeStore keeps backups and CAs.
type memNodes map[string]nodes.Runner

func (m memNodes) Node(ctx context.Context, name string) (nodes.Runner, error) { return m[name], nil }

type fakeStore struct {
	*nodes.MemBackupStore
	cas    map[string]CAPair
	values map[string][]byte
}

func newFakeStore() *fakeStore {
	return &fakeStore{MemBackupStore: nodes.NewMemBackupStore(), values: map[string][]byte{}, cas: map[string]CAPair{}}
}

func (f *fakeStore) Value(ctx context.Context, k string) ([]byte, bool, error) {
	v, ok := f.values[k]
	return v, ok, nil
}
func (f *fakeStore) CA(ctx context.Context, n string) (CAPair, bool, error) {
	c, ok := f.cas[n]
	return c, ok, nil
}

// gateFunc are restart gates that pass at once and report each pass
// (component "kubelet" for the kubelet gate).
type gateFunc func(node, component string) error

func (g gateFunc) Component(ctx context.Context, rt *Runtime, t Target, c Component) error {
	return g(t.Node, c.Name)
}
func (g gateFunc) Kubelet(ctx context.Context, rt *Runtime, node string) error {
	return g(node, "kubelet")
}
func (g gateFunc) Etcd(ctx context.Context, rt *Runtime, t Target, servesNew bool) error {
	return g(t.Node, Etcd.Name)
}

// testConfig is kubeadm's layout with the given nodes.
func testConfig(controlPlane, workers []string) *Config {
	return &Config{ControlPlane: controlPlane, Workers: workers, Paths: Paths{KubernetesDir: "/etc/kubernetes", PKIDir: "/etc/kubernetes/pki",
		ManifestsDir: "/etc/kubernetes/manifests", KubeletConfig: "/var/lib/kubelet/config.yaml", KubeletPKIDir: "/var/lib/kubelet/pki",
		BackupDir: "/var/lib/rotate/backups"},
		KubeletRestartCommand: "systemctl restart kubelet"}
}

func testRuntime(t *testing.T) (*Runtime, *nodes.MemRunner, *fakeStore) {
	t.Helper()
	mk := func(cn string) *pki.CA {
		ca, err := pki.NewCA(pki.CAOptions{CommonName: cn})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	c0, c1, f0, f1 := mk("kubernetes"), mk("kubernetes-new"), mk("front-proxy-ca"), mk("front-proxy-ca-new")
	st := newFakeStore()
	st.cas[CACluster] = CAPair{Name: CACluster, OldCert: c0.CertPEM, OldKey: c0.KeyPEM, NewCert: c1.CertPEM, NewKey: c1.KeyPEM}
	st.cas[CAFrontProxy] = CAPair{Name: CAFrontProxy, OldCert: f0.CertPEM, OldKey: f0.KeyPEM, NewCert: f1.CertPEM, NewKey: f1.KeyPEM}
	r := nodes.NewMemRunner("cp1")
	r.SetFile("/etc/kubernetes/manifests/kube-controller-manager.yaml", []byte(kcmManifest), 0o600)
	r.SetFile("/etc/kubernetes/pki/ca.crt", c0.CertPEM, 0o644)
	rt := &Runtime{RunID: "r1", BackupID: "r1.test", Store: st, Nodes: memNodes{"cp1": r}, Out: &Outputs{},
		Config: testConfig([]string{"cp1"}, nil), Gates: gateFunc(func(string, string) error { return nil })}
	return rt, r, st
}

func TestNodeEditApplyCheckRevert(t *testing.T) {
	ctx := context.Background()
	rt, r, _ := testRuntime(t)
	cp1 := Target{Node: "cp1", Role: RoleControlPlane}
	s := KCMTrustBoth()
	done, err := s.Check(ctx, rt, cp1)
	if err != nil || done {
		t.Fatalf("Check before apply = %v, %v", done, err)
	}
	if err := s.Apply(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	got, _ := r.File("/etc/kubernetes/manifests/kube-controller-manager.yaml")
	for _, f := range []string{"--root-ca-file=/etc/kubernetes/pki/rotate-ca-bundle.crt", "--client-ca-file=/etc/kubernetes/pki/rotate-ca-bundle.crt",
		"--requestheader-client-ca-file=/etc/kubernetes/pki/rotate-front-proxy-ca-bundle.crt", "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt"} {
		if !strings.Contains(string(got), f) {
			t.Errorf("manifest lacks %s:\n%s", f, got)
		}
	}
	if v, ok, _ := edit.PodAnnotation(got, restartAnnotation); !ok || v != "r1.test" {
		t.Errorf("restart annotation = %q %v", v, ok)
	}
	if done, err := s.Check(ctx, rt, cp1); err != nil || !done {
		t.Fatalf("Check after apply = %v, %v", done, err)
	}
	// Apply again changes nothing (idempotent).
	before := len(r.Ops())
	if err := s.Apply(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	for _, op := range r.Ops()[before:] {
		if strings.HasPrefix(op, "write") {
			t.Fatalf("second apply wrote: %v", r.Ops()[before:])
		}
	}
	if err := s.Revert(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	got, _ = r.File("/etc/kubernetes/manifests/kube-controller-manager.yaml")
	if string(got) != kcmManifest {
		t.Fatalf("revert did not restore the manifest byte for byte:\n%s", got)
	}
	// Revert again is a no-op.
	if err := s.Revert(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
}

// kubeletClientFixture is a node with a kubelet client certificate link
// and kubelet.conf, and the re-issued certificate prepared in the store.
func kubeletClientFixture(t *testing.T) (*Runtime, *nodes.MemRunner) {
	t.Helper()
	ctx := context.Background()
	rt, r, st := testRuntime(t)
	ca, _ := rt.newCA(ctx, CACluster)
	is, err := pki.NewKubeletClientCert("cp1", ca, pki.ReissueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := pki.KubeletPEM(is)
	st.values[prepKey("cp1", prepKubeletClientPEM)] = pemBytes
	st.values[kubeletFactsKey("cp1")] = []byte(`{"RotateCertificates":false}`)
	old, err := rt.oldCA(ctx, CACluster)
	if err != nil {
		t.Fatal(err)
	}
	st.values[prepKey("cp1", prepKubeletOldPEM)] = oldKubeletPEM(t, old)
	r.SetFile("/var/lib/kubelet/pki/kubelet-client-2026.pem", oldKubeletPEM(t, old), 0o600)
	r.SetSymlink("/var/lib/kubelet/pki/kubelet-client-2026.pem", "/var/lib/kubelet/pki/kubelet-client-current.pem")
	r.SetFile("/etc/kubernetes/kubelet.conf", []byte(`apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Zm9v
    server: https://10.0.0.1:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: default-auth
  name: default-auth@kubernetes
current-context: default-auth@kubernetes
users:
- name: default-auth
  user:
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
`), 0o600)
	return rt, r
}

func oldKubeletPEM(t *testing.T, ca *pki.CA) []byte {
	t.Helper()
	is, err := pki.NewKubeletClientCert("cp1", ca, pki.ReissueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.KubeletPEM(is)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A kubelet that renewed its own client certificate from the new CA
// before the kubelet-client step ran has a new-CA certificate in the
// step's backup; rollback must not leave it there (trust narrows back to
// the old CA after this revert): it gets the prepared old-CA certificate.
func TestKubeletClientRevertNeverLeavesANewCACertificate(t *testing.T) {
	ctx := context.Background()
	rt, r := kubeletClientFixture(t)
	ca, _ := rt.newCA(ctx, CACluster)
	renewed := oldKubeletPEM(t, ca) // from the new CA: the kubelet's own renewal
	r.SetFile("/var/lib/kubelet/pki/kubelet-client-2026.pem", renewed, 0o600)
	cp1 := Target{Node: "cp1", Role: RoleControlPlane}
	s := KubeletClientCert("kubelet-client-cp")
	if err := s.Apply(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	if err := s.Revert(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	cur, err := rt.readKubeletClientCert(ctx, r, "cp1")
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := pki.ParseKubeletPEM(cur)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := rt.oldCA(ctx, CACluster)
	if !pki.IssuedBy(c, old.Cert) {
		t.Fatalf("after rollback the kubelet presents %s, not an old-CA certificate", pki.Describe(c))
	}
	restarts := 0
	for _, cmd := range r.Commands() {
		if cmd == "systemctl restart kubelet" {
			restarts++
		}
	}
	if restarts != 3 { // apply, revert, and the old-CA certificate's restart
		t.Fatalf("kubelet restarted %d times, want 3: %v", restarts, r.Commands())
	}
}

func TestKubeletClientCertRepointsLinkAndRestarts(t *testing.T) {
	ctx := context.Background()
	rt, r := kubeletClientFixture(t)
	cp1 := Target{Node: "cp1", Role: RoleControlPlane}
	s := KubeletClientCert("kubelet-client-cp")
	if err := s.Apply(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	info, _ := r.Stat(ctx, "/var/lib/kubelet/pki/kubelet-client-current.pem")
	if !info.IsSymlink || info.LinkTarget != "/var/lib/kubelet/pki/kubelet-client-r1.pem" {
		t.Fatalf("link = %+v", info)
	}
	restarts := 0
	for _, c := range r.Commands() {
		if c == "systemctl restart kubelet" {
			restarts++
		}
	}
	if restarts != 1 {
		t.Fatalf("kubelet restarted %d times: %v", restarts, r.Commands())
	}
	if done, err := s.Check(ctx, rt, cp1); err != nil || !done {
		t.Fatalf("check after apply = %v, %v", done, err)
	}
	if err := s.Revert(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	info, _ = r.Stat(ctx, "/var/lib/kubelet/pki/kubelet-client-current.pem")
	if info.LinkTarget != "/var/lib/kubelet/pki/kubelet-client-2026.pem" {
		t.Fatalf("revert left link at %s", info.LinkTarget)
	}
	if _, ok := r.File("/var/lib/kubelet/pki/kubelet-client-r1.pem"); ok {
		t.Fatal("revert left the new kubelet cert behind")
	}
	if done, err := s.Check(ctx, rt, cp1); err != nil || done {
		t.Fatalf("check after revert = %v, %v; want false, no error", done, err)
	}
}

// paths.backupDir is honoured: the node copies of a kubelet step's
// backups go under it and its marker next to it, nothing to the defaults.
func TestBackupDirHonoured(t *testing.T) {
	ctx := context.Background()
	rt, r := kubeletClientFixture(t)
	rt.Config.Paths.BackupDir = "/srv/rotate/backups"
	cp1 := Target{Node: "cp1", Role: RoleControlPlane}
	s := KubeletClientCert("kubelet-client-cp")
	if err := s.Apply(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	meta := "/srv/rotate/backups/r1.test/" + url.PathEscape("/var/lib/kubelet/pki/kubelet-client-current.pem") + ".meta"
	if _, ok := r.File(meta); !ok {
		t.Errorf("no backup copy at %s; files: %v", meta, r.Paths())
	}
	if _, ok := r.File("/srv/rotate/markers/r1.test"); !ok {
		t.Errorf("no kubelet marker in /srv/rotate/markers; files: %v", r.Paths())
	}
	for _, p := range r.Paths() {
		if strings.HasPrefix(p, "/var/lib/rotate") {
			t.Errorf("%s written under the default directory", p)
		}
	}
	if done, err := s.Check(ctx, rt, cp1); err != nil || !done {
		t.Fatalf("check after apply = %v, %v", done, err)
	}
	if err := s.Revert(ctx, rt, cp1); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.File("/srv/rotate/markers/r1.test"); ok {
		t.Error("revert left the kubelet marker")
	}
}

func TestWaitForTimesOutWithReason(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var logs bytes.Buffer
	rt := &Runtime{Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("step", "s1")}
	err := rt.waitFor(ctx, "thing", func(context.Context) (bool, string, error) { return false, "still busy", nil })
	if err == nil || !strings.Contains(err.Error(), "still busy") || !strings.Contains(err.Error(), "thing") {
		t.Fatalf("waitFor = %v", err)
	}
	// Logged once per reason, with the step's attributes.
	if n := strings.Count(logs.String(), `msg=waiting step=s1 for=thing why="still busy"`); n != 1 {
		t.Fatalf("waiting logged %d times:\n%s", n, logs.String())
	}
}
