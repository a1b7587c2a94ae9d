package edit

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestMapKubeconfigCAData: fn sees every cluster that embeds CA data, by
// name, and only what it changes is rewritten; a file reference is left
// alone.
func TestMapKubeconfigCAData(t *testing.T) {
	c0, c1 := newCA(t, "C0"), newCA(t, "C1")
	cert0, key0 := issueClient(t, c0, "monitoring", "monitoring")
	kc := []byte(kubeconfig(b64(c0.CertPEM), b64(cert0), b64(key0)))
	bundle := append(append([]byte{}, c0.CertPEM...), c1.CertPEM...)

	var seen []string
	out, n, err := MapKubeconfigCAData(kc, func(cluster string, ca []byte) ([]byte, error) {
		seen = append(seen, cluster)
		if !bytes.Equal(ca, c0.CertPEM) {
			t.Errorf("cluster %s: CA data is not C0", cluster)
		}
		return bundle, nil
	})
	if err != nil || n != 1 || strings.Join(seen, ",") != "kubernetes" {
		t.Fatalf("MapKubeconfigCAData = %d, %v; saw %q", n, err, seen)
	}
	assertDiff(t, kc, out,
		[]string{"    certificate-authority-data: " + b64(c0.CertPEM)},
		[]string{"    certificate-authority-data: " + b64(bundle)})

	same, n, err := MapKubeconfigCAData(kc, func(_ string, ca []byte) ([]byte, error) { return ca, nil })
	if err != nil || n != 1 || !bytes.Equal(same, kc) {
		t.Errorf("unchanged CA data rewrote the file (%d, %v)", n, err)
	}
	if _, _, err := MapKubeconfigCAData(kc, func(string, []byte) ([]byte, error) { return key0, nil }); err == nil {
		t.Error("a key accepted as CA data")
	}
	boom := errors.New("boom")
	if _, _, err := MapKubeconfigCAData(kc, func(string, []byte) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) || !strings.Contains(err.Error(), `"kubernetes"`) {
		t.Errorf("fn's error = %v", err)
	}
	onlyRefs := []byte("clusters:\n- cluster:\n    certificate-authority: /ca.crt\n  name: x\n")
	if out, n, err := MapKubeconfigCAData(onlyRefs, func(string, []byte) ([]byte, error) { return bundle, nil }); err != nil || n != 0 || !bytes.Equal(out, onlyRefs) {
		t.Errorf("file reference: %d, %v", n, err)
	}
}

func TestKubeconfigWithoutClientCert(t *testing.T) {
	token := []byte("clusters:\n- cluster:\n    server: https://x\n  name: x\ncontexts:\n- context:\n    cluster: x\n    user: u\n  name: c\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: abc\n")
	if _, err := KubeconfigClientCert(token, ""); !errors.Is(err, ErrNoClientCert) || err.Error() != `user "u" has no client certificate` {
		t.Errorf("token user: %v", err)
	}
}

func TestKubeconfigUsers(t *testing.T) {
	kc := []byte("users:\n- name: a\n  user:\n    token: x\n- name: b\n  user: {}\n")
	if got, err := KubeconfigUsers(kc); err != nil || strings.Join(got, ",") != "a,b" {
		t.Errorf("KubeconfigUsers = %q, %v", got, err)
	}
	if got, err := KubeconfigUsers([]byte("clusters: []\n")); err != nil || got != nil {
		t.Errorf("no users: %q, %v", got, err)
	}
	if _, err := KubeconfigUsers([]byte("users: x\n")); err == nil {
		t.Error("users that is not a list accepted")
	}
}
