// Package pkitest is a tiny in-memory CA for test fixtures. It is written
// against crypto/x509 only, so that fixtures do not depend on package pki,
// the code under test, and it reads the time from an injected clock, so
// that a test can pin "now" (and what is expired, valid or not yet valid)
// instead of depending on the machine's clock.
package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// serial numbers certificates within a test binary; unique is all a
// fixture needs.
var serial atomic.Int64

// CA is a self-signed test CA. One built as a literal (from another
// package's CA) issues on time.Now.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	now     func() time.Time
}

// Options change NewCA's defaults.
type Options struct {
	// Now is the clock; nil is time.Now. The CA and what it issues are
	// valid from an hour before Now: a CA for ten years, a leaf for one.
	Now func() time.Time
	// Key is the CA's key; nil is a new ECDSA P-256 key.
	Key crypto.Signer
	// Template, when set, changes the CA's template before it is signed
	// (to make it expired, not a CA, unable to sign, ...).
	Template func(*x509.Certificate)
}

// NewCA makes a self-signed CA like kubeadm's: ten years, certSign,
// digitalSignature and keyEncipherment, basic constraints CA:TRUE.
func NewCA(t testing.TB, cn string, o Options) *CA {
	t.Helper()
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Key == nil {
		o.Key = ECKey(t)
	}
	now := o.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if o.Template != nil {
		o.Template(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, o.Key.Public(), o.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: o.Key, CertPEM: CertPEM(cert), now: o.Now}
}

// Issue signs tmpl for key's public half. A zero NotBefore or NotAfter
// becomes an hour before the clock's now or a year after it.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate, key crypto.Signer) *x509.Certificate {
	t.Helper()
	cert, err := ca.TryIssue(tmpl, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TryIssue is Issue for goroutines (no testing.TB) and public keys.
func (ca *CA) TryIssue(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	tmpl.SerialNumber = big.NewInt(serial.Add(1))
	now := time.Now
	if ca.now != nil {
		now = ca.now
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now().Add(365 * 24 * time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// Leaf describes a leaf certificate for IssueLeaf.
type Leaf struct {
	CN     string
	Orgs   []string
	Client bool // clientAuth; otherwise serverAuth
	IPs    []net.IP
	DNS    []string
	// NotBefore and NotAfter as in Issue.
	NotBefore, NotAfter time.Time
}

// Issued is a leaf and its key.
type Issued struct {
	Cert            *x509.Certificate
	Key             crypto.Signer
	CertPEM, KeyPEM []byte // the key as SEC 1 ("EC PRIVATE KEY"), as kubeadm writes it
}

// IssueLeaf issues l for a new ECDSA P-256 key.
func (ca *CA) IssueLeaf(t testing.TB, l Leaf) Issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	usage := x509.ExtKeyUsageServerAuth
	if l.Client {
		usage = x509.ExtKeyUsageClientAuth
	}
	cert := ca.Issue(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: l.CN, Organization: l.Orgs},
		NotBefore: l.NotBefore, NotAfter: l.NotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: l.IPs, DNSNames: l.DNS,
	}, key)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Issued{Cert: cert, Key: key, CertPEM: CertPEM(cert), KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})}
}

// TLS is the leaf as a tls.Certificate.
func (is Issued) TLS(t testing.TB) tls.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(is.CertPEM, is.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// Pool is a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// ECKey is a new ECDSA P-256 key.
func ECKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// P384Key is a new ECDSA P-384 key.
func P384Key(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// RSAKey is a new RSA key of bits bits.
func RSAKey(t testing.TB, bits int) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Ed25519Key is a new Ed25519 key.
func Ed25519Key(t testing.TB) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// CertPEM encodes certs as PEM, in order.
func CertPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM encodes key as PKCS#8 ("PRIVATE KEY").
func KeyPEM(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
