package steps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
)

// verifyFixture is a cluster at phase 11: control-plane node cp1 and
// worker w1 hold only certificates from the new CAs, the apiserver (a local
// TLS server) serves and accepts new-CA certificates, the API reports
// everything Ready and published, and the node proxy answers per node what
// the test puts in proxy.
type verifyFixture struct {
	rt       *Runtime
	st       *fakeStore
	proxy    map[string]error // node → the node proxy's /healthz answer
	progress []string
	// notReady is how many /readyz requests the apiserver still answers
	// 503 (a restarted apiserver not ready yet).
	notReady *atomic.Int32
}

func newVerifyFixture(t *testing.T) *verifyFixture {
	t.Helper()
	ctx := context.Background()
	rt, cp1, st := testRuntime(t)
	f := &verifyFixture{rt: rt, st: st, proxy: map[string]error{}, notReady: &atomic.Int32{}}
	cl, err := rt.newCA(ctx, CACluster)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := rt.newCA(ctx, CAFrontProxy)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA, tmpl *x509.Certificate) *pki.Issued {
		is, err := pki.Reissue(tmpl, ca, pki.ReissueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	client := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	}

	admin := issue(cl, client("rotate"))
	st.values[keyRotateAdminCert], st.values[keyRotateAdminKey] = admin.CertPEM, admin.KeyPEM
	rt.AdminCert = admin.Cert
	if rt.Trust, err = NewTrust(st, nil); err != nil {
		t.Fatal(err)
	}
	serving := issue(cl, &x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	rt.Config.Addresses, rt.Config.APIServerPort = map[string]string{"cp1": "127.0.0.1"}, apiServer(t, serving, cl.Cert, f.notReady)

	w1 := nodes.NewMemRunner("w1")
	rt.Nodes = memNodes{"cp1": cp1, "w1": w1}
	rt.Config.Workers = []string{"w1"}
	rt.NodeProxy = func(ctx context.Context, node, path string) error {
		if path != "/healthz" {
			t.Errorf("node proxy path %q", path)
		}
		return f.proxy[node]
	}
	rt.Progress = func(msg string) { f.progress = append(f.progress, msg) }

	// Every file nodes-reachable wants; those verify reads hold new-CA
	// certificates (the old ones would do for the baseline, which only
	// reads them).
	for _, p := range []string{"/etc/kubernetes/pki/ca.key", "/etc/kubernetes/pki/front-proxy-ca.crt", "/etc/kubernetes/pki/front-proxy-ca.key",
		"/etc/kubernetes/manifests/kube-apiserver.yaml", "/etc/kubernetes/manifests/kube-scheduler.yaml", "/var/lib/kubelet/config.yaml"} {
		cp1.SetFile(p, []byte("x"), 0o600)
	}
	w1.SetFile("/etc/kubernetes/pki/ca.crt", st.cas[CACluster].OldCert, 0o644)
	w1.SetFile("/var/lib/kubelet/config.yaml", []byte("x"), 0o600)
	for name, r := range map[string]*nodes.MemRunner{"cp1": cp1, "w1": w1} {
		kub, err := pki.NewKubeletClientCert(name, cl, pki.ReissueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pemBytes, err := pki.KubeletPEM(kub)
		if err != nil {
			t.Fatal(err)
		}
		r.SetFile("/var/lib/kubelet/pki/kubelet-client-current.pem", pemBytes, 0o600)
		r.SetFile("/etc/kubernetes/kubelet.conf", kubeconfigWith(kub), 0o600)
	}
	for _, kc := range []string{"admin.conf", "controller-manager.conf", "scheduler.conf"} {
		cp1.SetFile("/etc/kubernetes/"+kc, kubeconfigWith(issue(cl, client(kc))), 0o600)
	}
	cp1.SetFile("/etc/kubernetes/pki/apiserver.crt", serving.CertPEM, 0o644)
	cp1.SetFile("/etc/kubernetes/pki/apiserver-kubelet-client.crt", issue(cl, client("kube-apiserver-kubelet-client")).CertPEM, 0o644)
	cp1.SetFile("/etc/kubernetes/pki/front-proxy-client.crt", issue(fp, client("front-proxy-client")).CertPEM, 0o644)

	b, _, err := rt.bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var objs []runtime.Object
	for _, n := range []string{"cp1", "w1"} {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}})
	}
	for _, ns := range []string{"default", "kube-system"} {
		objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(b)}})
	}
	rt.Kube = fake.NewClientset(objs...)
	apisvc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": map[string]any{"name": "v1.apps"},
		"status": map[string]any{"conditions": []any{map[string]any{"type": "Available", "status": "True"}}},
	}}
	rt.Dynamic = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		gvrAPIService: "APIServiceList", gvrValidating: "ValidatingWebhookConfigurationList",
		gvrMutating: "MutatingWebhookConfigurationList", gvrCRD: "CustomResourceDefinitionList",
	}, apisvc)
	return f
}

// apiServer serves /api and /readyz over TLS with serving, to clients
// presenting a certificate from clientCA, /readyz with a 503 while
// notReady counts down; it returns the port.
func apiServer(t *testing.T, serving *pki.Issued, clientCA *x509.Certificate, notReady *atomic.Int32) int {
	t.Helper()
	pair, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(clientCA)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/readyz" && notReady.Add(-1) >= 0:
			http.Error(w, "[-]poststarthook/rbac/bootstrap-roles failed: not finished", http.StatusServiceUnavailable)
		case r.URL.Path != "/api" && r.URL.Path != "/readyz":
			http.NotFound(w, r)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	return n
}

// kubeconfigWith is a kubeconfig embedding is as the client certificate.
func kubeconfigWith(is *pki.Issued) []byte {
	return []byte(`apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://10.0.0.1:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: u
  name: u@kubernetes
current-context: u@kubernetes
users:
- name: u
  user:
    client-certificate-data: ` + b64(is.CertPEM) + `
    client-key-data: ` + b64(is.KeyPEM) + `
`)
}

// preflight runs the steps that record the baseline, as the engine would,
// and commits their outputs to the store.
func (f *verifyFixture) preflight(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	runs := []struct {
		s Step
		t Target
	}{
		{NodesReachable{}, Target{Node: "cp1", Role: RoleControlPlane}},
		{NodesReachable{}, Target{Node: "w1", Role: RoleWorker}},
		{ClusterHealthy{}, ClusterTarget},
	}
	for _, r := range runs {
		rt := *f.rt
		rt.Out = &Outputs{}
		if err := r.s.Apply(ctx, &rt, r.t); err != nil {
			t.Fatalf("%s on %s: %v", r.s.Name(), r.t, err)
		}
		for k, v := range rt.Out.Values {
			f.st.values[k] = v
		}
	}
}

// verifyTargets are the fixture's nodes as the plan gives them to
// verify-nodes.
var verifyTargets = []Target{{Node: "cp1", Role: RoleControlPlane}, {Node: "w1", Role: RoleWorker}}

// verify runs the verify phase as the engine would: VerifyNode on every
// node, each committing its outputs, then (if all passed) Verify on the
// cluster. It returns the hold report (nil if none).
func (f *verifyFixture) verify(t *testing.T) (*HoldReport, error) {
	t.Helper()
	var errs []error
	for _, tg := range verifyTargets {
		if _, err := f.verifyNode(tg); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	rt := *f.rt
	rt.Out = &Outputs{}
	err := Verify{}.Apply(context.Background(), &rt, ClusterTarget)
	raw, ok := rt.Out.Values[KeyHoldReport]
	if !ok {
		return nil, err
	}
	var rep HoldReport
	if jerr := json.Unmarshal(raw, &rep); jerr != nil {
		t.Fatal(jerr)
	}
	return &rep, err
}

// verifyNode runs VerifyNode on tg and commits what it stores; it returns
// the keys it stored.
func (f *verifyFixture) verifyNode(tg Target) ([]string, error) {
	rt := *f.rt
	rt.Out = &Outputs{}
	if err := (VerifyNode{}).Apply(context.Background(), &rt, tg); err != nil {
		return nil, err
	}
	var keys []string
	for k, v := range rt.Out.Values {
		f.st.values[k] = v
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}

var errProxy = errors.New("dial tcp 10.0.0.3:10250: i/o timeout")

func TestVerifyComparesWithBaseline(t *testing.T) {
	const w1Broken = "apiserver → kubelet w1: dial tcp 10.0.0.3:10250: i/o timeout"
	tests := []struct {
		name           string
		noBaseline     bool             // preflight ran under a rotate that recorded none
		before, now    map[string]error // node proxy answers at preflight and at verify
		wantErr        string           // "" = verify passes
		wantPre        []string
		wantBaseLine   string // a progress line preflight prints
		wantNoBaseLine bool
	}{
		{name: "working before and now", wantNoBaseLine: true},
		{name: "broken before and still broken: pre-existing, not a failure",
			before: map[string]error{"w1": errProxy}, now: map[string]error{"w1": errProxy},
			wantPre:      []string{w1Broken + " (already failing before the rotation)"},
			wantBaseLine: "baseline: node-proxy/w1 already fails before the rotation (" + errProxy.Error() + "); recorded, not fatal"},
		{name: "broken before, working now",
			before: map[string]error{"w1": errProxy}},
		{name: "working before, broken now: a regression naming the node",
			now: map[string]error{"w1": errProxy}, wantErr: "verification failed:\n  - " + w1Broken},
		{name: "pre-existing on one node, regression on another: the node with the regression fails",
			before: map[string]error{"w1": errProxy}, now: map[string]error{"w1": errProxy, "cp1": errBoom},
			wantErr: "verification failed:\n  - apiserver → kubelet cp1: boom"},
		{name: "no baseline, working", noBaseline: true},
		{name: "no baseline: every failure is a regression, as before baselines",
			noBaseline: true, now: map[string]error{"w1": errProxy}, wantErr: "verification failed:\n  - " + w1Broken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newVerifyFixture(t)
			f.proxy = tt.before
			if !tt.noBaseline {
				f.preflight(t)
			}
			if tt.wantBaseLine != "" && !strings.Contains(strings.Join(f.progress, "\n"), tt.wantBaseLine) {
				t.Errorf("preflight progress lacks %q:\n%s", tt.wantBaseLine, strings.Join(f.progress, "\n"))
			}
			if tt.wantNoBaseLine && strings.Contains(strings.Join(f.progress, "\n"), "baseline:") {
				t.Errorf("preflight reports a failing baseline:\n%s", strings.Join(f.progress, "\n"))
			}
			f.proxy = tt.now
			rep, err := f.verify(t)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("verify = %v\nwant %q", err, tt.wantErr)
				}
				if rep != nil {
					t.Fatalf("failed verify stored a hold report: %+v", rep)
				}
				return
			}
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if !reflect.DeepEqual(rep.PreExisting, tt.wantPre) {
				t.Fatalf("pre-existing = %q, want %q", rep.PreExisting, tt.wantPre)
			}
			want := "every kubelet is reachable from the apiservers and has a client certificate from the new CA"
			if len(tt.wantPre) > 0 {
				want += ", except what is listed as pre-existing"
			}
			if rep.Verified[1] != want {
				t.Errorf("verified[1] = %q, want %q", rep.Verified[1], want)
			}
			for _, p := range tt.wantPre {
				if !strings.Contains(strings.Join(f.progress, "\n"), "pre-existing: "+p) {
					t.Errorf("verify progress lacks pre-existing %q", p)
				}
			}
		})
	}
}

// TestBaselineRecordsEveryCheck: what preflight stores, check by check,
// under the keys verify reads.
func TestBaselineRecordsEveryCheck(t *testing.T) {
	f := newVerifyFixture(t)
	f.proxy = map[string]error{"w1": errProxy}
	f.rt.Nodes.(memNodes)["w1"].Remove(context.Background(), "/var/lib/kubelet/pki/kubelet-client-current.pem")
	f.rt.Nodes.(memNodes)["w1"].(*nodes.MemRunner).SetFile("/etc/kubernetes/kubelet.conf", []byte("not a kubeconfig: ["), 0o600)
	f.preflight(t)
	got, err := f.rt.loadBaseline(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for check, failed := range map[string]bool{
		"apiserver/cp1": false, "node-proxy/cp1": false, "kubelet-client-cert/cp1": false,
		"node-proxy/w1": true, "kubelet-client-cert/w1": true,
		"node-ready/cp1": false, "node-ready/w1": false, "apiservice/v1.apps": false,
	} {
		why, ok := got[check]
		if !ok || (why != "") != failed {
			t.Errorf("baseline %s = %q (recorded %v), want failed=%v", check, why, ok, failed)
		}
	}
	if len(got) != 8 {
		t.Errorf("baseline has %d checks, want 8: %v", len(got), got)
	}
}

// dialAfter is a node source whose connections wait for started: the
// node is reached only once something else has begun.
type dialAfter struct {
	memNodes
	started <-chan struct{}
}

func (d dialAfter) Node(ctx context.Context, name string) (nodes.Runner, error) {
	select {
	case <-d.started:
		return d.memNodes.Node(ctx, name)
	case <-time.After(time.Minute):
		return nil, errors.New("reached before the baseline's API checks started")
	}
}

// TestNodesReachableChecksAPIWhileDialing: the baseline's checks that need
// no SSH (here the node proxy) are under way while the node is dialed,
// not after its login and read; an unreachable node still fails the step
// and leaves no check running.
func TestNodesReachableChecksAPIWhileDialing(t *testing.T) {
	ctx := context.Background()
	f := newVerifyFixture(t)
	started := make(chan struct{})
	var once sync.Once
	proxy := f.rt.NodeProxy
	f.rt.NodeProxy = func(ctx context.Context, node, path string) error {
		once.Do(func() { close(started) })
		return proxy(ctx, node, path)
	}
	f.rt.Nodes = dialAfter{memNodes: f.rt.Nodes.(memNodes), started: started}
	rt := *f.rt
	rt.Out = &Outputs{}
	if err := (NodesReachable{}).Apply(ctx, &rt, Target{Node: "w1", Role: RoleWorker}); err != nil {
		t.Fatal(err)
	}
	if _, ok := rt.Out.Values[baselineNodeKey("w1")]; !ok {
		t.Fatalf("no baseline recorded: %v", rt.Out.Values)
	}

	var running atomic.Int32
	rt.NodeProxy = func(ctx context.Context, node, path string) error {
		running.Add(1)
		defer running.Add(-1)
		<-ctx.Done() // a kubelet that never answers
		return ctx.Err()
	}
	rt.Nodes = unreachable{}
	if err := (NodesReachable{}).Apply(ctx, &rt, Target{Node: "w1", Role: RoleWorker}); err == nil || !strings.Contains(err.Error(), "no route") {
		t.Fatalf("unreachable node: %v", err)
	}
	if n := running.Load(); n != 0 {
		t.Fatalf("%d baseline checks still running after the step failed", n)
	}
}

// unreachable is a node source that reaches no node.
type unreachable struct{}

func (unreachable) Node(context.Context, string) (nodes.Runner, error) {
	return nil, errors.New("dial: no route to host")
}

// TestServingGateHonoursBaseline: after a kubelet gets a serving
// certificate from the new CA, its gate waits for the apiservers to reach
// it, except where they did not reach it before the run either (firewalled
// 10250): that wait could only time out, for a reason rotate did not cause.
func TestServingGateHonoursBaseline(t *testing.T) {
	tests := []struct {
		name            string
		before          map[string]error
		wantErr, wantPr string
	}{
		{name: "unreachable before the run: not waited for", before: map[string]error{"w1": errProxy},
			wantPr: "w1: not waiting for apiserver → kubelet with the new serving certificate: it already failed before the rotation (" + errProxy.Error() + ")"},
		{name: "reachable before the run: a regression is waited on and fails",
			wantErr: "apiserver → kubelet w1 with its new serving certificate: context deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newVerifyFixture(t)
			f.proxy = tt.before
			f.preflight(t)
			f.st.values[kubeletFactsKey("w1")] = []byte(`{"ServingDNS":["w1"]}`)
			f.proxy = map[string]error{"w1": errProxy}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := KubeletClientCert("kubelet-client-workers").Gate(ctx, f.rt, Target{Node: "w1", Role: RoleWorker})
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Gate = %v, want error %q", err, tt.wantErr)
			}
			if tt.wantPr != "" && !strings.Contains(strings.Join(f.progress, "\n"), tt.wantPr) {
				t.Errorf("progress lacks %q:\n%s", tt.wantPr, strings.Join(f.progress, "\n"))
			}
		})
	}
}

// TestKubeletCertNotes: what plan --live says about each kubelet's
// certificates, by its configuration.
func TestKubeletCertNotes(t *testing.T) {
	for _, tc := range []struct {
		facts string
		want  []string
	}{
		{`{"RotateCertificates":true,"ServerTLSBootstrap":true}`, []string{
			"client certificate obtained through the CSR API (the kubelet has rotateCertificates: true)",
			"serving certificate obtained through the CSR API (serverTLSBootstrap: true)"}},
		{`{"RotateCertificates":true}`, []string{
			"client certificate obtained through the CSR API (the kubelet has rotateCertificates: true)",
			"serving certificate is the kubelet's self-signed one (no serverTLSBootstrap): untouched"}},
		{`{"TLSCertFile":"/etc/kubelet/serving.crt"}`, []string{
			"client certificate signed directly by the new CA (the kubelet does not rotate its certificates)",
			"serving certificate is the operator's tlsCertFile /etc/kubelet/serving.crt: untouched"}},
	} {
		f := newVerifyFixture(t)
		f.st.values[kubeletFactsKey("w1")] = []byte(tc.facts)
		got, err := kubeletCertNotes(context.Background(), f.rt, Target{Node: "w1", Role: RoleWorker})
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("notes for %s = %q, %v\nwant %q", tc.facts, got, err, tc.want)
		}
	}
}

// TestVerifyPerNode: verify-nodes checks one node per target and stores
// that node's findings alone; verify on the cluster reads every node's,
// refuses to report without one, and puts them in the hold report.
func TestVerifyPerNode(t *testing.T) {
	f := newVerifyFixture(t)
	f.proxy = map[string]error{"w1": errProxy}
	f.preflight(t)
	keys, err := f.verifyNode(Target{Node: "w1", Role: RoleWorker})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(keys, []string{"verify/node/w1"}) {
		t.Fatalf("verify-nodes on w1 stored %q", keys)
	}
	var v nodeVerification
	if err := json.Unmarshal(f.st.values["verify/node/w1"], &v); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{groupKubelets: {"apiserver → kubelet w1: " + errProxy.Error() + " (already failing before the rotation)"}}
	if !reflect.DeepEqual(v.PreExisting, want) {
		t.Fatalf("w1's findings = %q, want %q", v.PreExisting, want)
	}

	rt := *f.rt
	rt.Out = &Outputs{}
	if err := (Verify{}).Apply(context.Background(), &rt, ClusterTarget); err == nil || !strings.Contains(err.Error(), "node cp1 has not been verified") {
		t.Fatalf("verify without cp1's findings = %v", err)
	}

	rep, err := f.verify(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.PreExisting) != 1 || rep.PreExisting[0] != want[groupKubelets][0] {
		t.Fatalf("hold report pre-existing = %q", rep.PreExisting)
	}
	if len(rep.Verified) != 4 || !strings.HasSuffix(rep.Verified[1], ", except what is listed as pre-existing") || strings.Contains(rep.Verified[0], "except") {
		t.Fatalf("hold report verified = %q", rep.Verified)
	}
}

// TestVerifyEtcd: with the etcd CA in the run, verify requires the
// members' and the apiserver's etcd certificates from the new etcd CA and
// tells the operator about tools that verify etcd with etcd/ca.crt.
func TestVerifyEtcd(t *testing.T) {
	f := newVerifyFixture(t)
	f.rt.Config.Etcd = true
	e0, e1 := withEtcdCA(t, f.st)
	cp1, _ := f.rt.Nodes.Node(context.Background(), "cp1")
	leaf := func(ca *pki.CA, name string) []byte {
		return clientCert(t, ca, name).CertPEM
	}
	for _, n := range append(etcdMemberLeaves, etcdAPIServerLeaf) {
		cp1.(*nodes.MemRunner).SetFile("/etc/kubernetes/pki/"+n+".crt", leaf(e1, n), 0o644)
	}
	f.preflight(t)
	rep, err := f.verify(t)
	if err != nil {
		t.Fatal(err)
	}
	const line = "tools that verify them with /etc/kubernetes/pki/etcd/ca.crt (etcdctl, backup jobs) need /etc/kubernetes/pki/etcd/rotate-ca-bundle.crt until trust narrows"
	if !strings.Contains(strings.Join(rep.Attention, "\n"), line) {
		t.Errorf("attention lacks %q:\n%s", line, strings.Join(rep.Attention, "\n"))
	}
	cp1.(*nodes.MemRunner).SetFile("/etc/kubernetes/pki/etcd/peer.crt", leaf(e0, "peer"), 0o644)
	if _, err := f.verify(t); err == nil || !strings.Contains(err.Error(), "cp1:/etc/kubernetes/pki/etcd/peer.crt is still issued by the old CA") {
		t.Errorf("a member's peer certificate from the old etcd CA: %v", err)
	}
}
