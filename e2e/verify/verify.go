// Package verify holds the end-state checks of a CA rotation on the e2e
// cluster, shared by the e2e suite and `make demo`. Each check looks at the
// real components from the outside: TLS handshakes with every apiserver,
// requests with client certificates of a given CA, the files on each node,
// and the API objects controllers publish.
package verify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/cluster-bootstrap/token/jws"

	"github.com/kubeca/rotate/e2e/clusterinfo"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
)

// CA is a CA certificate with its key, read from a control-plane node.
type CA struct {
	Cert *x509.Certificate
	CA   *pki.CA
}

// ReadCA reads pki/<name>.crt and .key from a node's host directory.
func ReadCA(n clusterinfo.Node, name string) (*pki.CA, error) {
	crt, err := os.ReadFile(filepath.Join(n.EtcKubernetes, "pki", name+".crt"))
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(filepath.Join(n.EtcKubernetes, "pki", name+".key"))
	if err != nil {
		return nil, err
	}
	return pki.LoadCA(crt, key, time.Now(), 0)
}

// ClientCert issues a system:masters client certificate from ca.
func ClientCert(ca *pki.CA, cn string) (tls.Certificate, error) {
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn, Organization: []string{"system:masters"}},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	is, err := pki.Reissue(tmpl, ca, pki.ReissueOptions{})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(is.CertPEM, is.KeyPEM)
}

// ServingIssuer dials every apiserver and checks its serving certificate
// is issued by want and chains to it alone.
func ServingIssuer(ctx context.Context, info clusterinfo.Cluster, want *x509.Certificate) error {
	pool := x509.NewCertPool()
	pool.AddCert(want)
	var problems []string
	for _, n := range info.ControlPlanes() {
		leaf, err := servedLeaf(ctx, n.Address, "6443", &tls.Config{RootCAs: pool, ServerName: n.Address})
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", n.Name, err))
			continue
		}
		if !pki.IssuedBy(leaf, want) {
			problems = append(problems, fmt.Sprintf("%s serves %s", n.Name, pki.Describe(leaf)))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("apiserver serving certificates not from %s: %s", pki.Describe(want), strings.Join(problems, "; "))
	}
	return nil
}

// servedLeaf completes a TLS handshake with host:port under cfg and
// returns the certificate the server presented.
func servedLeaf(ctx context.Context, host, port string, cfg *tls.Config) (*x509.Certificate, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// apiClient is an HTTPS client that verifies servers against roots alone
// and presents certs.
func apiClient(roots []*x509.Certificate, certs ...tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
}

// Answer is one apiserver's response.
type Answer struct {
	Code int
	Body string
}

// ClientStatus is what every apiserver answers to GET /api with cert,
// verifying servers against roots.
func ClientStatus(ctx context.Context, info clusterinfo.Cluster, roots []*x509.Certificate, cert tls.Certificate) (map[string]Answer, error) {
	c := apiClient(roots, cert)
	out := map[string]Answer{}
	for _, n := range info.ControlPlanes() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+net.JoinHostPort(n.Address, "6443")+"/api", nil)
		resp, err := c.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Name, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		out[n.Name] = Answer{Code: resp.StatusCode, Body: string(body)}
	}
	return out, nil
}

// ExpectRejected checks no apiserver authenticates cert: each answers 401,
// or — with anonymous auth on, as kubeadm configures it — treats the
// request as system:anonymous and answers 403. Either way the
// certificate's identity is not accepted.
func ExpectRejected(ctx context.Context, info clusterinfo.Cluster, roots []*x509.Certificate, cert tls.Certificate) error {
	st, err := ClientStatus(ctx, info, roots, cert)
	if err != nil {
		return err
	}
	for n, a := range st {
		switch {
		case a.Code == http.StatusUnauthorized:
		case a.Code == http.StatusForbidden && strings.Contains(a.Body, `system:anonymous`):
		default:
			return fmt.Errorf("apiserver %s answered %d (%s): the certificate was accepted", n, a.Code, firstLine(a.Body))
		}
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}

// ExpectClientStatus checks every apiserver answers code to cert.
func ExpectClientStatus(ctx context.Context, info clusterinfo.Cluster, roots []*x509.Certificate, cert tls.Certificate, code int) error {
	st, err := ClientStatus(ctx, info, roots, cert)
	if err != nil {
		return err
	}
	for n, a := range st {
		if a.Code != code {
			return fmt.Errorf("apiserver %s answered %d, want %d: %s", n, a.Code, code, firstLine(a.Body))
		}
	}
	return nil
}

// KubeletCertsIssuedBy checks every node's kubelet client certificate.
func KubeletCertsIssuedBy(info clusterinfo.Cluster, ca *x509.Certificate) error {
	var problems []string
	for _, n := range info.Nodes {
		c, err := KubeletClientCert(n)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", n.Name, err))
			continue
		}
		if !pki.IssuedBy(c, ca) {
			problems = append(problems, fmt.Sprintf("%s kubelet presents %s", n.Name, pki.Describe(c)))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("kubelet client certificates not from %s: %s", pki.Describe(ca), strings.Join(problems, "; "))
	}
	return nil
}

// KubeletClientCert is the client certificate n's kubelet presents (its
// kubelet-client-current.pem).
func KubeletClientCert(n clusterinfo.Node) (*x509.Certificate, error) {
	link := filepath.Join(n.VarLibKubelet, "pki", "kubelet-client-current.pem")
	target, err := os.Readlink(link)
	if err != nil {
		return nil, err
	}
	// The link is absolute as the node sees it.
	raw, err := os.ReadFile(filepath.Join(n.VarLibKubelet, strings.TrimPrefix(target, "/var/lib/kubelet")))
	if err != nil {
		return nil, err
	}
	c, _, err := pki.ParseKubeletPEM(raw)
	return c, err
}

// KubeletServingIssuedBy dials every kubelet whose serving certificate
// comes from the CSR API and checks the certificate it serves.
func KubeletServingIssuedBy(ctx context.Context, info clusterinfo.Cluster, ca *x509.Certificate) error {
	var problems []string
	seen := 0
	for _, n := range info.Nodes {
		if !n.ServingCSR {
			continue
		}
		seen++
		d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the chain is checked below
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(n.Address, "10250"))
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", n.Name, err))
			continue
		}
		leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		conn.Close()
		if !pki.IssuedBy(leaf, ca) {
			problems = append(problems, fmt.Sprintf("%s serves %s", n.Name, pki.Describe(leaf)))
		}
	}
	if seen == 0 {
		return errors.New("no kubelet gets its serving certificate through the CSR API")
	}
	if len(problems) > 0 {
		return fmt.Errorf("kubelet serving certificates not from %s: %s", pki.Describe(ca), strings.Join(problems, "; "))
	}
	return nil
}

// KubeletClientCertsFromCSRs checks that every kubelet presents a client
// certificate that a CSR rotate made (label managed-by=kubeca-rotate)
// was issued: the certificate came through the CSR API and the
// controller-manager's signer, not from rotate's own signing.
func KubeletClientCertsFromCSRs(ctx context.Context, info clusterinfo.Cluster, kc kubernetes.Interface) error {
	list, err := kc.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=kubeca-rotate"})
	if err != nil {
		return err
	}
	issued := map[string]string{} // fingerprint -> CSR name
	for _, csr := range list.Items {
		if certs, err := pki.ParseCertsPEM(csr.Status.Certificate); err == nil {
			issued[pki.Fingerprint(certs[0])] = csr.Name
		}
	}
	var problems []string
	for _, n := range info.Nodes {
		c, err := KubeletClientCert(n)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", n.Name, err))
			continue
		}
		if _, ok := issued[pki.Fingerprint(c)]; !ok {
			problems = append(problems, fmt.Sprintf("%s presents %s, which no CSR of rotate's issued", n.Name, pki.Describe(c)))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("kubelet client certificates not from the CSR API: %s", strings.Join(problems, "; "))
	}
	return nil
}

// KubeconfigsIssuedBy checks the client certificates and CA data of the
// control-plane kubeconfigs.
func KubeconfigsIssuedBy(info clusterinfo.Cluster, ca *x509.Certificate) error {
	var problems []string
	for _, n := range info.ControlPlanes() {
		scanned := edit.ScanControlPlaneKubeconfigs(func(name string) ([]byte, error) {
			return os.ReadFile(filepath.Join(n.EtcKubernetes, name))
		})
		for _, kc := range scanned {
			f := kc.Name
			if kc.Err != nil {
				problems = append(problems, fmt.Sprintf("%s:%s: %v", n.Name, f, kc.Err))
				continue
			}
			cs, err := pki.ParseCertsPEM(kc.Client.CertPEM)
			if err != nil || !pki.IssuedBy(cs[0], ca) {
				problems = append(problems, fmt.Sprintf("%s:%s client cert not from the CA", n.Name, f))
			}
			caData, err := edit.KubeconfigCA(kc.Raw)
			if err != nil {
				problems = append(problems, err.Error())
				continue
			}
			if eq, _ := pki.BundleEqual(caData, pki.EncodeCertsPEM(ca)); !eq {
				problems = append(problems, fmt.Sprintf("%s:%s CA data is not exactly the CA", n.Name, f))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("kubeconfigs: %s", strings.Join(problems, "; "))
	}
	return nil
}

// RootCAIs checks kube-root-ca.crt in every namespace holds exactly want.
func RootCAIs(ctx context.Context, kc kubernetes.Interface, want []byte) error {
	nss, err := kc.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var bad []string
	for _, ns := range nss.Items {
		cm, err := kc.CoreV1().ConfigMaps(ns.Name).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			bad = append(bad, ns.Name+": "+err.Error())
			continue
		}
		if eq, _ := pki.BundleEqual([]byte(cm.Data["ca.crt"]), want); !eq {
			bad = append(bad, ns.Name)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("kube-root-ca.crt differs in: %s", strings.Join(bad, ", "))
	}
	return nil
}

// ClusterInfoIs checks cluster-info's CA data is exactly want and every
// JWS signature verifies.
func ClusterInfoIs(ctx context.Context, kc kubernetes.Interface, want []byte) error {
	cm, err := kc.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, "cluster-info", metav1.GetOptions{})
	if err != nil {
		return err
	}
	kc2, err := clientcmd.Load([]byte(cm.Data["kubeconfig"]))
	if err != nil {
		return fmt.Errorf("cluster-info kubeconfig: %w", err)
	}
	if len(kc2.Clusters) == 0 {
		return fmt.Errorf("cluster-info kubeconfig has no cluster")
	}
	for name, cl := range kc2.Clusters {
		if eq, _ := pki.BundleEqual(cl.CertificateAuthorityData, want); !eq {
			return fmt.Errorf("cluster-info cluster %q CA data is not the expected CA", name)
		}
	}
	sigs := 0
	for k, sig := range cm.Data {
		id, ok := strings.CutPrefix(k, "jws-kubeconfig-")
		if !ok {
			continue
		}
		sigs++
		sec, err := kc.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !jws.DetachedTokenIsValid(sig, cm.Data["kubeconfig"], id, string(sec.Data["token-secret"])) {
			return fmt.Errorf("cluster-info signature %s does not verify", k)
		}
	}
	if sigs == 0 {
		return fmt.Errorf("cluster-info has no JWS signatures")
	}
	return nil
}

// NodesReady checks every Node is Ready.
func NodesReady(ctx context.Context, kc kubernetes.Interface) error {
	l, err := kc.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range l.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				ready = true
			}
		}
		if !ready {
			return fmt.Errorf("node %s is not Ready", n.Name)
		}
	}
	return nil
}

// Eventually retries check until it passes or the deadline.
func Eventually(ctx context.Context, timeout time.Duration, check func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (after %s)", last, timeout)
		case <-time.After(time.Second):
		}
	}
}

// ExtensionAuthIs checks extension-apiserver-authentication's client CA
// and request-header CA bundles hold exactly the given CAs.
func ExtensionAuthIs(ctx context.Context, kc kubernetes.Interface, clientCA, frontProxyCA []byte) error {
	cm, err := kc.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if eq, _ := pki.BundleEqual([]byte(cm.Data["client-ca-file"]), clientCA); !eq {
		return fmt.Errorf("extension-apiserver-authentication client-ca-file is not exactly the expected CA")
	}
	if eq, _ := pki.BundleEqual([]byte(cm.Data["requestheader-client-ca-file"]), frontProxyCA); !eq {
		return fmt.Errorf("extension-apiserver-authentication requestheader-client-ca-file is not exactly the expected front-proxy CA")
	}
	return nil
}
