package steps

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki/pkitest"
)

// fakeEtcd is an HTTPS server that answers like an etcd member's client
// URL: it requires a client certificate of clientCA, serves /health and the
// gRPC gateway's member list.
type fakeEtcd struct {
	srv     *httptest.Server
	members atomic.Value // the member list's JSON
	healthy atomic.Bool
}

func startFakeEtcd(t *testing.T, serving tls.Certificate, clientCA *pkitest.CA) *fakeEtcd {
	t.Helper()
	f := &fakeEtcd{}
	f.healthy.Store(true)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			if f.healthy.Load() {
				fmt.Fprint(w, `{"health":"true","reason":""}`)
			} else {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprint(w, `{"health":"false","reason":"RAFT NO LEADER"}`)
			}
		case "/v3/cluster/member/list":
			if r.Method != http.MethodPost {
				http.Error(w, "method", http.StatusMethodNotAllowed)
				return
			}
			fmt.Fprint(w, f.members.Load().(string))
		default:
			http.NotFound(w, r)
		}
	}))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // curl refusing the old CA's certificate, on purpose
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{serving}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA.Pool()}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

// memberList is a member list JSON of the gateway: uint64 IDs as strings.
func memberList(url string, names ...string) string {
	var ms []string
	for i, n := range names {
		ms = append(ms, fmt.Sprintf(`{"ID":"%d","name":%q,"peerURLs":["https://10.0.0.%d:2380"],"clientURLs":[%q]}`, 1000+i, n, i+1, url))
	}
	return `{"header":{"cluster_id":"1"},"members":[` + strings.Join(ms, ",") + `]}`
}

// etcdNode is a control-plane node whose files are in memory but whose
// commands run here (sh, curl), with the pki files on disk.
func etcdNode(t *testing.T, pkiDir, clientURL string) *nodes.MemRunner {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	r := nodes.NewMemRunner("cp1")
	r.SetFile("/etc/kubernetes/manifests/etcd.yaml", []byte(`apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - name: etcd
    command:
    - etcd
    - --client-cert-auth=true
    - --peer-client-cert-auth=true
    - --name=cp1
    - --trusted-ca-file=`+pkiDir+`/etcd/ca.crt
    - --listen-client-urls=`+clientURL+`
`), 0o600)
	r.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (nodes.Result, error) {
		out, err := exec.CommandContext(ctx, "sh", "-c", cmd).Output()
		return nodes.Result{Stdout: out}, err
	}
	return r
}

func TestEtcdHealthyAsksEveryMember(t *testing.T) {
	oldCA := pkitest.NewCA(t, "etcd-ca", pkitest.Options{})
	newCA := pkitest.NewCA(t, "etcd-ca-new", pkitest.Options{})
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "etcd"), 0o700)
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("etcd/ca.crt", pkitest.CertPEM(oldCA.Cert))
	write(fileNewEtcdCACert, pkitest.CertPEM(newCA.Cert))
	hc := oldCA.IssueLeaf(t, pkitest.Leaf{CN: "kube-etcd-healthcheck-client", Client: true})
	write(fileEtcdHealthCert, hc.CertPEM)
	write(fileEtcdHealthKey, hc.KeyPEM)
	serving := oldCA.IssueLeaf(t, pkitest.Leaf{CN: "cp1", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	f := startFakeEtcd(t, serving.TLS(t), oldCA)
	f.members.Store(memberList(f.srv.URL, "cp1", "cp2", "cp3"))

	st := newFakeStore()
	cfg := testConfig([]string{"cp1", "cp2", "cp3"}, nil)
	cfg.Paths.PKIDir = dir
	cfg.Etcd = true
	r := etcdNode(t, dir, f.srv.URL)
	rt := &Runtime{Store: st, Nodes: memNodes{"cp1": r}, Out: &Outputs{}, Config: cfg}
	cp1 := Target{Node: "cp1", Role: RoleControlPlane}

	// Preflight records the members it sees.
	if err := (EtcdMembers{}).Apply(context.Background(), rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	st.Commit(rt.Out)
	if v, _, _ := st.Value(context.Background(), keyEtcdMembers); string(v) != "1000 cp1,1001 cp2,1002 cp3" {
		t.Fatalf("recorded members %q", v)
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	// What passes gets a long deadline (it returns as soon as it passes: a
	// loaded machine failed it at 2 s); what waits, a short one.
	long, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := rt.etcdHealthy(long, cp1, false); err != nil {
		t.Fatalf("healthy cluster: %v", err)
	}
	// A member gone (or one added) is not the cluster preflight saw.
	f.members.Store(memberList(f.srv.URL, "cp1", "cp2"))
	if err := rt.etcdHealthy(short(), cp1, false); err == nil || !strings.Contains(err.Error(), "want those of preflight") {
		t.Errorf("a member gone: %v, want a wait on the member list", err)
	}
	// A member unhealthy: the gate waits.
	f.members.Store(memberList(f.srv.URL, "cp1", "cp2", "cp3"))
	f.healthy.Store(false)
	if err := rt.etcdHealthy(short(), cp1, false); err == nil || !strings.Contains(err.Error(), "RAFT NO LEADER") {
		t.Errorf("unhealthy: %v, want a wait naming etcd's answer", err)
	}
	f.healthy.Store(true)
	// The member still serves a certificate of the old CA: etcd-certs'
	// gate does not pass.
	if err := rt.etcdHealthy(short(), cp1, true); err == nil || !strings.Contains(err.Error(), "trusting only the new etcd CA") {
		t.Errorf("old serving certificate: %v, want a wait for the new one", err)
	}
	// A member that has not started has no client URL.
	f.members.Store(strings.Replace(memberList(f.srv.URL, "cp1", "cp2", "cp3"), `"clientURLs":["`+f.srv.URL+`"]}]`, `"clientURLs":[]}]`, 1))
	if err := rt.etcdHealthy(short(), cp1, false); err == nil || !strings.Contains(err.Error(), "has not started") {
		t.Errorf("unstarted member: %v", err)
	}
}

func TestExternalEtcdRefused(t *testing.T) {
	cfg := testConfig([]string{"cp1"}, nil)
	cfg.Etcd = true
	rt := &Runtime{Store: newFakeStore(), Nodes: memNodes{"cp1": nodes.NewMemRunner("cp1")}, Out: &Outputs{}, Config: cfg}
	err := (EtcdMembers{}).Apply(context.Background(), rt, ClusterTarget)
	if !errors.Is(err, errExternalEtcd) || !strings.Contains(err.Error(), "cp1: no /etc/kubernetes/manifests/etcd.yaml") {
		t.Fatalf("no etcd manifest: %v, want the external etcd refusal naming the node and file", err)
	}
}
