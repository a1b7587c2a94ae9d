package steps

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubeca/rotate/pki"
)

// batchSigner plays the controller-manager's csrsigning controller, but
// signs nothing until it holds `together` approved requests at once: a
// KubeletCSRs that asked one at a time would never get its first
// certificate (the test's deadline ends it).
func batchSigner(t *testing.T, c *fake.Clientset, ca *pki.CA, together int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	csrs := c.CertificatesV1().CertificateSigningRequests()
	w, err := csrs.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); w.Stop(); <-done })
	go func() {
		defer close(done)
		pending := map[string]*certificatesv1.CertificateSigningRequest{}
		released := false
		for ev := range w.ResultChan() {
			csr, ok := ev.Object.(*certificatesv1.CertificateSigningRequest)
			if !ok || ev.Type == watch.Deleted || len(csr.Status.Certificate) > 0 {
				continue
			}
			approved := false
			for _, c := range csr.Status.Conditions {
				approved = approved || c.Type == certificatesv1.CertificateApproved
			}
			if !approved {
				continue
			}
			pending[csr.Name] = csr
			if !released && len(pending) < together {
				continue
			}
			released = true
			for name, p := range pending {
				delete(pending, name)
				p = p.DeepCopy()
				p.Status.Certificate = signCSR(t, p, ca)
				if _, err := csrs.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
					t.Errorf("fake signer: %v", err)
				}
			}
		}
	}()
}

func signCSR(t *testing.T, csr *certificatesv1.CertificateSigningRequest, ca *pki.CA) []byte {
	b, _ := pem.Decode(csr.Spec.Request)
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Errorf("fake signer: %v", err)
		return nil
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: req.Subject.CommonName, Organization: req.Subject.Organization},
		DNSNames: req.DNSNames, IPAddresses: req.IPAddresses, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, req.PublicKey, ca.Key)
	if err != nil {
		t.Errorf("fake signer: %v", err)
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// csrFixture is a runtime for KubeletCSRs over nodes, each with kubelet
// facts and prepared keys, and a fake API holding the Node objects of
// registered.
func csrFixture(t *testing.T, nodes, registered []string) (*Runtime, *fake.Clientset, *pki.CA) {
	t.Helper()
	rt, _, st := testRuntime(t)
	rt.Config = testConfig(nodes[:1], nodes[1:])
	for _, n := range nodes {
		st.values[kubeletFactsKey(n)] = []byte(`{"RotateCertificates":true,"ServingDNS":["` + n + `"]}`)
		for _, k := range []string{prepKubeletClientKey, prepKubeletServingKey} {
			if err := rt.prepareKey(n, k); err != nil {
				t.Fatal(err)
			}
			st.values[prepKey(n, k)] = rt.Out.Values[prepKey(n, k)]
		}
	}
	rt.Out = &Outputs{}
	var objs []runtime.Object
	for _, n := range registered {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: n}}}})
	}
	c := fake.NewClientset(objs...)
	rt.Kube = c
	newCA, err := rt.newCA(context.Background(), CACluster)
	if err != nil {
		t.Fatal(err)
	}
	return rt, c, newCA
}

func TestKubeletCSRsRequestsTogether(t *testing.T) {
	nodes := []string{"cp1", "w1", "w2", "w3"}
	rt, c, newCA := csrFixture(t, nodes, nodes)
	total := 2 * len(nodes)
	batchSigner(t, c, newCA, total) // 8 requests, all in flight at once
	var mu sync.Mutex
	var progress []string
	rt.Progress = func(s string) { mu.Lock(); progress = append(progress, s); mu.Unlock() }

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := (KubeletCSRs{}).Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, n := range nodes {
		for _, name := range []string{csrKubeletClient, csrKubeletServing} {
			raw := rt.Out.Values[csrKey(n, name)]
			certs, err := pki.ParseCertsPEM(raw)
			if err != nil || len(certs) == 0 || !pki.IssuedBy(certs[0], newCA.Cert) {
				t.Errorf("%s of %s: %v (%d certificates)", name, n, err, len(certs))
			}
		}
	}
	// Reported in node order, whatever order they were signed in.
	if len(progress) != total || !strings.Contains(progress[0], "kubelet-client.crt of cp1") || !strings.Contains(progress[total-1], "kubelet-serving.crt of w3") {
		t.Errorf("progress:\n%s", strings.Join(progress, "\n"))
	}
}

// TestKubeletCSRsStopsAtTheFirstFailure: w3 has no Node object, so its
// serving request fails at once; the signer waits for all eight requests
// and so never signs. The other requests stop instead of waiting out
// their timeouts, and only the real failure is reported.
func TestKubeletCSRsStopsAtTheFirstFailure(t *testing.T) {
	nodes := []string{"cp1", "w1", "w2", "w3"}
	rt, c, newCA := csrFixture(t, nodes, nodes[:3])
	batchSigner(t, c, newCA, 2*len(nodes))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := (KubeletCSRs{}).Apply(ctx, rt, ClusterTarget)
	if err == nil || !strings.Contains(err.Error(), `"w3" not found`) || strings.Contains(err.Error(), "context") || ctx.Err() != nil {
		t.Fatalf("Apply = %v (test deadline: %v), want only w3's failure, before the deadline", err, ctx.Err())
	}
	if len(rt.Out.Values) != 0 {
		t.Errorf("stored %d certificates, want none", len(rt.Out.Values))
	}
}
