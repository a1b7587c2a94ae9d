package orchestrator

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/dynamic"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// Value keys the app stores next to the run: the inventory as read, its
// absolute path, and its resolved configuration (plans.Config, JSON).
const (
	keyInventoryRaw    = "inventory/raw"
	keyInventoryPath   = "inventory/path"
	keyInventoryConfig = "inventory/config"
	// keyLockStatus is the cluster lock as this run last took or released
	// it (LockStatus, JSON), for `rotate status` when the cluster is not
	// read.
	keyLockStatus = "lock/status"
)

// Common are the options every state-changing command shares.
type Common struct {
	StatePath string
	// RecoverFrom, when set, rebuilds a missing state file from the copy
	// on this control-plane node first (recover.go), reaching it with the
	// inventory at InventoryPath.
	RecoverFrom   string
	InventoryPath string
	// InsecureIgnoreHostKeys turns off SSH host key verification.
	InsecureIgnoreHostKeys bool
	// BreakLock takes the cluster lock (lock.go) over from another run.
	BreakLock bool
	Out       io.Writer // operator progress
	Log       *slog.Logger
}

// StartOptions configure `rotate start`.
type StartOptions struct {
	Common
	InventoryPath string
	NoHold        bool
}

// session is everything a command needs, opened from inventory and state.
type session struct {
	store  *state.BoltStore
	cfg    *plans.Config
	plan   *plans.Plan
	pool   *nodes.Pool
	mirror *mirror
	snap   *snapshotStore
	engine *Engine
}

func (s *session) close() {
	if s.snap != nil {
		s.snap.Stop(context.Background()) // the last snapshot and journal, before the store closes
	}
	if s.mirror != nil {
		s.mirror.Close()
	}
	if s.pool != nil {
		s.pool.Close()
	}
	if s.store != nil {
		s.store.Close()
	}
}

type poolSource struct{ p *nodes.Pool }

func (ps poolSource) Node(ctx context.Context, name string) (nodes.Runner, error) {
	return ps.p.Get(ctx, name)
}

// NodeConfigs is the configuration's SSH settings of every node, with the
// command line's host key choice.
func NodeConfigs(cfg *plans.Config, insecure bool) []nodes.Config {
	out := append([]nodes.Config(nil), cfg.Nodes...)
	for i := range out {
		out[i].InsecureIgnoreHostKey = insecure
	}
	return out
}

func openSession(ctx context.Context, c Common, store *state.BoltStore, cfg *plans.Config, hold bool) (*session, error) {
	s := &session{store: store, cfg: cfg}
	s.plan = cfg.Plan(plans.Options{Hold: hold})
	s.pool = nodes.NewPool(NodeConfigs(cfg, c.InsecureIgnoreHostKeys))
	if c.Log != nil {
		s.pool.SetLogger(c.Log)
	}
	rt, err := runtimeFor(ctx, cfg, storeAdapter{s: store}, poolSource{s.pool}, c.Log)
	if err != nil {
		s.pool.Close()
		return nil, err
	}
	// Copies of the state on the control-plane nodes (mirror.go).
	s.mirror = newMirror(poolSource{s.pool}, cfg.Steps.ControlPlane, MirrorPath(cfg.Steps.Paths.BackupDir, cfg.Steps.Cluster), compressed(store.Snapshot), c.Log)
	ms := withMirror(store, s.mirror, append(append([]string(nil), cfg.Steps.ControlPlane...), cfg.Steps.Workers...))
	snap := withSnapshot(ms, c.StatePath, s.plan, c.Log) // for `rotate status` and `rotate events` during the run
	snap.mirrorStatus = s.mirror.activeStatus
	snap.journal(ctx)
	s.snap = snap
	s.engine = New(Options{Store: snap, Plan: s.plan, Runtime: rt, Printer: NewPrinter(c.Out), Log: c.Log, Mirror: s.mirror,
		RoundTrips: s.pool.RoundTrips()})
	return s, nil
}

func runtimeFor(ctx context.Context, cfg *plans.Config, st steps.Store, ns steps.NodeSource, log *slog.Logger) (steps.Runtime, error) {
	kc := cfg.Kubeconfig
	kube, trust, restCfg, err := steps.KubeClient(kc, cfg.Context, st, log)
	if err != nil {
		return steps.Runtime{}, err
	}
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return steps.Runtime{}, fmt.Errorf("kubeconfig %s: %w", kc, err)
	}
	sc := cfg.Steps // each runtime its own copy
	rt := steps.Runtime{Nodes: ns, Kube: kube, Dynamic: dyn, Trust: trust, Config: &sc, KubeletStarts: steps.NewKubeletStarts(), Published: steps.NewPublished()}
	rt.AdminCert = trust.AdminCert()
	if ps, ok := ns.(poolSource); ok {
		rt.NodeDial = ps.p.DialNode // verify dials webhook servers from a control-plane node
	}
	return rt, nil
}

func openState(path string) (*state.BoltStore, error) {
	return state.Open(path, state.OpenOptions{Create: true})
}

func newRunID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// Start begins a rotation: validates the inventory, refuses a state file
// that already holds a run, records the run and drives it.
func Start(ctx context.Context, o StartOptions) error {
	inv, err := plans.Load(o.InventoryPath)
	if err != nil {
		return err
	}
	store, err := openState(o.StatePath)
	if err != nil {
		return err
	}
	if old, err := store.Run(ctx); err == nil {
		store.Close()
		return unfinishedError(old)
	}
	if err := discoverWorkers(ctx, inv); err != nil {
		store.Close()
		return err
	}
	cfg := inv.Config()
	hold := cfg.Hold && !o.NoHold
	s, err := openSession(ctx, o.Common, store, cfg, hold)
	if err != nil {
		store.Close()
		return err
	}
	defer s.close()
	// preflight re-issues the control-plane certificates with keys like
	// the old ones; RSA keys are made while the run reaches the nodes
	// (pki/keypool.go). kubeadm gives the CA and its leaves one algorithm.
	if ca := s.engine.rt.Trust.KubeconfigCA(); ca != nil {
		if pub, ok := ca.PublicKey.(*rsa.PublicKey); ok {
			pki.PrepareRSAKeys(pub.N.BitLen(), cfg.Steps.ReissuedCerts())
		}
	}
	run := state.Run{ID: newRunID(), Cluster: inv.Cluster.Name, InventoryPath: cfg.InventoryPath, InventoryDigest: inv.Digest}
	s.engine.rt.RunID = run.ID
	// The inventory travels with the run, resolved, so resume and rollback
	// need only the state file, from any working directory.
	values, err := inventoryValues(inv)
	if err != nil {
		return err
	}
	err = s.locked(ctx, o.Common, run.ID, func(ctx context.Context) error {
		if err := s.engine.commit(ctx, state.Checkpoint{Values: values}); err != nil {
			return fmt.Errorf("record inventory: %w", err)
		}
		return s.engine.Start(ctx, run, hold)
	})
	if err != nil {
		return err
	}
	s.adviseIfCompleted(ctx)
	return nil
}

// discoverWorkers adds the workers nodes.discoverWorkers finds in the
// cluster to inv, once, before its Config is used (and, by start,
// recorded).
func discoverWorkers(ctx context.Context, inv *plans.Inventory) error {
	if !inv.Discovers() {
		return nil
	}
	cfg := inv.Config()
	kube, _, _, err := steps.KubeClient(cfg.Kubeconfig, cfg.Context, nil, nil)
	if err != nil {
		return err
	}
	return inv.DiscoverWorkers(ctx, kube)
}

// locked runs fn holding the cluster lock for run id (lock.go): released
// when the run is over afterwards, kept while it is held or failed. A run
// already over (resume or rollback of a finished run, which the engine
// refuses) does not take it.
func (s *session) locked(ctx context.Context, c Common, runID string, fn func(ctx context.Context) error) error {
	if r, err := s.store.Run(ctx); err == nil && runEnded(r.State) {
		return fn(ctx)
	}
	o := LockOptions{Holder: holderFor(runID, c.StatePath), BreakLock: c.BreakLock, Log: c.Log, Out: s.engine.printer.Linef,
		Record: func(ctx context.Context, st LockStatus) error {
			raw, err := json.Marshal(st)
			if err != nil {
				return err
			}
			return s.engine.commit(ctx, state.Checkpoint{Values: map[string][]byte{keyLockStatus: raw}})
		}}
	ran := false
	err := withLock(ctx, s.engine.rt.Kube, o, func(ctx context.Context) (string, error) {
		ran = true
		err := fn(ctx)
		r, rerr := s.store.Run(ctx)
		if err == nil {
			err = rerr
		}
		return r.State, err
	})
	if !ran && s.cfg != nil {
		err = explainCredentials(err, s.cfg.Kubeconfig)
	}
	return err
}

// explainCredentials says, of an error of the first API call a run makes
// (the lock), when the kubeconfig is what failed: a CA it does not trust
// or a client certificate the apiserver rejects — typically the copy of
// admin.conf from before an earlier rotation.
func explainCredentials(err error, kubeconfigPath string) error {
	var why string
	var uae x509.UnknownAuthorityError
	var cve *tls.CertificateVerificationError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &uae) || errors.As(err, &cve):
		why = "does not trust the certificate the apiserver serves"
	case apierrors.IsUnauthorized(err):
		why = "presents credentials the apiserver does not accept (401)"
	default:
		return err
	}
	return fmt.Errorf("the inventory's kubeconfig %s %s; if the cluster's CA was rotated since it was made, use /etc/kubernetes/admin.conf from a control-plane node (or give it the current CA data and a client certificate of that CA): %w", kubeconfigPath, why, err)
}

// inventoryValues is what a run records of its inventory: the file as
// read, its absolute path and its resolved configuration.
func inventoryValues(inv *plans.Inventory) (map[string][]byte, error) {
	cfg, err := inv.Config().Marshal()
	if err != nil {
		return nil, fmt.Errorf("record inventory: %w", err)
	}
	return map[string][]byte{
		keyInventoryRaw:    inv.Raw,
		keyInventoryPath:   []byte(inv.Config().InventoryPath),
		keyInventoryConfig: cfg,
	}, nil
}

// errNoInventory: the run recorded no inventory (rotate records it before
// the run's first step, so a state file without one was not written by
// rotate, or not completely).
var errNoInventory = errors.New("no inventory recorded with the run")

// recordedConfig is the configuration a run recorded. A run recorded by a
// rotate that stored only the inventory (or a configuration of another
// layout) has its inventory resolved again from the recorded path; an
// older rotate recorded that path as given, so such a run resumes from the
// directory it was started in, as it always had to.
func recordedConfig(ctx context.Context, store state.Store) (*plans.Config, error) {
	b, ok, err := store.Value(ctx, keyInventoryConfig)
	if err != nil {
		return nil, err
	}
	if ok {
		cfg, err := plans.UnmarshalConfig(b)
		if !errors.Is(err, plans.ErrConfigLayout) {
			return cfg, err
		}
	}
	raw, ok, err := store.Value(ctx, keyInventoryRaw)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errNoInventory
	}
	p, _, err := store.Value(ctx, keyInventoryPath)
	if err != nil {
		return nil, err
	}
	inv, err := plans.Parse(string(p), raw)
	if err != nil {
		return nil, fmt.Errorf("recorded inventory: %w", err)
	}
	return inv.Config(), nil
}

// adviseIfCompleted checks the inventory's kubeconfig once a rotation
// completed (not at the hold: old-CA credentials still work there).
func (s *session) adviseIfCompleted(ctx context.Context) {
	if r, err := s.store.Run(ctx); err == nil && r.State == StateCompleted {
		s.adviseKubeconfig(ctx, true)
	}
}

// resumeSession reopens a run from its state file alone. Records this
// rotate cannot have written, and anything that panics while they are
// read, are refused with state.ErrCorrupt before anything acts on them.
func resumeSession(ctx context.Context, c Common) (s *session, run state.Run, err error) {
	store, err := state.Open(c.StatePath, state.OpenOptions{})
	if err != nil {
		return nil, state.Run{}, err
	}
	defer func() {
		if err != nil && s == nil {
			store.Close()
		}
	}()
	defer corruptOnPanic(c.StatePath, &err)
	run, err = store.Run(ctx)
	if err != nil {
		if errors.Is(err, state.ErrNoRun) {
			return nil, run, fmt.Errorf("%w in %s: start one with `rotate start --inventory FILE`", err, c.StatePath)
		}
		return nil, run, err
	}
	cfg, err := recordedConfig(ctx, store)
	if errors.Is(err, errNoInventory) {
		return nil, run, state.Corrupt(c.StatePath, fmt.Sprintf("run %s has no inventory recorded with it", run.ID))
	}
	if err != nil {
		return nil, run, fmt.Errorf("state file %s, run %s: %w", c.StatePath, run.ID, err)
	}
	recs, err := store.Steps(ctx)
	if err != nil {
		return nil, run, err
	}
	if err := checkRecords(cfg.Plan(plans.Options{Hold: run.Hold}), run, recs); err != nil {
		return nil, run, state.Corrupt(c.StatePath, err.Error())
	}
	sess, err := openSession(ctx, c, store, cfg, run.Hold)
	if err != nil {
		return nil, run, err
	}
	sess.engine.rt.RunID = run.ID
	return sess, run, nil
}

// Resume continues a held or failed run.
func Resume(ctx context.Context, c Common) error {
	if c.RecoverFrom != "" {
		if err := recoverFromNode(ctx, c); err != nil {
			return err
		}
	}
	s, run, err := resumeSession(ctx, c)
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.locked(ctx, c, run.ID, s.engine.Resume); err != nil {
		return err
	}
	s.adviseIfCompleted(ctx)
	return nil
}

// Rollback reverts a run's completed steps in reverse order.
func Rollback(ctx context.Context, c Common) error {
	if c.RecoverFrom != "" {
		if err := recoverFromNode(ctx, c); err != nil {
			return err
		}
	}
	s, run, err := resumeSession(ctx, c)
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.locked(ctx, c, run.ID, s.engine.Rollback); err != nil {
		return err
	}
	s.adviseKubeconfig(ctx, false)
	return nil
}

// PlanOptions configure `rotate plan`.
type PlanOptions struct {
	InventoryPath          string
	InsecureIgnoreHostKeys bool
	NoHold                 bool
	// Live asks the cluster what each step would change (read only).
	Live bool
	Out  io.Writer
}

// PrintPlan prints every phase, step and target; with Live, also what each
// step would change on each target, read from the live cluster. It writes
// nothing anywhere.
func PrintPlan(ctx context.Context, o PlanOptions) error {
	inv, err := plans.Load(o.InventoryPath)
	if err != nil {
		return err
	}
	if o.Live {
		if err := discoverWorkers(ctx, inv); err != nil {
			return err
		}
	}
	cfg := inv.Config()
	plan := cfg.Plan(plans.Options{Hold: cfg.Hold && !o.NoHold})
	var rt *steps.Runtime
	if o.Live {
		mem := state.NewMemStore()
		pool := nodes.NewPool(NodeConfigs(cfg, o.InsecureIgnoreHostKeys))
		defer pool.Close()
		r, err := runtimeFor(ctx, cfg, storeAdapter{s: mem}, poolSource{pool}, nil)
		if err != nil {
			return err
		}
		r.RunID = "plan"
		r.Store = storeAdapter{s: mem}
		r.Out = &steps.Outputs{}
		// Preview with CA material made now in memory, so edits show real
		// paths and flags; nothing is persisted.
		if err := previewCAs(ctx, &r, mem, plan); err != nil {
			return fmt.Errorf("live plan: %w", err)
		}
		rt = &r
	}
	return printPlan(ctx, o.Out, cfg, plan, rt)
}

// PrintStaticPlan prints the plan's phases, steps and targets only.
func PrintStaticPlan(out io.Writer, inv *plans.Inventory, noHold bool) error {
	cfg := inv.Config()
	plan := cfg.Plan(plans.Options{Hold: cfg.Hold && !noHold})
	return printPlan(context.Background(), out, cfg, plan, nil)
}

func printPlan(ctx context.Context, out io.Writer, cfg *plans.Config, plan *plans.Plan, rt *steps.Runtime) error {
	o := struct{ Out io.Writer }{out}
	fmt.Fprintf(o.Out, "Plan for cluster %s (%s), plan version %d\n", cfg.Steps.Cluster, cfg.InventoryPath, plan.Version)
	cp := len(cfg.Steps.ControlPlane)
	fmt.Fprintf(o.Out, "control plane: %s\n", nodeNames(cfg.Nodes[:cp]))
	fmt.Fprintf(o.Out, "workers: %s (batch %d)\n", nodeNames(cfg.Nodes[cp:]), cfg.WorkerBatch)
	for _, l := range cfg.TopologyLines() {
		fmt.Fprintln(o.Out, l)
	}
	if rt != nil {
		un, err := steps.UnlistedNodes(ctx, rt)
		if err != nil {
			return fmt.Errorf("live plan: %w", err)
		}
		for _, u := range un {
			fmt.Fprintf(o.Out, "warning: %s\n", u)
		}
	}
	for _, ph := range plan.Phases {
		hold := ""
		if ph.HoldAfter {
			hold = "  [hold afterwards until `rotate resume`]"
		}
		fmt.Fprintf(o.Out, "\nphase %d/%d %s: %s%s\n", ph.Index, plan.Last(), ph.Name, ph.Short, hold)
		for i, ps := range ph.Steps {
			var ts []string
			for _, t := range ps.Targets {
				ts = append(ts, t.String())
			}
			mode := "one at a time"
			if ps.Concurrency > 1 && len(ps.Targets) > 1 {
				mode = fmt.Sprintf("%d at a time", ps.Concurrency)
			}
			if o := steps.OrderingOf(ps.Step); o != nil {
				mode += ", " + o.String()
			}
			if ps.Background {
				mode += ", in the background alongside " + strings.Join(ph.Alongside(i), ", ")
			}
			fmt.Fprintf(o.Out, "  step %s on %s (%s)\n", ps.Step.Name(), strings.Join(ts, ", "), mode)
			if x, ok := ps.Step.(steps.Explainer); ok && rt == nil {
				for _, l := range x.Explain(&cfg.Steps) {
					fmt.Fprintf(o.Out, "      - %s\n", l)
				}
			}
			d, ok := ps.Step.(steps.Describer)
			if rt == nil || !ok {
				continue
			}
			for _, t := range ps.Targets {
				srt := *rt
				key := plans.StepKey(ph.Name, ps.Step.Name(), t)
				srt.BackupID = backupID("plan", key)
				if sa, ok := srt.Store.(storeAdapter); ok {
					sa.scope = key
					srt.Store = sa
				}
				lines, err := d.Describe(ctx, &srt, t)
				if err != nil {
					fmt.Fprintf(o.Out, "      %s: cannot describe: %v\n", t, err)
					continue
				}
				for _, l := range lines {
					fmt.Fprintf(o.Out, "      %s: %s\n", t, l)
				}
			}
		}
	}
	if rt == nil {
		fmt.Fprintln(o.Out, "\n(static plan; run with --live to see each file, flag and API object change on the live cluster)")
	}
	return nil
}

// previewCAs runs the preparation steps (new CAs, re-issued certificates)
// against an in-memory store so that Describe sees the paths, bundles and
// certificates a real run would use. Nothing leaves memory.
func previewCAs(ctx context.Context, rt *steps.Runtime, mem *state.MemStore, plan *plans.Plan) error {
	for _, ps := range plan.Steps() {
		apply := ps.Step.Apply
		switch st := ps.Step.(type) {
		case steps.NewCAs, steps.PrepareCerts:
		case steps.Previewer:
			apply = st.Preview
		default:
			continue
		}
		for _, t := range ps.Targets {
			out := &steps.Outputs{}
			r := *rt
			r.Out = out
			if err := apply(ctx, &r, t); err != nil {
				return fmt.Errorf("%s on %s: %w", ps.Step.Name(), t, err)
			}
			cp := state.Checkpoint{Values: out.Values}
			for _, c := range out.CAs {
				cp.CAs = append(cp.CAs, caMaterial(c))
			}
			if err := mem.Commit(ctx, cp); err != nil {
				return err
			}
		}
	}
	return nil
}

func nodeNames(ns []nodes.Config) string {
	if len(ns) == 0 {
		return "none"
	}
	var out []string
	for _, n := range ns {
		out = append(out, n.Name+" ("+n.Address+")")
	}
	return strings.Join(out, ", ")
}
