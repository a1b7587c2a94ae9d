package steps

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubeca/rotate/pki"
)

// TestOldCACarriers: every Secret and ConfigMap key that holds an old CA,
// or a certificate one issued, is listed by object and key; what rotate or
// the controller-manager rewrites, what holds only the new CA and what is
// not PEM are not; no value appears in the lines.
func TestOldCACarriers(t *testing.T) {
	ctx := context.Background()
	rt, _, st := testRuntime(t)
	cl, fp := st.cas[CACluster], st.cas[CAFrontProxy]
	leaf := clientCert(t, oldTestCA(t, st, CACluster), "etcd-client")
	both := string(cl.OldCert) + string(cl.NewCert)
	secret := func(ns, name string, typ corev1.SecretType, data map[string][]byte) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: typ, Data: data}
	}
	cm := func(ns, name string, data map[string]string, bin map[string][]byte) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data, BinaryData: bin}
	}
	objs := []runtime.Object{
		secret("monitoring", "etcd-ca", corev1.SecretTypeOpaque, map[string][]byte{"ca.crt": cl.OldCert, "password": []byte("hunter2")}),
		secret("monitoring", "etcd-client", corev1.SecretTypeTLS, map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM}),
		secret("ci", "kube", corev1.SecretTypeOpaque, map[string][]byte{"bundle.pem": []byte(both)}),
		secret("ci", "fresh", corev1.SecretTypeOpaque, map[string][]byte{"ca.crt": cl.NewCert}),
		secret("default", "default-token-x", corev1.SecretTypeServiceAccountToken, map[string][]byte{"ca.crt": cl.OldCert}),
		cm("metrics", "aggregator", nil, map[string][]byte{"front-proxy.pem": fp.OldCert}),
		cm("default", "kube-root-ca.crt", map[string]string{"ca.crt": both}, nil),
		cm("kube-system", "extension-apiserver-authentication", map[string]string{"client-ca-file": both}, nil),
		cm("kube-public", "cluster-info", map[string]string{"kubeconfig": string(cl.OldCert)}, nil),
		cm("default", "settings", map[string]string{"x": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}, nil),
	}
	rt.Kube = fake.NewClientset(objs...)
	got, err := rt.oldCACarriers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ConfigMap metrics/aggregator key front-proxy.pem holds the old front-proxy CA, not the new one: add the new CA before resuming",
		"Secret ci/kube key bundle.pem holds the old cluster CA next to the new one: remove the old one after narrowing",
		"Secret monitoring/etcd-ca key ca.crt holds the old cluster CA, not the new one: add the new CA before resuming",
		"Secret monitoring/etcd-client key tls.crt holds " + pki.Describe(leaf.Cert) + ", issued by the old cluster CA: re-issue it from the new CA before resuming",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("carriers:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, l := range got {
		if strings.Contains(l, "BEGIN") || strings.Contains(l, "hunter2") {
			t.Errorf("a value leaked: %s", l)
		}
	}
}

// TestOldEtcdCACarriers: with the etcd CA in the run, a monitoring stack's
// etcd CA and client certificate in a Secret are listed as well.
func TestOldEtcdCACarriers(t *testing.T) {
	rt, _, st := testRuntime(t)
	rt.Config.Etcd = true
	e0, _ := withEtcdCA(t, st)
	leaf := clientCert(t, e0, "prometheus-etcd")
	rt.Kube = fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "monitoring", Name: "etcd-certs"},
		Data: map[string][]byte{"ca.crt": e0.CertPEM, "client.crt": leaf.CertPEM, "client.key": leaf.KeyPEM}})
	got, err := rt.oldCACarriers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"Secret monitoring/etcd-certs key ca.crt holds the old etcd CA, not the new one: add the new CA before resuming",
		"Secret monitoring/etcd-certs key client.crt holds " + pki.Describe(leaf.Cert) + ", issued by the old etcd CA: re-issue it from the new CA before resuming",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("carriers:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestVerifyListsOldCACarriers: the hold report names a Secret that still
// holds the old CA.
func TestVerifyListsOldCACarriers(t *testing.T) {
	f := newVerifyFixture(t)
	f.preflight(t)
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "monitoring", Name: "etcd-ca"},
		Data: map[string][]byte{"ca.crt": f.st.cas[CACluster].OldCert}}
	if _, err := f.rt.Kube.CoreV1().Secrets("monitoring").Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, err := f.verify(t)
	if err != nil {
		t.Fatal(err)
	}
	const line = "Secret monitoring/etcd-ca key ca.crt holds the old cluster CA, not the new one: add the new CA before resuming"
	if !strings.Contains(strings.Join(rep.Attention, "\n"), line) {
		t.Errorf("attention lacks %q:\n%s", line, strings.Join(rep.Attention, "\n"))
	}
}

// withEtcdCA puts an etcd CA pair in the test store and returns the old
// and the new CA.
func withEtcdCA(t *testing.T, st *fakeStore) (old, new *pki.CA) {
	t.Helper()
	var err error
	if old, err = pki.NewCA(pki.CAOptions{CommonName: "etcd-ca"}); err != nil {
		t.Fatal(err)
	}
	if new, err = pki.NewCA(pki.CAOptions{CommonName: "etcd-ca-new"}); err != nil {
		t.Fatal(err)
	}
	st.cas[CAEtcd] = CAPair{Name: CAEtcd, OldCert: old.CertPEM, OldKey: old.KeyPEM, NewCert: new.CertPEM, NewKey: new.KeyPEM}
	return old, new
}

// oldTestCA is the old CA name of the test store, with its key.
func oldTestCA(t *testing.T, st *fakeStore, name string) *pki.CA {
	t.Helper()
	p := st.cas[name]
	ca, err := pki.LoadCA(p.OldCert, p.OldKey, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// clientCert is a client certificate for cn (in groups orgs) from ca.
func clientCert(t *testing.T, ca *pki.CA, cn string, orgs ...string) *pki.Issued {
	t.Helper()
	is, err := pki.Reissue(&x509.Certificate{Subject: pkix.Name{CommonName: cn, Organization: orgs},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, pki.ReissueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return is
}
