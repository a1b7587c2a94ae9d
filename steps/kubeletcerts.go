package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/kubecsr"
	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/steps/fileedit"
)

// Kubelet certificates the way Kubernetes issues them.
//
// A kubelet with rotateCertificates: true (kubeadm's default) renews its
// client certificate through the CSR API; one with serverTLSBootstrap: true
// gets its serving certificate there too (signer kubelet-serving), and
// apiservers with --kubelet-certificate-authority verify that one. rotate
// issues each kubelet's new certificates the same way: preflight records
// how every kubelet gets its certificates and prepares the keys; once the
// controller-manager signs with the new CA (after switch-issuance),
// kubelet-csrs requests and approves a CSR per certificate — with the key
// preflight prepared, under a name derived from the run, so a retry finds
// and reuses the same request — and stores what the signer issued; the
// kubelet-client steps write those exact bytes on the node. A kubelet
// without rotation gets a client certificate rotate signs directly with
// the new CA, prepared in preflight; a kubelet without serverTLSBootstrap
// serves its self-signed certificate, which no CA rotation touches.

// kubeletFacts is what preflight recorded about one kubelet.
type kubeletFacts struct {
	edit.KubeletCerts
	// ServingDNS and ServingIPs are the names a serving certificate is for:
	// the Node's own, as the kubelet asks for them.
	ServingDNS []string `json:",omitempty"`
	ServingIPs []string `json:",omitempty"`
}

// Value keys of the kubelet certificates.
func kubeletFactsKey(node string) string { return prepKey(node, "kubelet.json") }
func csrKey(node, name string) string    { return "csr/" + node + "/" + name }

const (
	prepKubeletClientPEM  = "kubelet-client.pem"     // direct-signed, for kubelets without rotation
	prepKubeletClientKey  = "kubelet-client.key"     // the CSR's key, for kubelets with rotation
	prepKubeletServingKey = "kubelet-serving.key"    // the serving CSR's key
	prepKubeletOldPEM     = "kubelet-client-old.pem" // from the old CA: rollback's last resort
	csrKubeletClient      = "kubelet-client.crt"
	csrKubeletServing     = "kubelet-serving.crt"
	kubeletServingLink    = "kubelet-server-current.pem"
)

// prepareKubelet records how t's kubelet gets its certificates and
// prepares what its new ones need: keys for CSRs, or a directly signed
// client certificate; and, for rollback, a client certificate from the old
// CA.
func (rt *Runtime) prepareKubelet(ctx context.Context, r nodes.Runner, t Target, cluster *pki.CA) error {
	cfgPath := rt.Config.Paths.KubeletConfig
	raw, err := r.ReadFile(ctx, cfgPath)
	if err != nil {
		return fmt.Errorf("read %s on %s: %w", cfgPath, t.Node, err)
	}
	kc, err := edit.KubeletCertConfig(raw)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", cfgPath, t.Node, err)
	}
	facts := kubeletFacts{KubeletCerts: kc}
	if kc.RotateCertificates {
		if err := rt.prepareKey(t.Node, prepKubeletClientKey); err != nil {
			return err
		}
	} else {
		kub, err := pki.NewKubeletClientCert(t.Node, cluster, pki.ReissueOptions{})
		if err != nil {
			return fmt.Errorf("issue kubelet client certificate for %s: %w", t.Node, err)
		}
		pemBytes, err := pki.KubeletPEM(kub)
		if err != nil {
			return err
		}
		rt.Out.Put(prepKey(t.Node, prepKubeletClientPEM), pemBytes)
	}
	if kc.ServerTLSBootstrap && kc.TLSCertFile == "" {
		if facts.ServingDNS, facts.ServingIPs, err = rt.nodeServingNames(ctx, t.Node); err != nil {
			return err
		}
		if err := rt.prepareKey(t.Node, prepKubeletServingKey); err != nil {
			return err
		}
	}
	old, err := rt.oldCA(ctx, CACluster)
	if err != nil {
		return err
	}
	fallback, err := pki.NewKubeletClientCert(t.Node, old, pki.ReissueOptions{})
	if err != nil {
		return fmt.Errorf("issue the rollback kubelet client certificate for %s: %w", t.Node, err)
	}
	fbPEM, err := pki.KubeletPEM(fallback)
	if err != nil {
		return err
	}
	rt.Out.Put(prepKey(t.Node, prepKubeletOldPEM), fbPEM)
	b, err := json.Marshal(facts)
	if err != nil {
		return err
	}
	rt.Out.Put(kubeletFactsKey(t.Node), b)
	return nil
}

// nodeServingNames are the names a kubelet asks a serving certificate for:
// its hostname and DNS addresses, and its IP addresses, from the Node.
func (rt *Runtime) nodeServingNames(ctx context.Context, node string) (dns, ips []string, err error) {
	n, err := rt.Kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("read Node %s: %w", node, err)
	}
	for _, a := range n.Status.Addresses {
		switch a.Type {
		case corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			if !slices.Contains(dns, a.Address) {
				dns = append(dns, a.Address)
			}
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip := net.ParseIP(a.Address); ip != nil && !slices.Contains(ips, ip.String()) {
				ips = append(ips, ip.String())
			}
		}
	}
	if len(dns)+len(ips) == 0 {
		return nil, nil, fmt.Errorf("Node %s reports no addresses for a serving certificate", node)
	}
	return dns, ips, nil
}

// oldCA loads the run's old CA (cert and key).
func (rt *Runtime) oldCA(ctx context.Context, name string) (*pki.CA, error) {
	pair, err := rt.caPair(ctx, name)
	if err != nil {
		return nil, err
	}
	return pki.LoadCA(pair.OldCert, pair.OldKey, rt.now(), 0)
}

// prepareKey generates a key for a certificate kubelet-csrs will request
// for node and stores it, PEM, under the prepared value name.
func (rt *Runtime) prepareKey(node, name string) error {
	key, err := pki.GenerateKey(pki.ECDSAP256, nil)
	if err != nil {
		return err
	}
	pemKey, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	rt.Out.Put(prepKey(node, name), pemKey)
	return nil
}

// kubeletFactsOf reads what preflight recorded about node's kubelet.
func (rt *Runtime) kubeletFactsOf(ctx context.Context, node string) (kubeletFacts, error) {
	var f kubeletFacts
	b, ok, err := rt.Store.Value(ctx, kubeletFactsKey(node))
	if err != nil {
		return f, err
	}
	if !ok {
		return f, fmt.Errorf("no kubelet facts recorded for %s (preflight did not complete)", node)
	}
	return f, json.Unmarshal(b, &f)
}

func (rt *Runtime) prepared(ctx context.Context, node, name string) ([]byte, error) {
	v, ok, err := rt.Store.Value(ctx, prepKey(node, name))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("no prepared %s for %s", name, node)
	}
	return v, nil
}

// KubeletCSRs requests, approves and collects the new certificates of the
// kubelets that get theirs through the CSR API, once the controller-manager
// signs with the new CA.
type KubeletCSRs struct{}

func (KubeletCSRs) Name() string { return "kubelet-csrs" }

// wanted lists the certificates to request: node → value names.
func (rt *Runtime) wantedCSRs(ctx context.Context) (map[string][]string, error) {
	out := map[string][]string{}
	for _, n := range rt.Config.nodeNames() {
		f, err := rt.kubeletFactsOf(ctx, n)
		if err != nil {
			return nil, err
		}
		if f.RotateCertificates {
			out[n] = append(out[n], csrKubeletClient)
		}
		if len(f.ServingDNS)+len(f.ServingIPs) > 0 {
			out[n] = append(out[n], csrKubeletServing)
		}
	}
	return out, nil
}

func (KubeletCSRs) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	want, err := rt.wantedCSRs(ctx)
	if err != nil {
		return false, err
	}
	for n, names := range want {
		for _, name := range names {
			if _, ok, err := rt.Store.Value(ctx, csrKey(n, name)); err != nil || !ok {
				return false, err
			}
		}
	}
	return true, nil
}

func (KubeletCSRs) Apply(ctx context.Context, rt *Runtime, t Target) error {
	newCA, err := rt.newCA(ctx, CACluster)
	if err != nil {
		return err
	}
	want, err := rt.wantedCSRs(ctx)
	if err != nil {
		return err
	}
	type request struct {
		node, name string
		issued     *pki.Issued
		err        error
	}
	var reqs []*request
	for _, n := range rt.Config.nodeNames() {
		for _, name := range want[n] {
			reqs = append(reqs, &request{node: n, name: name})
		}
	}
	// The requests are independent (one CSR object each, named per run,
	// node and kind, so a retry reuses it): in flight together, each
	// mostly waiting for the controller-manager to sign, they take about
	// as long as one does. The first failure stops the others (a signer
	// that does not sign would otherwise cost a timeout per batch).
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	forEachBounded(len(reqs), csrConcurrency, func(i int) {
		q := reqs[i]
		if q.err = rctx.Err(); q.err != nil {
			return // stopped before it started
		}
		if q.issued, q.err = rt.requestKubeletCert(rctx, q.node, q.name, nil); q.err != nil {
			cancel()
		}
	})
	// Results in node order, every failure reported but those of the
	// requests the first failure stopped (a retry reuses the CSR objects
	// already signed).
	var errs []error
	var first error
	for _, q := range reqs {
		if first == nil && q.err != nil {
			first = q.err
		}
		switch {
		case q.err != nil && ctx.Err() == nil && errors.Is(q.err, context.Canceled):
		case q.err != nil:
			errs = append(errs, q.err)
		case !pki.IssuedBy(q.issued.Cert, newCA.Cert):
			errs = append(errs, fmt.Errorf("the %s of %s came back issued by %s, not the new CA: is every kube-controller-manager signing with the new CA?", q.name, q.node, q.issued.Cert.Issuer))
		default:
			rt.Out.Put(csrKey(q.node, q.name), q.issued.CertPEM)
			rt.Printf("%s of %s issued through the CSR API: %s", q.name, q.node, pki.Describe(q.issued.Cert))
		}
	}
	if len(errs) == 0 && first != nil {
		errs = append(errs, first)
	}
	return errors.Join(errs...)
}

// csrConcurrency bounds the CSRs KubeletCSRs has in flight at once.
const csrConcurrency = 8

// requestKubeletCert asks for one of node's certificates through the CSR
// API; with sign set it signs it directly instead (plan previews).
func (rt *Runtime) requestKubeletCert(ctx context.Context, node, name string, sign *pki.CA) (*pki.Issued, error) {
	keyName, kind := prepKubeletClientKey, "client"
	if name == csrKubeletServing {
		keyName, kind = prepKubeletServingKey, "serving"
	}
	keyPEM, err := rt.prepared(ctx, node, keyName)
	if err != nil {
		return nil, err
	}
	key, err := pki.ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("prepared %s key of %s: %w", kind, node, err)
	}
	opts := kubecsr.Options{Name: csrName(rt.RunID, node, kind), Key: key, Timeout: rt.Config.Timeout("servers")}
	if kind == "client" {
		if sign != nil {
			return pki.NewKubeletClientCert(node, sign, pki.ReissueOptions{KeepKey: true, OldKey: key})
		}
		return kubecsr.RequestKubeletClientCert(ctx, rt.Kube, node, opts)
	}
	f, err := rt.kubeletFactsOf(ctx, node)
	if err != nil {
		return nil, err
	}
	var ips []net.IP
	for _, s := range f.ServingIPs {
		ips = append(ips, net.ParseIP(s))
	}
	if sign != nil {
		return pki.NewKubeletServingCert(node, f.ServingDNS, ips, sign, pki.ReissueOptions{KeepKey: true, OldKey: key})
	}
	return kubecsr.RequestKubeletServingCert(ctx, rt.Kube, node, f.ServingDNS, ips, opts)
}

// csrName is the CSR object's name for one of node's certificates in run:
// the same on every attempt, so a retry reuses the request.
func csrName(run, node, kind string) string {
	name := "rotate-" + strings.ToLower(run) + "-" + strings.ToLower(node) + "-" + kind
	if len(name) > 253 {
		name = name[:253]
	}
	return name
}

func (KubeletCSRs) Gate(context.Context, *Runtime, Target) error { return nil }

// Revert leaves the CSR objects: the controller-manager's csrcleaner
// removes issued requests after an hour, and nothing uses them.
func (KubeletCSRs) Revert(context.Context, *Runtime, Target) error { return nil }

// Preview stores what Apply would, signed directly by the (preview) new
// CA, so `plan --live` can describe the steps that write them. It changes
// nothing in the cluster.
func (KubeletCSRs) Preview(ctx context.Context, rt *Runtime, t Target) error {
	newCA, err := rt.newCA(ctx, CACluster)
	if err != nil {
		return err
	}
	want, err := rt.wantedCSRs(ctx)
	if err != nil {
		return err
	}
	for n, names := range want {
		for _, name := range names {
			is, err := rt.requestKubeletCert(ctx, n, name, newCA)
			if err != nil {
				return err
			}
			rt.Out.Put(csrKey(n, name), is.CertPEM)
		}
	}
	return nil
}

func (KubeletCSRs) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	want, err := rt.wantedCSRs(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range rt.Config.nodeNames() {
		for _, name := range want[n] {
			signer := kubecsr.KubeletClientSignerName
			if name == csrKubeletServing {
				signer = kubecsr.KubeletServingSignerName
			}
			out = append(out, fmt.Sprintf("request and approve CSR %s (%s) for %s's %s", csrName(rt.RunID, n, strings.TrimSuffix(strings.TrimPrefix(name, "kubelet-"), ".crt")), signer, n, name))
		}
	}
	if len(out) == 0 {
		out = append(out, "no kubelet rotates its certificates through the CSR API: nothing to request")
	}
	return out, nil
}

// Previewer is implemented by steps that store outputs later steps read
// and can compute them, for `plan --live`, without acting on the cluster.
type Previewer interface {
	Preview(ctx context.Context, rt *Runtime, t Target) error
}

// KubeletClientCert gives the kubelet a client certificate from the new CA
// — the step the manual page forgets, without which narrowing trust locks
// every kubelet out — and, if its serving certificate comes from the CSR
// API, a serving certificate from the new CA too, in one kubelet restart.
// The files are written next to the current ones and the
// kubelet-client-current.pem / kubelet-server-current.pem links repointed
// atomically. A kubelet that rotates its certificates gets the ones
// kubelet-csrs obtained through the CSR API; one that does not, a client
// certificate rotate signed directly.
func KubeletClientCert(name string) Step {
	return &kubeletCertStep{NodeEdit: &NodeEdit{StepName: name, Short: "kubelet certificates from the new CA", Kubelet: true,
		Edits: kubeletCertEdits, Notes: kubeletCertNotes}}
}

func kubeletCertEdits(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
	f, err := rt.kubeletFactsOf(ctx, t.Node)
	if err != nil {
		return nil, err
	}
	var clientPEM []byte
	if f.RotateCertificates {
		if clientPEM, err = rt.issuedPEM(ctx, t.Node, csrKubeletClient, prepKubeletClientKey); err != nil {
			return nil, err
		}
	} else if clientPEM, err = rt.prepared(ctx, t.Node, prepKubeletClientPEM); err != nil {
		return nil, err
	}
	c := rt.Config
	file := c.kubeletPKI("kubelet-client-" + rt.RunID + ".pem")
	edits := []fileedit.Edit{
		fileedit.SetContent(file, clientPEM, 0o600),
		fileedit.Symlink(c.kubeletPKI(kubeletClientLink), file),
		kubeletConfEmbedded(c.kubeDir(kubeconfigKubelet), clientPEM),
	}
	if len(f.ServingDNS)+len(f.ServingIPs) > 0 {
		servingPEM, err := rt.issuedPEM(ctx, t.Node, csrKubeletServing, prepKubeletServingKey)
		if err != nil {
			return nil, err
		}
		sfile := c.kubeletPKI("kubelet-server-" + rt.RunID + ".pem")
		edits = append(edits, fileedit.SetContent(sfile, servingPEM, 0o600), fileedit.Symlink(c.kubeletPKI(kubeletServingLink), sfile))
	}
	return edits, nil
}

func kubeletCertNotes(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	f, err := rt.kubeletFactsOf(ctx, t.Node)
	if err != nil {
		return nil, err
	}
	var out []string
	if f.RotateCertificates {
		out = append(out, "client certificate obtained through the CSR API (the kubelet has rotateCertificates: true)")
	} else {
		out = append(out, "client certificate signed directly by the new CA (the kubelet does not rotate its certificates)")
	}
	switch {
	case f.TLSCertFile != "":
		out = append(out, "serving certificate is the operator's tlsCertFile "+f.TLSCertFile+": untouched")
	case !f.ServerTLSBootstrap:
		out = append(out, "serving certificate is the kubelet's self-signed one (no serverTLSBootstrap): untouched")
	default:
		out = append(out, "serving certificate obtained through the CSR API (serverTLSBootstrap: true)")
	}
	return out, nil
}

// issuedPEM is the kubelet's PEM file for a certificate kubelet-csrs
// obtained: certificate, then the prepared key, as the kubelet stores it.
func (rt *Runtime) issuedPEM(ctx context.Context, node, crtName, keyName string) ([]byte, error) {
	crt, ok, err := rt.Store.Value(ctx, csrKey(node, crtName))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("no %s issued for %s yet (step kubelet-csrs)", crtName, node)
	}
	key, err := rt.prepared(ctx, node, keyName)
	if err != nil {
		return nil, err
	}
	return append(append([]byte{}, crt...), key...), nil
}

// kubeletCertStep is the kubelet-client NodeEdit with a rollback
// safeguard: a kubelet that renewed its own client certificate between the
// signer switch and this step's apply has a new-CA certificate in the
// backup, and restoring it would lock that kubelet out once trust narrows
// back to the old CA. After the restore the client certificate must chain
// to the old CA; if it does not, the prepared old-CA certificate replaces
// it (one more kubelet restart).
type kubeletCertStep struct {
	*NodeEdit
}

func (s *kubeletCertStep) Revert(ctx context.Context, rt *Runtime, t Target) error {
	if err := s.NodeEdit.Revert(ctx, rt, t); err != nil {
		return err
	}
	r, err := rt.node(ctx, t)
	if err != nil {
		return err
	}
	pair, err := rt.caPair(ctx, CACluster)
	if err != nil {
		return err
	}
	olds, err := pki.ParseCertsPEM(pair.OldCert)
	if err != nil {
		return err
	}
	cur, err := rt.readKubeletClientCert(ctx, r, t.Node)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if c, _, perr := pki.ParseKubeletPEM(cur); perr == nil && pki.IssuedBy(c, olds[0]) {
		return nil
	}
	fb, err := rt.prepared(ctx, t.Node, prepKubeletOldPEM)
	if err != nil {
		return err
	}
	rt.Printf("%s: the restored kubelet client certificate is not from the old CA (the kubelet renewed it during the run): giving it one from the old CA", t.Node)
	c := rt.Config
	file := c.kubeletPKI("kubelet-client-" + rt.RunID + "-rollback.pem")
	edits := []fileedit.Edit{
		fileedit.SetContent(file, fb, 0o600),
		fileedit.Symlink(c.kubeletPKI(kubeletClientLink), file),
		kubeletConfEmbedded(c.kubeDir(kubeconfigKubelet), fb),
	}
	if _, err := fileedit.Apply(ctx, r, rt.backups(), edits); err != nil {
		return err
	}
	if err := rt.restartKubelet(ctx, r); err != nil {
		return err
	}
	return rt.gateKubelet(nodes.CountAsGate(ctx), t.Node)
}

// Gate adds to the kubelet's gate, for a kubelet that now serves a
// certificate from the new CA, that the apiservers reach it (node proxy;
// with --kubelet-certificate-authority they verify that certificate).
func (s *kubeletCertStep) Gate(ctx context.Context, rt *Runtime, t Target) error {
	if err := s.NodeEdit.Gate(ctx, rt, t); err != nil {
		return err
	}
	f, err := rt.kubeletFactsOf(ctx, t.Node)
	if err != nil || len(f.ServingDNS)+len(f.ServingIPs) == 0 {
		return err
	}
	if why, err := rt.baselineFailure(ctx, checkNodeProxy(t.Node)); err != nil {
		return err
	} else if why != "" {
		// The apiservers did not reach this kubelet before the run
		// either (firewalled 10250, no InternalIP): waiting would time out
		// for a reason rotate did not cause. verify lists it.
		rt.Printf("%s: not waiting for apiserver → kubelet with the new serving certificate: it already failed before the rotation (%s)", t.Node, why)
		return nil
	}
	return rt.waitFor(ctx, "apiserver → kubelet "+t.Node+" with its new serving certificate", func(ctx context.Context) (bool, string, error) {
		if err := rt.kubeletHealthz(ctx, t.Node); err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	})
}

// RevertGate is Gate: the restored serving certificate must be reachable
// too.
func (s *kubeletCertStep) RevertGate(ctx context.Context, rt *Runtime, t Target) error {
	return s.Gate(ctx, rt, t)
}
