// Package kubecsr obtains kubelet certificates through the Kubernetes CSR
// API the way the kubelet does — a client certificate from signer
// kubernetes.io/kube-apiserver-client-kubelet, a serving certificate from
// kubernetes.io/kubelet-serving — but with a key the caller prepared and
// approving the request itself after the checks an approver makes. rotate
// re-issues the certificates of kubelets that rotate their certificates
// this way once the controller-manager signs with the new CA; the e2e
// suite checks with it that the signer switched.
package kubecsr

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kubeca/rotate/internal/waits"
	"github.com/kubeca/rotate/pki"
)

// CSR API constants.
const (
	// blockCertRequest is the PEM type of a certificate request.
	blockCertRequest = "CERTIFICATE REQUEST"

	// KubeletClientSignerName is the signer kubelet client certificates are
	// requested from; the kube-controller-manager csrsigning controller signs
	// approved requests with its --cluster-signing-cert-file.
	KubeletClientSignerName = certificatesv1.KubeAPIServerClientKubeletSignerName
	// ApprovalReason is the reason of the Approved condition this package sets.
	ApprovalReason = "RotateCAReissue"
	// ManagedByLabel marks CSR objects created by this package.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of ManagedByLabel.
	ManagedByValue = "kubeca-rotate"

	// DefaultCSRTimeout bounds RequestKubeletClientCert when Options.Timeout is 0.
	DefaultCSRTimeout = 5 * time.Minute
	// DefaultCSRPollInterval is the pause between watch sessions and the poll
	// period when watching is not possible.
	DefaultCSRPollInterval = 2 * time.Second
)

// Errors of the CSR path, for errors.Is.
var (
	ErrCSRDenied   = errors.New("certificate signing request was denied")
	ErrCSRFailed   = errors.New("certificate signing request failed")
	ErrCSRTimeout  = errors.New("timed out waiting for the certificate")
	ErrCSRConflict = errors.New("certificate signing request exists for another key or subject")
)

// Options configures RequestKubeletClientCert.
type Options struct {
	// Name of the CSR object. Default: "rotate-ca-<node>-<random hex>".
	Name string
	// ExpirationSeconds requests a lifetime (spec.expirationSeconds); the
	// signer may shorten it to its --cluster-signing-duration.
	ExpirationSeconds *int32
	// PollInterval is the pause between watch sessions and the poll period
	// when a watch cannot be opened. Default DefaultCSRPollInterval.
	PollInterval time.Duration
	// Timeout bounds the whole request. Default DefaultCSRTimeout.
	Timeout time.Duration
	// Key, when set, is used instead of a new ECDSA P-256 key. A caller that
	// persists Key and Name before calling can resume: an existing CSR of
	// that name is reused only if it was made for the same key and node.
	Key  crypto.Signer
	Rand io.Reader // nil: crypto/rand
}

// RequestKubeletClientCert obtains a kubelet client certificate for nodeName
// through the CSR API, as kubelet's bootstrap does, but approving the request
// itself:
//
//  1. create a CertificateSigningRequest (CN system:node:<node>, O
//     system:nodes; signer kubernetes.io/kube-apiserver-client-kubelet;
//     usages digital signature and client auth, plus key encipherment for an
//     RSA key, exactly as kubelet asks), or reuse one of the same name made
//     for the same key;
//  2. approve it (condition Approved, reason ApprovalReason) through the
//     approval subresource, retrying on conflicts;
//  3. watch it by name until status.certificate is set, re-reading it
//     whenever a watch ends, polling if no watch can be opened; a Denied or
//     Failed condition ends the wait with ErrCSRDenied or ErrCSRFailed, the
//     timeout with ErrCSRTimeout.
//
// The certificate is issued by whatever pki.CA the controller-manager signs with;
// check the result with pki.IssuedBy. Callers need create/get/watch on
// certificatesigningrequests, update on certificatesigningrequests/approval
// and approve on the signer.
func RequestKubeletClientCert(ctx context.Context, c kubernetes.Interface, nodeName string, opts Options) (*pki.Issued, error) {
	if err := pki.ValidNodeName(nodeName); err != nil {
		return nil, fmt.Errorf("request kubelet client certificate: %w", err)
	}
	if c == nil {
		return nil, fmt.Errorf("request kubelet client certificate for node %s: nil client", nodeName)
	}
	r := orRand(opts.Rand)
	name := opts.Name
	if name == "" {
		var err error
		if name, err = defaultCSRName(nodeName, r); err != nil {
			return nil, fmt.Errorf("request kubelet client certificate for node %s: %w", nodeName, err)
		}
	}
	is, err := requestKubeletClientCert(ctx, c, nodeName, name, opts, r)
	if err != nil {
		return nil, fmt.Errorf("request kubelet client certificate for node %s (csr %s): %w", nodeName, name, err)
	}
	return is, nil
}

// request is one certificate request: whom it is for, from which signer,
// and the approval message.
type request struct {
	node    string
	signer  string
	subject pkix.Name
	dns     []string
	ips     []net.IP
	usage   certificatesv1.KeyUsage // client auth or server auth
	message string
}

// KubeletServingSignerName is the signer of kubelet serving certificates.
const KubeletServingSignerName = certificatesv1.KubeletServingSignerName

// RequestKubeletServingCert obtains a serving certificate for the kubelet
// of nodeName with the given subject alternative names through the CSR
// API (signer kubernetes.io/kubelet-serving), as a kubelet with
// serverTLSBootstrap: true asks for one, and approves it after the checks
// kubeadm's documentation asks of an approver: subject system:node:NAME in
// system:nodes, server-auth usage, and every name and address one the Node
// reports for itself (status.addresses). Like RequestKubeletClientCert it
// reuses a CSR of the same name made for the same key and names.
func RequestKubeletServingCert(ctx context.Context, c kubernetes.Interface, nodeName string, dnsNames []string, ips []net.IP, opts Options) (*pki.Issued, error) {
	if err := pki.ValidNodeName(nodeName); err != nil {
		return nil, fmt.Errorf("request kubelet serving certificate: %w", err)
	}
	if c == nil {
		return nil, fmt.Errorf("request kubelet serving certificate for node %s: nil client", nodeName)
	}
	if len(dnsNames)+len(ips) == 0 {
		return nil, fmt.Errorf("request kubelet serving certificate for node %s: no subject alternative names", nodeName)
	}
	if err := nodeOwnsNames(ctx, c, nodeName, dnsNames, ips); err != nil {
		return nil, fmt.Errorf("request kubelet serving certificate for node %s: %w", nodeName, err)
	}
	r := orRand(opts.Rand)
	name := opts.Name
	if name == "" {
		var err error
		if name, err = defaultCSRName(nodeName, r); err != nil {
			return nil, fmt.Errorf("request kubelet serving certificate for node %s: %w", nodeName, err)
		}
	}
	q := request{node: nodeName, signer: KubeletServingSignerName, subject: pki.KubeletSubject(nodeName),
		dns: dnsNames, ips: ips, usage: certificatesv1.UsageServerAuth,
		message: "approved by kubeca rotate to re-issue the kubelet serving certificate from the new cluster CA: the node's own names and addresses"}
	is, err := do(ctx, c, q, name, opts, r)
	if err != nil {
		return nil, fmt.Errorf("request kubelet serving certificate for node %s (csr %s): %w", nodeName, name, err)
	}
	return is, nil
}

// ErrNotNodeName: a subject alternative name the Node does not report as
// its own; an approver must not sign it.
var ErrNotNodeName = errors.New("not a name or address of the node")

// nodeOwnsNames checks every SAN against the Node's status.addresses.
func nodeOwnsNames(ctx context.Context, c kubernetes.Interface, nodeName string, dnsNames []string, ips []net.IP) error {
	n, err := c.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read Node: %w", err)
	}
	own := map[string]bool{}
	for _, a := range n.Status.Addresses {
		own[a.Address] = true
		if ip := net.ParseIP(a.Address); ip != nil {
			own[ip.String()] = true
		}
	}
	for _, d := range dnsNames {
		if !own[d] {
			return fmt.Errorf("DNS name %q: %w", d, ErrNotNodeName)
		}
	}
	for _, ip := range ips {
		if !own[ip.String()] {
			return fmt.Errorf("IP address %s: %w", ip, ErrNotNodeName)
		}
	}
	return nil
}

func clientRequest(nodeName string) request {
	return request{node: nodeName, signer: KubeletClientSignerName, subject: pki.KubeletSubject(nodeName),
		usage:   certificatesv1.UsageClientAuth,
		message: "approved by kubeca rotate to re-issue the kubelet client certificate from the new cluster CA"}
}

// usages are what the kubelet asks for: digital signature and the auth
// usage, plus key encipherment for an RSA key.
func (q request) usages(key crypto.Signer) []certificatesv1.KeyUsage {
	if isRSA(key) {
		return []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, q.usage}
	}
	return []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, q.usage}
}

func requestKubeletClientCert(ctx context.Context, c kubernetes.Interface, nodeName, name string, opts Options, r io.Reader) (*pki.Issued, error) {
	return do(ctx, c, clientRequest(nodeName), name, opts, r)
}

// do creates (or reuses) the CSR name for q, approves it and waits for the
// certificate, which must match the key and the subject.
func do(ctx context.Context, c kubernetes.Interface, q request, name string, opts Options, r io.Reader) (*pki.Issued, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultCSRTimeout
	}
	poll := opts.PollInterval
	if poll <= 0 {
		poll = DefaultCSRPollInterval
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	key := opts.Key
	if key == nil {
		var err error
		if key, err = pki.GenerateKey(pki.ECDSAP256, r); err != nil {
			return nil, fmt.Errorf("new key: %w", err)
		}
	}
	reqPEM, err := q.pem(key, r)
	if err != nil {
		return nil, err
	}
	csrs := c.CertificatesV1().CertificateSigningRequests()
	obj := &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{ManagedByLabel: ManagedByValue},
		},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:           reqPEM,
			SignerName:        q.signer,
			Usages:            q.usages(key),
			ExpirationSeconds: opts.ExpirationSeconds,
		},
	}
	created, err := csrs.Create(ctx, obj, metav1.CreateOptions{})
	switch {
	case err == nil:
	case apierrors.IsAlreadyExists(err):
		if created, err = csrs.Get(ctx, name, metav1.GetOptions{}); err != nil {
			return nil, fmt.Errorf("get existing csr: %w", ctxErr(ctx, timeout, err))
		}
		if err := q.compatible(created, key); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("create csr: %w", ctxErr(ctx, timeout, err))
	}
	uid := created.UID

	if err := approve(ctx, c, name, uid, q.message); err != nil {
		return nil, ctxErr(ctx, timeout, err)
	}
	endWait := waits.Start(ctx, waits.Cluster) // the controller-manager signs
	certPEM, err := waitIssued(ctx, c, name, uid, poll)
	endWait()
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w after %s: the csr is approved but has no certificate; is the kube-controller-manager signing %s? (%w)",
				ErrCSRTimeout, timeout, q.signer, err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wait for certificate: %w", err)
		}
		return nil, err
	}
	certs, err := pki.ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	if !pki.KeyMatches(certs[0], key) {
		return nil, fmt.Errorf("issued certificate %s: %w", pki.Describe(certs[0]), pki.ErrKeyMismatch)
	}
	if want := q.subject.CommonName; certs[0].Subject.CommonName != want {
		return nil, fmt.Errorf("issued certificate %s: want CN=%s", pki.Describe(certs[0]), want)
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	return &pki.Issued{Cert: certs[0], Key: key, CertPEM: pki.EncodeCertsPEM(certs...), KeyPEM: keyPEM}, nil
}

// ctxErr marks an error caused by the request's deadline with ErrCSRTimeout.
func ctxErr(ctx context.Context, timeout time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w after %s: %w", ErrCSRTimeout, timeout, err)
	}
	return err
}

// defaultCSRName is "rotate-ca-<node>-<8 hex digits>", at most 253 bytes.
func defaultCSRName(nodeName string, r io.Reader) (string, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("generate csr name: %w", err)
	}
	node := strings.ToLower(nodeName)
	const prefix, max = "rotate-ca-", 253
	if room := max - len(prefix) - 1 - 2*len(b); len(node) > room {
		node = node[:room]
	}
	return prefix + node + "-" + hex.EncodeToString(b[:]), nil
}

// pem is the PKCS#10 request the kubelet would send for q.
func (q request) pem(key crypto.Signer, r io.Reader) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(r, &x509.CertificateRequest{Subject: q.subject, DNSNames: q.dns, IPAddresses: q.ips}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: blockCertRequest, Bytes: der}), nil
}

// compatible checks that an existing CSR was made for q and key.
func (q request) compatible(csr *certificatesv1.CertificateSigningRequest, key crypto.Signer) error {
	nodeName := q.node
	if csr.Spec.SignerName != q.signer {
		return fmt.Errorf("%w: existing csr has signer %q", ErrCSRConflict, csr.Spec.SignerName)
	}
	b, _ := pem.Decode(csr.Spec.Request)
	if b == nil || b.Type != blockCertRequest {
		return fmt.Errorf("%w: existing csr request is not a PEM certificate request", ErrCSRConflict)
	}
	req, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return fmt.Errorf("%w: parse existing csr request: %w", ErrCSRConflict, err)
	}
	if want := pki.NodeUserPrefix + nodeName; req.Subject.CommonName != want ||
		len(req.Subject.Organization) != 1 || req.Subject.Organization[0] != pki.NodesGroup {
		return fmt.Errorf("%w: existing csr is for %q, want CN=%s,O=%s", ErrCSRConflict, req.Subject.String(), want, pki.NodesGroup)
	}
	pub, ok := req.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return fmt.Errorf("%w: existing csr was made for a different public key", ErrCSRConflict)
	}
	if !sameStrings(req.DNSNames, q.dns) || !sameIPs(req.IPAddresses, q.ips) {
		return fmt.Errorf("%w: existing csr has other subject alternative names", ErrCSRConflict)
	}
	return nil
}

func sameStrings(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func sameIPs(a, b []net.IP) bool {
	str := func(ips []net.IP) []string {
		var out []string
		for _, ip := range ips {
			out = append(out, ip.String())
		}
		return out
	}
	return sameStrings(str(a), str(b))
}

// state classifies a CSR: issued certificate, terminal error, or pending.
func state(csr *certificatesv1.CertificateSigningRequest, uid types.UID) (cert []byte, approved bool, err error) {
	if uid != "" && csr.UID != "" && csr.UID != uid {
		return nil, false, fmt.Errorf("csr was deleted and re-created (uid %s, want %s)", csr.UID, uid)
	}
	for _, cond := range csr.Status.Conditions {
		switch cond.Type {
		case certificatesv1.CertificateDenied:
			return nil, false, fmt.Errorf("%w (reason %q, message %q)", ErrCSRDenied, cond.Reason, cond.Message)
		case certificatesv1.CertificateFailed:
			return nil, false, fmt.Errorf("%w (reason %q, message %q)", ErrCSRFailed, cond.Reason, cond.Message)
		case certificatesv1.CertificateApproved:
			approved = true
		}
	}
	if approved && len(csr.Status.Certificate) > 0 {
		return csr.Status.Certificate, true, nil
	}
	return nil, approved, nil
}

// approve adds the Approved condition unless present; denied or failed
// requests are errors.
func approve(ctx context.Context, c kubernetes.Interface, name string, uid types.UID, message string) error {
	csrs := c.CertificatesV1().CertificateSigningRequests()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := csrs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		_, approved, err := state(cur, uid)
		if err != nil || approved {
			return err
		}
		cur.Status.Conditions = append(cur.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type:    certificatesv1.CertificateApproved,
			Status:  "True",
			Reason:  ApprovalReason,
			Message: message,
		})
		_, err = csrs.UpdateApproval(ctx, name, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("approve: %w", err)
	}
	return nil
}

// waitIssued waits until the CSR carries a certificate. Each round opens a
// watch on the name, then reads the object (so nothing between read and
// watch is missed), then follows the watch until it ends; rounds are
// PollInterval apart. Without a watch it degrades to polling.
func waitIssued(ctx context.Context, c kubernetes.Interface, name string, uid types.UID, poll time.Duration) ([]byte, error) {
	csrs := c.CertificatesV1().CertificateSigningRequests()
	selector := fields.OneTermEqualSelector("metadata.name", name).String()
	var lastErr error
	for round := 0; ; round++ {
		if round > 0 {
			t := time.NewTimer(poll)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, waitErr(ctx, lastErr)
			case <-t.C:
			}
		}
		w, werr := csrs.Watch(ctx, metav1.ListOptions{FieldSelector: selector})
		if werr != nil {
			w, lastErr = nil, fmt.Errorf("watch: %w", werr)
		}
		cur, err := csrs.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			stop(w)
			return nil, errors.New("csr was deleted")
		case err != nil:
			stop(w)
			lastErr = fmt.Errorf("get: %w", err)
			if ctx.Err() != nil {
				return nil, waitErr(ctx, lastErr)
			}
			continue
		}
		cert, _, err := state(cur, uid)
		if err != nil || cert != nil {
			stop(w)
			return cert, err
		}
		if w == nil {
			continue
		}
		cert, err = follow(ctx, w, name, uid)
		w.Stop()
		if err != nil || cert != nil {
			return cert, err
		}
		if ctx.Err() != nil {
			return nil, waitErr(ctx, lastErr)
		}
	}
}

// follow reads w until the CSR is issued or terminal (returned), or the
// watch ends or ctx is done (nil, nil).
func follow(ctx context.Context, w watch.Interface, name string, uid types.UID) ([]byte, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, nil
			}
			csr, isCSR := ev.Object.(*certificatesv1.CertificateSigningRequest)
			switch {
			case ev.Type == watch.Error:
				return nil, nil // e.g. resource version too old: re-read and re-watch
			case !isCSR || csr.Name != name:
				continue // bookmarks, and other objects when the field selector is not honoured
			case ev.Type == watch.Deleted:
				return nil, errors.New("csr was deleted")
			}
			if cert, _, err := state(csr, uid); err != nil || cert != nil {
				return cert, err
			}
		}
	}
}

// waitErr reports why waiting stopped: ctx's error and the last API error.
func waitErr(ctx context.Context, last error) error {
	if last != nil {
		return fmt.Errorf("%w (last API error: %v)", ctx.Err(), last)
	}
	return ctx.Err()
}

func stop(w watch.Interface) {
	if w != nil {
		w.Stop()
	}
}

// String describes the options without key material.
func (o Options) String() string {
	exp := "<nil>"
	if o.ExpirationSeconds != nil {
		exp = fmt.Sprint(*o.ExpirationSeconds)
	}
	return fmt.Sprintf("csr.Options{Name: %q, ExpirationSeconds: %s, PollInterval: %s, Timeout: %s, Key: %s, Rand: %s}",
		o.Name, exp, o.PollInterval, o.Timeout, pki.RedactedIf(o.Key != nil), randSet(o.Rand != nil))
}

// Format keeps Key out of every fmt verb.
func (o Options) Format(f fmt.State, verb rune) { pki.FormatRedacted(f, verb, o.String(), o.String()) }

func orRand(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}

func isRSA(key crypto.Signer) bool {
	_, ok := key.Public().(*rsa.PublicKey)
	return ok
}

func randSet(set bool) string {
	if set {
		return "<set>"
	}
	return "<nil>"
}

// MarshalJSON encodes String: Key stays out (persist it with pki.EncodeKeyPEM).
func (o Options) MarshalJSON() ([]byte, error) { return json.Marshal(o.String()) }
