package kubecsr

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/pki/pkitest"
)

// signerMode is how the fake kube-controller-manager signer reacts to an
// approved CSR.
type signerMode int

const (
	signerAbsent   signerMode = iota // nothing happens: the request times out
	signerSigns                      // signs like the csrsigning controller
	signerFails                      // sets the Failed condition
	signerDeletes                    // deletes the CSR
	signerWrongKey                   // signs a certificate for another key
)

// startSigner plays the csrsigning controller: it watches CSRs and acts on
// approved ones without a certificate. It validates the request like the
// kube-apiserver-client-kubelet signer does before signing.
func startSigner(t *testing.T, c *fake.Clientset, ca *testCA, mode signerMode) {
	t.Helper()
	if mode == signerAbsent {
		return
	}
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
		for ev := range w.ResultChan() {
			csr, ok := ev.Object.(*certificatesv1.CertificateSigningRequest)
			if !ok || ev.Type == watch.Deleted || len(csr.Status.Certificate) > 0 || !hasCondition(csr, certificatesv1.CertificateApproved) || hasCondition(csr, certificatesv1.CertificateFailed) {
				continue
			}
			switch mode {
			case signerDeletes:
				_ = csrs.Delete(ctx, csr.Name, metav1.DeleteOptions{})
				continue
			case signerFails:
				csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
					Type: certificatesv1.CertificateFailed, Status: "True", Reason: "SignerValidationFailure", Message: "invalid usages"})
			case signerSigns, signerWrongKey:
				if mode == signerWrongKey {
					other, err := clientRequest(strings.TrimPrefix(csrSubject(csr), "system:node:")).pem(ecKey(t), nil)
					if err != nil {
						t.Error(err)
						continue
					}
					csr = csr.DeepCopy()
					csr.Spec.Request = other
				}
				der, err := signKubeletCSR(csr, ca)
				if err != nil {
					t.Errorf("fake signer: %v", err)
					continue
				}
				csr.Status.Certificate = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
			}
			if _, err := csrs.UpdateStatus(ctx, csr, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
				t.Errorf("fake signer: update status: %v", err)
			}
		}
	}()
}

func csrSubject(csr *certificatesv1.CertificateSigningRequest) string {
	b, _ := pem.Decode(csr.Spec.Request)
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return ""
	}
	return req.Subject.CommonName
}

func hasCondition(csr *certificatesv1.CertificateSigningRequest, typ certificatesv1.RequestConditionType) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == typ {
			return true
		}
	}
	return false
}

// signKubeletCSR checks the request as the kube-apiserver-client-kubelet
// or kubelet-serving signer does and signs it.
func signKubeletCSR(csr *certificatesv1.CertificateSigningRequest, ca *testCA) ([]byte, error) {
	serving := csr.Spec.SignerName == certificatesv1.KubeletServingSignerName
	if csr.Spec.SignerName != certificatesv1.KubeAPIServerClientKubeletSignerName && !serving {
		return nil, errors.New("wrong signer " + csr.Spec.SignerName)
	}
	auth, ext := certificatesv1.UsageClientAuth, x509.ExtKeyUsageClientAuth
	if serving {
		auth, ext = certificatesv1.UsageServerAuth, x509.ExtKeyUsageServerAuth
	}
	b, _ := pem.Decode(csr.Spec.Request)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("request is not PEM")
	}
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, err
	}
	if err := req.CheckSignature(); err != nil {
		return nil, err
	}
	if !reflect.DeepEqual(req.Subject.Organization, []string{"system:nodes"}) || !strings.HasPrefix(req.Subject.CommonName, "system:node:") ||
		len(req.EmailAddresses)+len(req.URIs) > 0 || (!serving && len(req.DNSNames)+len(req.IPAddresses) > 0) {
		return nil, errors.New("not a kubelet request: " + req.Subject.String())
	}
	usages := map[certificatesv1.KeyUsage]bool{}
	for _, u := range csr.Spec.Usages {
		usages[u] = true
	}
	ku := x509.KeyUsageDigitalSignature
	switch {
	case len(usages) == 2 && usages[certificatesv1.UsageDigitalSignature] && usages[auth]:
	case len(usages) == 3 && usages[certificatesv1.UsageDigitalSignature] && usages[auth] && usages[certificatesv1.UsageKeyEncipherment]:
		ku |= x509.KeyUsageKeyEncipherment
	default:
		return nil, errors.New("usages do not match a kubelet certificate")
	}
	notAfter := testNow.Add(365 * 24 * time.Hour)
	if csr.Spec.ExpirationSeconds != nil {
		notAfter = testNow.Add(time.Duration(*csr.Spec.ExpirationSeconds) * time.Second)
	}
	cert, err := ca.TryIssue(&x509.Certificate{
		Subject:     req.Subject,
		KeyUsage:    ku,
		ExtKeyUsage: []x509.ExtKeyUsage{ext},
		DNSNames:    req.DNSNames,
		IPAddresses: req.IPAddresses,
		NotAfter:    notAfter,
	}, req.PublicKey)
	if err != nil {
		return nil, err
	}
	return cert.Raw, nil
}

// existingCSR builds a CSR object as RequestKubeletClientCert would have.
func existingCSR(t *testing.T, name, node string, key crypto.Signer) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	req, err := clientRequest(node).pem(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    req,
			SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName,
			Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		},
	}
}

func TestRequestKubeletClientCert(t *testing.T) {
	ca := newTestCA(t, "kubernetes-2026")
	fixedKey := ecKey(t)
	rsaK := rsaKey(t, 2048)
	year := int32(3600 * 24 * 30)
	csrGVR := schema.GroupVersionResource{Group: "certificates.k8s.io", Version: "v1", Resource: "certificatesigningrequests"}

	type result struct {
		is  *pki.Issued
		c   *fake.Clientset
		err error
	}
	tests := []struct {
		name    string
		node    string
		objects []runtime.Object
		setup   func(t *testing.T, c *fake.Clientset)
		signer  signerMode
		opts    Options
		cancel  bool // cancel the caller's context right away
		wantErr string
		is      error
		check   func(t *testing.T, r result)
	}{
		{
			name: "signed", node: "worker-1", signer: signerSigns,
			check: func(t *testing.T, r result) {
				c := r.is.Cert
				if c.Subject.CommonName != "system:node:worker-1" || !reflect.DeepEqual(c.Subject.Organization, []string{"system:nodes"}) {
					t.Errorf("subject %s", c.Subject)
				}
				if !pki.IssuedBy(c, ca.Cert) || !pki.KeyMatches(c, r.is.Key) || pki.KeyShape(c.PublicKey) != "ECDSA-P-256" {
					t.Errorf("issued %s by %s, key %s", pki.Describe(c), c.Issuer, pki.KeyShape(c.PublicKey))
				}
				if pc, pk, err := pki.ParseKubeletPEM(cat(r.is.CertPEM, r.is.KeyPEM)); err != nil || !pc.Equal(c) || !pki.KeyMatches(pc, pk) {
					t.Errorf("PEM forms: %v", err)
				}
				list, _ := r.c.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
				if len(list.Items) != 1 {
					t.Fatalf("%d CSRs", len(list.Items))
				}
				obj := list.Items[0]
				if !strings.HasPrefix(obj.Name, "rotate-ca-worker-1-") || len(obj.Name) != len("rotate-ca-worker-1-")+8 {
					t.Errorf("name %q", obj.Name)
				}
				if obj.Labels[ManagedByLabel] != ManagedByValue {
					t.Errorf("labels %v", obj.Labels)
				}
				if obj.Spec.SignerName != "kubernetes.io/kube-apiserver-client-kubelet" || obj.Spec.ExpirationSeconds != nil {
					t.Errorf("spec signer %q expiration %v", obj.Spec.SignerName, obj.Spec.ExpirationSeconds)
				}
				if want := []certificatesv1.KeyUsage{"digital signature", "client auth"}; !reflect.DeepEqual(obj.Spec.Usages, want) {
					t.Errorf("usages %v, want %v", obj.Spec.Usages, want)
				}
				var approved []certificatesv1.CertificateSigningRequestCondition
				for _, cond := range obj.Status.Conditions {
					if cond.Type == certificatesv1.CertificateApproved {
						approved = append(approved, cond)
					}
				}
				if len(approved) != 1 || approved[0].Status != "True" || approved[0].Reason != "RotateCAReissue" || approved[0].Message == "" {
					t.Errorf("approval conditions %+v", approved)
				}
			},
		},
		{
			name: "RSA key, named, expiration", node: "cp1", signer: signerSigns,
			opts: Options{Name: "kubelet-cp1-rotation", Key: rsaK, ExpirationSeconds: &year},
			check: func(t *testing.T, r result) {
				if !pki.KeyMatches(r.is.Cert, rsaK) || r.is.Key != rsaK {
					t.Error("did not use the given key")
				}
				if r.is.Cert.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
					t.Errorf("key usage %b", r.is.Cert.KeyUsage)
				}
				obj, err := r.c.CertificatesV1().CertificateSigningRequests().Get(context.Background(), "kubelet-cp1-rotation", metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if want := []certificatesv1.KeyUsage{"digital signature", "key encipherment", "client auth"}; !reflect.DeepEqual(obj.Spec.Usages, want) {
					t.Errorf("usages %v, want %v", obj.Spec.Usages, want)
				}
				if obj.Spec.ExpirationSeconds == nil || *obj.Spec.ExpirationSeconds != year {
					t.Errorf("expirationSeconds %v", obj.Spec.ExpirationSeconds)
				}
				if want := testNow.Add(30 * 24 * time.Hour); !r.is.Cert.NotAfter.Equal(want) {
					t.Errorf("NotAfter %s, want %s", r.is.Cert.NotAfter, want)
				}
			},
		},
		{
			name: "resume: pending CSR for the same key", node: "worker-2", signer: signerSigns,
			objects: []runtime.Object{existingCSR(t, "resume-me", "worker-2", fixedKey)},
			opts:    Options{Name: "resume-me", Key: fixedKey},
			check: func(t *testing.T, r result) {
				if !pki.KeyMatches(r.is.Cert, fixedKey) {
					t.Error("certificate is not for the persisted key")
				}
			},
		},
		{
			name: "resume: already issued", node: "worker-2", signer: signerAbsent,
			objects: func() []runtime.Object {
				o := existingCSR(t, "done", "worker-2", fixedKey)
				o.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{Type: certificatesv1.CertificateApproved, Status: "True", Reason: ApprovalReason}}
				der, err := signKubeletCSR(o, ca)
				if err != nil {
					t.Fatal(err)
				}
				o.Status.Certificate = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
				return []runtime.Object{o}
			}(),
			opts: Options{Name: "done", Key: fixedKey, Timeout: time.Second},
			check: func(t *testing.T, r result) {
				if !pki.KeyMatches(r.is.Cert, fixedKey) || !pki.IssuedBy(r.is.Cert, ca.Cert) {
					t.Error("wrong certificate")
				}
			},
		},
		{
			name: "existing CSR for another key", node: "worker-2",
			objects: []runtime.Object{existingCSR(t, "taken", "worker-2", ecKey(t))},
			opts:    Options{Name: "taken", Key: fixedKey},
			wantErr: "request kubelet client certificate for node worker-2 (csr taken): certificate signing request exists for another key or subject: existing csr was made for a different public key",
			is:      ErrCSRConflict,
		},
		{
			name: "existing CSR for another node", node: "worker-2",
			objects: []runtime.Object{existingCSR(t, "taken", "worker-3", fixedKey)},
			opts:    Options{Name: "taken", Key: fixedKey},
			wantErr: `request kubelet client certificate for node worker-2 (csr taken): certificate signing request exists for another key or subject: existing csr is for "CN=system:node:worker-3,O=system:nodes", want CN=system:node:worker-2,O=system:nodes`,
			is:      ErrCSRConflict,
		},
		{
			name: "denied", node: "worker-1", signer: signerSigns, opts: Options{Name: "deny-me"},
			setup: func(t *testing.T, c *fake.Clientset) {
				// A policy controller denies the request as it is created.
				c.PrependReactor("create", "certificatesigningrequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
					o := a.(k8stesting.CreateAction).GetObject().(*certificatesv1.CertificateSigningRequest)
					o.Status.Conditions = append(o.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
						Type: certificatesv1.CertificateDenied, Status: "True", Reason: "PolicyDenied", Message: "nodes renew themselves"})
					return false, nil, nil
				})
			},
			wantErr: `request kubelet client certificate for node worker-1 (csr deny-me): approve: certificate signing request was denied (reason "PolicyDenied", message "nodes renew themselves")`,
			is:      ErrCSRDenied,
		},
		{
			name: "failed by the signer", node: "worker-1", signer: signerFails, opts: Options{Name: "fail-me"},
			wantErr: `request kubelet client certificate for node worker-1 (csr fail-me): certificate signing request failed (reason "SignerValidationFailure", message "invalid usages")`,
			is:      ErrCSRFailed,
		},
		{
			name: "timed out: no signer", node: "worker-1", signer: signerAbsent, opts: Options{Name: "nobody-signs", Timeout: 300 * time.Millisecond, PollInterval: 50 * time.Millisecond},
			wantErr: "request kubelet client certificate for node worker-1 (csr nobody-signs): timed out waiting for the certificate after 300ms: the csr is approved but has no certificate; is the kube-controller-manager signing kubernetes.io/kube-apiserver-client-kubelet? (context deadline exceeded)",
			is:      ErrCSRTimeout,
		},
		{
			name: "signer returns a certificate for another key", node: "worker-1", signer: signerWrongKey, opts: Options{Name: "odd"},
			wantErr: "request kubelet client certificate for node worker-1 (csr odd): issued certificate CN=system:node:worker-1 (sha256 ",
			is:      pki.ErrKeyMismatch,
		},
		{
			name: "deleted while waiting", node: "worker-1", signer: signerDeletes, opts: Options{Name: "gone"},
			wantErr: "request kubelet client certificate for node worker-1 (csr gone): csr was deleted",
		},
		{
			name: "approval forbidden", node: "worker-1", opts: Options{Name: "no-rbac"},
			setup: func(t *testing.T, c *fake.Clientset) {
				c.PrependReactor("update", "certificatesigningrequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
					if a.GetSubresource() != "approval" {
						return false, nil, nil
					}
					return true, nil, apierrors.NewForbidden(csrGVR.GroupResource(), "no-rbac", errors.New(`user "ops" cannot approve signer`))
				})
			},
			wantErr: "request kubelet client certificate for node worker-1 (csr no-rbac): approve: certificatesigningrequests.certificates.k8s.io \"no-rbac\" is forbidden: user \"ops\" cannot approve signer",
		},
		{
			name: "create fails", node: "worker-1", opts: Options{Name: "x"},
			setup: func(t *testing.T, c *fake.Clientset) {
				c.PrependReactor("create", "certificatesigningrequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, apierrors.NewServiceUnavailable("etcd is down")
				})
			},
			wantErr: "request kubelet client certificate for node worker-1 (csr x): create csr: etcd is down",
		},
		{
			name: "watch unavailable: polls", node: "worker-1", signer: signerSigns, opts: Options{PollInterval: 20 * time.Millisecond},
			setup: func(t *testing.T, c *fake.Clientset) {
				c.PrependWatchReactor("certificatesigningrequests", func(a k8stesting.Action) (bool, watch.Interface, error) {
					if a.(k8stesting.WatchAction).GetWatchRestrictions().Fields.String() == "" {
						return false, nil, nil // the fake signer's own watch
					}
					return true, nil, apierrors.NewMethodNotSupported(csrGVR.GroupResource(), "watch")
				})
			},
			check: func(t *testing.T, r result) {
				if !pki.IssuedBy(r.is.Cert, ca.Cert) {
					t.Error("not issued by the pki.CA")
				}
			},
		},
		{
			name: "watch closes at once: re-reads", node: "worker-1", signer: signerSigns, opts: Options{PollInterval: 20 * time.Millisecond},
			setup: func(t *testing.T, c *fake.Clientset) {
				c.PrependWatchReactor("certificatesigningrequests", func(a k8stesting.Action) (bool, watch.Interface, error) {
					if a.(k8stesting.WatchAction).GetWatchRestrictions().Fields.String() == "" {
						return false, nil, nil
					}
					return true, watch.NewEmptyWatch(), nil
				})
			},
			check: func(t *testing.T, r result) {
				if !pki.IssuedBy(r.is.Cert, ca.Cert) {
					t.Error("not issued by the pki.CA")
				}
			},
		},
		{
			name: "caller cancels", node: "worker-1", signer: signerAbsent, opts: Options{Name: "cancelled"}, cancel: true,
			wantErr: "request kubelet client certificate for node worker-1 (csr cancelled): wait for certificate: context canceled",
			is:      context.Canceled,
		},
		{name: "empty node", node: "", wantErr: "request kubelet client certificate: node name is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClientset(tt.objects...)
			if tt.setup != nil {
				tt.setup(t, c)
			}
			startSigner(t, c, ca, tt.signer)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				cancel()
			}
			opts := tt.opts
			if opts.Timeout == 0 {
				opts.Timeout = 5 * time.Second
			}
			start := time.Now()
			is, err := RequestKubeletClientCert(ctx, c, tt.node, opts)
			if time.Since(start) > 4*time.Second {
				t.Errorf("took %s", time.Since(start))
			}
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr && !(strings.HasSuffix(tt.wantErr, "(sha256 ") && strings.HasPrefix(err.Error(), tt.wantErr)) {
					t.Fatalf("err = %v\nwant  %s", err, tt.wantErr)
				}
				if tt.is != nil && !errors.Is(err, tt.is) {
					t.Fatalf("errors.Is(%v, %v) = false", err, tt.is)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, result{is: is, c: c, err: err})
			}
		})
	}
	t.Run("nil client", func(t *testing.T) {
		_, err := RequestKubeletClientCert(context.Background(), nil, "n", Options{})
		if err == nil || err.Error() != "request kubelet client certificate for node n: nil client" {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestDefaultCSRName(t *testing.T) {
	tests := []struct {
		node, prefix string
		length       int
	}{
		{"worker-1", "rotate-ca-worker-1-", len("rotate-ca-worker-1-") + 8},
		{"CP1.Example.Test", "rotate-ca-cp1.example.test-", len("rotate-ca-cp1.example.test-") + 8},
		{strings.Repeat("a", 300), "rotate-ca-aaaa", 253},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			n, err := defaultCSRName(tt.node, orRand(nil))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(n, tt.prefix) || len(n) != tt.length {
				t.Fatalf("name %q (%d bytes)", n, len(n))
			}
		})
	}
}

// testNow is the fixed "now" of the tests: the test CA's clock.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type testCA = pkitest.CA

func newTestCA(t testing.TB, cn string) *testCA {
	t.Helper()
	return pkitest.NewCA(t, cn, pkitest.Options{Now: func() time.Time { return testNow }})
}

var (
	ecKey  = pkitest.ECKey
	rsaKey = pkitest.RSAKey
)

func cat(a, b []byte) []byte { return append(append([]byte{}, a...), b...) }

// TestOptionsFormat: no fmt verb and no JSON shows the key.
func TestOptionsFormat(t *testing.T) {
	key := rsaKey(t, 2048)
	o := Options{Name: "x", Key: key}
	keyPEM := pkitest.KeyPEM(t, key)
	der, _ := pem.Decode(keyPEM)
	j, err := json.Marshal(struct{ O Options }{o})
	if err != nil {
		t.Fatal(err)
	}
	outs := []string{strings.ReplaceAll(string(j), `\u003c`, "<")}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		outs = append(outs, fmt.Sprintf(verb, o), fmt.Sprintf(verb, &o))
	}
	for _, out := range outs {
		if strings.Contains(out, "PRIVATE") || strings.Contains(out, fmt.Sprintf("%x", der.Bytes[:16])) || !strings.Contains(out, "Key: <redacted") {
			t.Errorf("Options shows as %s", out)
		}
	}
}

// TestRequestKubeletServingCert: a serving certificate for the node's own
// names, from the kubelet-serving signer; a name the Node does not report
// is refused before any CSR exists; a second call reuses the CSR.
func TestRequestKubeletServingCert(t *testing.T) {
	ca := newTestCA(t, "kubernetes-2026")
	key := ecKey(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "10.0.0.21"}, {Type: corev1.NodeHostName, Address: "worker-1"}}}}
	c := fake.NewSimpleClientset(node)
	startSigner(t, c, ca, signerSigns)
	ctx := context.Background()
	opts := Options{Name: "rotate-20261130-worker-1-serving", Key: key, Timeout: 10 * time.Second, PollInterval: 10 * time.Millisecond}
	is, err := RequestKubeletServingCert(ctx, c, "worker-1", []string{"worker-1"}, []net.IP{net.ParseIP("10.0.0.21")}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !pki.IssuedBy(is.Cert, ca.Cert) || !pki.KeyMatches(is.Cert, key) {
		t.Fatalf("issued %s", pki.Describe(is.Cert))
	}
	if !reflect.DeepEqual(is.Cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || !reflect.DeepEqual(is.Cert.DNSNames, []string{"worker-1"}) ||
		len(is.Cert.IPAddresses) != 1 || !is.Cert.IPAddresses[0].Equal(net.ParseIP("10.0.0.21")) {
		t.Errorf("usages %v, names %v %v", is.Cert.ExtKeyUsage, is.Cert.DNSNames, is.Cert.IPAddresses)
	}
	obj, err := c.CertificatesV1().CertificateSigningRequests().Get(ctx, opts.Name, metav1.GetOptions{})
	if err != nil || obj.Spec.SignerName != "kubernetes.io/kubelet-serving" {
		t.Fatalf("csr %v, %v", obj, err)
	}
	again, err := RequestKubeletServingCert(ctx, c, "worker-1", []string{"worker-1"}, []net.IP{net.ParseIP("10.0.0.21")}, opts)
	if err != nil || !again.Cert.Equal(is.Cert) {
		t.Fatalf("second call: %v (same certificate: %v)", err, err == nil && again.Cert.Equal(is.Cert))
	}
	_, err = RequestKubeletServingCert(ctx, c, "worker-1", []string{"worker-1"}, []net.IP{net.ParseIP("10.0.0.99")},
		Options{Name: "rotate-other", Key: key, Timeout: 5 * time.Second})
	if !errors.Is(err, ErrNotNodeName) {
		t.Fatalf("a foreign address: %v, want ErrNotNodeName", err)
	}
	if _, err := c.CertificatesV1().CertificateSigningRequests().Get(ctx, "rotate-other", metav1.GetOptions{}); err == nil {
		t.Fatal("a CSR for a foreign address was created")
	}
}
