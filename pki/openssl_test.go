package pki

import (
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenSSLAgrees checks re-issued certificates and bundles with the real
// openssl binary: a re-issued apiserver certificate verifies against the
// bundle B (old+new CA) and against the new CA, not against the old CA alone;
// a leaf of the old CA still verifies against B (trust was widened). The
// certificates are valid now (openssl verify uses the wall clock).
func TestOpenSSLAgrees(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	now := time.Now()
	c0, err := NewCA(CAOptions{CommonName: "kubernetes", Algorithm: RSA2048, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	c1, err := NewCA(CAOptions{CommonName: "kubernetes-2026", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	// An apiserver certificate of the old CA, dated around the wall clock.
	oldKey := rsaKey(t, 2048)
	tmpl := apiserverTemplate(oldKey)
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(24*time.Hour)
	old := &Issued{Cert: (&testCA{Cert: c0.Cert, Key: c0.Key}).Issue(t, tmpl, oldKey)}
	old.CertPEM = certPEM(old.Cert)
	reissued, err := Reissue(old.Cert, c1, ReissueOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := BundleAdd(c0.CertPEM, c1.Cert)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	files := map[string]string{
		"bundle":  write("bundle.pem", bundle),
		"old":     write("old-ca.pem", c0.CertPEM),
		"new":     write("new-ca.pem", c1.CertPEM),
		"leaf":    write("leaf.pem", reissued.CertPEM),
		"oldLeaf": write("old-leaf.pem", old.CertPEM),
	}
	tests := []struct {
		name   string
		caFile string
		leaf   string
		ok     bool
	}{
		{"re-issued leaf, bundle", files["bundle"], files["leaf"], true},
		{"re-issued leaf, new CA", files["new"], files["leaf"], true},
		{"re-issued leaf, old CA only", files["old"], files["leaf"], false},
		{"old leaf, bundle", files["bundle"], files["oldLeaf"], true},
		{"old leaf, new CA only", files["new"], files["oldLeaf"], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(openssl, "verify", "-purpose", "sslserver", "-CAfile", tt.caFile, tt.leaf).CombinedOutput()
			ok := err == nil && strings.HasSuffix(strings.TrimSpace(string(out)), ": OK")
			if ok != tt.ok {
				t.Fatalf("openssl verify ok=%t, want %t:\n%s", ok, tt.ok, out)
			}
			// The Go verifier agrees.
			goErr := ChainsTo(mustParse(t, tt.leaf), mustRead(t, tt.caFile), x509.ExtKeyUsageServerAuth, now)
			if (goErr == nil) != tt.ok {
				t.Fatalf("ChainsTo = %v, want ok=%t", goErr, tt.ok)
			}
		})
	}
	t.Run("fingerprint matches openssl", func(t *testing.T) {
		out, err := exec.Command(openssl, "x509", "-noout", "-fingerprint", "-sha256", "-in", files["leaf"]).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		got := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(string(out[strings.IndexByte(string(out), '=')+1:])), ":", ""))
		if got != Fingerprint(reissued.Cert) {
			t.Fatalf("openssl %s, Fingerprint %s", got, Fingerprint(reissued.Cert))
		}
	})
	t.Run("key PEM readable by openssl", func(t *testing.T) {
		for name, key := range map[string][]byte{"rsa-ca": c0.KeyPEM, "ec-ca": c1.KeyPEM, "leaf": reissued.KeyPEM} {
			p := write(name+".key", key)
			if out, err := exec.Command(openssl, "pkey", "-noout", "-in", p).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", name, err, out)
			}
		}
	})
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustParse(t *testing.T, p string) *x509.Certificate {
	t.Helper()
	certs, err := ParseCertsPEM(mustRead(t, p))
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}
