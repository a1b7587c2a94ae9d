package kubelet

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// servingCertificate returns the kubelet's serving certificate: the
// config's tlsCertFile/tlsPrivateKeyFile when set, else
// CERTDIR/kubelet.crt and kubelet.key, generated self-signed on first start
// when missing (CN NAME@timestamp, SANs the node name and IP), as the
// kubelet does without serverTLSBootstrap.
func servingCertificate(o *Options, cfg *kubeletConfig) (tls.Certificate, string, error) {
	certFile, keyFile := cfg.TLSCertFile, cfg.TLSPrivateKeyFile
	if certFile == "" && keyFile == "" {
		certFile = filepath.Join(o.CertDir, "kubelet.crt")
		keyFile = filepath.Join(o.CertDir, "kubelet.key")
		if ok, _ := certutil.CanReadCertAndKey(certFile, keyFile); !ok {
			certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey(o.NodeName, []net.IP{o.NodeIP}, nil)
			if err != nil {
				return tls.Certificate{}, "", fmt.Errorf("generate serving certificate: %w", err)
			}
			if err := os.MkdirAll(o.CertDir, 0o755); err != nil {
				return tls.Certificate{}, "", err
			}
			if err := certutil.WriteCert(certFile, certPEM); err != nil {
				return tls.Certificate{}, "", fmt.Errorf("write serving certificate: %w", err)
			}
			if err := keyutil.WriteKey(keyFile, keyPEM); err != nil {
				return tls.Certificate{}, "", fmt.Errorf("write serving key: %w", err)
			}
		}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("load serving certificate: %w", err)
	}
	return cert, certFile, nil
}

// podSource lists the pods bound to the node.
type podSource func() ([]*v1.Pod, error)

// newKubeletHandler serves the kubelet API subset: /healthz and /pods.
func newKubeletHandler(pods podSource) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/pods", func(w http.ResponseWriter, _ *http.Request) {
		list, err := pods()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		sort.Slice(list, func(i, j int) bool {
			if list[i].Namespace != list[j].Namespace {
				return list[i].Namespace < list[j].Namespace
			}
			return list[i].Name < list[j].Name
		})
		out := v1.PodList{}
		out.Kind, out.APIVersion = "PodList", "v1"
		out.Items = []v1.Pod{}
		for _, p := range list {
			out.Items = append(out.Items, *p)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(&out)
	})
	return mux
}

// newKubeletServer is the :10250 server: TLS with the serving certificate,
// and client certificates required and verified against clientCAs (the
// config's clientCAFile, read at start).
func newKubeletServer(cert tls.Certificate, clientCAs *x509.CertPool, h http.Handler) *http.Server {
	return &http.Server{
		Handler: h,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    clientCAs,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
}

// newHealthzServer serves /healthz: 200 "ok" once healthy reports true.
func newHealthzServer(healthy func() bool) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !healthy() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, "not yet talked to the API server with the current credentials")
			return
		}
		fmt.Fprint(w, "ok")
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}
