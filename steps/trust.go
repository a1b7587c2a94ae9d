package steps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubeca/rotate/internal/kubeconfig"
	"github.com/kubeca/rotate/pki"
)

// Value keys for material prepared in phase 0.
const (
	CACluster    = "cluster"
	CAFrontProxy = "front-proxy"

	keyRotateAdminCert = "prep/rotate-admin.crt"
	keyRotateAdminKey  = "prep/rotate-admin.key"
)

// Trust is rotate's own view of which CAs to trust and which client
// certificates to present to the API. It reads the CA pair from the store
// on every new TLS connection, so one client keeps working as the run
// moves from old-CA-only to both to new-CA-only servers: server
// certificates are verified against {kubeconfig CA, old CA, new CA}, and
// the client picks, per handshake, the first certificate whose issuer the
// server lists as acceptable (Go's standard selection).
type Trust struct {
	store Store

	mu        sync.Mutex
	basePool  []*x509.Certificate
	baseCerts []tls.Certificate
}

// NewTrust starts from the kubeconfig's CA and client certificate.
func NewTrust(store Store, caPEM []byte, clientCerts ...tls.Certificate) (*Trust, error) {
	t := &Trust{store: store, baseCerts: clientCerts}
	if len(caPEM) > 0 {
		cas, err := pki.ParseCertsPEM(caPEM)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig CA: %w", err)
		}
		t.basePool = cas
	}
	return t, nil
}

func (t *Trust) material(ctx context.Context) (*x509.CertPool, []tls.Certificate) {
	pool := x509.NewCertPool()
	for _, c := range t.basePool {
		pool.AddCert(c)
	}
	certs := append([]tls.Certificate(nil), t.baseCerts...)
	if t.store == nil {
		return pool, certs
	}
	for _, name := range []string{CACluster} {
		pair, ok, err := t.store.CA(ctx, name)
		if err != nil || !ok {
			continue
		}
		for _, p := range [][]byte{pair.OldCert, pair.NewCert} {
			if cs, err := pki.ParseCertsPEM(p); err == nil {
				for _, c := range cs {
					pool.AddCert(c)
				}
			}
		}
	}
	crt, ok1, _ := t.store.Value(ctx, keyRotateAdminCert)
	key, ok2, _ := t.store.Value(ctx, keyRotateAdminKey)
	if ok1 && ok2 {
		if c, err := tls.X509KeyPair(crt, key); err == nil {
			certs = append(certs, c)
		}
	}
	return pool, certs
}

// TLSConfig verifies servers against the live pool. InsecureSkipVerify only
// turns off Go's built-in check so that VerifyConnection can run the same
// verification (chain and host name) against a pool that changes during
// the run; a failure there fails the handshake. The host name checked is
// the one sent as SNI, which TLS never sends for an IP address: a server
// dialed by IP is checked with TLSConfigFor.
func (t *Trust) TLSConfig() *tls.Config { return t.TLSConfigFor("") }

// TLSConfigFor is TLSConfig for a server that must present a certificate
// for name (a DNS name or an IP address; "": the SNI name, if any).
func (t *Trust) TLSConfigFor(name string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         name,
		InsecureSkipVerify: true, // verified in VerifyConnection, see above
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			pool, _ := t.material(context.Background())
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			host := name
			if host == "" {
				host = cs.ServerName
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				DNSName: host, Roots: pool, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			return err
		},
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			_, certs := t.material(context.Background())
			for i := range certs {
				if cri.SupportsCertificate(&certs[i]) == nil {
					return &certs[i], nil
				}
			}
			return &tls.Certificate{}, nil
		},
	}
}

// HTTPClient is a client for health endpoints (apiserver /readyz).
func (t *Trust) HTTPClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: t.transport()}
}

// transport dials servers itself, so that each is checked for the host
// it was dialed by (or TLSClientConfig.ServerName, when set) even when
// that is an IP address; through a proxy (Proxy set) the tunnel's TLS
// uses TLSClientConfig, checked for its SNI name.
func (t *Trust) transport() *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:     t.TLSConfig(),
		DialContext:         d.DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		// HTTP/2, as client-go's own transport: the requests of a fan-out
		// over many nodes share one connection per apiserver instead of
		// each opening its own (a TLS handshake each, and two round trips
		// more from an operator far away). A connection that goes silent
		// is pinged after 30s and dropped 15s later, as client-go does.
		ForceAttemptHTTP2: true,
		HTTP2:             &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		name := tr.TLSClientConfig.ServerName
		if name == "" {
			name, _, _ = net.SplitHostPort(addr)
		}
		ctx, cancel := context.WithTimeout(ctx, d.Timeout+tr.TLSHandshakeTimeout)
		defer cancel()
		cfg := t.TLSConfigFor(name)
		cfg.NextProtos = []string{"h2", "http/1.1"}
		return (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, network, addr)
	}
	return tr
}

// KubeClient builds the API client rotate uses: the kubeconfig's server
// and credentials, with TLS handled by the Trust. The server may be any
// of the apiservers or a load balancer in front of them (nothing rotate
// does assumes it is one control-plane node: each apiserver's own checks
// dial its endpoint, Config.APIServerEndpoint); the kubeconfig's
// tls-server-name (a load balancer's address outside the serving
// certificate) and proxy-url are kept.
//
// With a logger that logs at debug level, every API request is logged:
// method, path, status and duration (never a header or a body).
func KubeClient(kubeconfigPath, kubeContext string, store Store, log *slog.Logger) (kubernetes.Interface, *Trust, *rest.Config, error) {
	kt, err := kubeconfig.LoadTLS(kubeconfigPath, kubeContext)
	if err != nil {
		return nil, nil, nil, err
	}
	cfg, ca := kt.Config, kt.CA
	var certs []tls.Certificate
	if len(kt.Cert) > 0 {
		c, err := tls.X509KeyPair(kt.Cert, kt.Key)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("kubeconfig %s: client certificate: %w", kubeconfigPath, err)
		}
		certs = append(certs, c)
	}
	trust, err := NewTrust(store, ca, certs...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("kubeconfig %s: %w", kubeconfigPath, err)
	}
	rc := rest.CopyConfig(cfg)
	tr := trust.transport()
	tr.TLSClientConfig.ServerName = cfg.TLSClientConfig.ServerName
	if cfg.Proxy != nil {
		tr.Proxy = cfg.Proxy
	}
	rc.TLSClientConfig = rest.TLSClientConfig{}
	rc.Proxy = nil
	rc.Transport = tr
	rc.QPS, rc.Burst = 50, 100
	rc.Timeout = 30 * time.Second
	if log != nil && log.Enabled(context.Background(), slog.LevelDebug) {
		rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return requestLog{rt: rt, log: log} }
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("kubeconfig %s: %w", kubeconfigPath, err)
	}
	return cs, trust, rc, nil
}

// KubeconfigCA is the first CA certificate of the kubeconfig, if any.
func (t *Trust) KubeconfigCA() *x509.Certificate {
	if len(t.basePool) == 0 {
		return nil
	}
	return t.basePool[0]
}

// AdminCert is the parsed client certificate of the kubeconfig, if any.
func (t *Trust) AdminCert() *x509.Certificate {
	for _, c := range t.baseCerts {
		if len(c.Certificate) > 0 {
			if x, err := x509.ParseCertificate(c.Certificate[0]); err == nil {
				return x
			}
		}
	}
	return nil
}

// requestLog logs each API request at debug level: method, path (no
// query: it may carry a selector but never a secret, and is not needed to
// see where time goes), status and duration.
type requestLog struct {
	rt  http.RoundTripper
	log *slog.Logger
}

func (l requestLog) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := l.rt.RoundTrip(req)
	attrs := []any{"method", req.Method, "path", req.URL.Path, "duration", time.Since(start).Round(time.Millisecond)}
	if err != nil {
		attrs = append(attrs, "err", err)
	} else {
		attrs = append(attrs, "status", resp.StatusCode)
	}
	l.log.Debug("api request", attrs...)
	return resp, err
}
