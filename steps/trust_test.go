package steps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/pki"
)

// servingPair is an apiserver-like serving certificate for name, from a
// new CA (its PEM returned).
func servingPair(t *testing.T, name string) (tls.Certificate, []byte) {
	t.Helper()
	ca, err := pki.NewCA(pki.CAOptions{CommonName: "kubernetes"})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := pki.Reissue(&x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, DNSNames: []string{name},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, pki.ReissueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair, ca.CertPEM
}

// kubeconfigFile writes a token kubeconfig for server, trusting caPEM and
// checking the server's certificate for serverName ("": the address).
func kubeconfigFile(t *testing.T, server string, caPEM []byte, serverName string) string {
	t.Helper()
	kc := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: ` + server + `
    certificate-authority-data: ` + b64(caPEM) + `
    tls-server-name: "` + serverName + `"
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
	p := filepath.Join(t.TempDir(), "admin.conf")
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Requests made at once (a fan-out over many nodes) share one HTTP/2
// connection to the apiserver rather than each opening, and handshaking,
// its own.
func TestKubeClientSharesOneConnection(t *testing.T) {
	pair, caPEM := servingPair(t, "kubernetes.default.svc")
	var conns atomic.Int32
	release := make(chan struct{}, 1)
	var arrived sync.WaitGroup
	const n = 20
	arrived.Add(n)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "not HTTP/2: "+r.Proto, http.StatusHTTPVersionNotSupported)
			return
		}
		arrived.Done()
		<-release // the fan-out's n requests in flight at once
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kube-root-ca.crt","namespace":"kube-system"}}`))
	}))
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	go func() { arrived.Wait(); close(release) }()
	release <- struct{}{} // the first request alone

	cs, _, _, err := KubeClient(kubeconfigFile(t, srv.URL, caPEM, "kubernetes.default.svc"), "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A run's first request (its lock, the cluster's checks) comes alone
	// and opens the connection; the fan-out after it shares it.
	get := func() error {
		_, err := cs.CoreV1().ConfigMaps("kube-system").Get(context.Background(), "kube-root-ca.crt", metav1.GetOptions{})
		return err
	}
	arrived.Add(1)
	if err := get(); err != nil {
		t.Fatal(err)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = get()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if c := conns.Load(); c != 1 {
		t.Fatalf("a request and then %d at once opened %d connections, want 1", n, c)
	}
}

// The operator's kubeconfig may point at a load balancer whose address is
// not in the apiservers' serving certificate, with tls-server-name naming
// one that is (kubectl's way): rotate's API client honours it.
func TestKubeClientBehindALoadBalancer(t *testing.T) {
	pair, caPEM := servingPair(t, "kubernetes.default.svc")
	lb := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"major":"1","minor":"37","gitVersion":"v1.37.2"}`))
	}))
	lb.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	lb.StartTLS()
	t.Cleanup(lb.Close)

	for _, tc := range []struct {
		name, serverName, wantErr string
	}{
		{"tls-server-name", "kubernetes.default.svc", ""},
		// An IP address is never sent as SNI: the check is made for the
		// address dialed all the same.
		{"without it the address dialed is checked, also an IP", "", "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := kubeconfigFile(t, lb.URL, caPEM, tc.serverName)
			cs, _, _, err := KubeClient(p, "", nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			v, err := cs.Discovery().ServerVersion()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("ServerVersion: %v", err)
			case tc.wantErr == "" && v.GitVersion != "v1.37.2":
				t.Fatalf("version %+v", v)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("ServerVersion = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}
