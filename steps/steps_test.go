package steps

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
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
	st.values[prepKey("cp1", "kubelet-client.pem")] = pemBytes
	r.SetFile("/var/lib/kubelet/pki/kubelet-client-2026.pem", []byte("old"), 0o600)
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
	if done, _ := s.Check(ctx, rt, cp1); !done {
		t.Fatal("check after apply is false")
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
	if done, _ := s.Check(ctx, rt, cp1); done {
		t.Fatal("check after revert is true")
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

func TestSummarizeDiffRedacts(t *testing.T) {
	a := "x: 1\n    client-key-data: QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n"
	b := "x: 2\n    client-key-data: WllYV1ZVVFNSUVBPTk1MS0pJSEdGRURDQkE=\n"
	s := summarizeDiff([]byte(a), []byte(b))
	if strings.Contains(s, "QUJD") || strings.Contains(s, "WllY") || !strings.Contains(s, "+x: 2") {
		t.Fatalf("summary leaks or lacks the change: %s", s)
	}
}

func TestSummarizeDiffHidesPEM(t *testing.T) {
	old := "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\nF4PmtgfsmayO+E9Fq==\n-----END EC PRIVATE KEY-----\n"
	s := summarizeDiff([]byte(old), []byte(strings.Replace(old, "F4P", "G5Q", 1)))
	if strings.Contains(s, "F4P") || strings.Contains(s, "G5Q") || strings.Contains(s, "PRIVATE") {
		t.Fatalf("summary shows key material: %s", s)
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

// TestPlanRestore: what a revert restores before the restart gates and
// what after, decided by content (see planRestore).
func TestPlanRestore(t *testing.T) {
	ctx := context.Background()
	mk := func(cn string) *pki.CA {
		ca, err := pki.NewCA(pki.CAOptions{CommonName: cn})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	leaf := func(ca *pki.CA) *pki.Issued {
		is, err := pki.Reissue(&x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}}, ca, pki.ReissueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	c0, c1 := mk("kubernetes"), mk("kubernetes-new")
	l0, l1 := leaf(c0), leaf(c1)
	b := string(c0.CertPEM) + string(c1.CertPEM)
	const (
		ca, caKey, bundle = "/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.key", "/etc/kubernetes/pki/rotate-ca-bundle.crt"
		crt, key          = "/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/pki/apiserver.key"
		conf, manifest    = "/etc/kubernetes/admin.conf", "/etc/kubernetes/manifests/kube-apiserver.yaml"
		link, pem0, pem1  = "/var/lib/kubelet/pki/kubelet-client-current.pem", "/var/lib/kubelet/pki/kubelet-client-0.pem", "/var/lib/kubelet/pki/kubelet-client-1.pem"
	)
	// Node states: path -> content; "" is no file, "-> p" a link to p.
	tests := []struct {
		name          string
		before, after map[string]string
		edited        []string // edit order; a path not backed up is not the step's
		early, late   []string
	}{
		{name: "narrowed CA after its key, after everything else",
			before: map[string]string{ca: string(c0.CertPEM), caKey: string(c0.KeyPEM), manifest: "client-ca-file: bundle", conf: "ca: B"},
			after:  map[string]string{ca: string(c1.CertPEM), caKey: string(c1.KeyPEM), manifest: "client-ca-file: ca.crt", conf: "ca: C1"},
			edited: []string{ca, caKey, manifest, conf},
			early:  []string{conf, manifest}, late: []string{caKey, ca}},
		{name: "a bundle losing the new CA narrows",
			before: map[string]string{ca: string(c0.CertPEM)}, after: map[string]string{ca: b},
			edited: []string{ca}, late: []string{ca}},
		{name: "a bundle gaining a CA back widens",
			before: map[string]string{bundle: b}, after: map[string]string{bundle: string(c1.CertPEM)},
			edited: []string{bundle}, early: []string{bundle}},
		{name: "leaf certificates and keys before the manifest",
			before: map[string]string{crt: string(l0.CertPEM), key: string(l0.KeyPEM), manifest: "signer: ca.crt"},
			after:  map[string]string{crt: string(l1.CertPEM), key: string(l1.KeyPEM), manifest: "signer: rotate-ca.crt"},
			edited: []string{crt, key, manifest}, early: []string{key, crt, manifest}},
		{name: "a removal goes last, a link repointed at a leaf early",
			before: map[string]string{link: "-> " + pem0, pem0: string(l0.CertPEM) + string(l0.KeyPEM)},
			after:  map[string]string{link: "-> " + pem1, pem0: string(l0.CertPEM) + string(l0.KeyPEM), pem1: string(l1.CertPEM) + string(l1.KeyPEM)},
			edited: []string{pem1, link}, early: []string{link}, late: []string{pem1}},
		{name: "removing a CA and its key: both late, the key first",
			before: map[string]string{}, after: map[string]string{"/etc/kubernetes/pki/rotate-ca.crt": string(c1.CertPEM), "/etc/kubernetes/pki/rotate-ca.key": string(c1.KeyPEM)},
			edited: []string{"/etc/kubernetes/pki/rotate-ca.crt", "/etc/kubernetes/pki/rotate-ca.key"},
			late:   []string{"/etc/kubernetes/pki/rotate-ca.key", "/etc/kubernetes/pki/rotate-ca.crt"}},
		{name: "in place already, or never the step's: nothing",
			before: map[string]string{ca: string(c0.CertPEM), conf: "a"}, after: map[string]string{ca: string(c0.CertPEM), conf: "b"},
			edited: []string{ca}},
	}
	set := func(r *nodes.MemRunner, files map[string]string) {
		for p, v := range files {
			switch {
			case v == "":
				_ = r.Remove(ctx, p)
			case strings.HasPrefix(v, "-> "):
				r.SetSymlink(strings.TrimPrefix(v, "-> "), p)
			default:
				r.SetFile(p, []byte(v), 0o644)
			}
		}
	}
	paths := func(bs []nodes.Backup) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.Path)
		}
		return out
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, _, _ := testRuntime(t)
			r := nodes.NewMemRunner("cp1")
			set(r, tt.before)
			for _, p := range tt.edited {
				if _, err := nodes.BackupFile(ctx, r, rt.Store, rt.Config.Paths.BackupDir, rt.BackupID, p); err != nil {
					t.Fatal(err)
				}
			}
			set(r, tt.after)
			st, err := planRestore(ctx, rt, r, tt.edited)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(paths(st.early), " "), strings.Join(tt.early, " "); got != want {
				t.Errorf("early\n got %s\nwant %s", got, want)
			}
			if got, want := strings.Join(paths(st.late), " "), strings.Join(tt.late, " "); got != want {
				t.Errorf("late\n got %s\nwant %s", got, want)
			}
		})
	}
}

func TestParseProcessReport(t *testing.T) {
	tests := []struct {
		name, out string
		newer     bool
		bad       bool
	}{
		// Started 100.25 s after boot, uptime 110.00: 9.75 s old; the
		// manifest was written 10.5 s ago.
		{"started after the write", "42 10025 100 110.00 1700000000.500 1699999990.000\n", true, false},
		// Same second, but 0.3 s before the write: older.
		{"started just before the write, same second", "42 10020 100 110.00 1700000000.500 1699999990.800\n", false, false},
		{"old process", "7 500 100 110.00 1700000000.0 1699999999.0", false, false},
		{"whole-second stat", "7 10500 100 110.00 1700000000.9 1699999995", true, false},
		{"garbage", "7 x 100 110 1 1", false, true},
		{"short", "7 1 2", false, true},
		{"zero hz", "7 1 0 1 1 1", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid, newer, err := parseProcessReport(tt.out)
			if (err != nil) != tt.bad {
				t.Fatalf("err = %v, want error %v", err, tt.bad)
			}
			if !tt.bad && (newer != tt.newer || pid == "") {
				t.Fatalf("pid %q newer %v, want newer %v", pid, newer, tt.newer)
			}
		})
	}
}
