package orchestrator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubeca/rotate/pki"
)

func TestKubeconfigAdvice(t *testing.T) {
	oldCA, err := pki.NewCA(pki.CAOptions{CommonName: "old-ca"})
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := pki.NewCA(pki.CAOptions{CommonName: "new-ca"})
	if err != nil {
		t.Fatal(err)
	}
	client := func(ca *pki.CA) *pki.Issued {
		is, err := pki.NewKubeletClientCert("admin-node", ca, pki.ReissueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	oldClient, newClient := client(oldCA), client(newCA)
	dir := t.TempDir()
	write := func(name string, caPEM []byte, cert *pki.Issued, token string) string {
		cfg := clientcmdapi.NewConfig()
		cfg.Clusters["k"] = &clientcmdapi.Cluster{Server: "https://10.0.0.1:6443", CertificateAuthorityData: caPEM}
		ai := &clientcmdapi.AuthInfo{Token: token}
		if cert != nil {
			ai.ClientCertificateData, ai.ClientKeyData = cert.CertPEM, cert.KeyPEM
		}
		cfg.AuthInfos["admin"] = ai
		cfg.Contexts["admin@k"] = &clientcmdapi.Context{Cluster: "k", AuthInfo: "admin"}
		cfg.CurrentContext = "admin@k"
		p := filepath.Join(dir, name)
		if err := clientcmd.WriteToFile(*cfg, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	both := append(append([]byte{}, oldCA.CertPEM...), newCA.CertPEM...)
	for _, tc := range []struct {
		name    string
		path    string
		current []byte
		want    []string // substrings; none: no advice
	}{
		{"rotated admin.conf", write("new.conf", newCA.CertPEM, newClient, ""), newCA.CertPEM, nil},
		{"bundle with both and a new client cert", write("both.conf", both, newClient, ""), newCA.CertPEM, nil},
		{"old copy after a completed rotation", write("old.conf", oldCA.CertPEM, oldClient, ""), newCA.CertPEM,
			[]string{"old.conf", "does not trust the cluster CA now in use", "presents a client certificate the cluster no longer accepts", "CN=new-ca", "/etc/kubernetes/admin.conf"}},
		{"new CA data, old client cert", write("mixed.conf", newCA.CertPEM, oldClient, ""), newCA.CertPEM,
			[]string{"presents a client certificate"}},
		{"token auth, old CA only", write("token.conf", oldCA.CertPEM, nil, "abc"), newCA.CertPEM,
			[]string{"does not trust"}},
		{"token auth, trusted", write("token-ok.conf", newCA.CertPEM, nil, "abc"), newCA.CertPEM, nil},
		{"rotated copy after a rollback", write("after-rollback.conf", newCA.CertPEM, newClient, ""), oldCA.CertPEM,
			[]string{"does not trust", "presents a client certificate", "CN=old-ca"}},
		{"missing kubeconfig: nothing to judge", filepath.Join(dir, "missing.conf"), newCA.CertPEM, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := kubeconfigAdvice(tc.path, "", tc.current)
			if len(tc.want) == 0 {
				if got != "" {
					t.Errorf("unexpected advice: %s", got)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("advice %q lacks %q", got, w)
				}
			}
			if strings.Contains(got, "PRIVATE KEY") || strings.Contains(got, "abc") {
				t.Errorf("advice leaks a secret: %s", got)
			}
		})
	}
	// CA and client certificate named by files relative to the kubeconfig,
	// as kubectl resolves them.
	sub := filepath.Join(dir, "files")
	os.MkdirAll(sub, 0o700)
	os.WriteFile(filepath.Join(sub, "ca.crt"), oldCA.CertPEM, 0o600)
	os.WriteFile(filepath.Join(sub, "admin.crt"), oldClient.CertPEM, 0o600)
	os.WriteFile(filepath.Join(sub, "admin.key"), oldClient.KeyPEM, 0o600)
	os.WriteFile(filepath.Join(sub, "kubeconfig"), []byte(`apiVersion: v1
kind: Config
clusters:
- name: k
  cluster: {server: "https://10.0.0.1:6443", certificate-authority: ca.crt}
users:
- name: admin
  user: {client-certificate: admin.crt, client-key: admin.key}
contexts:
- name: admin@k
  context: {cluster: k, user: admin}
current-context: admin@k
`), 0o600)
	got := kubeconfigAdvice(filepath.Join(sub, "kubeconfig"), "", newCA.CertPEM)
	for _, w := range []string{"does not trust", "presents a client certificate"} {
		if !strings.Contains(got, w) {
			t.Errorf("kubeconfig with relative file references: advice %q lacks %q", got, w)
		}
	}

	// A named context that does not exist: nothing to judge.
	p := write("ctx.conf", oldCA.CertPEM, oldClient, "")
	if got := kubeconfigAdvice(p, "other", newCA.CertPEM); got != "" {
		t.Errorf("advice for a missing context: %s", got)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
}
