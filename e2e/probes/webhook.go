package probes

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The admission webhook the probe serves. The apiserver calls it on every
// dry-run create of a ConfigMap labelled webhookLabel in the probe
// namespace; the webhook probe makes such a create every second through
// every apiserver. Its serving certificate is issued by the cluster CA
// through the CSR API (the kubelet-serving signer, the one cluster-CA
// signer that issues server certificates) and the webhook configuration's
// caBundle is the cluster CA it was issued by — a webhook deployed the way
// many operators deploy theirs. A rotation must not break the apiserver's
// calls to it.
const (
	webhookName   = "rotate-probe.probe.rotate.e2e"
	webhookConfig = "rotate-probe"
	webhookLabel  = "probe.rotate.e2e/webhook"
	webhookCN     = "system:node:rotate-probe-webhook"
	webhookPath   = "/validate"
)

type webhookServer struct {
	ln    net.Listener
	srv   *http.Server
	calls atomic.Int64
	caPEM []byte // the CA that issued the serving certificate
	wg    sync.WaitGroup
}

// startWebhook gets a serving certificate for host through the CSR API,
// listens on addr and registers the ValidatingWebhookConfiguration.
func startWebhook(ctx context.Context, addr, namespace string, client kubernetes.Interface, log *slog.Logger) (*webhookServer, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("webhook address %q: %w", addr, err)
	}
	cert, caPEM, err := webhookCert(ctx, client, host)
	if err != nil {
		return nil, fmt.Errorf("webhook serving certificate: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("webhook server: %w", err)
	}
	w := &webhookServer{ln: ln, caPEM: caPEM}
	mux := http.NewServeMux()
	mux.HandleFunc(webhookPath, w.review)
	w.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}},
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		if err := w.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("webhook server", "err", err)
		}
	}()
	if err := w.register(ctx, client, namespace); err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

func (w *webhookServer) url() string { return "https://" + w.ln.Addr().String() + webhookPath }

func (w *webhookServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = w.srv.Shutdown(ctx)
	w.wg.Wait()
}

// review allows every request it can decode.
func (w *webhookServer) review(rw http.ResponseWriter, r *http.Request) {
	var ar admissionv1.AdmissionReview
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(body, &ar)
	}
	if err != nil || ar.Request == nil {
		http.Error(rw, "bad AdmissionReview", http.StatusBadRequest)
		return
	}
	w.calls.Add(1)
	ar.Response = &admissionv1.AdmissionResponse{UID: ar.Request.UID, Allowed: true}
	ar.Request = nil
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(&ar)
}

func (w *webhookServer) register(ctx context.Context, client kubernetes.Interface, namespace string) error {
	fail := admissionregistrationv1.Fail
	none := admissionregistrationv1.SideEffectClassNone
	timeout := int32(5)
	url := w.url()
	cfg := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: webhookConfig},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    webhookName,
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: w.caPEM},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}}}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": namespace}},
			ObjectSelector:          &metav1.LabelSelector{MatchLabels: map[string]string{webhookLabel: "true"}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	_, err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, cfg, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *admissionregistrationv1.ValidatingWebhookConfiguration
		if cur, err = client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, webhookConfig, metav1.GetOptions{}); err == nil {
			cfg.ResourceVersion = cur.ResourceVersion
			_, err = client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Update(ctx, cfg, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("register webhook: %w", err)
	}
	return nil
}

func unregisterWebhook(ctx context.Context, client kubernetes.Interface) error {
	err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(ctx, webhookConfig, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("unregister webhook: %w", err)
	}
	return nil
}

// webhookCert requests a serving certificate for host from the cluster
// CA through the CSR API, approves it (the probe acts as the operator)
// and returns it with the cluster CA from kube-root-ca.crt.
func webhookCert(ctx context.Context, client kubernetes.Interface, host string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: webhookCN, Organization: []string{"system:nodes"}}}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	name := fmt.Sprintf("rotate-probe-webhook-%d", time.Now().UnixNano())
	csr := &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: certificatesv1.KubeletServingSignerName,
			Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth},
		},
	}
	csrs := client.CertificatesV1().CertificateSigningRequests()
	if csr, err = csrs.Create(ctx, csr, metav1.CreateOptions{}); err != nil {
		return tls.Certificate{}, nil, err
	}
	defer csrs.Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: certificatesv1.CertificateApproved, Status: v1.ConditionTrue, Reason: "RotateProbe", Message: "the probe's own webhook",
	})
	if _, err := csrs.UpdateApproval(ctx, name, csr, metav1.UpdateOptions{}); err != nil {
		return tls.Certificate{}, nil, err
	}
	var certPEM []byte
	for certPEM == nil {
		got, err := csrs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return tls.Certificate{}, nil, err
		}
		certPEM = got.Status.Certificate
		if certPEM == nil {
			select {
			case <-ctx.Done():
				return tls.Certificate{}, nil, fmt.Errorf("CSR %s approved but never issued: %w", name, ctx.Err())
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cm, err := client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return cert, []byte(cm.Data["ca.crt"]), nil
}

// webhookBody is a ConfigMap the webhook is asked about (created with
// dryRun=All: nothing is stored).
func webhookBody() []byte {
	b, _ := json.Marshal(&v1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "webhook-probe-", Labels: map[string]string{webhookLabel: "true"}},
	})
	return b
}

// startWebhookProbe: through every apiserver and the LB, a dry-run create
// that the apiserver must send to the webhook; a failed webhook call
// (x509 when the caBundle no longer verifies the webhook's certificate)
// fails the create.
func (r *Runner) startWebhookProbe(ctx context.Context) {
	client := credClient(r.primary)
	body := webhookBody()
	for _, ep := range r.endpoints {
		(&check{r: r, probe: ProbeWebhook, target: "apiserver " + ep.name + " -> webhook", ep: ep,
			method: http.MethodPost, body: body,
			path: "/api/v1/namespaces/" + r.opts.Namespace + "/configmaps?dryRun=All", client: client}).run(ctx)
	}
}
