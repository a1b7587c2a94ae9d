package steps

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
)

// TestExtraKubeconfigs follows one extra kubeconfig with several clusters
// and users through preflight, extra-kubeconfigs and
// extra-kubeconfigs-narrowed: only the entry for this cluster and the
// user with an embedded old-CA certificate change; a file-referenced
// old-CA certificate is named; the reverts restore the bytes.
func TestExtraKubeconfigs(t *testing.T) {
	ctx := context.Background()
	rt, r, st := testRuntime(t)
	var progress []string
	rt.Progress = func(m string) { progress = append(progress, m) }
	const p, certFile = "/etc/kubernetes/monitoring.conf", "/etc/monitoring/client.pem"
	rt.Config.ExtraKubeconfigs = map[string][]string{"cp1": {p}}
	cl := st.cas[CACluster]
	c0 := oldTestCA(t, st, CACluster)
	other, err := pki.NewCA(pki.CAOptions{CommonName: "other-cluster"})
	if err != nil {
		t.Fatal(err)
	}
	client := func(ca *pki.CA, cn string) *pki.Issued { return clientCert(t, ca, cn, "monitoring") }
	prom, fileUser, elsewhere := client(c0, "prometheus"), client(c0, "exporter"), client(other, "prometheus")
	kc := []byte(`apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: ` + b64(cl.OldCert) + `
    server: https://10.0.0.1:6443
  name: this
- cluster:
    certificate-authority-data: ` + b64(other.CertPEM) + `
    server: https://10.9.0.1:6443
  name: other
contexts:
- context: {cluster: this, user: prometheus}
  name: this
current-context: this
users:
- name: prometheus
  user:
    client-certificate-data: ` + b64(prom.CertPEM) + `
    client-key-data: ` + b64(prom.KeyPEM) + `
- name: exporter
  user:
    client-certificate: ` + certFile + `
    client-key: /etc/monitoring/client.key
- name: robot
  user:
    token: not-a-real-token
- name: elsewhere
  user:
    client-certificate-data: ` + b64(elsewhere.CertPEM) + `
    client-key-data: ` + b64(elsewhere.KeyPEM) + `
`)
	r.SetFile(p, kc, 0o640)
	r.SetFile(certFile, fileUser.CertPEM, 0o644)

	newCA, err := rt.newCA(ctx, CACluster)
	if err != nil {
		t.Fatal(err)
	}
	cp1 := Target{Node: "cp1", Role: RoleControlPlane}
	if err := rt.prepareExtraKubeconfigs(ctx, r, cp1, newCA); err != nil {
		t.Fatal(err)
	}
	for k, v := range rt.Out.Values {
		st.values[k] = v
	}
	if n := len(rt.Out.Values); n != 2 {
		t.Errorf("preflight prepared %d values, want the certificate and key of user prometheus", n)
	}
	if got := strings.Join(progress, "\n"); !strings.Contains(got, `extra kubeconfig `+p+` on cp1: user "exporter"'s client certificate `+certFile+` is from the old CA`) {
		t.Errorf("preflight does not name the file-referenced old-CA certificate:\n%s", got)
	}

	caOf := func(b []byte, cluster string) string {
		t.Helper()
		var cns []string
		if _, _, err := edit.MapKubeconfigCAData(b, func(name string, ca []byte) ([]byte, error) {
			if name == cluster {
				certs, err := pki.ParseCertsPEM(ca)
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range certs {
					cns = append(cns, c.Subject.CommonName)
				}
			}
			return ca, nil
		}); err != nil {
			t.Fatal(err)
		}
		return strings.Join(cns, "+")
	}
	userCert := func(b []byte, user string) *x509.Certificate {
		t.Helper()
		cc, err := edit.KubeconfigClientCert(b, user)
		if err != nil {
			t.Fatal(err)
		}
		certs, err := pki.ParseCertsPEM(cc.CertPEM)
		if err != nil {
			t.Fatal(err)
		}
		return certs[0]
	}

	widen, narrow := ExtraKubeconfigs(), ExtraKubeconfigsNarrowed()
	for _, s := range []*NodeEdit{widen, narrow} {
		if err := s.Apply(ctx, rt, cp1); err != nil {
			t.Fatalf("%s: %v", s.Name(), err)
		}
		if done, err := s.Check(ctx, rt, cp1); err != nil || !done {
			t.Fatalf("%s: Check after Apply = %v, %v", s.Name(), done, err)
		}
		got, _ := r.File(p)
		wantCA := map[*NodeEdit]string{widen: "kubernetes+kubernetes-new", narrow: "kubernetes-new"}[s]
		if ca := caOf(got, "this"); ca != wantCA {
			t.Errorf("%s: CA data of this cluster = %s, want %s", s.Name(), ca, wantCA)
		}
		if ca := caOf(got, "other"); ca != "other-cluster" {
			t.Errorf("%s: CA data of the other cluster = %s", s.Name(), ca)
		}
		c := userCert(got, "prometheus")
		if !pki.IssuedBy(c, newCA.Cert) || c.Subject.String() != prom.Cert.Subject.String() {
			t.Errorf("%s: prometheus has %s issued by %s", s.Name(), pki.Describe(c), c.Issuer)
		}
		if c := userCert(got, "elsewhere"); !c.Equal(elsewhere.Cert) {
			t.Errorf("%s: another cluster's client certificate changed", s.Name())
		}
		if !strings.Contains(string(got), "token: not-a-real-token\n") || !strings.Contains(string(got), "client-certificate: "+certFile+"\n") {
			t.Errorf("%s: a token or a file reference changed:\n%s", s.Name(), got)
		}
	}
	for _, s := range []*NodeEdit{narrow, widen} {
		if err := s.Revert(ctx, rt, cp1); err != nil {
			t.Fatalf("%s: Revert: %v", s.Name(), err)
		}
	}
	if got, _ := r.File(p); string(got) != string(kc) {
		t.Errorf("after the reverts:\n%s\nwant\n%s", got, kc)
	}

	if err := r.Remove(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := rt.prepareExtraKubeconfigs(ctx, r, cp1, newCA); err == nil || !strings.Contains(err.Error(), "extra kubeconfig "+p+" on cp1 (inventory extraKubeconfigs)") {
		t.Errorf("a missing extra kubeconfig: %v", err)
	}
}
