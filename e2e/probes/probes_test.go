package probes

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubeca/rotate/pki/pkitest"
)

func TestReport(t *testing.T) {
	t0 := time.Unix(1000, 0)
	rec := newRecorder("e2e", t0)
	rec.result(t0, ProbeAdmin, "admin.conf(cp1) -> cp1", "", "", "")
	rec.result(t0, ProbeAdmin, "admin.conf(cp1) -> cp1", Refused, "connection refused", "")
	rec.result(t0, ProbeNode, "kubelet.conf(w1) -> lb", "", "", "")
	rep := rec.snapshot(t0.Add(time.Minute))
	if !rep.Clean() {
		t.Error("refused makes the report unclean")
	}
	if rep.Probes[ProbeAdmin].Requests != 2 || rep.Probes[ProbeAdmin].OK != 1 || rep.Count(ProbeAdmin, Refused) != 1 {
		t.Errorf("admin counts %+v", rep.Probes[ProbeAdmin].Counts)
	}
	rec.result(t0, ProbeNode, "kubelet.conf(w1) -> lb", Unauthorized, "HTTP 401: Unauthorized", "")
	rec.result(t0, ProbeAggregated, "front-proxy via cp2", X509, "x509: certificate signed by unknown authority", "")
	rep = rec.snapshot(t0.Add(time.Minute))
	if rep.Clean() {
		t.Error("401 and x509 left the report clean")
	}
	if rep.Count("", Unauthorized) != 1 || rep.Count("", X509) != 1 || rep.Probes[ProbeNode].Targets["kubelet.conf(w1) -> lb"].Failures[Unauthorized] != 1 {
		t.Error("counts per class per target")
	}
	sum := rep.Summary()
	for _, want := range []string{"NOT CLEAN: 1 x509, 1 unauthorized, 0 forbidden", "aggregated", "unauthorized", "1x aggregated x509", "e.g. front-proxy via cp2: x509: certificate signed"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q:\n%s", want, sum)
		}
	}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := rep.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	var back Report
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &back); err != nil || back.Clean() || len(back.Failures) != 3 || back.Probes[ProbeAdmin].OK != 1 {
		t.Errorf("round trip: %v %+v", err, back)
	}
}

func TestNodeFS(t *testing.T) {
	dir := t.TempDir()
	fs := nodeFS{etc: filepath.Join(dir, "etc"), varlib: filepath.Join(dir, "varlib")}
	os.MkdirAll(filepath.Join(fs.varlib, "pki"), 0o755)
	os.MkdirAll(fs.etc, 0o755)
	if got := fs.hostPath("/var/lib/kubelet/pki/x.CertPEM"); got != filepath.Join(fs.varlib, "pki/x.CertPEM") {
		t.Errorf("hostPath %s", got)
	}
	if got := fs.hostPath("/var/lib/kubeletx/y"); got != "/var/lib/kubeletx/y" {
		t.Errorf("prefix without separator mapped: %s", got)
	}
	os.WriteFile(filepath.Join(fs.varlib, "pki", "kubelet-client-2030.CertPEM"), []byte("pair"), 0o600)
	// The kubelet's symlink holds an absolute path inside the node.
	os.Symlink("/var/lib/kubelet/pki/kubelet-client-2030.CertPEM", filepath.Join(fs.varlib, "pki", "kubelet-client-current.CertPEM"))
	got, err := fs.readFile("/var/lib/kubelet/pki/kubelet-client-current.CertPEM")
	if err != nil || string(got) != "pair" {
		t.Errorf("readFile through node symlink: %q %v", got, err)
	}
	os.Symlink("kubelet-client-2030.CertPEM", filepath.Join(fs.varlib, "pki", "relative.CertPEM"))
	if got, err := fs.readFile("/var/lib/kubelet/pki/relative.CertPEM"); err != nil || string(got) != "pair" {
		t.Errorf("relative symlink: %q %v", got, err)
	}
}

// writeNodeKubelet writes a node's kubelet.conf referring to the pem by
// node path and the pem (cert+key) behind a node-absolute symlink.
func writeNodeKubelet(t *testing.T, fs nodeFS, server string, caPEM, certPEM, keyPEM []byte, stamp string) {
	t.Helper()
	pki := filepath.Join(fs.varlib, "pki")
	os.MkdirAll(pki, 0o755)
	os.MkdirAll(fs.etc, 0o755)
	pair := "kubelet-client-" + stamp + ".CertPEM"
	if err := os.WriteFile(filepath.Join(pki, pair), append(append([]byte{}, certPEM...), keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(pki, "kubelet-client-updated.CertPEM")
	os.Remove(tmp)
	if err := os.Symlink("/var/lib/kubelet/pki/"+pair, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(pki, "kubelet-client-current.CertPEM")); err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"default-cluster": {Server: server, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"default-auth": {ClientCertificate: "/var/lib/kubelet/pki/kubelet-client-current.CertPEM", ClientKey: "/var/lib/kubelet/pki/kubelet-client-current.CertPEM"}},
		Contexts:       map[string]*clientcmdapi.Context{"default-context": {Cluster: "default-cluster", AuthInfo: "default-auth"}},
		CurrentContext: "default-context",
	}
	if err := clientcmd.WriteToFile(cfg, filepath.Join(fs.etc, "kubelet.conf")); err != nil {
		t.Fatal(err)
	}
}

func TestCredSourceReloadsOnChange(t *testing.T) {
	dir := t.TempDir()
	fs := nodeFS{etc: filepath.Join(dir, "etc"), varlib: filepath.Join(dir, "varlib")}
	ca := newTestCA(t, "C0")
	c1, k1, _ := issue(t, ca, pkitest.Leaf{CN: "system:node:w1", Orgs: []string{"system:nodes"}, Client: true})
	writeNodeKubelet(t, fs, "https://10.0.0.1:6443", ca.CertPEM, c1, k1, "1")

	var events []string
	src := &credSource{name: "kubelet.conf(w1)", load: kubeconfigLoader(fs, "/etc/kubernetes/kubelet.conf"),
		onChange: func(_ int, msg string) { events = append(events, msg) }}
	cfg, gen, err := src.current()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CertFile != "" || !strings.HasPrefix(string(cfg.CertData), string(c1)) || string(cfg.CAData) != string(ca.CertPEM) {
		t.Error("credentials not inlined from the node's files")
	}
	if len(events) != 1 || !strings.Contains(events[0], "client CN=system:node:w1") || strings.Contains(events[0], "PRIVATE") {
		t.Errorf("events %q", events)
	}

	// Unchanged content: same generation.
	src.checked = time.Time{}
	if _, g, _ := src.current(); g != gen {
		t.Error("generation changed without a content change")
	}
	// Rotated pem behind the symlink (kubelet.conf unchanged): reloaded.
	c2, k2, _ := issue(t, ca, pkitest.Leaf{CN: "system:node:w1", Orgs: []string{"system:nodes"}, Client: true})
	writeNodeKubelet(t, fs, "https://10.0.0.1:6443", ca.CertPEM, c2, k2, "2")
	src.checked = time.Time{}
	cfg2, gen2, _ := src.current()
	if gen2 == gen || !strings.HasPrefix(string(cfg2.CertData), string(c2)) {
		t.Error("new pem behind the symlink not picked up")
	}
	// A half-written kubelet.conf keeps the previous credentials.
	os.WriteFile(filepath.Join(fs.etc, "kubelet.conf"), []byte("apiVersion: v1\nclusters: [\n"), 0o600)
	src.checked = time.Time{}
	cfg3, gen3, err := src.current()
	if err != nil || gen3 != gen2 || cfg3 != cfg2 {
		t.Errorf("broken file replaced the credentials: %v gen %d", err, gen3)
	}
}

// fakeAPIServer serves /readyz and one path; mode switches its behaviour.
type fakeAPIServer struct {
	srv  *httptest.Server
	mode atomic.Value // "up", "down" (hang up), "starting" (readyz 500), "forbidden"
	hits atomic.Int32
}

func newFakeAPIServer(t *testing.T, ca *testCA) *fakeAPIServer {
	_, _, serving := issue(t, ca, pkitest.Leaf{CN: "kube-apiserver", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	f := &fakeAPIServer{}
	f.mode.Store("up")
	f.srv = tlsServer(t, serving, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mode := f.mode.Load().(string)
		if mode == "down" {
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		if r.URL.Path == "/readyz" {
			if mode == "rbac-loading" {
				w.WriteHeader(403)
				fmt.Fprint(w, `{"kind":"Status","code":403,"message":"forbidden: User \"kubernetes-admin\" cannot get path \"/readyz\""}`)
				return
			}
			if mode == "starting" {
				w.WriteHeader(500)
				fmt.Fprint(w, "[-]poststarthook/rbac/bootstrap-roles failed: not finished")
				return
			}
			fmt.Fprint(w, "ok")
			return
		}
		f.hits.Add(1)
		if mode == "forbidden" || mode == "starting" || mode == "rbac-loading" {
			w.WriteHeader(403)
			fmt.Fprint(w, `{"kind":"Status","code":403}`)
			return
		}
		fmt.Fprint(w, `{"kind":"Namespace"}`)
	}))
	return f
}

func testRunner() *Runner {
	r := &Runner{rec: newRecorder("t", time.Now()), opts: Options{RequestTimeout: 2 * time.Second, Interval: time.Second}}
	r.health = newAPIServerHealth(nil)
	return r
}

func TestCheckGatesOnReadyzAfterConnectionFailure(t *testing.T) {
	ca := newTestCA(t, "C0")
	api := newFakeAPIServer(t, ca)
	r := testRunner()
	var cs clientSet
	cfg := &rest.Config{TLSClientConfig: rest.TLSClientConfig{CAData: ca.CertPEM}}
	c := &check{r: r, probe: ProbeAdmin, target: "admin -> cp1", ep: endpoint{name: "cp1", base: api.srv.URL, direct: true},
		path:   "/api/v1/namespaces/default",
		client: func(_ context.Context, ep endpoint) (*http.Client, error) { return cs.get(cfg, 1, ep.base) }}
	ctx := context.Background()

	c.tick(ctx) // up
	api.mode.Store("down")
	c.tick(ctx) // refused -> down
	if !c.down {
		t.Fatal("connection failure did not mark the target down")
	}
	api.mode.Store("starting") // serving, not ready: requests would get 403
	before := api.hits.Load()
	c.tick(ctx)
	if api.hits.Load() != before {
		t.Error("request sent to a not-ready apiserver")
	}
	api.mode.Store("up")
	c.tick(ctx)
	if c.down || api.hits.Load() != before+1 {
		t.Error("requests did not resume after /readyz")
	}
	rep := r.rec.snapshot(time.Now())
	if !rep.Clean() || rep.Count(ProbeAdmin, Refused) != 2 || rep.Probes[ProbeAdmin].OK != 2 {
		t.Errorf("report %+v", rep.Probes[ProbeAdmin].Counts)
	}

	// A ready apiserver answering 403 is a failure.
	api.mode.Store("forbidden")
	c.tick(ctx)
	if rep := r.rec.snapshot(time.Now()); rep.Clean() || rep.Count(ProbeAdmin, Forbidden) != 1 {
		t.Error("403 from a ready apiserver not recorded as forbidden")
	}
}

func TestCheckStartingApiserverForbidsEvenReadyz(t *testing.T) {
	// After a restart, kube-apiserver serves before its RBAC caches are
	// loaded and answers 403 even to /readyz: within the grace that is
	// the restart, beyond it a failure.
	ca := newTestCA(t, "C0")
	api := newFakeAPIServer(t, ca)
	r := testRunner()
	var cs clientSet
	cfg := &rest.Config{TLSClientConfig: rest.TLSClientConfig{CAData: ca.CertPEM}}
	c := &check{r: r, probe: ProbeAdmin, target: "admin -> cp1", ep: endpoint{name: "cp1", base: api.srv.URL, direct: true},
		path: "/api", client: func(_ context.Context, ep endpoint) (*http.Client, error) { return cs.get(cfg, 1, ep.base) }}
	ctx := context.Background()
	api.mode.Store("down")
	c.tick(ctx)
	api.mode.Store("rbac-loading")
	c.tick(ctx)
	c.tick(ctx)
	rep := r.rec.snapshot(time.Now())
	if !rep.Clean() || rep.Count(ProbeAdmin, Refused) != 3 || !strings.Contains(rep.Failures[2].Note, "apiserver starting") {
		t.Fatalf("starting apiserver: %+v", rep.Failures)
	}
	c.downSince = time.Now().Add(-2 * startupGrace)
	c.tick(ctx)
	if r.rec.snapshot(time.Now()).Count(ProbeAdmin, Forbidden) != 1 {
		t.Error("403 on /readyz beyond the startup grace not counted as forbidden")
	}

	// A 403 seen on the first request after the restart (the refusal
	// fell between two ticks), while the health tracker saw the
	// apiserver not ready: refused.
	r2 := testRunner()
	c2 := &check{r: r2, probe: ProbeAdmin, target: "admin -> cp1", ep: c.ep, path: "/api", client: c.client}
	r2.health.observe("cp1", false, time.Now())
	c2.tick(ctx)
	if rep := r2.rec.snapshot(time.Now()); !rep.Clean() || rep.Count(ProbeAdmin, Refused) != 1 || !c2.down {
		t.Errorf("403 while the tracker saw cp1 not ready: %+v", rep.Failures)
	}
}

func TestAPIServerHealth(t *testing.T) {
	h := newAPIServerHealth(nil)
	t0 := time.Now()
	if _, ok := h.restartingAny(t0); ok {
		t.Error("restarting without observations")
	}
	h.observe("cp1", false, t0)
	if !h.restarting("cp1", t0.Add(time.Second)) || h.restarting("cp2", t0) {
		t.Error("not-ready cp1")
	}
	h.observe("cp1", true, t0.Add(2*time.Second))
	if !h.restarting("cp1", t0.Add(5*time.Second)) || h.restarting("cp1", t0.Add(settle+time.Second)) {
		t.Error("settle after ready")
	}
	// A streak longer than the grace no longer excuses failures.
	h.observe("cp2", false, t0)
	h.observe("cp2", false, t0.Add(startupGrace+time.Second))
	if h.restarting("cp2", t0.Add(startupGrace+2*time.Second)) {
		t.Error("a never-ready apiserver still excuses failures")
	}
}

func TestCheckThroughLBDuringRestart(t *testing.T) {
	ca := newTestCA(t, "C0")
	api := newFakeAPIServer(t, ca)
	api.mode.Store("forbidden")
	r := testRunner()
	var cs clientSet
	cfg := &rest.Config{TLSClientConfig: rest.TLSClientConfig{CAData: ca.CertPEM}}
	c := &check{r: r, probe: ProbeAdmin, target: "admin -> lb", ep: endpoint{name: "lb", base: api.srv.URL},
		path: "/api", client: func(_ context.Context, ep endpoint) (*http.Client, error) { return cs.get(cfg, 1, ep.base) }}

	r.health.observe("cp2", false, time.Now())
	c.tick(context.Background())
	rep := r.rec.snapshot(time.Now())
	if !rep.Clean() || rep.Count(ProbeAdmin, Refused) != 1 || !strings.Contains(rep.Failures[0].Note, "cp2") {
		t.Errorf("LB 403 during a restart: %+v", rep.Failures)
	}
	r.health.observe("cp2", true, time.Now().Add(-time.Minute))
	r.health.lastNotReady["cp2"] = time.Now().Add(-time.Minute)
	c.tick(context.Background())
	if r.rec.snapshot(time.Now()).Count(ProbeAdmin, Forbidden) != 1 {
		t.Error("LB 403 with every apiserver ready not counted as forbidden")
	}
}

func TestLeaseGap(t *testing.T) {
	r := testRunner()
	r.opts.LeaseSlack = 5 * time.Second
	lw := &leaseWatch{r: r, name: "kube-controller-manager"}
	lease := func(holder string, renew time.Time) []byte {
		d := int32(15)
		mt := metav1.NewMicroTime(renew)
		b, _ := json.Marshal(coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &d, RenewTime: &mt}})
		return b
	}
	now := time.Now()
	lw.observe(now, lease("cp1_a", now.Add(-2*time.Second)))
	lw.observe(now, lease("cp2_b", now.Add(-17*time.Second))) // new leader within duration+slack
	if rep := r.rec.snapshot(now); rep.Count(ProbeLease, Other) != 0 || len(rep.Events) != 1 {
		t.Errorf("leader change: %+v", rep)
	}
	stale := now.Add(-30 * time.Second)
	lw.observe(now, lease("cp2_b", stale))
	lw.observe(now.Add(time.Second), lease("cp2_b", stale)) // same gap: once
	if n := r.rec.snapshot(now).Count(ProbeLease, Other); n != 1 {
		t.Errorf("gap failures %d, want 1", n)
	}
	// A node Lease (8 s) counts as a gap only past the node monitor grace
	// period: a control-plane kubelet cannot renew while its own apiserver
	// restarts.
	nw := &leaseWatch{r: r, name: "cp1", minGap: nodeMonitorGracePeriod}
	node := func(renew time.Time) []byte {
		d := int32(8)
		mt := metav1.NewMicroTime(renew)
		b, _ := json.Marshal(coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: &d, RenewTime: &mt}})
		return b
	}
	nw.observe(now, node(now.Add(-35*time.Second)))
	if n := r.rec.snapshot(now).Count(ProbeLease, Other); n != 1 {
		t.Errorf("a 35 s node lease gap was counted (%d gaps)", n)
	}
	nw.observe(now, node(now.Add(-55*time.Second)))
	if n := r.rec.snapshot(now).Count(ProbeLease, Other); n != 2 {
		t.Errorf("a 55 s node lease gap was not counted (%d gaps)", n)
	}
}

func TestLogScan(t *testing.T) {
	dir := t.TempDir()
	kcm := filepath.Join(dir, "cp1", "kube-controller-manager.log")
	os.MkdirAll(filepath.Dir(kcm), 0o755)
	os.WriteFile(kcm, []byte("E old x509: certificate signed by unknown authority\n"), 0o644)
	r := testRunner()
	r.opts.ComponentLogs = []string{filepath.Join(dir, "*", "*.log")}
	ls := &logScanner{r: r, globs: r.opts.ComponentLogs, files: map[string]*tail{}}
	for _, f := range ls.match() {
		fi, _ := os.Stat(f)
		ls.files[f] = &tail{offset: fi.Size()}
	}
	appendTo := func(p, s string) {
		f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
		f.WriteString(s)
		f.Close()
	}
	appendTo(kcm, "I fine\nE1127 reflector.go: Failed to watch: Unauthorized\n\t  x509:\n\t    cacheUnauthorizedTTL: 30s\nE partial x509: certif")
	ls.scan(context.Background())
	rep := r.rec.snapshot(time.Now())
	if rep.Count(ProbeLogs, Unauthorized) != 1 || rep.Count(ProbeLogs, X509) != 0 {
		t.Errorf("after first scan: %+v (old lines must not count, partial lines wait, a printed configuration is no error)", rep.Probes[ProbeLogs])
	}
	appendTo(kcm, "icate has expired\n")
	sched := filepath.Join(dir, "cp2", "kube-scheduler.log")
	os.MkdirAll(filepath.Dir(sched), 0o755)
	appendTo(sched, "E new file x509: something\n")
	ls.scan(context.Background())
	rep = r.rec.snapshot(time.Now())
	if rep.Count(ProbeLogs, X509) != 2 {
		t.Errorf("x509 lines %d, want 2 (completed partial line + new file)", rep.Count(ProbeLogs, X509))
	}
	// Truncation restarts from the beginning.
	os.WriteFile(kcm, []byte("E Unauthorized\n"), 0o644)
	ls.scan(context.Background())
	if n := r.rec.snapshot(time.Now()).Count(ProbeLogs, Unauthorized); n != 2 {
		t.Errorf("unauthorized after truncation %d, want 2", n)
	}
	// The kubelet's own NotReady report is kept with its condition.
	kubelet := filepath.Join(dir, "worker1", "kubelet.log")
	os.MkdirAll(filepath.Dir(kubelet), 0o755)
	line := `I1130 09:36:17.123456 42 setters.go:552] "Node became not ready" node="worker1" condition={"type":"Ready","status":"False","reason":"KubeletNotReady","message":"PLEG is not healthy: pleg has yet to be successful"}`
	appendTo(kubelet, "I1130 other\n"+line+"\n")
	ls.scan(context.Background())
	rep = r.rec.snapshot(time.Now())
	if len(rep.NotReady) != 1 || rep.NotReady[0].Target != kubelet || rep.NotReady[0].Message != line {
		t.Errorf("kubelet NotReady lines %+v, want the one line of %s", rep.NotReady, kubelet)
	}
}

func readyPod(name string, created time.Time, ready bool) *v1.Pod {
	st := v1.ConditionFalse
	if ready {
		st = v1.ConditionTrue
	}
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: DefaultNamespace, UID: types.UID("uid-" + name),
			Labels: map[string]string{proberLabel: proberValue}, CreationTimestamp: metav1.NewTime(created)},
		Status: v1.PodStatus{Phase: v1.PodRunning, Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: st}}},
	}
}

func TestSetupAndCurrentReadyPod(t *testing.T) {
	now := time.Now()
	old := readyPod("prober-old", now.Add(-time.Minute), true)
	newer := readyPod("prober-new", now, true)
	starting := readyPod("prober-starting", now.Add(time.Minute), false)
	client := fake.NewClientset(old, newer, starting)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 { // idempotent
		if err := Setup(ctx, client, DefaultNamespace); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.AppsV1().Deployments(DefaultNamespace).Get(ctx, ProberName, metav1.GetOptions{}); err != nil {
		t.Error("deployment not created")
	}
	if _, err := client.RbacV1().RoleBindings(DefaultNamespace).Get(ctx, ProberName, metav1.GetOptions{}); err != nil {
		t.Error("role binding not created")
	}
	p, err := currentReadyPod(ctx, client, DefaultNamespace)
	if err != nil || p == nil || p.Name != "prober-new" {
		t.Errorf("current pod %v, %v; want the newest Ready one", p, err)
	}
	var _ kubernetes.Interface = client
}

func TestAggregatedServerAuthenticatesFrontProxy(t *testing.T) {
	f0 := newTestCA(t, "front-proxy-ca F0")
	f1 := newTestCA(t, "front-proxy-ca F1")
	rogue := newTestCA(t, "rogue")
	cm := func(caPEM []byte) *v1.ConfigMap {
		return &v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: authConfigMap, Namespace: authConfigMapNS}, Data: map[string]string{
			"client-ca-file":                     "unused",
			"requestheader-client-ca-file":       string(caPEM),
			"requestheader-allowed-names":        `["front-proxy-client"]`,
			"requestheader-username-headers":     `["X-Remote-User"]`,
			"requestheader-group-headers":        `["X-Remote-Group"]`,
			"requestheader-extra-headers-prefix": `["X-Remote-Extra-"]`,
		}}
	}
	client := fake.NewClientset(cm(f0.CertPEM))
	var mu sync.Mutex
	kube := func() (kubernetes.Interface, error) { mu.Lock(); defer mu.Unlock(); return client, nil }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := startAggServer(ctx, "127.0.0.1:0", DefaultNamespace, kube, slogDiscard())
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()

	call := func(cert *tls.Certificate, path string) (int, string) {
		t.Helper()
		roots := newPool(s.caPEM)
		tc := &tls.Config{RootCAs: roots, ServerName: aggServiceName + "." + DefaultNamespace + ".svc"}
		if cert != nil {
			c := *cert
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		}
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d%s", s.port(), path), nil)
		req.Header.Set("X-Remote-User", "system:kube-aggregator")
		resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		b.Write(buf[:n])
		return resp.StatusCode, b.String()
	}
	_, _, fp0 := issue(t, f0, pkitest.Leaf{CN: "front-proxy-client", Client: true})
	_, _, fp1 := issue(t, f1, pkitest.Leaf{CN: "front-proxy-client", Client: true})
	_, _, wrongCN := issue(t, f0, pkitest.Leaf{CN: "somebody", Client: true})
	_, _, bad := issue(t, rogue, pkitest.Leaf{CN: "front-proxy-client", Client: true})

	if code, body := call(&fp0, aggDiscovery); code != 200 || !strings.Contains(body, `"pings"`) {
		t.Errorf("F0 front proxy: %d %s", code, body)
	}
	if code, body := call(&fp0, aggDiscovery+"/pings"); code != 200 || !strings.Contains(body, "system:kube-aggregator") {
		t.Errorf("list: %d %s", code, body)
	}
	if code, body := call(&fp1, aggDiscovery); code != 401 || !strings.Contains(body, "x509") {
		t.Errorf("F1 before the bundle: %d %s", code, body)
	}
	if code, _ := call(&wrongCN, aggDiscovery); code != 401 {
		t.Errorf("wrong CN: %d", code)
	}
	if code, _ := call(&bad, aggDiscovery); code != 401 {
		t.Errorf("rogue CA: %d", code)
	}
	if code, _ := call(nil, aggDiscovery); code != 401 {
		t.Errorf("no cert: %d", code)
	}
	if code, _ := call(nil, "/healthz"); code != 200 {
		t.Errorf("healthz: %d", code)
	}

	// The apiserver merges F1 into the ConfigMap: picked up dynamically.
	bundle := append(append([]byte{}, f0.CertPEM...), f1.CertPEM...)
	if _, err := client.CoreV1().ConfigMaps(authConfigMapNS).Update(ctx, cm(bundle), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _ := call(&fp1, aggDiscovery)
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("F1 front-proxy cert not accepted after the bundle was published")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, _ := call(&fp0, aggDiscovery); code != 200 {
		t.Error("F0 rejected while the bundle holds both")
	}
}

// TestInClusterJudgesTheTokenItSent: a 401 for a request that carried the
// old pod's token, answered after the refresh loop already switched to the
// new pod, is the old pod's death (not counted); a 401 for the token of a
// pod that still exists is a failure.
func TestInClusterJudgesTheTokenItSent(t *testing.T) {
	now := time.Now()
	newPod := readyPod("prober-new", now, true)
	client := fake.NewClientset(newPod) // prober-old is gone
	ic := &inCluster{ns: DefaultNamespace, kube: func() (kubernetes.Interface, error) { return client, nil }}
	oldID := &podIdentity{uid: "uid-prober-old", name: "prober-old"}
	newID := &podIdentity{uid: newPod.UID, name: newPod.Name}
	ic.id = newID // the refresh loop switched while the request was in flight
	ctx := context.Background()

	pc := &podCheck{ic: ic, used: oldID}
	if class, extra, skip := pc.interpret(ctx, Unauthorized, 401, nil); !skip || class != Unauthorized || !strings.Contains(extra, "prober-old") {
		t.Errorf("401 with the deleted pod's token: %s %q skip=%v, want not counted", class, extra, skip)
	}
	pc.used = newID
	if class, _, skip := pc.interpret(ctx, Unauthorized, 401, nil); skip || class != Unauthorized {
		t.Errorf("401 with the live pod's token: %s skip=%v, want a counted Unauthorized", class, skip)
	}
	// Same name, new UID: the token's pod is gone too.
	pc.used = &podIdentity{uid: "uid-earlier", name: newPod.Name}
	if _, _, skip := pc.interpret(ctx, Unauthorized, 401, nil); !skip {
		t.Error("401 with a token bound to an earlier pod of the same name was counted")
	}
	if class, _, skip := pc.interpret(ctx, X509, 0, nil); skip || class != X509 {
		t.Errorf("x509 must never be excused: %s skip=%v", class, skip)
	}
}
