package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNewCA(t *testing.T) {
	tests := []struct {
		name     string
		opts     CAOptions
		shape    string
		validity time.Duration
		wantErr  string
	}{
		{name: "defaults", opts: CAOptions{CommonName: "kubernetes-2026", Now: testNow}, shape: "ECDSA-P-256", validity: DefaultCAValidity},
		{name: "front-proxy with org", opts: CAOptions{CommonName: "front-proxy-ca-2026", Organization: []string{"kubeca"}, Now: testNow}, shape: "ECDSA-P-256", validity: DefaultCAValidity},
		{name: "ECDSA-P384", opts: CAOptions{CommonName: "c", Algorithm: ECDSAP384, Now: testNow}, shape: "ECDSA-P-384", validity: DefaultCAValidity},
		{name: "RSA-2048 five years", opts: CAOptions{CommonName: "c", Algorithm: RSA2048, Validity: 5 * 365 * 24 * time.Hour, Now: testNow}, shape: "RSA-2048", validity: 5 * 365 * 24 * time.Hour},
		{name: "RSA-3072", opts: CAOptions{CommonName: "c", Algorithm: RSA3072, Now: testNow}, shape: "RSA-3072", validity: DefaultCAValidity},
		{name: "zero Now uses the clock", opts: CAOptions{CommonName: "c"}, shape: "ECDSA-P-256", validity: DefaultCAValidity},
		{name: "no common name", opts: CAOptions{}, wantErr: "new CA: common name is required"},
		{name: "unknown algorithm", opts: CAOptions{CommonName: "c", Algorithm: "RSA-512"}, wantErr: `new CA "c": unknown key algorithm "RSA-512"`},
		{name: "negative validity", opts: CAOptions{CommonName: "c", Validity: -time.Hour}, wantErr: `new CA "c": negative validity -1h0m0s`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			ca, err := NewCA(tt.opts)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr && !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := ca.Cert
			if c.Subject.CommonName != tt.opts.CommonName || !equalStrings(c.Subject.Organization, tt.opts.Organization) {
				t.Errorf("subject %s", c.Subject)
			}
			if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
				t.Errorf("basic constraints: IsCA %t valid %t maxPathLen %d zero %t", c.IsCA, c.BasicConstraintsValid, c.MaxPathLen, c.MaxPathLenZero)
			}
			if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature; c.KeyUsage != want {
				t.Errorf("key usage %b, want %b", c.KeyUsage, want)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 || c.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %s has %d bits", c.SerialNumber, c.SerialNumber.BitLen())
			}
			if len(c.SubjectKeyId) != 20 {
				t.Errorf("SubjectKeyId %x", c.SubjectKeyId)
			}
			now := tt.opts.Now
			if now.IsZero() {
				if c.NotBefore.Before(before.Add(-Backdate-time.Second)) || c.NotBefore.After(time.Now().Add(-Backdate)) {
					t.Errorf("NotBefore %s not ~5m before the clock", c.NotBefore)
				}
				now = c.NotBefore.Add(Backdate)
			} else if !c.NotBefore.Equal(now.Add(-Backdate)) {
				t.Errorf("NotBefore %s, want %s", c.NotBefore, now.Add(-Backdate))
			}
			if want := now.Add(tt.validity).Truncate(time.Second); !c.NotAfter.Equal(want) {
				t.Errorf("NotAfter %s, want %s", c.NotAfter, want)
			}
			if got := KeyShape(c.PublicKey); got != tt.shape {
				t.Errorf("key %s, want %s", got, tt.shape)
			}
			if err := c.CheckSignatureFrom(c); err != nil {
				t.Errorf("not self-signed: %v", err)
			}
			if !KeyMatches(c, ca.Key) {
				t.Error("key does not match")
			}
			// PEM forms round-trip through LoadCA.
			back, err := LoadCA(ca.CertPEM, ca.KeyPEM, now, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !back.Cert.Equal(c) || !bytes.Equal(back.KeyPEM, ca.KeyPEM) {
				t.Error("LoadCA(CertPEM, KeyPEM) differs")
			}
			wantBlock := "EC PRIVATE KEY"
			if strings.HasPrefix(tt.shape, "RSA") {
				wantBlock = "RSA PRIVATE KEY"
			}
			if b, _ := pem.Decode(ca.KeyPEM); b == nil || b.Type != wantBlock {
				t.Errorf("key PEM type %v, want %s", b, wantBlock)
			}
		})
	}
	t.Run("serials differ", func(t *testing.T) {
		seen := map[string]bool{}
		for range 4 {
			ca, err := NewCA(CAOptions{CommonName: "c", Now: testNow})
			if err != nil {
				t.Fatal(err)
			}
			if seen[ca.Cert.SerialNumber.String()] {
				t.Fatal("repeated serial")
			}
			seen[ca.Cert.SerialNumber.String()] = true
		}
	})
	t.Run("broken random source", func(t *testing.T) {
		_, err := randomSerial(bytes.NewReader(nil))
		if err == nil || !strings.Contains(err.Error(), "generate serial number") {
			t.Fatalf("err = %v", err)
		}
		_, err = randomSerial(bytes.NewReader(make([]byte, 1024)))
		if err == nil || !strings.Contains(err.Error(), "random source returns zeros") {
			t.Fatalf("err = %v", err)
		}
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLoadCA(t *testing.T) {
	good := newTestCA(t, "kubernetes")
	other := newTestCA(t, "kubernetes-2026")
	notCA := newTestCAWith(t, "leaf", ecKey(t), func(c *x509.Certificate) { c.IsCA = false })
	noBC := newTestCAWith(t, "v3 without basic constraints", ecKey(t), func(c *x509.Certificate) { c.IsCA, c.BasicConstraintsValid = false, false })
	noSign := newTestCAWith(t, "no certsign", ecKey(t), func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature })
	noKU := newTestCAWith(t, "no key usage extension", ecKey(t), func(c *x509.Certificate) { c.KeyUsage = 0 })
	expired := newTestCAWith(t, "old", ecKey(t), func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = testNow.AddDate(-10, 0, 0), testNow.Add(-time.Hour)
	})
	soon := newTestCAWith(t, "soon", ecKey(t), func(c *x509.Certificate) { c.NotAfter = testNow.Add(24 * time.Hour) })
	future := newTestCAWith(t, "future", ecKey(t), func(c *x509.Certificate) { c.NotBefore = testNow.Add(time.Hour) })
	rsaCA := newTestCAWith(t, "rsa", rsaKey(t, 2048), nil)
	rsaPKCS1, _ := EncodeKeyPEM(rsaCA.Key)
	d := Describe

	tests := []struct {
		name     string
		cert     []byte
		key      []byte
		window   time.Duration
		wantCert *testCA
		wantErr  string
		is       error
	}{
		{name: "ECDSA PKCS#8", cert: certPEM(good.Cert), key: keyPEM(t, good.Key), wantCert: good},
		{name: "RSA PKCS#1", cert: certPEM(rsaCA.Cert), key: rsaPKCS1, wantCert: rsaCA},
		{name: "within window", cert: certPEM(soon.Cert), key: keyPEM(t, soon.Key), window: 23 * time.Hour, wantCert: soon},
		{name: "no key usage extension", cert: certPEM(noKU.Cert), key: keyPEM(t, noKU.Key), wantCert: noKU},
		{name: "bundle, old first, new key", cert: certPEM(good.Cert, other.Cert), key: keyPEM(t, other.Key), wantCert: other},
		{name: "bundle, old first, old key", cert: certPEM(good.Cert, other.Cert), key: keyPEM(t, good.Key), wantCert: good},

		{name: "unparsable certificate", cert: []byte("not pem"), key: keyPEM(t, good.Key),
			wantErr: "load CA: parse certificate: unexpected non-PEM data at byte 0 (after 0 PEM blocks)"},
		{name: "empty certificate", cert: nil, key: keyPEM(t, good.Key),
			wantErr: "load CA: parse certificate: no certificates found", is: ErrNoCertificates},
		{name: "unparsable key", cert: certPEM(good.Cert), key: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("xx")}),
			wantErr: "load CA " + d(good.Cert) + ": parse key: PEM block 1: malformed SEC 1 EC private key"},
		{name: "key does not match", cert: certPEM(good.Cert), key: keyPEM(t, other.Key),
			wantErr: "load CA " + d(good.Cert) + ": private key does not match the certificate", is: ErrKeyMismatch},
		{name: "key matches no cert of bundle", cert: certPEM(good.Cert, other.Cert), key: keyPEM(t, rsaCA.Key),
			wantErr: "load CA: private key does not match the certificate: none of the 2 certificates (first " + d(good.Cert) + ") matches the key", is: ErrKeyMismatch},
		{name: "not a CA", cert: certPEM(notCA.Cert), key: keyPEM(t, notCA.Key),
			wantErr: "load CA " + d(notCA.Cert) + ": certificate is not a CA (basic constraints)", is: ErrNotCA},
		{name: "no basic constraints", cert: certPEM(noBC.Cert), key: keyPEM(t, noBC.Key),
			wantErr: "load CA " + d(noBC.Cert) + ": certificate is not a CA (basic constraints)", is: ErrNotCA},
		{name: "cannot sign", cert: certPEM(noSign.Cert), key: keyPEM(t, noSign.Key),
			wantErr: "load CA " + d(noSign.Cert) + ": certificate may not sign certificates (no certSign key usage)", is: ErrCannotSign},
		{name: "expired", cert: certPEM(expired.Cert), key: keyPEM(t, expired.Key),
			wantErr: "load CA " + d(expired.Cert) + ": certificate has expired (not after 2026-03-01T11:00:00Z)", is: ErrExpired},
		{name: "expires within window", cert: certPEM(soon.Cert), key: keyPEM(t, soon.Key), window: 30 * 24 * time.Hour,
			wantErr: "load CA " + d(soon.Cert) + ": certificate expires within the required window (not after 2026-03-02T12:00:00Z, window 720h0m0s)", is: ErrExpiresSoon},
		{name: "not yet valid", cert: certPEM(future.Cert), key: keyPEM(t, future.Key),
			wantErr: "load CA " + d(future.Cert) + ": certificate is not yet valid (not before 2026-03-01T13:00:00Z)", is: ErrNotYetValid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, err := LoadCA(tt.cert, tt.key, testNow, tt.window)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v\nwant  %s", err, tt.wantErr)
				}
				if tt.is != nil && !errors.Is(err, tt.is) {
					t.Fatalf("errors.Is(%v, %v) = false", err, tt.is)
				}
				if strings.Contains(err.Error(), "PRIVATE KEY") {
					t.Fatalf("error mentions key material: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !ca.Cert.Equal(tt.wantCert.Cert) || !KeyMatches(ca.Cert, ca.Key) {
				t.Fatalf("loaded %s, want %s", Describe(ca.Cert), Describe(tt.wantCert.Cert))
			}
			if !bytes.Equal(ca.CertPEM, certPEM(tt.wantCert.Cert)) {
				t.Fatal("CertPEM is not the one matching certificate")
			}
			if k, err := ParseKeyPEM(ca.KeyPEM); err != nil || !KeyMatches(ca.Cert, k) {
				t.Fatalf("KeyPEM does not parse back: %v", err)
			}
		})
	}
	t.Run("zero now uses the clock", func(t *testing.T) {
		ancient := newTestCAWith(t, "ancient", ecKey(t), func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
		})
		if _, err := LoadCA(certPEM(ancient.Cert), keyPEM(t, ancient.Key), time.Time{}, 0); !errors.Is(err, ErrExpired) {
			t.Fatalf("err = %v, want ErrExpired", err)
		}
	})
}
