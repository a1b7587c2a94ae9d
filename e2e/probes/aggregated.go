package probes

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// The aggregated API the probe serves.
const (
	APIGroup        = "probe.rotate.e2e"
	APIVersion      = "v1alpha1"
	apiServiceName  = APIVersion + "." + APIGroup
	aggServiceName  = "prober-api"
	aggDiscovery    = "/apis/" + APIGroup + "/" + APIVersion
	authConfigMapNS = "kube-system"
	authConfigMap   = "extension-apiserver-authentication"
)

// frontProxyAuth is the request-header authentication configuration an
// aggregated server reads from extension-apiserver-authentication.
type frontProxyAuth struct {
	pool            *x509.CertPool
	caIDs           string
	allowedNames    []string
	usernameHeaders []string
	groupHeaders    []string
	sum             [32]byte
}

// parseFrontProxyAuth reads the requestheader-* keys of the ConfigMap.
func parseFrontProxyAuth(data map[string]string) (*frontProxyAuth, error) {
	caPEM := data["requestheader-client-ca-file"]
	if caPEM == "" {
		return nil, errors.New("requestheader-client-ca-file is empty")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("requestheader-client-ca-file holds no certificate")
	}
	a := &frontProxyAuth{pool: pool, caIDs: certIDs([]byte(caPEM))}
	for key, dst := range map[string]*[]string{
		"requestheader-allowed-names":    &a.allowedNames,
		"requestheader-username-headers": &a.usernameHeaders,
		"requestheader-group-headers":    &a.groupHeaders,
	} {
		if v := data[key]; v != "" {
			if err := json.Unmarshal([]byte(v), dst); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
		}
	}
	if len(a.usernameHeaders) == 0 {
		a.usernameHeaders = []string{"X-Remote-User"}
	}
	h := sha256.New()
	for _, k := range []string{"requestheader-client-ca-file", "requestheader-allowed-names", "requestheader-username-headers", "requestheader-group-headers"} {
		h.Write([]byte(k + "=" + data[k] + "\x00"))
	}
	copy(a.sum[:], h.Sum(nil))
	return a, nil
}

// authenticate checks a request like k8s.io/apiserver's request-header
// authenticator: the client certificate must chain to the requestheader
// CA with client-auth usage and carry an allowed common name; the user is
// then read from the username header.
func (a *frontProxyAuth) authenticate(r *http.Request) (string, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", fmt.Errorf("verifying front-proxy client certificate %q against requestheader-client-ca-file %s: %w", leaf.Subject.CommonName, a.caIDs, err)
	}
	if len(a.allowedNames) > 0 && !slices.Contains(a.allowedNames, leaf.Subject.CommonName) {
		return "", fmt.Errorf("client certificate CN %q not in requestheader-allowed-names %v", leaf.Subject.CommonName, a.allowedNames)
	}
	for _, h := range a.usernameHeaders {
		if u := r.Header.Get(h); u != "" {
			return u, nil
		}
	}
	return "", fmt.Errorf("no user in %v", a.usernameHeaders)
}

// aggServer is the probe's aggregated API server.
type aggServer struct {
	ln    net.Listener
	srv   *http.Server
	caPEM []byte
	log   *slog.Logger

	mu   sync.RWMutex
	auth *frontProxyAuth

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startAggServer listens on addr with a fresh self-signed serving CA,
// loads the front-proxy authentication configuration (and keeps it
// current: it is polled every second, as real aggregated servers follow
// the ConfigMap) and serves.
func startAggServer(ctx context.Context, addr, namespace string, kube func() (kubernetes.Interface, error), log *slog.Logger) (*aggServer, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("aggregator address %q: %w", addr, err)
	}
	caPEM, cert, err := servingCert(host, namespace)
	if err != nil {
		return nil, err
	}
	s := &aggServer{caPEM: caPEM, log: log}
	if err := s.reloadAuth(ctx, kube); err != nil {
		return nil, fmt.Errorf("aggregated server: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("aggregated server: %w", err)
	}
	s.ln = ln
	ctx, s.cancel = context.WithCancel(ctx)
	s.srv = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			// Like k8s.io/apiserver: ask for a certificate, verify it in
			// the authenticator (so a bad one is a 401, not a handshake
			// failure).
			ClientAuth: tls.RequestClientCert,
		},
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("aggregated server", "err", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := s.reloadAuth(ctx, kube); err != nil && ctx.Err() == nil {
					log.Debug("aggregated server: reload front-proxy config", "err", err)
				}
			}
		}
	}()
	return s, nil
}

func (s *aggServer) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *aggServer) host() string { return s.ln.Addr().(*net.TCPAddr).IP.String() }

func (s *aggServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s.cancel()
	_ = s.srv.Shutdown(ctx)
	s.wg.Wait()
}

func (s *aggServer) reloadAuth(ctx context.Context, kube func() (kubernetes.Interface, error)) error {
	client, err := kube()
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cm, err := client.CoreV1().ConfigMaps(authConfigMapNS).Get(rctx, authConfigMap, metav1.GetOptions{})
	if err != nil {
		return err
	}
	a, err := parseFrontProxyAuth(cm.Data)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.auth == nil || s.auth.sum != a.sum {
		s.log.Info("aggregated server: front-proxy configuration loaded", "requestheaderCA", a.caIDs, "allowedNames", a.allowedNames)
		s.auth = a
	}
	return nil
}

func (s *aggServer) handler() http.Handler {
	mux := http.NewServeMux()
	for _, p := range []string{"/healthz", "/readyz", "/livez"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	}
	mux.HandleFunc("/apis", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, apiGroupList())
	})
	mux.HandleFunc("/apis/"+APIGroup, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, apiGroup())
	})
	mux.HandleFunc(aggDiscovery, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": APIGroup + "/" + APIVersion,
			"resources": []map[string]any{{
				"name": "pings", "singularName": "ping", "namespaced": false, "kind": "Ping", "verbs": []string{"get", "list"},
			}},
		})
	})
	mux.HandleFunc(aggDiscovery+"/pings", func(w http.ResponseWriter, r *http.Request) {
		user, _ := r.Context().Value(userKey{}).(string)
		writeJSON(w, http.StatusOK, map[string]any{
			"kind": "PingList", "apiVersion": APIGroup + "/" + APIVersion, "metadata": map[string]any{},
			"items": []map[string]any{{
				"kind": "Ping", "apiVersion": APIGroup + "/" + APIVersion,
				"metadata": map[string]any{"name": "pong"}, "user": user,
			}},
		})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == "/healthz" || p == "/readyz" || p == "/livez" {
			mux.ServeHTTP(w, r)
			return
		}
		s.mu.RLock()
		a := s.auth
		s.mu.RUnlock()
		user, err := a.authenticate(r)
		if err != nil {
			writeJSON(w, http.StatusUnauthorized, map[string]any{
				"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401,
				"message": "Unauthorized: " + err.Error(),
			})
			return
		}
		if strings.HasPrefix(r.URL.Path, "/apis") {
			mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, user)))
			return
		}
		http.NotFound(w, r)
	})
}

type userKey struct{}

func apiGroup() map[string]any {
	gv := map[string]any{"groupVersion": APIGroup + "/" + APIVersion, "version": APIVersion}
	return map[string]any{"kind": "APIGroup", "apiVersion": "v1", "name": APIGroup, "versions": []any{gv}, "preferredVersion": gv}
}

func apiGroupList() map[string]any {
	g := apiGroup()
	delete(g, "kind")
	delete(g, "apiVersion")
	return map[string]any{"kind": "APIGroupList", "apiVersion": "v1", "groups": []any{g}}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// servingCert returns a fresh CA (PEM, the APIService caBundle) and a
// serving certificate signed by it for the Service's DNS names and host.
func servingCert(host, namespace string) ([]byte, tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	now := time.Now()
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		return n
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "rotate-probe aggregated API CA"},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: aggServiceName},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{aggServiceName, aggServiceName + "." + namespace, aggServiceName + "." + namespace + ".svc"},
	}
	if ip := net.ParseIP(host); ip != nil {
		leafTmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return caPEM, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// startAggregated: GET /apis/probe.rotate.e2e/v1alpha1 through every
// apiserver and the LB with the primary admin credentials. A 503 (the
// APIService unavailable) is classified from the APIService's
// availability message, which names the cause (x509, 401, ...).
func (r *Runner) startAggregated(ctx context.Context, dyn dynamic.Interface) {
	client := credClient(r.primary)
	interpret := func(ctx context.Context, class Class, status int, body []byte) (Class, string, bool) {
		if status != http.StatusServiceUnavailable && status != http.StatusBadGateway {
			return class, "", false
		}
		msg := apiServiceMessage(ctx, r)
		if msg == "" {
			return class, "", false
		}
		if c := ClassifyText(msg); c != "" {
			return c, "APIService: " + msg, false
		}
		return Other, "APIService: " + msg, false
	}
	for _, ep := range r.endpoints {
		(&check{r: r, probe: ProbeAggregated, target: "front-proxy via " + ep.name, ep: ep,
			path: aggDiscovery, client: client, interpret: interpret}).run(ctx)
	}
}

// apiServiceMessage returns the APIService's Available condition as text
// (reason and message), or "" if it cannot be read.
func apiServiceMessage(ctx context.Context, r *Runner) string {
	cfg, _, err := r.primary.current()
	if err != nil {
		return ""
	}
	dyn, err := dynamicFor(cfg, r.cluster.APIServerEndpoint)
	if err != nil {
		return ""
	}
	obj, err := dyn.Resource(apiServiceGVR).Get(ctx, apiServiceName, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	status, reason, message := availableCondition(obj)
	return fmt.Sprintf("Available=%s %s: %s", status, reason, message)
}

func availableCondition(obj *unstructured.Unstructured) (status, reason, message string) {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != "Available" {
			continue
		}
		s, _ := m["status"].(string)
		rs, _ := m["reason"].(string)
		ms, _ := m["message"].(string)
		return s, rs, ms
	}
	return "Unknown", "", ""
}
