package probes

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
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/kubeca/rotate/pki/pkitest"
)

// tlsServer starts an HTTPS server with cert; clientCAs != nil requires
// and verifies client certificates.
func tlsServer(t *testing.T, cert tls.Certificate, ca *testCA, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if ca != nil {
		srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		srv.TLS.ClientCAs = ca.Pool()
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

var okHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })

// get performs a request the way the probes do: a client-go HTTP client
// from a rest.Config.
func get(t *testing.T, cfg *rest.Config, url string, timeout time.Duration) (int, []byte, error) {
	t.Helper()
	c, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return doGet(ctx, c, url)
}

func TestClassifyRealTLSFailures(t *testing.T) {
	serverCA := newTestCA(t, "cluster-ca-C0")
	otherCA := newTestCA(t, "cluster-ca-C1")
	loopback := []net.IP{net.ParseIP("127.0.0.1")}
	_, _, goodServing := issue(t, serverCA, pkitest.Leaf{CN: "kube-apiserver", IPs: loopback})
	_, _, wrongName := issue(t, serverCA, pkitest.Leaf{CN: "kube-apiserver", DNS: []string{"elsewhere.example"}})
	_, _, expired := issue(t, serverCA, pkitest.Leaf{CN: "kube-apiserver", IPs: loopback,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	clientCert, clientKey, _ := issue(t, serverCA, pkitest.Leaf{CN: "admin", Orgs: []string{"kubeadm:cluster-admins"}, Client: true})
	rogueCert, rogueKey, roguePair := issue(t, otherCA, pkitest.Leaf{CN: "admin", Client: true})

	tests := []struct {
		name   string
		server tls.Certificate
		mtls   bool // server requires client certs from serverCA
		cfg    rest.TLSClientConfig
		force  *tls.Certificate // present this client cert whatever the server asks for
		want   Class
	}{
		{name: "trusted", server: goodServing, cfg: rest.TLSClientConfig{CAData: serverCA.CertPEM}, want: ""},
		{name: "bundle with both CAs", server: goodServing, cfg: rest.TLSClientConfig{CAData: append(append([]byte{}, otherCA.CertPEM...), serverCA.CertPEM...)}, want: ""},
		{name: "unknown authority", server: goodServing, cfg: rest.TLSClientConfig{CAData: otherCA.CertPEM}, want: X509},
		{name: "hostname mismatch", server: wrongName, cfg: rest.TLSClientConfig{CAData: serverCA.CertPEM}, want: X509},
		{name: "expired serving cert", server: expired, cfg: rest.TLSClientConfig{CAData: serverCA.CertPEM}, want: X509},
		{name: "client cert accepted", server: goodServing, mtls: true,
			cfg: rest.TLSClientConfig{CAData: serverCA.CertPEM, CertData: clientCert, KeyData: clientKey}, want: ""},
		{name: "client cert from an untrusted CA (not sent)", server: goodServing, mtls: true,
			cfg: rest.TLSClientConfig{CAData: serverCA.CertPEM, CertData: rogueCert, KeyData: rogueKey}, want: X509},
		{name: "client cert from an untrusted CA (sent: bad certificate)", server: goodServing, mtls: true,
			cfg: rest.TLSClientConfig{CAData: serverCA.CertPEM}, force: &roguePair, want: X509},
		{name: "no client cert", server: goodServing, mtls: true, cfg: rest.TLSClientConfig{CAData: serverCA.CertPEM}, want: X509},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ca *testCA
			if tt.mtls {
				ca = serverCA
			}
			srv := tlsServer(t, tt.server, ca, okHandler)
			cfg := &rest.Config{Host: srv.URL, TLSClientConfig: tt.cfg}
			if tt.force != nil {
				forced := *tt.force
				cfg.TLSClientConfig = rest.TLSClientConfig{CAData: serverCA.CertPEM}
				cfg.Transport = &http.Transport{TLSClientConfig: &tls.Config{
					RootCAs:              serverCA.Pool(),
					GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &forced, nil },
				}}
				cfg.TLSClientConfig = rest.TLSClientConfig{}
			}
			status, body, err := get(t, cfg, srv.URL+"/api", 5*time.Second)
			got := Classify(err, status, body)
			if got != tt.want {
				t.Errorf("Classify = %q, want %q (err %v, status %d)", got, tt.want, err, status)
			}
		})
	}
}

func TestClassifyHTTPAndConnection(t *testing.T) {
	ca := newTestCA(t, "ca")
	_, _, serving := issue(t, ca, pkitest.Leaf{CN: "s", IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	status := func(code int, body string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(code)
			fmt.Fprint(w, body)
		})
	}
	hang := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	hangup := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	tests := []struct {
		name    string
		handler http.Handler
		want    Class
	}{
		{"200", status(200, `{"kind":"Namespace"}`), ""},
		{"401 from the apiserver", status(401, `{"kind":"Status","code":401,"message":"Unauthorized"}`), Unauthorized},
		{"403 from the node authorizer", status(403, `{"kind":"Status","code":403,"message":"nodes \"w1\" is forbidden: node \"w2\" cannot get"}`), Forbidden},
		{"429 while shutting down", status(429, `The apiserver is shutting down, please try again later.`), Refused},
		{"proxy: kubelet restarting", status(503, `error trying to reach service: dial tcp 10.0.0.5:10250: connect: connection refused`), Refused},
		{"proxy: kubelet rejects the apiserver's client cert", status(502, `error trying to reach service: remote error: tls: bad certificate`), X509},
		{"proxy: unknown authority", status(503, `error trying to reach service: tls: failed to verify certificate: x509: certificate signed by unknown authority`), X509},
		{"aggregator 503 without a cause", status(503, `service unavailable`), Other},
		{"500", status(500, `boom`), Other},
		{"404", status(404, `{"kind":"Status","code":404}`), Other},
		{"connection closed without an answer", hangup, Refused},
		{"timeout", hang, Refused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tlsServer(t, serving, nil, tt.handler)
			cfg := &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{CAData: ca.CertPEM}}
			status, body, err := get(t, cfg, srv.URL+"/api/v1/namespaces/default", 300*time.Millisecond)
			if got := Classify(err, status, body); got != tt.want {
				t.Errorf("Classify = %q, want %q (err %v, status %d, body %q)", got, tt.want, err, status, body)
			}
		})
	}

	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, _, err = get(t, &rest.Config{Host: "https://" + addr, TLSClientConfig: rest.TLSClientConfig{CAData: ca.CertPEM}}, "https://"+addr+"/readyz", time.Second)
		if got := ClassifyError(err); got != Refused {
			t.Errorf("ClassifyError(%v) = %q, want refused", err, got)
		}
	})
}

func TestClassifyText(t *testing.T) {
	tests := []struct {
		text string
		want Class
	}{
		{`failing or missing response from https://10.0.0.9:37001/apis/probe.rotate.e2e/v1alpha1: bad status from https://10.0.0.9:37001/apis/probe.rotate.e2e/v1alpha1: 401`, Unauthorized},
		{`failing or missing response from https://x/apis/g/v: bad status from https://x/apis/g/v: 403`, Forbidden},
		{`failing or missing response from https://x: Get "https://x": tls: failed to verify certificate: x509: certificate signed by unknown authority`, X509},
		{`failing or missing response from https://x: Get "https://x": dial tcp 10.0.0.9:443: connect: connection refused`, Refused},
		{`bad status from https://x: 500`, ""},
		{`all good`, ""},
		{``, ""},
	}
	for _, tt := range tests {
		if got := ClassifyText(tt.text); got != tt.want {
			t.Errorf("ClassifyText(%q) = %q, want %q", tt.text, got, tt.want)
		}
	}
	if ClassifyError(nil) != "" || Classify(nil, 204, nil) != "" {
		t.Error("success classified as a failure")
	}
	if ClassifyError(fmt.Errorf("wrapped: %w", context.DeadlineExceeded)) != Refused {
		t.Error("deadline not refused")
	}
	if ClassifyError(errors.New("something odd")) != Other {
		t.Error("unknown error not other")
	}
	if !X509.Blocking() || !Unauthorized.Blocking() || !Forbidden.Blocking() || Refused.Blocking() || Other.Blocking() {
		t.Error("Blocking")
	}
}

func TestAnonymousForbiddenIsUnauthorized(t *testing.T) {
	body := []byte(`{"kind":"Status","code":403,"message":"forbidden: User \"system:anonymous\" cannot get path \"/api\""}`)
	if c := Classify(nil, 403, body); c != Unauthorized {
		t.Fatalf("403 as system:anonymous classified %q, want %q", c, Unauthorized)
	}
	if c := Classify(nil, 403, []byte(`forbidden: User "kubernetes-admin" cannot get path "/readyz"`)); c != Forbidden {
		t.Fatalf("403 for an authenticated user classified %q", c)
	}
}
