package steps_test

// The one invariant of docs/rotation.md, for the files on the nodes: a file that
// a running component reads dynamically is never narrowed in place (a CA
// certificate taken out of it, or the file removed) before that component
// has been restarted onto other flags and passed its restart gate.
//
// The model test walks the node-editing steps of the real plan
// (plans.Build) in order on an in-memory control-plane node and worker
// node, every Apply and Gate forward, then every Revert and RevertGate in
// reverse order, and checks the model after every write, symlink and
// removal:
//
//   - each component — every static pod in the manifests dir, and the
//     kubelet — runs with the configuration it had at its last restart
//     gate; once its manifest (the kubelet: config.yaml, kubelet.conf)
//     changes, the old and the new configuration both count as running
//     until the next gate passes (a real static pod restarts seconds after
//     its manifest is written, the kubelet when its restart command has
//     run, and nothing but the gate says the old process is gone);
//   - the files a configuration reads dynamically are its file-valued
//     flags and fields (conservatively all of them, except kubeconfigs,
//     which client-go reads once at start);
//   - an operation that drops a CA certificate from such a file, or
//     removes it, is a violation, reported with step, direction, node,
//     file and component.
//
// The "killed" cases also stop every Revert at each of its operations in
// turn (as a SIGKILL would) and run it again, as the orchestrator does on
// resume; the invariant must hold on every such path, and the nodes must
// end byte for byte as they were before the run.

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/kubeca/rotate/internal/kubeadmtest"
	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/steps"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubeadmtest.Cleanup()
	os.Exit(code)
}

const (
	cpNode     = "cp1"
	workerNode = "w1"
	manifests  = "/etc/kubernetes/manifests"
	kubeletCfg = "/var/lib/kubelet/config.yaml"
	kubeletKC  = "/etc/kubernetes/kubelet.conf"
	rotateDir  = "/var/lib/rotate/" // backups and markers: rotate's own
)

func TestNoTrustNarrowedUnderARunningComponent(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layout func(t *testing.T) (cp, worker layout)
		kill   bool
		roots  []string // what the plan rotates besides the cluster and front-proxy CAs
	}{
		{"hand-written/clean", handWrittenLayout, false, nil},
		{"hand-written/killed-reverts", handWrittenLayout, true, nil},
		{"kubeadm/clean", kubeadmLayout, false, nil},
		{"kubeadm/killed-reverts", kubeadmLayout, true, nil},
		{"kubeadm+etcd/clean", kubeadmLayout, false, []string{plans.RootEtcd}},
		{"kubeadm+etcd/killed-reverts", kubeadmLayout, true, []string{plans.RootEtcd}},
		{"kubeadm+all/clean", kubeadmLayout, false, []string{plans.RootEtcd, plans.RootServiceAccount}},
		{"kubeadm+all/killed-reverts", kubeadmLayout, true, []string{plans.RootEtcd, plans.RootServiceAccount}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp, worker := tc.layout(t)
			runModel(t, withCCM(cp), worker, tc.kill, tc.roots)
		})
	}
}

// runModel applies and reverts every node step of the plan, checking the
// model on every operation.
func runModel(t *testing.T, cp, worker layout, kill bool, roots []string) {
	ctx := context.Background()
	m := &model{}
	cpn, wn := m.addNode(cpNode, cp), m.addNode(workerNode, worker)
	st := steps.NewTestStore()
	runtime := modelRuntime(steps.MemNodes{cpNode: cpn, workerNode: wn}, steps.GateFunc(m.gate), roots)
	m.begin("preflight", "apply", "")
	prepare(t, st, runtime)
	before := m.files()

	type applied struct {
		key string
		s   nodeEditStep
		t   steps.Target
		rt  *steps.Runtime
	}
	var done []applied
	for _, ns := range planNodeSteps(t, roots) {
		rt := runtime(st.ForStep(), backupID(ns.key+"@"+ns.t.Node))
		m.begin(ns.key, "apply", ns.t.Node)
		if err := ns.s.Apply(ctx, rt, ns.t); err != nil {
			t.Fatalf("apply %s on %s: %v", ns.key, ns.t.Node, err)
		}
		if err := ns.s.Gate(ctx, rt, ns.t); err != nil {
			t.Fatalf("gate %s on %s: %v", ns.key, ns.t.Node, err)
		}
		done = append(done, applied{ns.key, ns.s, ns.t, rt})
	}
	for i := len(done) - 1; i >= 0; i-- {
		d := done[i]
		m.begin(d.key, "revert", d.t.Node)
		revert := func() error {
			if err := d.s.Revert(ctx, d.rt, d.t); err != nil {
				return err
			}
			return d.s.RevertGate(ctx, d.rt, d.t)
		}
		start := m.save()
		if err := revert(); err != nil {
			t.Fatalf("revert %s on %s: %v", d.key, d.t.Node, err)
		}
		if !kill {
			continue
		}
		// Killed at its k-th operation (a gate counts as one) and run
		// again, every Revert must end where the clean one did.
		n, want := m.ops, m.files()
		for k := 1; k <= n; k++ {
			m.restore(start)
			m.killAt = k
			err := revert()
			if m.killAt = 0; !m.fired {
				t.Fatalf("revert %s on %s not killed at its operation %d of %d (%v)", d.key, d.t.Node, k, n, err)
			}
			if err := revert(); err != nil {
				t.Fatalf("revert %s on %s, run again after a kill at its operation %d: %v", d.key, d.t.Node, k, err)
			}
			got := m.files()
			for _, p := range sortedKeys(want, got) {
				if want[p] != got[p] {
					t.Errorf("revert %s on %s killed at its operation %d and run again leaves %s %s, a clean one %s", d.key, d.t.Node, k, p, describe(got[p]), describe(want[p]))
				}
			}
		}
	}

	for _, v := range m.violations {
		t.Error(v)
	}
	for _, trail := range m.trails {
		t.Log(trail)
	}
	if m.checks == 0 {
		t.Fatal("the model checked no file")
	}
	after := m.files()
	for _, p := range sortedKeys(before, after) {
		if before[p] != after[p] {
			t.Errorf("after rollback %s is %s, before the run it was %s", p, describe(after[p]), describe(before[p]))
		}
	}
}

var (
	cpTarget     = steps.Target{Node: cpNode, Role: steps.RoleControlPlane}
	workerTarget = steps.Target{Node: workerNode, Role: steps.RoleWorker}
)

// modelRuntime returns the runtime a step gets on the nodes, with the
// given store and backup id (the orchestrator's per-step scope).
func modelRuntime(ns steps.MemNodes, gates steps.Gates, roots []string) func(store steps.Store, backupID string) *steps.Runtime {
	cfg := steps.TestConfig([]string{cpNode}, []string{workerNode})
	cfg.NewCA = steps.NewCASpec{ClusterCommonName: "kubernetes-new", FrontProxyCommonName: "front-proxy-ca-new", EtcdCommonName: "etcd-ca-new"}
	cfg.Etcd = slices.Contains(roots, plans.RootEtcd)
	cfg.ServiceAccount = slices.Contains(roots, plans.RootServiceAccount)
	cfg.ExtraKubeconfigs = map[string][]string{cpNode: {extraCP}, workerNode: {extraWorker}}
	return func(store steps.Store, backupID string) *steps.Runtime {
		return &steps.Runtime{RunID: "20260101-000000-model", BackupID: backupID, Store: store,
			Nodes: ns, Out: &steps.Outputs{}, Config: cfg, Gates: gates}
	}
}

// prepare runs preflight as the plan does: the real NewCAs and
// PrepareCerts make the CAs and the certificates that later steps read
// from the store.
func prepare(t *testing.T, st *steps.TestStore, runtime func(steps.Store, string) *steps.Runtime) {
	t.Helper()
	ctx := context.Background()
	rt := runtime(st, "preflight")
	if err := (steps.NewCAs{}).Apply(ctx, rt, steps.ClusterTarget); err != nil {
		t.Fatal(err)
	}
	st.Commit(rt.Out)
	for _, tg := range []steps.Target{cpTarget, workerTarget} {
		rt := runtime(st, "preflight")
		if err := (steps.PrepareCerts{}).Apply(ctx, rt, tg); err != nil {
			t.Fatal(err)
		}
		st.Commit(rt.Out)
	}
	// kubelet-csrs, signed directly: the certificates the kubelet steps
	// write, without an API.
	rt = runtime(st, "servers")
	if err := (steps.KubeletCSRs{}).Preview(ctx, rt, steps.ClusterTarget); err != nil {
		t.Fatal(err)
	}
	st.Commit(rt.Out)
}

// nodeEditStep is a step that edits node files (a NodeEdit, or one that
// wraps it).
type nodeEditStep interface {
	steps.Step
	steps.RevertGater
}

// nodeStep is one node-editing step of the plan on one target.
type nodeStep struct {
	key string // phase/step
	s   nodeEditStep
	t   steps.Target
}

// planNodeSteps is every node-editing step of the real plan (plans.Build)
// on a control-plane node and a worker, in plan order. Cluster steps
// change API objects, not node files, and are left out.
func planNodeSteps(t *testing.T, roots []string) []nodeStep {
	t.Helper()
	inv := &plans.Inventory{Nodes: plans.NodesSpec{
		ControlPlane: []plans.NodeSpec{{Name: cpNode}}, Workers: []plans.NodeSpec{{Name: workerNode}}}}
	if len(roots) > 0 {
		inv.Rotate = append([]string{plans.RootCluster, plans.RootFrontProxy}, roots...)
	}
	plan := plans.Build(inv, plans.Options{})
	var out []nodeStep
	kinds := map[string]bool{}
	for _, ph := range plan.Phases {
		for _, ps := range ph.Steps {
			s, ok := ps.Step.(nodeEditStep)
			if !ok || len(ps.Targets) == 0 || ps.Targets[0].Node == "" {
				continue // cluster steps change API objects, not node files
			}
			key := ph.Name + "/" + s.Name()
			kinds[strings.TrimSuffix(strings.TrimSuffix(key, "-cp"), "-workers")] = true
			for _, tg := range ps.Targets {
				out = append(out, nodeStep{key, s, tg})
			}
		}
	}
	if len(kinds) < 16 {
		t.Fatalf("the plan has %d kinds of node step; the tests were written for the sixteen from distribute to cleanup", len(kinds))
	}
	return out
}

// model tracks, per node and component, the configurations that may be
// running, and collects violations.
type model struct {
	nodes      map[string]*modelNode
	step       string   // "revert narrow-trust/kubelet-narrow-workers on w1"
	trail      []string // the step's changes and gates so far in this attempt
	violations []string
	trails     []string // the trail up to the first violation of each step
	seen       map[string]bool
	checks     int

	// kill schedule: the killAt-th operation (counted in ops) fails.
	killAt, ops int
	fired       bool
}

var errKilled = errors.New("killed (model test)")

func (m *model) begin(step, dir, node string) {
	m.step, m.trail, m.ops = fmt.Sprintf("%s %s on %s", dir, step, node), nil, 0
}

// tick counts an operation and stops the one the kill schedule names.
func (m *model) tick(node, op string) error {
	m.ops++
	if m.killAt > 0 && m.ops == m.killAt {
		m.fired = true
		m.trail = append(m.trail, node+": KILLED before "+op)
		return errKilled
	}
	if !strings.HasPrefix(op, "read ") && !strings.HasPrefix(op, "stat ") {
		m.trail = append(m.trail, node+": "+op)
	}
	return nil
}

// gate is the restart gate: the component runs its current configuration.
func (m *model) gate(node, name string) error {
	if err := m.tick(node, "gate passed: "+name); err != nil {
		return err
	}
	n := m.nodes[node]
	for _, c := range n.comps {
		if c.name == name {
			c.running = []config{c.read(n)}
			return nil
		}
	}
	return fmt.Errorf("gate for %s on %s, which the model does not know", name, node)
}

func (m *model) violate(node, msg string) {
	if m.seen == nil {
		m.seen = map[string]bool{}
	}
	m.trail = append(m.trail, node+": VIOLATION: "+msg)
	if v := m.step + ": " + msg; !m.seen[v] {
		if !m.seen[m.step] {
			m.trails = append(m.trails, "operations of "+m.step+":\n\t"+strings.Join(m.trail, "\n\t"))
		}
		m.seen[v], m.seen[m.step] = true, true
		m.violations = append(m.violations, v)
	}
}

// worldState is a saved state of every node: files and running
// configurations.
type worldState map[string]struct {
	files   *nodes.MemRunner
	running [][]config
}

func (m *model) save() worldState {
	w := worldState{}
	for name, n := range m.nodes {
		s := w[name]
		s.files = n.Clone()
		for _, c := range n.comps {
			s.running = append(s.running, slices.Clone(c.running))
		}
		w[name] = s
	}
	return w
}

// restore goes back to w, as if what happened since had not.
func (m *model) restore(w worldState) {
	for name, n := range m.nodes {
		n.setRunner(w[name].files.Clone())
		for i, c := range n.comps {
			c.running = slices.Clone(w[name].running[i])
		}
	}
	m.trail, m.ops, m.fired = nil, 0, false
}

// files is every node's state outside rotate's own directory, by
// "node:path" (see nodeFiles).
func (m *model) files() map[string]string {
	out := map[string]string{}
	for name, n := range m.nodes {
		for p, v := range nodeFiles(n.MemRunner) {
			out[name+":"+p] = v
		}
	}
	return out
}

// nodeFiles is r's state outside rotate's own directory, by path: mode,
// owner and content, or "-> target" for a link. It reads a copy of r, so
// r records no operation.
func nodeFiles(r *nodes.MemRunner) map[string]string {
	out := map[string]string{}
	quiet := r.Clone()
	for _, p := range quiet.Paths() {
		if strings.HasPrefix(p, rotateDir) {
			continue
		}
		if l, ok := quiet.Link(p); ok {
			out[p] = "-> " + l
		} else if b, ok := quiet.File(p); ok {
			fi, _ := quiet.Stat(context.Background(), p)
			out[p] = fmt.Sprintf("%v %d:%d ", fi.Mode, fi.UID, fi.GID) + string(b)
		}
	}
	return out
}

// config is what one running configuration of a component reads
// dynamically: file -> the flag or field naming it.
type config map[string]string

type component struct {
	name    string
	sources []string // the files its configuration is read from
	read    func(n *modelNode) config
	running []config
}

// modelNode is a MemRunner whose every change is checked against the
// model.
type modelNode struct {
	*nodes.MemRunner
	m     *model
	comps []*component
}

var (
	_ nodes.Runner      = (*modelNode)(nil)
	_ nodes.ExactWriter = (*modelNode)(nil)
)

// memNode is an in-memory node holding the layout's files.
func memNode(name string, l layout) *nodes.MemRunner {
	r := nodes.NewMemRunner(name)
	for _, p := range slices.Sorted(maps.Keys(l)) {
		switch f := l[p]; {
		case f.link != "":
			r.SetSymlink(f.link, p)
		case f.uid != 0 || f.gid != 0:
			r.SetFileOwner(p, f.data, f.mode, f.uid, f.gid, fmt.Sprintf("user%d", f.uid), fmt.Sprintf("group%d", f.gid))
		default:
			r.SetFile(p, f.data, f.mode)
		}
	}
	return r
}

func (m *model) addNode(name string, l layout) *modelNode {
	r := memNode(name, l)
	n := &modelNode{m: m}
	n.setRunner(r)
	for _, p := range r.Paths() {
		if dir, file := filepath.Split(p); dir == manifests+"/" && strings.HasSuffix(file, ".yaml") {
			n.comps = append(n.comps, &component{name: strings.TrimSuffix(file, ".yaml"), sources: []string{p}, read: staticPodConfig(p)})
		}
	}
	n.comps = append(n.comps, &component{name: "kubelet", sources: []string{kubeletCfg, kubeletKC}, read: kubeletConfig})
	for _, c := range n.comps {
		c.running = []config{c.read(n)}
	}
	if m.nodes == nil {
		m.nodes = map[string]*modelNode{}
	}
	m.nodes[name] = n
	return n
}

// setRunner makes r the node's files, every operation on them counted
// (and killed when the schedule says so).
func (n *modelNode) setRunner(r *nodes.MemRunner) {
	r.Fail = func(op, p string) error { return n.m.tick(r.Name(), op+" "+p) }
	n.MemRunner = r
}

func (n *modelNode) WriteFile(ctx context.Context, p string, data []byte, mode fs.FileMode) error {
	return n.change(p, func() error { return n.MemRunner.WriteFile(ctx, p, data, mode) })
}

func (n *modelNode) WriteFileExact(ctx context.Context, p string, data []byte, mode fs.FileMode, uid, gid int) error {
	return n.change(p, func() error { return n.MemRunner.WriteFileExact(ctx, p, data, mode, uid, gid) })
}

func (n *modelNode) Symlink(ctx context.Context, target, link string) error {
	return n.change(link, func() error { return n.MemRunner.Symlink(ctx, target, link) })
}

func (n *modelNode) Remove(ctx context.Context, p string) error {
	return n.change(p, func() error { return n.MemRunner.Remove(ctx, p) })
}

// ApplyFiles checks the model after each operation of the batch, as the
// node would be seen between two renames.
func (n *modelNode) ApplyFiles(ctx context.Context, ops []nodes.FileOp) error {
	for i, op := range ops {
		err := n.change(op.Path, func() error { return n.MemRunner.ApplyFiles(ctx, []nodes.FileOp{op}) })
		if err != nil {
			return &nodes.BatchError{Node: n.Name(), Index: i, Op: op, Done: i, Err: err}
		}
	}
	return nil
}

// change runs one operation on p and checks every file a running
// configuration reads, then records the configuration p starts if it is
// a component's.
func (n *modelNode) change(p string, op func() error) error {
	readers := map[string][]string{}
	for _, c := range n.comps {
		for _, cfg := range c.running {
			for f, field := range cfg {
				r := c.name + " (" + field + "=" + f + ")"
				if !slices.Contains(readers[f], r) {
					readers[f] = append(readers[f], r)
				}
			}
		}
	}
	before := map[string][]byte{}
	for f := range readers {
		if b, ok := n.Resolve(f); ok {
			before[f] = b
		}
	}
	if err := op(); err != nil {
		return err
	}
	for _, f := range slices.Sorted(maps.Keys(before)) {
		n.m.checks++
		after, ok := n.Resolve(f)
		why := ""
		if ok && string(after) == string(before[f]) {
			continue
		}
		if !ok {
			why = "removes " + f
		} else if lost := droppedCAs(before[f], after); len(lost) > 0 {
			why = f + " drops CA " + strings.Join(lost, ", ")
		}
		if why != "" {
			n.m.violate(n.Name(), fmt.Sprintf("%s while running %s reads it", why, strings.Join(readers[f], ", ")))
		}
	}
	for _, c := range n.comps {
		if !slices.Contains(c.sources, p) {
			continue
		}
		if cur := c.read(n); !maps.Equal(cur, c.running[len(c.running)-1]) {
			c.running = append(c.running, cur)
		}
	}
	return nil
}

// droppedCAs names the CA certificates in before that after lacks, and
// the public keys (service-account verification keys) of "PUBLIC KEY"
// blocks in before that after does not hold.
func droppedCAs(before, after []byte) []string {
	have := map[string]bool{}
	certs, _ := pki.ScanPEM(after)
	for _, c := range certs {
		have[pki.Fingerprint(c)] = true
	}
	var out []string
	certs, _ = pki.ScanPEM(before)
	for _, c := range certs {
		if c.IsCA && !have[pki.Fingerprint(c)] {
			out = append(out, pki.Describe(c))
		}
	}
	for _, id := range pki.DroppedPublicKeys(before, after) {
		out = append(out, "service-account key "+id)
	}
	return out
}

// staticPodConfig reads the file-valued flags of every container of the
// manifest at p, except kubeconfigs.
func staticPodConfig(p string) func(n *modelNode) config {
	return func(n *modelNode) config {
		cfg := config{}
		b, ok := n.Resolve(p)
		if !ok {
			return cfg
		}
		var pod corev1.Pod
		if err := yaml.Unmarshal(b, &pod); err != nil {
			panic(fmt.Sprintf("manifest %s on %s: %v", p, n.Name(), err))
		}
		for _, c := range pod.Spec.Containers {
			for _, arg := range append(append([]string{}, c.Command...), c.Args...) {
				name, v, ok := strings.Cut(arg, "=")
				if ok && strings.HasPrefix(name, "--") && strings.HasPrefix(v, "/") && !strings.HasSuffix(name, "kubeconfig") {
					cfg[v] = strings.TrimPrefix(cfg[v]+","+name, ",")
				}
			}
		}
		return cfg
	}
}

// kubeletConfig reads every *File field of the kubelet's config.yaml and
// every file kubelet.conf references.
func kubeletConfig(n *modelNode) config {
	cfg := config{}
	if b, ok := n.Resolve(kubeletCfg); ok {
		var doc map[string]any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			panic(fmt.Sprintf("%s on %s: %v", kubeletCfg, n.Name(), err))
		}
		var walk func(prefix string, v any)
		walk = func(prefix string, v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, e := range v {
					walk(strings.TrimPrefix(prefix+"."+k, "."), e)
				}
			case string:
				if strings.HasSuffix(prefix, "File") && strings.HasPrefix(v, "/") {
					cfg[v] = prefix
				}
			}
		}
		walk("", doc)
	}
	if b, ok := n.Resolve(kubeletKC); ok {
		kc, err := clientcmd.Load(b)
		if err != nil {
			panic(fmt.Sprintf("%s on %s: %v", kubeletKC, n.Name(), err))
		}
		for _, c := range kc.Clusters {
			if c.CertificateAuthority != "" {
				cfg[c.CertificateAuthority] = "kubelet.conf certificate-authority"
			}
		}
		for _, u := range kc.AuthInfos {
			if u.ClientCertificate != "" {
				cfg[u.ClientCertificate] = "kubelet.conf client-certificate"
			}
			if u.ClientKey != "" && u.ClientKey != u.ClientCertificate {
				cfg[u.ClientKey] = "kubelet.conf client-key"
			}
		}
	}
	return cfg
}

func backupID(key string) string {
	return "model." + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, key)
}

func sortedKeys(a, b map[string]string) []string {
	set := map[string]bool{}
	for k := range a {
		set[k] = true
	}
	for k := range b {
		set[k] = true
	}
	return slices.Sorted(maps.Keys(set))
}

func describe(s string) string {
	switch {
	case s == "":
		return "missing"
	case strings.HasPrefix(s, "-> "):
		return "a link " + s
	}
	mode, rest, _ := strings.Cut(s, " ")
	owner, content, _ := strings.Cut(rest, " ")
	return fmt.Sprintf("%s %s, %d bytes", mode, owner, len(content))
}

// layout is the files of one node, by absolute path.
type layout map[string]fileSpec

type fileSpec struct {
	data     []byte
	mode     fs.FileMode
	uid, gid int    // owner; 0:0 is root
	link     string // a symlink to this target
}

// kubeadmLayout is what the real kubeadm writes on a control-plane node;
// the worker has the files a kubeadm join leaves: ca.crt, kubelet.conf,
// the kubelet's config and client certificate.
func kubeadmLayout(t *testing.T) (cp, worker layout) {
	root := kubeadmtest.Root(t)
	cp = layout{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if !strings.HasPrefix(rel, "etc/") && !strings.HasPrefix(rel, "var/") {
			return nil // kubeadm's config file
		}
		if d.Type()&fs.ModeSymlink != 0 {
			l, err := os.Readlink(p)
			cp["/"+rel] = fileSpec{link: l}
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		cp["/"+rel] = fileSpec{data: b, mode: info.Mode().Perm()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return withExtraKubeconfigs(cp, workerOf(cp))
}

// The extra kubeconfigs of the model (steps.Config.ExtraKubeconfigs):
// copies of admin.conf, a tool's on the control-plane node and an
// operator's on the worker.
const (
	extraCP     = "/etc/kubernetes/monitoring.conf"
	extraWorker = "/root/.kube/config"
)

func withExtraKubeconfigs(cp, worker layout) (layout, layout) {
	admin := cp["/etc/kubernetes/admin.conf"].data
	cp[extraCP] = fileSpec{data: admin, mode: 0o640, uid: 0, gid: 1001}
	worker[extraWorker] = fileSpec{data: admin, mode: 0o600}
	return cp, worker
}

func workerOf(cp layout) layout {
	w := layout{}
	for p, f := range cp {
		if p == "/etc/kubernetes/pki/ca.crt" || p == kubeletKC || p == kubeletCfg || strings.HasPrefix(p, "/var/lib/kubelet/pki/") {
			w[p] = f
		}
	}
	return w
}

// handWrittenLayout is a kubeadm-shaped control-plane node made with the
// pki package: the files, flags and fields rotate and the model read, as
// kubeadm v1.3x writes them (compare kubeadmLayout).
func handWrittenLayout(t *testing.T) (cp, worker layout) {
	newCA := func(cn string) *pki.CA {
		ca, err := pki.NewCA(pki.CAOptions{CommonName: cn})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	issue := func(ca *pki.CA, tmpl *x509.Certificate) *pki.Issued {
		is, err := pki.Reissue(tmpl, ca, pki.ReissueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	ca, fp := newCA("kubernetes"), newCA("front-proxy-ca")
	pkiDir := "/etc/kubernetes/pki/"
	cp = layout{
		pkiDir + "ca.crt":             {data: ca.CertPEM, mode: 0o644},
		pkiDir + "ca.key":             {data: ca.KeyPEM, mode: 0o600},
		pkiDir + "front-proxy-ca.crt": {data: fp.CertPEM, mode: 0o644},
		pkiDir + "front-proxy-ca.key": {data: fp.KeyPEM, mode: 0o600},
	}
	leaf := func(name string, ca *pki.CA, tmpl *x509.Certificate) {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		is := issue(ca, tmpl)
		cp[pkiDir+name+".crt"] = fileSpec{data: is.CertPEM, mode: 0o644}
		cp[pkiDir+name+".key"] = fileSpec{data: is.KeyPEM, mode: 0o600}
	}
	leaf("apiserver", ca, &x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{cpNode, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("10.96.0.1"), net.ParseIP("192.0.2.10")}})
	leaf("apiserver-kubelet-client", ca, &x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"kubeadm:cluster-admins"}}, ExtKeyUsage: client})
	leaf("front-proxy-client", fp, &x509.Certificate{Subject: pkix.Name{CommonName: "front-proxy-client"}, ExtKeyUsage: client})

	b64 := base64.StdEncoding.EncodeToString
	for file, subject := range map[string]pkix.Name{
		"admin.conf":              {CommonName: "kubernetes-admin", Organization: []string{"kubeadm:cluster-admins"}},
		"super-admin.conf":        {CommonName: "kubernetes-super-admin", Organization: []string{"system:masters"}},
		"controller-manager.conf": {CommonName: "system:kube-controller-manager"},
		"scheduler.conf":          {CommonName: "system:kube-scheduler"},
	} {
		is := issue(ca, &x509.Certificate{Subject: subject, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: client})
		cp["/etc/kubernetes/"+file] = fileSpec{mode: 0o600, data: fmt.Appendf(nil, kubeconfigTmpl, b64(ca.CertPEM), subject.CommonName,
			"client-certificate-data: "+b64(is.CertPEM)+"\n    client-key-data: "+b64(is.KeyPEM))}
	}
	cp[kubeletKC] = fileSpec{mode: 0o600, data: fmt.Appendf(nil, kubeconfigTmpl, b64(ca.CertPEM), "system:node:"+cpNode,
		"client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem")}
	kub, err := pki.NewKubeletClientCert(cpNode, ca, pki.ReissueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubPEM, err := pki.KubeletPEM(kub)
	if err != nil {
		t.Fatal(err)
	}
	cp["/var/lib/kubelet/pki/kubelet-client-2026-01-01-00-00-00.pem"] = fileSpec{data: kubPEM, mode: 0o600}
	cp["/var/lib/kubelet/pki/kubelet-client-current.pem"] = fileSpec{link: "/var/lib/kubelet/pki/kubelet-client-2026-01-01-00-00-00.pem"}
	cp[kubeletCfg] = fileSpec{data: []byte(kubeletConfigYAML), mode: 0o644}

	k, s := "--kubeconfig=/etc/kubernetes/", "/etc/kubernetes/pki/"
	cp[manifests+"/kube-apiserver.yaml"] = staticPod("kube-apiserver", "--advertise-address=192.0.2.10", "--allow-privileged=true",
		"--authorization-mode=Node,RBAC", "--client-ca-file="+s+"ca.crt", "--enable-bootstrap-token-auth=true",
		"--etcd-cafile="+s+"etcd/ca.crt", "--etcd-certfile="+s+"apiserver-etcd-client.crt", "--etcd-keyfile="+s+"apiserver-etcd-client.key",
		"--etcd-servers=https://127.0.0.1:2379", "--kubelet-client-certificate="+s+"apiserver-kubelet-client.crt",
		"--kubelet-client-key="+s+"apiserver-kubelet-client.key", "--proxy-client-cert-file="+s+"front-proxy-client.crt",
		"--proxy-client-key-file="+s+"front-proxy-client.key", "--requestheader-allowed-names=front-proxy-client",
		"--requestheader-client-ca-file="+s+"front-proxy-ca.crt", "--secure-port=6443", "--service-account-key-file="+s+"sa.pub",
		"--service-account-signing-key-file="+s+"sa.key", "--tls-cert-file="+s+"apiserver.crt", "--tls-private-key-file="+s+"apiserver.key")
	cp[manifests+"/kube-controller-manager.yaml"] = staticPod("kube-controller-manager",
		"--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf", "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
		"--client-ca-file="+s+"ca.crt", "--cluster-signing-cert-file="+s+"ca.crt", "--cluster-signing-key-file="+s+"ca.key",
		k+"controller-manager.conf", "--requestheader-client-ca-file="+s+"front-proxy-ca.crt", "--root-ca-file="+s+"ca.crt",
		"--service-account-private-key-file="+s+"sa.key", "--use-service-account-credentials=true")
	cp[manifests+"/kube-scheduler.yaml"] = staticPod("kube-scheduler",
		"--authentication-kubeconfig=/etc/kubernetes/scheduler.conf", "--authorization-kubeconfig=/etc/kubernetes/scheduler.conf",
		"--bind-address=127.0.0.1", k+"scheduler.conf", "--leader-elect=true")
	return withExtraKubeconfigs(cp, workerOf(cp))
}

// kubeconfigTmpl is kubeadm's kubeconfig: CA data, user name, and the
// user's credential lines.
const kubeconfigTmpl = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: %[1]s
    server: https://192.0.2.10:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: %[2]s
  name: %[2]s@kubernetes
current-context: %[2]s@kubernetes
kind: Config
preferences: {}
users:
- name: %[2]s
  user:
    %[3]s
`

const kubeletConfigYAML = `apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
cgroupDriver: systemd
kind: KubeletConfiguration
rotateCertificates: true
staticPodPath: /etc/kubernetes/manifests
`

func staticPod(name string, flags ...string) fileSpec {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    component: %[1]s\n    tier: control-plane\n  name: %[1]s\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n    - %[1]s\n", name)
	for _, f := range flags {
		fmt.Fprintf(&b, "    - %s\n", f)
	}
	fmt.Fprintf(&b, "    image: registry.k8s.io/%s:v1.37.2\n    name: %[1]s\n  hostNetwork: true\nstatus: {}\n", name)
	return fileSpec{data: []byte(b.String()), mode: 0o600}
}
