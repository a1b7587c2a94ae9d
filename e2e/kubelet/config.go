package kubelet

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"sigs.k8s.io/yaml"
)

// kubeletConfig is the part of kubelet.config.k8s.io/v1beta1
// KubeletConfiguration the agent honours.
type kubeletConfig struct {
	Kind               string `json:"kind"`
	APIVersion         string `json:"apiVersion"`
	Port               int32  `json:"port"`
	HealthzBindAddress string `json:"healthzBindAddress"`
	HealthzPort        *int32 `json:"healthzPort"`
	TLSCertFile        string `json:"tlsCertFile"`
	TLSPrivateKeyFile  string `json:"tlsPrivateKeyFile"`
	ServerTLSBootstrap bool   `json:"serverTLSBootstrap"`
	// NodeLeaseDurationSeconds sets the Lease's duration; the kubelet
	// renews it every quarter of that (kubelet.go, nodeLeaseRenewIntervalFraction).
	NodeLeaseDurationSeconds int32 `json:"nodeLeaseDurationSeconds"`
	Authentication           struct {
		X509 struct {
			ClientCAFile string `json:"clientCAFile"`
		} `json:"x509"`
	} `json:"authentication"`
}

// loadKubeletConfig reads config.yaml. Relative file paths are resolved
// against the file's directory, as the kubelet does.
func loadKubeletConfig(path string) (*kubeletConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kubelet config: %w", err)
	}
	var c kubeletConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("parse kubelet config %s: %w", path, err)
	}
	if c.Kind != "" && c.Kind != "KubeletConfiguration" {
		return nil, fmt.Errorf("parse kubelet config %s: kind %q, want KubeletConfiguration", path, c.Kind)
	}
	dir := filepath.Dir(path)
	for _, p := range []*string{&c.TLSCertFile, &c.TLSPrivateKeyFile, &c.Authentication.X509.ClientCAFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return &c, nil
}

// healthzAddress is the config's healthz endpoint with the kubelet's
// defaults (127.0.0.1:10248).
func (c *kubeletConfig) healthzAddress() string {
	host, port := "127.0.0.1", int32(10248)
	if c.HealthzBindAddress != "" {
		host = c.HealthzBindAddress
	}
	if c.HealthzPort != nil {
		port = *c.HealthzPort
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

func (c *kubeletConfig) port() int {
	if c.Port > 0 {
		return int(c.Port)
	}
	return 10250
}

// loadClientCAs reads the clientCAFile bundle. Every certificate in it is
// trusted (during a rotation it holds C0 and C1).
func loadClientCAs(path string) (*x509.CertPool, int, error) {
	if path == "" {
		return nil, 0, errors.New("authentication.x509.clientCAFile is not set in the kubelet config")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("read client CA file: %w", err)
	}
	certs, err := parseCerts(data)
	if err != nil {
		return nil, 0, fmt.Errorf("parse client CA file %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, len(certs), nil
}
