package pki

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestParseCertsPEM(t *testing.T) {
	c0, c1 := newTestCA(t, "c0"), newTestCA(t, "c1")
	p0, p1 := certPEM(c0.Cert), certPEM(c1.Cert)
	// A block whose base64 body is broken, followed by a good block:
	// pem.Decode would silently skip the broken one.
	broken := []byte(strings.Replace(string(p0), "\n", "\n!!!!\n", 2))
	truncated := p0[:len(p0)-20]
	tests := []struct {
		name    string
		in      []byte
		want    []*x509.Certificate
		wantErr string
		is      error
	}{
		{name: "one", in: p0, want: []*x509.Certificate{c0.Cert}},
		{name: "bundle in order", in: cat(p1, p0), want: []*x509.Certificate{c1.Cert, c0.Cert}},
		{name: "whitespace and CRLF", in: []byte("\n  \r\n" + strings.ReplaceAll(string(cat(p0, []byte("\n\n"), p1)), "\n", "\r\n") + "\t\n"), want: []*x509.Certificate{c0.Cert, c1.Cert}},
		{name: "empty", in: nil, wantErr: "no certificates found", is: ErrNoCertificates},
		{name: "only whitespace", in: []byte(" \n\t\n"), wantErr: "no certificates found", is: ErrNoCertificates},
		{name: "garbage before", in: cat([]byte("subject=CN = c0\n"), p0), wantErr: "unexpected non-PEM data at byte 0 (after 0 PEM blocks)"},
		{name: "garbage between", in: cat(p0, []byte("# comment\n"), p1), wantErr: "unexpected non-PEM data at byte " + strconv.Itoa(len(p0)) + " (after 1 PEM blocks)"},
		{name: "garbage after", in: cat(p0, []byte("trailer")), wantErr: "unexpected non-PEM data"},
		{name: "garbage inside a block", in: cat(broken, p1), wantErr: "malformed PEM block at byte 0"},
		{name: "truncated block", in: truncated, wantErr: "malformed PEM block at byte 0"},
		{name: "second block truncated", in: cat(p0, truncated), wantErr: "malformed PEM block at byte " + strconv.Itoa(len(p0))},
		{name: "private key block", in: cat(p0, keyPEM(t, c0.Key)), wantErr: `PEM block 2 is "PRIVATE KEY", want "CERTIFICATE"`},
		{name: "not DER", in: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("nope")}), wantErr: "PEM block 1: parse certificate:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCertsPEM(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if tt.is != nil && !errors.Is(err, tt.is) {
					t.Fatalf("err = %v, want errors.Is %v", err, tt.is)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d certs, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !got[i].Equal(tt.want[i]) {
					t.Fatalf("cert %d is %s, want %s", i, Describe(got[i]), Describe(tt.want[i]))
				}
			}
		})
	}
}

func TestEncodeCertsPEM(t *testing.T) {
	c0, c1 := newTestCA(t, "c0"), newTestCA(t, "c1")
	tests := []struct {
		name  string
		certs []*x509.Certificate
		want  []byte
	}{
		{"none", nil, nil},
		{"one", []*x509.Certificate{c0.Cert}, certPEM(c0.Cert)},
		{"two in order", []*x509.Certificate{c1.Cert, c0.Cert}, certPEM(c1.Cert, c0.Cert)},
		{"nil skipped", []*x509.Certificate{c0.Cert, nil, c1.Cert}, certPEM(c0.Cert, c1.Cert)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EncodeCertsPEM(tt.certs...); !bytes.Equal(got, tt.want) {
				t.Fatalf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestFingerprintAndDescribe(t *testing.T) {
	ca := newTestCA(t, "kubernetes")
	sum := sha256.Sum256(ca.Cert.Raw)
	fp := hex.EncodeToString(sum[:])
	noCN := ca.Issue(t, &x509.Certificate{Subject: pkix.Name{Organization: []string{"only-org"}}}, ecKey(t))
	empty := ca.Issue(t, &x509.Certificate{DNSNames: []string{"x"}}, ecKey(t))
	tests := []struct {
		name     string
		cert     *x509.Certificate
		fp       string
		describe string
	}{
		{"CA", ca.Cert, fp, "CN=kubernetes (sha256 " + fp[:16] + "…)"},
		{"no CN", noCN, Fingerprint(noCN), "O=only-org (sha256 " + Fingerprint(noCN)[:16] + "…)"},
		{"empty subject", empty, Fingerprint(empty), "<empty subject> (sha256 " + Fingerprint(empty)[:16] + "…)"},
		{"nil", nil, "", "<nil certificate>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Fingerprint(tt.cert); got != tt.fp {
				t.Fatalf("Fingerprint = %s, want %s", got, tt.fp)
			}
			if tt.cert != nil && (len(tt.fp) != 64 || strings.ToLower(tt.fp) != tt.fp) {
				t.Fatalf("fingerprint %q is not lowercase hex SHA-256", tt.fp)
			}
			if got := Describe(tt.cert); got != tt.describe {
				t.Fatalf("Describe = %q, want %q", got, tt.describe)
			}
		})
	}
}

func TestScanPEM(t *testing.T) {
	c0, c1 := newTestCA(t, "c0"), newTestCA(t, "c1")
	leafKey := ecKey(t)
	leaf := c0.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "system:node:w1"}}, leafKey)
	ecPEM, err := EncodeKeyPEM(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := []byte("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: " +
		"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n")
	tests := []struct {
		name      string
		in        []byte
		wantCerts []*x509.Certificate
		wantKeys  []crypto.PublicKey
	}{
		{"empty", nil, nil, nil},
		{"kubeconfig holds no PEM", kubeconfig, nil, nil},
		{"bundle in order", cat(certPEM(c1.Cert), certPEM(c0.Cert)), []*x509.Certificate{c1.Cert, c0.Cert}, nil},
		{"CA key (PKCS#8)", keyPEM(t, c0.Key), nil, []crypto.PublicKey{c0.Key.Public()}},
		{"kubelet cert+key PEM (SEC 1)", cat(certPEM(leaf), ecPEM), []*x509.Certificate{leaf}, []crypto.PublicKey{leafKey.Public()}},
		{"text and foreign blocks skipped", cat([]byte("subject=CN = c0\n"), certPEM(c0.Cert), []byte("# note\n"),
			pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("x")}),
			pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}), certPEM(c1.Cert)),
			[]*x509.Certificate{c0.Cert, c1.Cert}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, keys := ScanPEM(tt.in)
			if len(certs) != len(tt.wantCerts) || len(keys) != len(tt.wantKeys) {
				t.Fatalf("got %d certs and %d keys, want %d and %d", len(certs), len(keys), len(tt.wantCerts), len(tt.wantKeys))
			}
			for i := range certs {
				if !certs[i].Equal(tt.wantCerts[i]) {
					t.Errorf("cert %d is %s, want %s", i, Describe(certs[i]), Describe(tt.wantCerts[i]))
				}
			}
			for i := range keys {
				if !keys[i].Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.wantKeys[i]) {
					t.Errorf("key %d is not the wanted key", i)
				}
			}
		})
	}
}
