package steps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
)

// KeyHoldReport is the value the verify step stores: what still presents
// or trusts only the old CAs, for the operator to review before narrowing.
const KeyHoldReport = "report/hold"

// HoldReport is the verify phase's finding.
type HoldReport struct {
	CheckedAt time.Time `json:"checkedAt"`
	// Verified lists what was proven.
	Verified []string `json:"verified"`
	// Attention lists what may still present or trust only the old CAs;
	// narrowing trust will break these unless they are handled.
	Attention []string `json:"attention"`
	// PreExisting lists checks that fail now and failed the same check in
	// preflight's baseline, before the run changed anything: warnings, not
	// caused by the rotation and not verified by it.
	PreExisting []string `json:"preExisting,omitempty"`
	// Unlisted is every Node the run does not rotate (not in its node
	// list: unlisted at start, or joined since), with the issuer of its
	// kubelet's client certificate; those not from the new CA are in
	// Attention too, and narrow-trust refuses them (see topology.go).
	Unlisted []UnlistedNode `json:"unlisted,omitempty"`
	// Workloads lists the workloads the restart steps did not restart, did
	// not wait for, or saw not finish rolling out in time, each with what
	// to do before trust narrows (see workloads.go).
	Workloads []string `json:"workloads,omitempty"`
}

// Verify's checks come in four groups, each proven by one line of the hold
// report: checks 1-3 run per node (VerifyNode), check 4 on the cluster
// (Verify), which then writes the report.
var verifyGroups = []struct{ id, verified string }{
	{groupAPIServers, "every apiserver serves a certificate from the new CA and accepts client certificates from it"},
	{groupKubelets, "every kubelet is reachable from the apiservers and has a client certificate from the new CA"},
	{groupCerts, "no control-plane kubeconfig or leaf certificate is issued by the old CAs"},
	{groupHealth, "nodes Ready, APIServices Available, kube-root-ca.crt holds old+new everywhere"},
}

const (
	groupAPIServers = "apiservers"
	groupKubelets   = "kubelets"
	groupCerts      = "certs"
	groupHealth     = "health"
)

// nodeVerification is what VerifyNode found on one node and stores for
// Verify: the findings whose check failed before the run too, by group. A
// node with a regression stores nothing: its step fails.
type nodeVerification struct {
	PreExisting map[string][]string `json:"preExisting,omitempty"`
}

func verifyNodeKey(node string) string { return "verify/node/" + node }

// VerifyNode is verify's checks 1-3 on one node: on a control-plane node
// its apiserver serves and accepts the new CA and no kubeconfig or leaf
// certificate there is from the old CAs; on every node the apiservers
// reach its kubelet and the kubelet's certificates are from the new CA. It
// fails on a regression (see baseline.go); what failed before the run too
// is stored for Verify's report.
type VerifyNode struct{ readOnly }

func (VerifyNode) Name() string { return "verify-nodes" }

func (VerifyNode) Apply(ctx context.Context, rt *Runtime, t Target) error {
	in, base, err := rt.verifyBasis(ctx)
	if err != nil {
		return err
	}
	if err := rt.readAhead(ctx, t, rt.verifiedFiles(t)); err != nil {
		return err
	}
	defer func() { rt.files = nil }()
	found := map[string][]finding{}
	if t.Role == RoleControlPlane {
		found[groupAPIServers] = rt.verifyAPIServer(ctx, t.Node, in)
	}
	found[groupKubelets] = append(rt.verifyNodeProxy(ctx, t.Node), rt.verifyKubeletClientCert(ctx, t.Node, in.newCA)...)
	if t.Role == RoleControlPlane {
		found[groupCerts] = rt.verifyControlPlaneCerts(ctx, t.Node, in.oldCAs)
	}
	v := nodeVerification{PreExisting: map[string][]string{}}
	var regressions, preExisting []string
	for _, g := range verifyGroups {
		reg, pre := base.split(found[g.id])
		regressions = append(regressions, reg...)
		preExisting = append(preExisting, pre...)
		if len(pre) > 0 {
			v.PreExisting[g.id] = pre
		}
	}
	if err := verificationFailed(regressions, preExisting); err != nil {
		return err
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	rt.Out.Put(verifyNodeKey(t.Node), raw)
	return nil
}

// verifyBasis is what verify's checks compare with, and the baseline.
// Findings whose check failed in preflight's baseline too are
// pre-existing, not failures. A run without a baseline (preflight ran
// under an older rotate) gets an empty one: every finding is then a
// regression, exactly as verify behaved before baselines.
func (rt *Runtime) verifyBasis(ctx context.Context) (verifyInputs, baseline, error) {
	in, err := rt.verifyInputs(ctx)
	if err != nil {
		return in, nil, err
	}
	base, err := rt.loadBaseline(ctx)
	return in, base, err
}

// verificationFailed is verify's failure: every regression, and what was
// not counted because it failed before the rotation too; nil without
// regressions.
func verificationFailed(regressions, preExisting []string) error {
	if len(regressions) == 0 {
		return nil
	}
	sort.Strings(regressions)
	sort.Strings(preExisting)
	msg := "verification failed:\n  - " + strings.Join(regressions, "\n  - ")
	if len(preExisting) > 0 {
		msg += "\nnot counted, failing before the rotation too:\n  - " + strings.Join(preExisting, "\n  - ")
	}
	return errors.New(msg)
}

// nodeVerifications reads what VerifyNode stored for every node, by group.
func (rt *Runtime) nodeVerifications(ctx context.Context) (map[string][]string, error) {
	pre := map[string][]string{}
	for _, n := range rt.Config.nodeNames() {
		raw, ok, err := rt.Store.Value(ctx, verifyNodeKey(n))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", verifyNodeKey(n), err)
		}
		if !ok {
			return nil, fmt.Errorf("node %s has not been verified (no %s)", n, verifyNodeKey(n))
		}
		var v nodeVerification
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("read %s: %w", verifyNodeKey(n), err)
		}
		for g, p := range v.PreExisting {
			pre[g] = append(pre[g], p...)
		}
	}
	return pre, nil
}

// Verify proves the cluster runs on the new CAs while still trusting both,
// and lists what the operator must look at before trust narrows. It runs
// check 4 (cluster health) after VerifyNode passed on every node, and
// writes the hold report with every node's findings.
type Verify struct{ readOnly }

func (Verify) Name() string { return "verify" }

func (Verify) Apply(ctx context.Context, rt *Runtime, t Target) error {
	rep := HoldReport{CheckedAt: rt.now().UTC()}
	in, base, err := rt.verifyBasis(ctx)
	if err != nil {
		return err
	}
	pre, err := rt.nodeVerifications(ctx)
	if err != nil {
		return err
	}
	// The health checks and the attention list only read, each waiting on
	// the API or on a server probe: they run at once, so that a run
	// through a slow link waits a few round trips here, not twenty.
	var (
		health                                    []finding
		unlisted                                  []UnlistedNode
		bundles, pods, servers, carriers, saLines []string
	)
	if err := together(
		func() (err error) { health, err = rt.verifyHealth(ctx, in.bundle); return },
		func() (err error) { unlisted, err = rt.unlistedNodes(ctx); return },
		func() (err error) { bundles, err = rt.oldOnlyBundles(ctx); return },
		func() (err error) { pods, err = rt.stalePods(ctx); return },
		func() (err error) { servers, err = rt.oldCAServers(ctx); return },
		func() (err error) { carriers, err = rt.oldCACarriers(ctx); return },
		func() (err error) { saLines, err = rt.saHoldLines(ctx); return },
	); err != nil {
		return err
	}
	regressions, healthPre := base.split(health)
	pre[groupHealth] = healthPre
	for _, g := range verifyGroups {
		verified := g.verified
		if len(pre[g.id]) > 0 {
			verified += ", except what is listed as pre-existing"
		}
		rep.Verified = append(rep.Verified, verified)
		rep.PreExisting = append(rep.PreExisting, pre[g.id]...)
	}
	sort.Strings(rep.PreExisting)
	if err := verificationFailed(regressions, rep.PreExisting); err != nil {
		return err
	}

	// Attention list for the hold.
	rep.Unlisted = unlisted
	for _, u := range rep.Unlisted {
		if u.lockedOut() && !u.Accepted {
			rep.Attention = append(rep.Attention, lockoutAdvice(u, in.newCA))
		} else {
			rt.Printf("%s", u)
		}
	}
	rep.Attention = append(rep.Attention, bundles...)
	rep.Attention = append(rep.Attention, pods...)
	rep.Attention = append(rep.Attention, servers...)
	rep.Attention = append(rep.Attention, carriers...)
	rep.Attention = append(rep.Attention, "kubeconfigs outside the control plane (operators, CI, external tools) not listed in the inventory's extraKubeconfigs still trust and present the old CA: give them the new CA data and new client certificates before resuming")
	if rt.Config.Etcd {
		rep.Attention = append(rep.Attention, fmt.Sprintf("etcd members serve certificates of the new etcd CA: tools that verify them with %s (etcdctl, backup jobs) need %s until trust narrows, when %s becomes the new etcd CA; their own client certificates of the old etcd CA stop working then",
			rt.Config.pki(fileEtcdCACert), rt.Config.pki(fileEtcdCABundle), rt.Config.pki(fileEtcdCACert)))
	}
	rep.Attention = append(rep.Attention, saLines...)
	if rep.Workloads, err = rt.workloadHoldLines(ctx); err != nil {
		return err
	}
	raw, _ := json.Marshal(rep)
	rt.Out.Put(KeyHoldReport, raw)
	for _, p := range rep.PreExisting {
		rt.Printf("pre-existing: %s", p)
	}
	for _, a := range rep.Attention {
		rt.Printf("attention: %s", a)
	}
	for _, w := range rep.Workloads {
		rt.Printf("workload: %s", w)
	}
	return nil
}

// finding is one problem a verify check found. check names the baseline
// entry it compares with (see baseline.go); "" for a finding about the new
// CAs, which has no pre-rotation equivalent.
type finding struct {
	check   string
	problem string
}

// verifyInputs is what verify's checks compare with, read once from the
// run's state.
type verifyInputs struct {
	newCA  *x509.Certificate   // the new cluster CA
	oldCAs []*x509.Certificate // the old cluster, front-proxy (and etcd) CAs
	client tls.Certificate     // rotate's client certificate from the new CA
	bundle []byte              // old+new cluster CA
}

func (rt *Runtime) verifyInputs(ctx context.Context) (verifyInputs, error) {
	var in verifyInputs
	cas, err := rt.runCAs(ctx)
	if err != nil {
		return in, err
	}
	cl, fp := cas.cluster, cas.frontProxy
	newCA, err := pki.ParseCertsPEM(cl.NewCert)
	if err != nil {
		return in, err
	}
	oldCAs, err := pki.ParseCertsPEM(cl.OldCert)
	if err != nil {
		return in, err
	}
	oldFP, err := pki.ParseCertsPEM(fp.OldCert)
	if err != nil {
		return in, err
	}
	crt, _, _ := rt.Store.Value(ctx, keyRotateAdminCert)
	key, _, _ := rt.Store.Value(ctx, keyRotateAdminKey)
	if in.client, err = tls.X509KeyPair(crt, key); err != nil {
		return in, fmt.Errorf("rotate's client certificate: %w", err)
	}
	in.newCA, in.oldCAs, in.bundle = newCA[0], append(oldCAs, oldFP...), cas.bundle
	if rt.Config.Etcd {
		pair, err := rt.caPair(ctx, CAEtcd)
		if err != nil {
			return in, err
		}
		oldEtcd, err := pki.ParseCertsPEM(pair.OldCert)
		if err != nil {
			return in, err
		}
		in.oldCAs = append(in.oldCAs, oldEtcd...)
	}
	return in, nil
}

// verifyAPIServer is check 1 on control-plane node n: its apiserver serves
// a certificate from the new CA and accepts a client certificate from it.
func (rt *Runtime) verifyAPIServer(ctx context.Context, n string, in verifyInputs) []finding {
	addr := rt.Config.APIServerEndpoint(n)
	leaf, err := rt.servingCert(ctx, addr)
	if err != nil {
		return []finding{{checkAPIServer(n), fmt.Sprintf("apiserver %s: %v", n, err)}}
	}
	var out []finding
	if !pki.IssuedBy(leaf, in.newCA) {
		out = append(out, finding{"", fmt.Sprintf("apiserver %s serves %s, not issued by the new CA", n, pki.Describe(leaf))})
	}
	if err := rt.getWithCert(ctx, addr, in.client); err != nil {
		out = append(out, finding{checkAPIServer(n), fmt.Sprintf("apiserver %s rejects a client certificate from the new CA: %v", n, err)})
	}
	return out
}

// verifyNodeProxy is check 2 on node n, first half: the apiservers reach
// its kubelet (apiserver → kubelet with the new kubelet-client
// certificate).
func (rt *Runtime) verifyNodeProxy(ctx context.Context, n string) []finding {
	if err := rt.kubeletHealthz(ctx, n); err != nil {
		return []finding{{checkNodeProxy(n), fmt.Sprintf("apiserver → kubelet %s: %v", n, err)}}
	}
	return nil
}

// verifyKubeletClientCert is check 2 on node n, second half: its kubelet
// runs with a client certificate from the new CA.
func (rt *Runtime) verifyKubeletClientCert(ctx context.Context, n string, newCA *x509.Certificate) []finding {
	r, err := rt.node(ctx, Target{Node: n})
	if err != nil {
		return []finding{{"", err.Error()}}
	}
	raw, err := rt.readKubeletClientCert(ctx, r, n)
	if err != nil {
		return []finding{{checkKubeletClientCert(n), err.Error()}}
	}
	var out []finding
	if c, _, err := pki.ParseKubeletPEM(raw); err == nil && !pki.IssuedBy(c, newCA) {
		out = append(out, finding{"", fmt.Sprintf("kubelet on %s presents %s, not from the new CA", n, pki.Describe(c))})
	} else if err != nil {
		if cs, perr := pki.ParseCertsPEM(raw); perr == nil && !pki.IssuedBy(cs[0], newCA) {
			out = append(out, finding{"", fmt.Sprintf("kubelet on %s presents %s, not from the new CA", n, pki.Describe(cs[0]))})
		}
	}
	// A kubelet whose serving certificate comes from the CSR API serves
	// one from the new CA (apiservers with --kubelet-certificate-authority
	// verify it once trust narrows).
	if f, err := rt.kubeletFactsOf(ctx, n); err == nil && len(f.ServingDNS)+len(f.ServingIPs) > 0 {
		p := rt.Config.kubeletPKI(kubeletServingLink)
		raw, err := r.ReadFile(ctx, p)
		if err != nil {
			return append(out, finding{"", fmt.Sprintf("kubelet serving certificate on %s: %v", n, err)})
		}
		if c, _, err := pki.ParseKubeletPEM(raw); err != nil {
			out = append(out, finding{"", fmt.Sprintf("kubelet serving certificate %s on %s: %v", p, n, err)})
		} else if !pki.IssuedBy(c, newCA) {
			out = append(out, finding{"", fmt.Sprintf("kubelet on %s serves %s, not from the new CA", n, pki.Describe(c))})
		}
	}
	return out
}

// verifiedFiles are the files verify reads on t's node.
func (rt *Runtime) verifiedFiles(t Target) []string {
	c := rt.Config
	paths := []string{c.kubeletPKI(kubeletClientLink), c.kubeDir(kubeconfigKubelet), c.kubeletPKI(kubeletServingLink)}
	if t.Role == RoleControlPlane {
		for _, kc := range edit.ControlPlaneKubeconfigs {
			paths = append(paths, c.kubeDir(kc.Name))
		}
		for _, lf := range c.leaves() {
			paths = append(paths, c.pki(lf.name+".crt"))
		}
	}
	return paths
}

// readAhead makes rt.node serve t's node from one read of paths (a
// Batched view) until rt.files is cleared: for read-only steps that read
// many files one by one.
func (rt *Runtime) readAhead(ctx context.Context, t Target, paths []string) error {
	rt.files = nil
	r, err := rt.node(ctx, t)
	if err != nil {
		return err
	}
	b := nodes.NewBatched(r)
	if err := b.Prefetch(ctx, paths...); err != nil {
		return err
	}
	rt.files = b
	return nil
}

// readKubeletClientCert reads the client certificate the kubelet on n
// presents: the current-cert link, or else kubelet.conf's embedded one.
func (rt *Runtime) readKubeletClientCert(ctx context.Context, r nodes.Runner, n string) ([]byte, error) {
	raw, err := r.ReadFile(ctx, rt.Config.kubeletPKI(kubeletClientLink))
	if errors.Is(err, fs.ErrNotExist) {
		raw, err = r.ReadFile(ctx, rt.Config.kubeDir(kubeconfigKubelet))
		if err == nil {
			var cc edit.ClientCert
			cc, err = edit.KubeconfigClientCert(raw, "")
			raw = cc.CertPEM
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kubelet client certificate on %s: %w", n, err)
	}
	return raw, nil
}

// verifyControlPlaneCerts is check 3 on control-plane node n: no
// kubeconfig or leaf certificate there is issued by an old CA.
func (rt *Runtime) verifyControlPlaneCerts(ctx context.Context, n string, oldCAs []*x509.Certificate) []finding {
	r, err := rt.node(ctx, Target{Node: n})
	if err != nil {
		return []finding{{"", err.Error()}}
	}
	var out []finding
	problem := func(s string) { out = append(out, finding{"", s}) }
	var srcs []pki.Source
	scanned := edit.ScanControlPlaneKubeconfigs(func(name string) ([]byte, error) {
		return r.ReadFile(ctx, rt.Config.kubeDir(name))
	})
	for _, kc := range scanned {
		if kc.Err != nil {
			problem(kc.Err.Error())
			continue
		}
		srcs = append(srcs, pki.Source{Where: n + ":" + rt.Config.kubeDir(kc.Name), PEM: kc.Client.CertPEM})
	}
	for _, lf := range rt.Config.leaves() {
		raw, err := r.ReadFile(ctx, rt.Config.pki(lf.name+".crt"))
		if err != nil {
			problem(err.Error())
			continue
		}
		srcs = append(srcs, pki.Source{Where: n + ":" + rt.Config.pki(lf.name+".crt"), PEM: raw})
	}
	for _, o := range oldCAs {
		found, err := pki.ScanIssuedBy(o, srcs)
		if err != nil {
			problem(err.Error())
		}
		for _, f := range found {
			problem(fmt.Sprintf("%s is still issued by the old CA (%s)", f.Where, f.Subject))
		}
	}
	return out
}

// verifyHealth is check 4: every node Ready, every APIService Available,
// kube-root-ca.crt holding old+new (bundle) everywhere. An error is a
// failure to ask, not a finding.
func (rt *Runtime) verifyHealth(ctx context.Context, bundle []byte) ([]finding, error) {
	nodes, err := rt.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []finding
	unlisted := map[string]bool{}
	for _, n := range rt.Config.unlisted(nodes.Items) {
		unlisted[n] = true // reported apart, HoldReport.Unlisted
	}
	for i := range nodes.Items {
		if !unlisted[nodes.Items[i].Name] && !nodeReady(&nodes.Items[i]) {
			out = append(out, finding{checkNodeReady(nodes.Items[i].Name), "node " + nodes.Items[i].Name + " is not Ready"})
		}
	}
	un, err := rt.unavailableAPIServices(ctx)
	if err != nil {
		return nil, err
	}
	for _, a := range un {
		out = append(out, finding{checkAPIService(a), "APIService " + a + " is not Available"})
	}
	if ok, why, err := rt.rootCAPublished(ctx, bundle); err != nil || !ok {
		out = append(out, finding{"", "kube-root-ca.crt: " + why + errOrNil(err)})
	}
	return out, nil
}

// getWithCert calls /api on one apiserver (its endpoint, host:port)
// presenting only cert.
func (rt *Runtime) getWithCert(ctx context.Context, endpoint string, cert tls.Certificate) error {
	host, _, _ := net.SplitHostPort(endpoint)
	cfg := rt.Trust.TLSConfigFor(host)
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	return rt.getAPI(ctx, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}, endpoint)
}

// getAPI calls /api on one apiserver (its endpoint, host:port) through c
// and wants 200: the server accepted the client's credentials.
func (rt *Runtime) getAPI(ctx context.Context, c *http.Client, endpoint string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+endpoint+"/api", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// kubeletHealthz asks the kubelet on node for /healthz through the
// apiserver's node proxy, i.e. apiserver → kubelet. A kubelet answers in
// milliseconds; a firewalled one must not hold preflight or verify for the
// API client's whole timeout.
func (rt *Runtime) kubeletHealthz(ctx context.Context, node string) error {
	const path = "/healthz"
	ctx, cancel := context.WithTimeout(ctx, kubeletProbeTimeout)
	defer cancel()
	if rt.NodeProxy != nil {
		return rt.NodeProxy(ctx, node, path)
	}
	return rt.Kube.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes/" + node + "/proxy" + path).Do(ctx).Error()
}

// kubeletProbeTimeout bounds one apiserver → kubelet check.
const kubeletProbeTimeout = 10 * time.Second

// stalePods lists pods that started before the CA bundle was published
// (they trust only the old CA until restarted) and pods no rollout
// restarts (Jobs, bare pods).
func (rt *Runtime) stalePods(ctx context.Context) ([]string, error) {
	pods, err := rt.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var published time.Time
	if v, ok, _ := rt.Store.Value(ctx, keyPublishedAt); ok {
		published, _ = time.Parse(time.RFC3339, string(v))
	}
	var before, unmanaged []string
	for _, p := range pods.Items {
		if p.Status.Phase == "Succeeded" || p.Status.Phase == "Failed" {
			continue
		}
		if _, mirror := p.Annotations["kubernetes.io/config.mirror"]; mirror {
			continue
		}
		owner := ""
		if len(p.OwnerReferences) > 0 {
			owner = p.OwnerReferences[0].Kind
		}
		if owner == "" || owner == "Job" {
			unmanaged = append(unmanaged, p.Namespace+"/"+p.Name)
		}
		if !published.IsZero() && p.CreationTimestamp.Time.Before(published) {
			before = append(before, p.Namespace+"/"+p.Name)
		}
	}
	var out []string
	if len(before) > 0 {
		out = append(out, fmt.Sprintf("%d pod(s) started before the CA bundle was published and may trust only the old CA: %s", len(before), short(before)))
	}
	if len(unmanaged) > 0 {
		out = append(out, fmt.Sprintf("%d pod(s) are Jobs or bare pods that no rollout restarts: %s", len(unmanaged), short(unmanaged)))
	}
	return out, nil
}

func short(s []string) string {
	sort.Strings(s)
	if len(s) > 8 {
		return strings.Join(s[:8], ", ") + fmt.Sprintf(" and %d more", len(s)-8)
	}
	return strings.Join(s, ", ")
}

// together runs fns at once and returns the error of the first of them,
// in argument order, that failed.
func together(fns ...func() error) error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
