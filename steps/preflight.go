package steps

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
)

// readOnly is embedded by steps that only look: nothing to check, apply
// is the inspection, nothing to gate or revert.
type readOnly struct{}

func (readOnly) Check(context.Context, *Runtime, Target) (bool, error) { return false, nil }
func (readOnly) Gate(context.Context, *Runtime, Target) error          { return nil }
func (readOnly) Revert(context.Context, *Runtime, Target) error        { return nil }
func (readOnly) OnlyLooks()                                            {}

// NodesReachable connects to a node with host key verification, checks
// kubeadm's files are where the inventory says, and that the node's
// ca.crt holds the same CA the cluster publishes. Then it records the
// node's baseline of verify's checks (see baseline): what fails there is
// recorded, not fatal.
type NodesReachable struct{ readOnly }

func (NodesReachable) Name() string { return "nodes-reachable" }

func (NodesReachable) Apply(ctx context.Context, rt *Runtime, t Target) error {
	// The baseline's checks that need no SSH run while the node is
	// dialed and read (a login and a round trip away).
	bctx, cancel := context.WithCancel(ctx)
	pending := rt.startBaseline(bctx, t)
	defer pending.wait()
	defer cancel() // on an early return the baseline is not wanted
	r, err := rt.node(ctx, t)
	if err != nil {
		return err
	}
	c := rt.Config
	need := []string{c.pki(fileCACert), c.kubeDir(kubeconfigKubelet), c.Paths.KubeletConfig}
	if t.Role == RoleControlPlane {
		need = append(need, c.pki(fileCAKey), c.pki(fileFPCACert), c.pki(fileFPCAKey),
			c.manifest(APIServer), c.manifest(ControllerManager), c.manifest(Scheduler),
			c.kubeDir(kubeconfigAdmin), c.kubeDir(kubeconfigKCM), c.kubeDir(kubeconfigScheduler))
	}
	b := nodes.NewBatched(r)
	if err := b.Prefetch(ctx, append(need, c.kubeletPKI(kubeletClientLink))...); err != nil { // one round trip
		return err
	}
	var missing []string
	for _, p := range need {
		st, err := b.Stat(ctx, p)
		if err != nil {
			return fmt.Errorf("stat %s on %s: %w", p, t.Node, err)
		}
		if !st.Exists {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("node %s (%s) lacks %s — is this a kubeadm node and are paths in the inventory right?", t.Node, t.Role, strings.Join(missing, ", "))
	}
	caPEM, err := b.ReadFile(ctx, c.pki(fileCACert))
	if err != nil {
		return fmt.Errorf("read %s on %s: %w", c.pki(fileCACert), t.Node, err)
	}
	// The rest only looks, each a round trip or a few: at once, the first
	// failure in this order reported, the baseline recorded only then.
	var base baseline
	err = together(
		func() error { return rt.sameClusterCA(ctx, t, caPEM) },
		func() error {
			if t.Role != RoleControlPlane {
				return nil
			}
			if err := nodes.HaveCommands(ctx, r, "curl", "pgrep", "awk"); err != nil {
				return fmt.Errorf("node %s needs curl, pgrep and awk for health gates: %w", t.Node, err)
			}
			return nil
		},
		func() (err error) { base, err = pending.finish(ctx, rt, t, b); return err })
	if err != nil {
		return err
	}
	return base.put(rt, baselineNodeKey(t.Node))
}

// sameClusterCA checks the node's ca.crt is the cluster's CA: the one
// recorded at the start of this run, or before that the one published in
// kube-root-ca.crt.
func (rt *Runtime) sameClusterCA(ctx context.Context, t Target, caPEM []byte) error {
	c := rt.Config
	if pair, ok, err := rt.Store.CA(ctx, CACluster); err == nil && ok {
		// Resumed preflight: compare with what was recorded.
		if eq, _ := pki.BundleEqual(caPEM, pair.OldCert); !eq {
			return fmt.Errorf("node %s: %s differs from the CA recorded at the start of this run", t.Node, c.pki(fileCACert))
		}
		return nil
	}
	published, err := rt.Published.rootCA(ctx, rt.Kube)
	if err != nil {
		return err
	}
	if eq, err := pki.BundleEqual(caPEM, published); err != nil || !eq {
		return fmt.Errorf("node %s: %s is not the cluster CA published in kube-root-ca.crt (%v); every node must hold the same CA before a rotation", t.Node, c.pki(fileCACert), err)
	}
	return nil
}

// Published holds what the cluster publishes for every node to compare
// with: kube-system/kube-root-ca.crt's ca.crt, read by the first
// nodes-reachable that needs it. A preflight of 100 nodes reads it once:
// a hundred reads at once of an apiserver under load time out where one
// does not. A failed read is not kept; the next caller reads again.
type Published struct {
	sem    chan struct{} // one reader at a time; the others wait for its result
	caCert []byte
}

func NewPublished() *Published { return &Published{sem: make(chan struct{}, 1)} }

// rootCA is kube-root-ca.crt's ca.crt. On a nil Published it reads it.
func (p *Published) rootCA(ctx context.Context, kube kubernetes.Interface) ([]byte, error) {
	if p != nil {
		select {
		case p.sem <- struct{}{}:
			defer func() { <-p.sem }()
		case <-ctx.Done():
			return nil, fmt.Errorf("read kube-system/kube-root-ca.crt: %w", ctx.Err())
		}
		if p.caCert != nil {
			return p.caCert, nil
		}
	}
	cm, err := kube.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read kube-system/kube-root-ca.crt: %w", err)
	}
	ca := []byte(cm.Data["ca.crt"])
	if p != nil {
		p.caCert = ca
	}
	return ca, nil
}

// ClusterHealthy checks every apiserver is ready, every inventory node is
// a Ready Node, and every APIService is Available, and records the last
// two as the cluster's baseline of verify's checks (see baseline). A Node
// not in the inventory is reported with what to do, or refused with
// nodes.unlisted: fail (see topology.go).
type ClusterHealthy struct{ readOnly }

func (ClusterHealthy) Name() string { return "cluster-healthy" }

// RevertGate ends a rollback (cluster-healthy is reverted last but for the
// per-node preflight steps) where a run starts from: the controller-managers,
// restarted on the old root CA file, republish kube-root-ca.crt and the
// legacy token Secrets asynchronously (the leader's next sync), and until
// they have, pods still mount old+new and a new `rotate start` would refuse
// the cluster (the published CA is not the nodes' ca.crt). So it waits
// until every namespace's kube-root-ca.crt holds the old CA only. A run
// that made no CA has nothing to wait for.
func (ClusterHealthy) RevertGate(ctx context.Context, rt *Runtime, t Target) error {
	pair, ok, err := rt.Store.CA(ctx, CACluster)
	if err != nil || !ok {
		return err
	}
	return rt.waitFor(ctx, "kube-root-ca.crt and token Secrets to hold the old CA again", func(ctx context.Context) (bool, string, error) {
		return rt.rootCAPublished(ctx, pair.OldCert)
	})
}

func (ClusterHealthy) Apply(ctx context.Context, rt *Runtime, t Target) error {
	var problems []string
	// Each apiserver is asked at once (a new TLS connection each: a few
	// round trips through a slow link), the answers kept in order.
	notReady := make([]string, len(rt.Config.ControlPlane))
	var wg sync.WaitGroup
	for i, n := range rt.Config.ControlPlane {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, why, err := rt.apiServerReady(ctx, rt.Config.APIServerEndpoint(n)); err != nil || !ok {
				notReady[i] = fmt.Sprintf("apiserver on %s not ready: %s%v", n, why, errOrNil(err))
			}
		}()
	}
	wg.Wait()
	for _, p := range notReady {
		if p != "" {
			problems = append(problems, p)
		}
	}
	list, err := rt.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	// A Node the run does not rotate is reported (nodes.unlisted: warn)
	// or refused (fail); its readiness is its own business then (verify
	// reports such Nodes apart, HoldReport.Unlisted).
	unlisted := map[string]bool{}
	names := rt.Config.unlisted(list.Items)
	for _, n := range names {
		unlisted[n] = true
		if rt.Config.UnlistedNodes == UnlistedFail {
			problems = append(problems, unlistedAdvice(n)+" (nodes.unlisted: fail)")
		} else {
			rt.Printf("warning: %s", unlistedAdvice(n))
		}
	}
	b := baseline{}
	seen := map[string]bool{}
	for i := range list.Items {
		n := &list.Items[i]
		seen[n.Name] = true
		switch {
		case unlisted[n.Name]:
		case nodeReady(n):
			b.record(checkNodeReady(n.Name), nil)
		default:
			problems = append(problems, fmt.Sprintf("node %s is not Ready", n.Name))
		}
	}
	for _, n := range rt.Config.nodeNames() {
		if !seen[n] {
			problems = append(problems, fmt.Sprintf("inventory node %s is not a Node in the cluster", n))
		}
	}
	apis, err := rt.apiServices(ctx)
	if err != nil {
		return err
	}
	for _, a := range apis {
		if !a.available {
			problems = append(problems, "APIService "+a.name+" is not Available")
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("cluster is not healthy enough to start a rotation:\n  - %s", strings.Join(problems, "\n  - "))
	}
	// Everything else passed (it is required above); recorded so that
	// the baseline names every check verify makes.
	for _, a := range apis {
		b.record(checkAPIService(a.name), nil)
	}
	raw, _ := json.Marshal(names)
	rt.Out.Put(keyUnlistedAtStart, raw)
	return b.put(rt, keyBaselineCluster)
}

func errOrNil(err error) string {
	if err == nil {
		return ""
	}
	return " " + err.Error()
}

// NewCAs reads the old CAs from the first control-plane node and makes or
// loads the new ones, persisting both before anything changes, so a re-run
// never mints a different CA. It also issues rotate's own API client
// certificate from the new CA (same identity as the kubeconfig's).
type NewCAs struct{}

func (NewCAs) Name() string { return "new-cas" }

func (NewCAs) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	for _, n := range rt.Config.caNames() {
		if _, ok, err := rt.Store.CA(ctx, n); err != nil || !ok {
			return false, err
		}
	}
	_, ok, err := rt.Store.Value(ctx, keyRotateAdminCert)
	return ok, err
}

// caNames are the CAs the run rotates, by their names in the state file.
func (c *Config) caNames() []string {
	out := []string{CACluster, CAFrontProxy}
	if c.Etcd {
		out = append(out, CAEtcd)
	}
	if c.ServiceAccount {
		out = append(out, CAServiceAccount)
	}
	return out
}

func (NewCAs) Gate(context.Context, *Runtime, Target) error   { return nil }
func (NewCAs) Revert(context.Context, *Runtime, Target) error { return nil }

func (NewCAs) Apply(ctx context.Context, rt *Runtime, t Target) error {
	first := Target{Node: rt.Config.ControlPlane[0], Role: RoleControlPlane}
	c := rt.Config
	var r nodes.Runner // the first node, read ahead below
	read := func(name string) ([]byte, error) {
		b, err := r.ReadFile(ctx, c.pki(name))
		if err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", c.pki(name), first.Node, err)
		}
		return b, nil
	}
	type caSpec struct {
		name, cert, key, cn, certFile, keyFile string
	}
	specs := []caSpec{
		{CACluster, fileCACert, fileCAKey, c.NewCA.ClusterCommonName, c.NewCA.ClusterCertFile, c.NewCA.ClusterKeyFile},
		{CAFrontProxy, fileFPCACert, fileFPCAKey, c.NewCA.FrontProxyCommonName, c.NewCA.FrontProxyCertFile, c.NewCA.FrontProxyKeyFile},
	}
	if c.Etcd {
		specs = append(specs, caSpec{CAEtcd, fileEtcdCACert, fileEtcdCAKey, c.NewCA.EtcdCommonName, c.NewCA.EtcdCertFile, c.NewCA.EtcdKeyFile})
	}
	// Every file read below in one round trip; one that could not be read
	// in it is read again on its own, for its error.
	var paths []string
	for _, s := range specs {
		paths = append(paths, c.pki(s.cert), c.pki(s.key))
	}
	if c.ServiceAccount {
		paths = append(paths, c.pki(fileSAKey), c.pki(fileSAPub))
	}
	if err := rt.readAhead(ctx, first, paths); err != nil {
		return err
	}
	r, err := rt.node(ctx, first)
	if err != nil {
		return err
	}
	var newCluster *pki.CA
	for _, s := range specs {
		oldCert, err := read(s.cert)
		if err != nil {
			return err
		}
		oldKey, err := read(s.key)
		if err != nil {
			return err
		}
		oldCerts, err := pki.ParseCertsPEM(oldCert)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", c.pki(s.cert), first.Node, err)
		}
		var ca *pki.CA
		if s.certFile != "" {
			cp, err := os.ReadFile(s.certFile)
			if err != nil {
				return fmt.Errorf("new %s CA: %w", s.name, err)
			}
			kp, err := os.ReadFile(s.keyFile)
			if err != nil {
				return fmt.Errorf("new %s CA: %w", s.name, err)
			}
			if ca, err = pki.LoadCA(cp, kp, rt.now(), 0); err != nil {
				return fmt.Errorf("new %s CA from %s: %w", s.name, s.certFile, err)
			}
		} else {
			alg, err := pki.ParseKeyAlgorithm(c.NewCA.Algorithm)
			if err != nil {
				return err
			}
			// The run id in the CN keeps every rotation's CA distinct by
			// subject, also from an earlier rotation that was rolled back
			// (clients that cached that CA would otherwise pick the wrong
			// candidate issuer by name).
			if ca, err = pki.NewCA(pki.CAOptions{CommonName: s.cn + "-" + runStamp(rt.RunID), Algorithm: alg, Validity: c.NewCA.Validity}); err != nil {
				return fmt.Errorf("generate %s CA: %w", s.name, err)
			}
		}
		for _, o := range oldCerts {
			if o.Subject.String() == ca.Cert.Subject.String() {
				return fmt.Errorf("new %s CA has the same subject as the old one (%s); give it a distinct CN so clients can tell them apart", s.name, o.Subject)
			}
		}
		rt.Out.PutCA(CAPair{Name: s.name, OldCert: oldCert, OldKey: oldKey, NewCert: ca.CertPEM, NewKey: ca.KeyPEM})
		rt.Printf("%s CA: old %s, new %s", s.name, pki.Describe(oldCerts[0]), pki.Describe(ca.Cert))
		if s.name == CACluster {
			newCluster = ca
		}
	}
	if c.ServiceAccount {
		oldKey, err := read(fileSAKey)
		if err != nil {
			return err
		}
		oldPub, err := read(fileSAPub)
		if err != nil {
			return err
		}
		pair, err := rt.newServiceAccountKey(oldKey, oldPub, first.Node)
		if err != nil {
			return err
		}
		rt.Out.PutCA(pair)
	}
	// rotate's own identity for the API once servers trust the new CA.
	subject := pkix.Name{CommonName: "rotate", Organization: []string{"system:masters"}}
	if rt.AdminCert != nil {
		subject = rt.AdminCert.Subject
	}
	tmpl := &x509.Certificate{Subject: subject, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	is, err := pki.Reissue(tmpl, newCluster, pki.ReissueOptions{})
	if err != nil {
		return fmt.Errorf("issue rotate's client certificate: %w", err)
	}
	rt.Out.Put(keyRotateAdminCert, is.CertPEM)
	rt.Out.Put(keyRotateAdminKey, is.KeyPEM)
	return nil
}

// PrepareCerts issues, once, every replacement leaf a node will need,
// from the new CAs, copying subject, SANs and usages of the current ones,
// and stores them; later steps write these exact bytes.
type PrepareCerts struct{}

func (PrepareCerts) Name() string { return "prepare-certs" }

func (PrepareCerts) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	_, ok, err := rt.Store.Value(ctx, prepDoneKey(t.Node))
	return ok, err
}

func (PrepareCerts) Gate(context.Context, *Runtime, Target) error   { return nil }
func (PrepareCerts) Revert(context.Context, *Runtime, Target) error { return nil }

func (PrepareCerts) Apply(ctx context.Context, rt *Runtime, t Target) error {
	r, err := rt.node(ctx, t)
	if err != nil {
		return err
	}
	cluster, err := rt.newCA(ctx, CACluster)
	if err != nil {
		return err
	}
	c := rt.Config
	if t.Role == RoleControlPlane {
		fp, err := rt.newCA(ctx, CAFrontProxy)
		if err != nil {
			return err
		}
		leaves := c.leaves()
		cas := map[string]*pki.CA{CACluster: cluster, CAFrontProxy: fp}
		if c.Etcd {
			if cas[CAEtcd], err = rt.etcdPreflight(ctx, r, t); err != nil {
				return err
			}
		}
		var paths []string
		for _, lf := range leaves {
			paths = append(paths, c.pki(lf.name+".crt"))
		}
		for _, kc := range edit.ControlPlaneKubeconfigs {
			paths = append(paths, c.kubeDir(kc.Name))
		}
		if c.ServiceAccount {
			paths = append(paths, c.saPreflightPaths()...)
		}
		b := nodes.NewBatched(r)
		if err := b.Prefetch(ctx, paths...); err != nil { // one round trip
			return err
		}
		r := nodes.Runner(b)
		if c.ServiceAccount {
			if err := rt.saPreflight(ctx, r, t); err != nil {
				return err
			}
		}
		for _, lf := range leaves {
			p := c.pki(lf.name + ".crt")
			raw, err := r.ReadFile(ctx, p)
			if err != nil {
				return fmt.Errorf("read %s on %s: %w", p, t.Node, err)
			}
			certs, err := pki.ParseCertsPEM(raw)
			if err != nil {
				return fmt.Errorf("%s on %s: %w", p, t.Node, err)
			}
			is, err := pki.Reissue(certs[0], cas[lf.ca], pki.ReissueOptions{})
			if err != nil {
				return fmt.Errorf("re-issue %s of %s: %w", p, t.Node, err)
			}
			rt.Out.Put(prepKey(t.Node, lf.name+".crt"), is.CertPEM)
			rt.Out.Put(prepKey(t.Node, lf.name+".key"), is.KeyPEM)
		}
		for _, kc := range edit.ControlPlaneKubeconfigs {
			p := c.kubeDir(kc.Name)
			raw, err := r.ReadFile(ctx, p)
			if errors.Is(err, os.ErrNotExist) && kc.Optional {
				continue
			}
			if err != nil {
				return fmt.Errorf("read %s on %s: %w", p, t.Node, err)
			}
			cc, err := edit.KubeconfigClientCert(raw, "")
			if err != nil {
				return fmt.Errorf("%s on %s: %w", p, t.Node, err)
			}
			if len(cc.CertPEM) == 0 {
				return fmt.Errorf("%s on %s: client certificate is a file reference (%s); only embedded client certificates are re-issued", p, t.Node, cc.CertFile)
			}
			certs, err := pki.ParseCertsPEM(cc.CertPEM)
			if err != nil {
				return fmt.Errorf("%s on %s: client certificate: %w", p, t.Node, err)
			}
			is, err := pki.Reissue(certs[0], cluster, pki.ReissueOptions{})
			if err != nil {
				return fmt.Errorf("re-issue client certificate of %s on %s: %w", p, t.Node, err)
			}
			rt.Out.Put(prepKey(t.Node, kc.Name+".crt"), is.CertPEM)
			rt.Out.Put(prepKey(t.Node, kc.Name+".key"), is.KeyPEM)
		}
	}
	if err := rt.prepareKubelet(ctx, r, t, cluster); err != nil {
		return err
	}
	if err := rt.prepareExtraKubeconfigs(ctx, r, t, cluster); err != nil {
		return err
	}
	rt.Out.Put(prepDoneKey(t.Node), []byte("1"))
	return nil
}

// newCA loads the new CA (cert and key) of the run.
func (rt *Runtime) newCA(ctx context.Context, name string) (*pki.CA, error) {
	pair, err := rt.caPair(ctx, name)
	if err != nil {
		return nil, err
	}
	return pki.LoadCA(pair.NewCert, pair.NewKey, rt.now(), 0)
}

func (rt *Runtime) caPair(ctx context.Context, name string) (CAPair, error) {
	pair, ok, err := rt.Store.CA(ctx, name)
	if err != nil {
		return pair, err
	}
	if !ok {
		return pair, fmt.Errorf("no %s CA material in the state file (phase preflight did not complete)", name)
	}
	return pair, nil
}

// bundles returns B = old+new for the cluster and front-proxy CAs.
func (rt *Runtime) bundles(ctx context.Context) (cluster, frontProxy []byte, err error) {
	if _, cluster, err = rt.caBundle(ctx, CACluster); err != nil {
		return nil, nil, err
	}
	_, frontProxy, err = rt.caBundle(ctx, CAFrontProxy)
	return cluster, frontProxy, err
}

// caBundle is the named CA's material and its bundle old+new, PEM.
func (rt *Runtime) caBundle(ctx context.Context, name string) (CAPair, []byte, error) {
	pair, err := rt.caPair(ctx, name)
	if err != nil {
		return pair, nil, err
	}
	nc, err := pki.ParseCertsPEM(pair.NewCert)
	if err != nil {
		return pair, nil, err
	}
	b, err := pki.BundleAdd(pair.OldCert, nc...)
	return pair, b, err
}

// runStamp is the date-time part of a run id ("20261127-041840").
func runStamp(id string) string {
	if len(id) >= 15 {
		return id[:15]
	}
	return id
}
