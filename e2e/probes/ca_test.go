package probes

import (
	"crypto/tls"
	"testing"

	"github.com/kubeca/rotate/pki/pkitest"
)

// testCA is the shared test CA (pki/pkitest) on the wall clock.
type testCA = pkitest.CA

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	return pkitest.NewCA(t, cn, pkitest.Options{})
}

// issue returns the leaf as PEM certificate, PEM key and tls.Certificate.
func issue(t testing.TB, ca *testCA, l pkitest.Leaf) ([]byte, []byte, tls.Certificate) {
	t.Helper()
	is := ca.IssueLeaf(t, l)
	return is.CertPEM, is.KeyPEM, is.TLS(t)
}
