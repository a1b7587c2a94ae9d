package steps

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/pki"
)

// Nodes the run does not rotate: a Node in the API that is not in the
// run's node list (an autoscaler's, a late join). Its kubelet keeps the
// client certificate it has; once trust narrows (phase 12) an old-CA one
// is refused by every apiserver and the node goes NotReady.

// UnlistedFail is Config.UnlistedNodes that makes preflight refuse them.
const UnlistedFail = "fail"

// unlistedAdvice is what to do about unlisted node n, and why.
func unlistedAdvice(n string) string {
	return fmt.Sprintf("node %s is in the cluster but not in the inventory: rotate does not touch it, so once the apiservers serve "+
		"certificates from the new CA (switch-issuance, phase 9) its kubelet, given no bundle, cannot verify them, and once trust "+
		"narrows (phase 12) its old-CA client certificate is refused: the node goes NotReady; "+
		"add it to the inventory (nodes.workers or nodes.discoverWorkers), or drain and delete it (kubectl drain %s; kubectl delete node %s); "+
		"the run stops before switching issuance while it is there (kubectl annotate node %s %s=true lets it go on without it)", n, n, n, n, AcceptLockoutAnnotation)
}

// NoKubeletCutOff comes right before switch-issuance: it refuses to
// switch while a Node outside the run is in the cluster and the operator
// has not accepted its lock-out. rotate gave such a node's kubelet no
// bundle: it trusts only the CA its kubelet.conf was written with (the old
// one: cluster-info carries the new CA only from phase 10, and kubeadm
// join fails before then), so it cannot verify the apiservers once they
// serve certificates from the new CA.
type NoKubeletCutOff struct{ readOnly }

func (NoKubeletCutOff) Name() string { return "no-kubelet-cut-off" }

// Explain says what the guard stops on, in the static plan.
func (NoKubeletCutOff) Explain(*Config) []string {
	return []string{"read only: stops the run before the apiservers serve from the new CA while a Node outside the run is in the cluster " +
		"(rotate gave its kubelet no bundle), unless the Node is annotated " + AcceptLockoutAnnotation + "=true"}
}

func (NoKubeletCutOff) Apply(ctx context.Context, rt *Runtime, t Target) error {
	un, err := rt.unlistedNodes(ctx)
	if err != nil {
		return err
	}
	var refused []string
	for _, u := range un {
		if u.Accepted {
			rt.Printf("%s: its lock-out is accepted (%s=true); switching issuance anyway", u, AcceptLockoutAnnotation)
			continue
		}
		refused = append(refused, fmt.Sprintf("%s: rotate gave its kubelet no bundle, so once the apiservers serve certificates from the new CA "+
			"(switch-issuance, next) it cannot verify them and the node goes NotReady. Drain and delete it (kubectl drain %s; kubectl delete node %s) "+
			"and join it again after the run; or roll back and start again with it in the inventory; "+
			"or accept the lock-out (kubectl annotate node %s %s=true); then rotate resume", u, u.Name, u.Name, u.Name, AcceptLockoutAnnotation))
	}
	if len(refused) > 0 {
		return fmt.Errorf("refusing to switch issuance to the new CA:\n  - %s", strings.Join(refused, "\n  - "))
	}
	return nil
}

// unlisted is the names of the Nodes in list that the run does not
// rotate, sorted.
func (c *Config) unlisted(list []corev1.Node) []string {
	in := map[string]bool{}
	for _, n := range c.nodeNames() {
		in[n] = true
	}
	var out []string
	for i := range list {
		if !in[list[i].Name] {
			out = append(out, list[i].Name)
		}
	}
	sort.Strings(out)
	return out
}

// UnlistedNodes is, for each Node in the cluster the run does not rotate,
// what to do about it (`rotate plan --live` prints them).
func UnlistedNodes(ctx context.Context, rt *Runtime) ([]string, error) {
	list, err := rt.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []string
	for _, n := range rt.Config.unlisted(list.Items) {
		out = append(out, unlistedAdvice(n))
	}
	return out, nil
}

// A Node that joins after `start` is in no step's targets. Verify lists
// every unlisted Node with the issuer of its kubelet's client certificate
// (HoldReport.Unlisted), and the first step of narrow-trust refuses while
// one still has an old-CA or unknown certificate, unless the operator
// accepts its lock-out with AcceptLockoutAnnotation on the Node.

// AcceptLockoutAnnotation on a Node ("true") lets trust narrow although
// the node's kubelet will be refused.
const AcceptLockoutAnnotation = "rotate.kubeca.io/accept-lockout"

// Kubelet client certificate issuers as rotate can tell them.
const (
	IssuerNew     = "new CA"
	IssuerOld     = "old CA"
	IssuerUnknown = "unknown"
)

// UnlistedNode is a Node the run does not rotate, as verify and the
// narrowing guard see it.
type UnlistedNode struct {
	Name string `json:"name"`
	// AtStart: the Node was there when preflight ran (else it joined
	// during the run).
	AtStart bool `json:"atStart"`
	Ready   bool `json:"ready"`
	// Issuer of its kubelet's client certificate (IssuerNew, IssuerOld,
	// IssuerUnknown) and how rotate knows.
	Issuer string `json:"issuer"`
	Source string `json:"source"`
	// Accepted: the operator set AcceptLockoutAnnotation.
	Accepted bool `json:"accepted,omitempty"`
}

// lockedOut reports whether narrowing trust would lock the node's
// kubelet out (or rotate cannot tell it would not).
func (u UnlistedNode) lockedOut() bool { return u.Issuer != IssuerNew }

func (u UnlistedNode) String() string {
	when := "joined during the run"
	if u.AtStart {
		when = "was in the cluster at start"
	}
	ready := "Ready"
	if !u.Ready {
		ready = "not Ready"
	}
	return fmt.Sprintf("node %s is not in the run (%s, %s); its kubelet client certificate: %s (%s)", u.Name, when, ready, u.Issuer, u.Source)
}

// keyUnlistedAtStart is the Nodes preflight found outside the inventory
// (JSON list of names).
const keyUnlistedAtStart = "report/unlisted-at-start"

// unlistedNodes classifies every Node the run does not rotate. The
// issuer of a kubelet's client certificate is read from the newest issued
// CSR for system:node:<name> of the kubelet client signer (kubeadm join
// and the kubelet's own rotation both go through it); the controller
// manager deletes issued CSRs after an hour, so an older certificate is
// IssuerUnknown.
func (rt *Runtime) unlistedNodes(ctx context.Context) ([]UnlistedNode, error) {
	list, err := rt.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	names := rt.Config.unlisted(list.Items)
	if len(names) == 0 {
		return nil, nil
	}
	cas, err := rt.runCAs(ctx)
	if err != nil {
		return nil, err
	}
	newCA, err := pki.ParseCertsPEM(cas.cluster.NewCert)
	if err != nil {
		return nil, err
	}
	oldCAs, err := pki.ParseCertsPEM(cas.cluster.OldCert)
	if err != nil {
		return nil, err
	}
	csrs, err := rt.Kube.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list certificate signing requests: %w", err)
	}
	atStart := map[string]bool{}
	if raw, ok, err := rt.Store.Value(ctx, keyUnlistedAtStart); err != nil {
		return nil, err
	} else if ok {
		var at []string
		if err := json.Unmarshal(raw, &at); err != nil {
			return nil, fmt.Errorf("%s: %w", keyUnlistedAtStart, err)
		}
		for _, n := range at {
			atStart[n] = true
		}
	}
	byName := map[string]*corev1.Node{}
	for i := range list.Items {
		byName[list.Items[i].Name] = &list.Items[i]
	}
	var out []UnlistedNode
	for _, n := range names {
		node := byName[n]
		u := UnlistedNode{Name: n, AtStart: atStart[n], Ready: nodeReady(node), Accepted: node.Annotations[AcceptLockoutAnnotation] == "true"}
		u.Issuer, u.Source = kubeletClientIssuer(n, csrs.Items, newCA[0], oldCAs)
		out = append(out, u)
	}
	return out, nil
}

// kubeletClientIssuer classifies the newest kubelet client certificate
// issued to node through the CSR API.
func kubeletClientIssuer(node string, csrs []certificatesv1.CertificateSigningRequest, newCA *x509.Certificate, oldCAs []*x509.Certificate) (issuer, source string) {
	var newest *x509.Certificate
	var from string
	for i := range csrs {
		c := &csrs[i]
		if c.Spec.SignerName != certificatesv1.KubeAPIServerClientKubeletSignerName || len(c.Status.Certificate) == 0 {
			continue
		}
		certs, err := pki.ParseCertsPEM(c.Status.Certificate)
		if err != nil || certs[0].Subject.CommonName != "system:node:"+node {
			continue
		}
		if newest == nil || certs[0].NotBefore.After(newest.NotBefore) {
			newest, from = certs[0], c.Name
		}
	}
	if newest == nil {
		return IssuerUnknown, fmt.Sprintf("no issued kubelet client CSR for system:node:%s in the certificates API; rotate does not reach the node over SSH to read it", node)
	}
	source = "CSR " + from + ", " + pki.Describe(newest)
	if newest.CheckSignatureFrom(newCA) == nil {
		return IssuerNew, source
	}
	for _, o := range oldCAs {
		if newest.CheckSignatureFrom(o) == nil {
			return IssuerOld, source
		}
	}
	return IssuerUnknown, source + ", signed by neither CA of the run"
}

// lockoutAdvice is what to do about unlisted node u before trust narrows.
func lockoutAdvice(u UnlistedNode, newCA *x509.Certificate) string {
	return fmt.Sprintf("%s: once trust narrows its kubelet is refused by every apiserver and the node goes NotReady. "+
		"Re-join it (on the node: kubeadm reset, then kubeadm join with --discovery-token-ca-cert-hash %s: its kubelet then gets a new-CA certificate), "+
		"or drain and delete it (kubectl drain %s; kubectl delete node %s), "+
		"or accept the lock-out (kubectl annotate node %s %s=true); then rotate resume",
		u, DiscoveryTokenCAHash(newCA), u.Name, u.Name, u.Name, AcceptLockoutAnnotation)
}

// NoKubeletLockedOut is the first step of narrow-trust: it refuses to
// narrow while a Node outside the run has a kubelet client certificate
// from the old CA, or one rotate cannot classify, and the operator has
// not accepted its lock-out.
type NoKubeletLockedOut struct{ readOnly }

func (NoKubeletLockedOut) Name() string { return "no-kubelet-locked-out" }

func (NoKubeletLockedOut) Apply(ctx context.Context, rt *Runtime, t Target) error {
	un, err := rt.unlistedNodes(ctx)
	if err != nil {
		return err
	}
	newCA, err := rt.newCA(ctx, CACluster)
	if err != nil {
		return err
	}
	var refused []string
	for _, u := range un {
		switch {
		case !u.lockedOut():
			rt.Printf("%s: keeps working once trust narrows (its own ca.crt is not checked: rotate does not reach it)", u)
		case u.Accepted:
			rt.Printf("%s: its lock-out is accepted (%s=true); narrowing anyway", u, AcceptLockoutAnnotation)
		default:
			refused = append(refused, lockoutAdvice(u, newCA.Cert))
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("refusing to narrow trust:\n  - %s", strings.Join(refused, "\n  - "))
	}
	return nil
}
