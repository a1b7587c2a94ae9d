package pki

// A tiny in-memory test CA for fixtures, written against crypto/x509 only so
// that it does not depend on the code under test. Fixtures mirror the
// certificates kubeadm creates (see docs/rotation.md, "Where things live").

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// testNow is the fixed "now" of the tests.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var testSerial atomic.Int64

type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func ecKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func p384Key(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB, bits int) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func edKey(t testing.TB) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newTestCA is a valid self-signed CA like kubeadm's (ten years, ECDSA).
func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	return newTestCAWith(t, cn, ecKey(t), nil)
}

// newTestCAWith builds a self-signed CA certificate for key; mod may change
// the template (to make it expired, not a CA, ...).
func newTestCAWith(t testing.TB, cn string, key crypto.Signer, mod func(*x509.Certificate)) *testCA {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial.Add(1)),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// issue signs tmpl for key's public half.
func (ca *testCA) issue(t testing.TB, tmpl *x509.Certificate, key crypto.Signer) *x509.Certificate {
	t.Helper()
	cert, err := ca.tryIssue(tmpl, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// tryIssue is issue for goroutines (no testing.TB).
func (ca *testCA) tryIssue(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	tmpl.SerialNumber = big.NewInt(testSerial.Add(1))
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = testNow.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = testNow.Add(365 * 24 * time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// pkiCA converts to the package's CA type.
func (ca *testCA) pkiCA(t testing.TB) *CA {
	t.Helper()
	return &CA{Cert: ca.cert, Key: ca.key, CertPEM: certPEM(ca.cert), KeyPEM: keyPEM(t, ca.key)}
}

func certPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// keyPEM encodes key as PKCS#8, independently of EncodeKeyPEM.
func keyPEM(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// leafFixture is a kubeadm-like leaf certificate with its key and issuer.
type leafFixture struct {
	name  string
	ca    *testCA
	cert  *x509.Certificate
	key   crypto.Signer
	usage x509.ExtKeyUsage
}

// kubeadmLeaves issues the leaves a rotation re-issues: apiserver (serving,
// RSA and ECDSA), apiserver-kubelet-client (both group conventions),
// front-proxy-client (from the front-proxy CA), admin and super-admin client
// certs, plus odd shapes (P-384, Ed25519, URI and email SANs).
func kubeadmLeaves(t testing.TB, cluster, frontProxy *testCA) []leafFixture {
	t.Helper()
	serving := apiserverTemplate
	client := func(cn string, orgs []string, key crypto.Signer) *x509.Certificate {
		ku := x509.KeyUsageDigitalSignature
		if _, ok := key.(*rsa.PrivateKey); ok {
			ku |= x509.KeyUsageKeyEncipherment
		}
		return &x509.Certificate{
			Subject:               pkix.Name{CommonName: cn, Organization: orgs},
			KeyUsage:              ku,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
		}
	}
	mk := func(name string, ca *testCA, tmpl func(crypto.Signer) *x509.Certificate, key crypto.Signer, usage x509.ExtKeyUsage) leafFixture {
		return leafFixture{name: name, ca: ca, cert: ca.issue(t, tmpl(key), key), key: key, usage: usage}
	}
	srv, cli := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	return []leafFixture{
		mk("apiserver RSA-2048", cluster, serving, rsaKey(t, 2048), srv),
		mk("apiserver ECDSA-P256", cluster, serving, ecKey(t), srv),
		mk("apiserver-kubelet-client system:masters RSA", cluster, func(k crypto.Signer) *x509.Certificate {
			return client("kube-apiserver-kubelet-client", []string{"system:masters"}, k)
		}, rsaKey(t, 2048), cli),
		mk("apiserver-kubelet-client kubeadm:cluster-admins ECDSA", cluster, func(k crypto.Signer) *x509.Certificate {
			return client("kube-apiserver-kubelet-client", []string{"kubeadm:cluster-admins"}, k)
		}, ecKey(t), cli),
		mk("front-proxy-client", frontProxy, func(k crypto.Signer) *x509.Certificate {
			return client("front-proxy-client", nil, k)
		}, rsaKey(t, 2048), cli),
		mk("admin.conf client", cluster, func(k crypto.Signer) *x509.Certificate {
			return client("kubernetes-admin", []string{"kubeadm:cluster-admins"}, k)
		}, ecKey(t), cli),
		mk("super-admin.conf client", cluster, func(k crypto.Signer) *x509.Certificate {
			c := client("kubernetes-super-admin", []string{"system:masters"}, k)
			c.Subject.OrganizationalUnit = []string{"ops", "dev"}
			c.Subject.Country = []string{"DE"}
			return c
		}, ecKey(t), cli),
		mk("P-384 server and client", cluster, func(k crypto.Signer) *x509.Certificate {
			c := serving(k)
			c.Subject = pkix.Name{CommonName: "etcd-ish", Organization: []string{"a", "b"}}
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
			return c
		}, p384Key(t), srv),
		mk("Ed25519 with URI and email SANs", cluster, func(k crypto.Signer) *x509.Certificate {
			c := client("webhook", []string{"example"}, k)
			c.URIs = []*url.URL{mustURL("spiffe://cluster.local/ns/x/sa/y")}
			c.EmailAddresses = []string{"ops@example.test"}
			return c
		}, edKey(t), cli),
	}
}

// apiserverTemplate is kubeadm's apiserver.crt: serverAuth with DNS and IP SANs.
func apiserverTemplate(key crypto.Signer) *x509.Certificate {
	ku := x509.KeyUsageDigitalSignature
	if _, ok := key.(*rsa.PrivateKey); ok {
		ku |= x509.KeyUsageKeyEncipherment
	}
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:              []string{"cp1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "api.example.test"},
		IPAddresses:           []net.IP{net.ParseIP("10.96.0.1").To4(), net.ParseIP("192.168.10.11").To4(), net.ParseIP("fd00::1")},
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
}
