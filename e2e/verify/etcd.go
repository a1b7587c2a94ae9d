package verify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/kubeca/rotate/e2e/clusterinfo"
	"github.com/kubeca/rotate/pki"
)

// EtcdOnCA checks every stacked etcd member against the etcd CA ca: its
// client (2379) and peer (2380) ports serve certificates ca issued,
// verified with ca alone; a client certificate of ca reads /health; and,
// when other is not nil, a client certificate of other is refused (the
// member no longer trusts it).
func EtcdOnCA(ctx context.Context, info clusterinfo.Cluster, ca, other *pki.CA) error {
	good, err := ClientCert(ca, "e2e-etcd-client")
	if err != nil {
		return err
	}
	var bad tls.Certificate
	if other != nil {
		if bad, err = ClientCert(other, "e2e-etcd-other-ca"); err != nil {
			return err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	var problems []string
	for _, n := range info.ControlPlanes() {
		for _, port := range []string{"2379", "2380"} {
			leaf, err := servedLeaf(ctx, n.Address, port, &tls.Config{RootCAs: pool, ServerName: n.Address, Certificates: []tls.Certificate{good}})
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s:%s: %v", n.Name, port, err))
				continue
			}
			if !pki.IssuedBy(leaf, ca.Cert) {
				problems = append(problems, fmt.Sprintf("%s:%s serves %s", n.Name, port, pki.Describe(leaf)))
			}
		}
		url := "https://" + net.JoinHostPort(n.Address, "2379") + "/health"
		if body, err := etcdGet(ctx, pool, good, url); err != nil {
			problems = append(problems, fmt.Sprintf("%s: /health with a client certificate of the CA: %v", n.Name, err))
		} else if !strings.Contains(body, `"health":"true"`) {
			problems = append(problems, fmt.Sprintf("%s: /health says %s", n.Name, body))
		}
		if other != nil {
			if body, err := etcdGet(ctx, pool, bad, url); err == nil {
				problems = append(problems, fmt.Sprintf("%s: a client certificate of the other CA (%s) was accepted: %s", n.Name, pki.Describe(other.Cert), body))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("etcd members not on %s: %s", pki.Describe(ca.Cert), strings.Join(problems, "; "))
	}
	return nil
}

func etcdGet(ctx context.Context, roots *x509.CertPool, cert tls.Certificate, url string) (string, error) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}
