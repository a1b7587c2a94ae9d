package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"encoding/pem"
	"slices"

	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubeca/rotate/internal/kubeconfig"
)

func (c *Cluster) startLB(ctx context.Context) error {
	s := &c.st.Spec
	var backends []string
	for _, n := range s.ControlPlaneNodes() {
		backends = append(backends, net.JoinHostPort(n.Address, strconv.Itoa(APIServerPort)))
	}
	argv := []string{
		"nsenter", "--net=" + filepath.Join("/run/netns", s.LBNS), "--",
		s.nodeBin(), "lb",
		"--listen=" + net.JoinHostPort(s.LBAddress, strconv.Itoa(APIServerPort)),
		"--backends=" + strings.Join(backends, ","),
	}
	if err := os.MkdirAll(filepath.Join(s.Dir, "lb"), 0o755); err != nil {
		return err
	}
	if err := c.startDaemon("lb", "lb", filepath.Join(s.Dir, "lb", "lb.log"), argv); err != nil {
		return err
	}
	return waitFor(ctx, 20*time.Second, "load balancer", func() error {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(s.LBAddress, strconv.Itoa(APIServerPort)), time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
}

// RESTConfig returns a client config from the operator's admin kubeconfig
// (through the load balancer).
//
// The credentials and CA data are those of the first control-plane node's
// admin.conf as it is now (the server is the operator's): the operator's
// copy goes stale while a rotation runs (from the signer switch on it no
// longer trusts the apiservers), and the harness, like an operator
// joining a node mid-run, works from the control plane's own file.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	op, err := kubeconfig.Load(c.st.Spec.AdminKubeconfig(), "")
	if err != nil {
		return nil, err
	}
	cfg := op
	if live, err := kubeconfig.Load(filepath.Join(c.st.Spec.ControlPlaneNodes()[0].EtcKubernetes(), "admin.conf"), ""); err == nil {
		live.Host = op.Host
		live.TLSClientConfig.ServerName = op.TLSClientConfig.ServerName
		cfg = live
	}
	cfg.Timeout = 15 * time.Second
	return cfg, nil
}

// Client returns a clientset for the admin kubeconfig.
func (c *Cluster) Client() (kubernetes.Interface, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// httpClient trusts the cluster CA of the first control-plane node and
// presents the admin client cert.
func (c *Cluster) httpClient() (*http.Client, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	tcfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, err
	}
	if tcfg == nil {
		tcfg = &tls.Config{}
	}
	if tcfg.RootCAs == nil {
		raw, err := os.ReadFile(filepath.Join(c.st.Spec.ControlPlaneNodes()[0].EtcKubernetes(), "pki", "ca.crt"))
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(raw)
		tcfg.RootCAs = pool
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tcfg, DisableKeepAlives: true}}, nil
}

// readyz checks https://addr:6443/readyz (server cert verified against the
// cluster CA, the address must be in its SANs).
func (c *Cluster) readyz(ctx context.Context, addr string) error {
	hc, err := c.httpClient()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://%s/readyz", net.JoinHostPort(addr, strconv.Itoa(APIServerPort))), nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz on %s: HTTP %d: %s", addr, resp.StatusCode, tail(body, 300))
	}
	return nil
}

// Readyz checks one apiserver's /readyz by node name.
func (c *Cluster) Readyz(ctx context.Context, node string) error {
	n, err := c.st.Spec.Node(node)
	if err != nil {
		return err
	}
	return c.readyz(ctx, n.Address)
}

// stageReady labels the control-plane Nodes as kubeadm's mark-control-plane
// phase does and waits for the whole cluster.
func (c *Cluster) stageReady(ctx context.Context) error {
	if c.st.Spec.Kubelet {
		if err := c.markControlPlanes(ctx); err != nil {
			return err
		}
		var joined []string
		for _, n := range c.st.Spec.Nodes {
			if n.ServingCSR && !n.Spare {
				joined = append(joined, n.Name)
			}
		}
		if err := c.ApproveServingCSRs(ctx, 2*time.Minute, joined...); err != nil {
			return err
		}
	}
	return c.WaitReady(ctx)
}

// ApproveServingCSRs approves the pending kubelet-serving CSRs of the
// nodes whose kubelet has serverTLSBootstrap: true, as an operator's
// approver does (kubeadm documents that nothing approves them by
// default), after the checks kubeadm's documentation asks for: the
// requester is the node itself, subject system:node:NAME in system:nodes,
// server-auth usages only, and the DNS/IP SANs are the node's own name and
// address. It waits up to timeout for every such node to have an approved
// CSR (the kubelet submits one when it starts without a serving
// certificate). names selects the nodes.
func (c *Cluster) ApproveServingCSRs(ctx context.Context, timeout time.Duration, names ...string) error {
	want := map[string]Node{}
	c.mu.Lock()
	for _, n := range c.st.Spec.Nodes {
		if n.ServingCSR && slices.Contains(names, n.Name) {
			want[n.Name] = n
		}
	}
	c.mu.Unlock()
	if len(want) == 0 {
		return nil
	}
	cs, err := c.Client()
	if err != nil {
		return err
	}
	approved := map[string]bool{}
	return waitFor(ctx, timeout, "kubelet serving CSRs approved", func() error {
		list, err := cs.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for i := range list.Items {
			csr := &list.Items[i]
			if csr.Spec.SignerName != certificatesv1.KubeletServingSignerName {
				continue
			}
			node := strings.TrimPrefix(csr.Spec.Username, "system:node:")
			n, ok := want[node]
			if !ok {
				continue
			}
			if csrApproved(csr) {
				approved[node] = true
				continue
			}
			if err := checkServingCSR(csr, n); err != nil {
				c.logf("not approving CSR %s: %v", csr.Name, err)
				continue
			}
			csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
				Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue,
				Reason: "RotateE2EApprover", Message: "node's own name and address",
			})
			if _, err := cs.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("approve %s: %w", csr.Name, err)
			}
			c.logf("approved kubelet serving CSR %s of %s", csr.Name, node)
			approved[node] = true
		}
		for name := range want {
			if !approved[name] {
				return fmt.Errorf("no serving CSR of %s yet", name)
			}
		}
		return nil
	})
}

func csrApproved(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, cd := range csr.Status.Conditions {
		if cd.Type == certificatesv1.CertificateApproved || cd.Type == certificatesv1.CertificateDenied {
			return true
		}
	}
	return false
}

// checkServingCSR is what an approver must check before approving a
// kubelet serving certificate.
func checkServingCSR(csr *certificatesv1.CertificateSigningRequest, n Node) error {
	if csr.Spec.Username != "system:node:"+n.Name || !slices.Contains(csr.Spec.Groups, "system:nodes") {
		return fmt.Errorf("requested by %s %v, not the node", csr.Spec.Username, csr.Spec.Groups)
	}
	block, _ := pem.Decode(csr.Spec.Request)
	if block == nil {
		return fmt.Errorf("no PEM request")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err
	}
	if err := req.CheckSignature(); err != nil {
		return err
	}
	if req.Subject.CommonName != "system:node:"+n.Name || !slices.Equal(req.Subject.Organization, []string{"system:nodes"}) {
		return fmt.Errorf("subject %s", req.Subject)
	}
	for _, u := range csr.Spec.Usages {
		switch u {
		case certificatesv1.UsageServerAuth, certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment:
		default:
			return fmt.Errorf("usage %s", u)
		}
	}
	for _, d := range req.DNSNames {
		if d != n.Name {
			return fmt.Errorf("DNS name %s", d)
		}
	}
	for _, ip := range req.IPAddresses {
		if ip.String() != n.Address {
			return fmt.Errorf("IP %s", ip)
		}
	}
	if len(req.EmailAddresses)+len(req.URIs) > 0 {
		return fmt.Errorf("email or URI SANs")
	}
	return nil
}

func (c *Cluster) markControlPlanes(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	for _, n := range c.st.Spec.ControlPlaneNodes() {
		var node *corev1.Node
		if err := waitFor(ctx, 2*time.Minute, "Node "+n.Name+" registered", func() error {
			node, err = cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			return err
		}); err != nil {
			return err
		}
		if _, ok := node.Labels[corev1.LabelHostname]; ok {
			if err := c.kubeadm(ctx, n, "init", "phase", "mark-control-plane", "--config="+n.KubeadmConfig()); err != nil {
				return err
			}
			continue
		}
		// kubeadm waits for the kubernetes.io/hostname label a real kubelet
		// sets; without it, apply the same labels and taint directly.
		patch := `{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":"","node.kubernetes.io/exclude-from-external-load-balancers":""}}}`
		if _, err := cs.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("label %s: %w", n.Name, err)
		}
		has := false
		for _, t := range node.Spec.Taints {
			has = has || t.Key == "node-role.kubernetes.io/control-plane"
		}
		if !has {
			node, err = cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			node.Spec.Taints = append(node.Spec.Taints, corev1.Taint{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule})
			if _, err := cs.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("taint %s: %w", n.Name, err)
			}
		}
	}
	return nil
}

// Condition is one readiness check and its last result.
type Condition struct {
	Name string
	Err  error
}

// Conditions evaluates every readiness condition once: every apiserver's
// /readyz (direct and through the load balancer), KCM and scheduler leader
// leases held and fresh, every Node Ready and its Lease fresh (when nodes
// run a kubelet), and kube-root-ca.crt in every namespace. Stopped nodes
// are skipped.
func (c *Cluster) Conditions(ctx context.Context) []Condition {
	s := &c.st.Spec
	var out []Condition
	add := func(name string, err error) { out = append(out, Condition{name, err}) }
	stopped := map[string]bool{}
	for _, n := range c.st.Stopped {
		stopped[n] = true
	}
	for _, n := range s.ControlPlaneNodes() {
		if !stopped[n.Name] {
			add("apiserver "+n.Name+" /readyz", c.readyz(ctx, n.Address))
		}
	}
	add("load balancer /readyz", c.readyz(ctx, s.LBAddress))
	cs, err := c.Client()
	if err != nil {
		add("client", err)
		return out
	}
	for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
		l, err := cs.CoordinationV1().Leases("kube-system").Get(ctx, name, metav1.GetOptions{})
		add("lease "+name, leaseHeld(l, err))
	}
	if s.Kubelet {
		for _, n := range s.Nodes {
			if stopped[n.Name] || n.Spare {
				continue
			}
			node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			add("node "+n.Name+" Ready", nodeReady(node, err))
			l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, n.Name, metav1.GetOptions{})
			add("node lease "+n.Name, leaseHeld(l, err))
		}
	}
	add("kube-root-ca.crt in every namespace", rootCAPublished(ctx, cs))
	return out
}

func leaseHeld(l *coordinationv1.Lease, err error) error {
	if err != nil {
		return err
	}
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		return fmt.Errorf("no holder")
	}
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return fmt.Errorf("never renewed")
	}
	if age := time.Since(l.Spec.RenewTime.Time); age > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second {
		return fmt.Errorf("held by %s but last renewed %s ago", *l.Spec.HolderIdentity, age.Round(time.Second))
	}
	return nil
}

func nodeReady(n *corev1.Node, err error) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("not registered")
	}
	if err != nil {
		return err
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status == corev1.ConditionTrue {
				return nil
			}
			return fmt.Errorf("Ready=%s (%s)", cond.Status, cond.Reason)
		}
	}
	return fmt.Errorf("no Ready condition")
}

func rootCAPublished(ctx context.Context, cs kubernetes.Interface) error {
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var missing []string
	for _, ns := range nss.Items {
		if ns.Status.Phase == corev1.NamespaceTerminating {
			continue
		}
		if _, err := cs.CoreV1().ConfigMaps(ns.Name).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
			missing = append(missing, ns.Name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("missing in %s", strings.Join(missing, ", "))
	}
	return nil
}

// WaitReady polls Conditions until all hold or ctx ends (default deadline
// 3 minutes if ctx has none).
func (c *Cluster) WaitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
	}
	for {
		conds := c.Conditions(ctx)
		var bad []string
		for _, cd := range conds {
			if cd.Err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v", cd.Name, cd.Err))
			}
		}
		if len(bad) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster %s not ready: %s", c.st.Spec.Name, strings.Join(bad, "; "))
		case <-time.After(time.Second):
		}
	}
}
