package pki

// Fixtures made with the test CA (pki/pkitest, written against crypto/x509
// only so that it does not depend on the code under test). They mirror the
// certificates kubeadm creates (see docs/rotation.md, "Where things live").

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/kubeca/rotate/pki/pkitest"
)

// testNow is the fixed "now" of the tests: the test CA's clock.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testCA is the shared test CA (pki/pkitest) on the tests' clock.
type testCA = pkitest.CA

func testClock() time.Time { return testNow }

// newTestCA is a valid self-signed CA like kubeadm's (ten years, ECDSA).
func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	return pkitest.NewCA(t, cn, pkitest.Options{Now: testClock})
}

// newTestCAWith builds a self-signed CA certificate for key; mod may change
// the template (to make it expired, not a CA, ...).
func newTestCAWith(t testing.TB, cn string, key crypto.Signer, mod func(*x509.Certificate)) *testCA {
	t.Helper()
	return pkitest.NewCA(t, cn, pkitest.Options{Now: testClock, Key: key, Template: mod})
}

var (
	ecKey   = pkitest.ECKey
	p384Key = pkitest.P384Key
	rsaKey  = pkitest.RSAKey
	edKey   = pkitest.Ed25519Key
	certPEM = pkitest.CertPEM
	keyPEM  = pkitest.KeyPEM // PKCS#8, independently of EncodeKeyPEM
)

// pkiCA converts to the package's CA type.
func pkiCA(t testing.TB, ca *testCA) *CA {
	t.Helper()
	return &CA{Cert: ca.Cert, Key: ca.Key, CertPEM: certPEM(ca.Cert), KeyPEM: keyPEM(t, ca.Key)}
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
		return leafFixture{name: name, ca: ca, cert: ca.Issue(t, tmpl(key), key), key: key, usage: usage}
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
