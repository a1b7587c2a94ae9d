package steps

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubeca/rotate/pki"
)

// The operator's kubeconfig may point at a load balancer whose address is
// not in the apiservers' serving certificate, with tls-server-name naming
// one that is (kubectl's way): rotate's API client honours it.
func TestKubeClientBehindALoadBalancer(t *testing.T) {
	ca, err := pki.NewCA(pki.CAOptions{CommonName: "kubernetes"})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := pki.Reissue(&x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, DNSNames: []string{"kubernetes.default.svc"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, pki.ReissueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
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
			kc := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: ` + lb.URL + `
    certificate-authority-data: ` + b64(ca.CertPEM) + `
    tls-server-name: "` + tc.serverName + `"
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
			p := filepath.Join(t.TempDir(), "admin.conf")
			if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
				t.Fatal(err)
			}
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
