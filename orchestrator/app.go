package orchestrator

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// Value keys the app stores next to the run.
const (
	keyInventoryRaw  = "inventory/raw"
	keyInventoryPath = "inventory/path"
)

// Common are the options every state-changing command shares.
type Common struct {
	StatePath string
	// InsecureIgnoreHostKeys turns off SSH host key verification.
	InsecureIgnoreHostKeys bool
	Out                    io.Writer // operator progress
	Log                    *slog.Logger
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
	inv    *plans.Inventory
	plan   *plans.Plan
	pool   *nodes.Pool
	engine *Engine
}

func (s *session) close() {
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

// NodeConfigs turns the inventory's nodes into SSH configurations.
func NodeConfigs(inv *plans.Inventory, insecure bool) []nodes.Config {
	var out []nodes.Config
	for _, n := range append(append([]plans.NodeSpec{}, inv.Nodes.ControlPlane...), inv.Nodes.Workers...) {
		c := inv.NodeSSH(n)
		out = append(out, nodes.Config{
			Name: n.Name, Address: n.Address, Port: c.Port, User: c.User,
			IdentityFile: c.IdentityFile, UseAgent: c.UseAgent, Become: c.Become,
			KnownHostsFile: c.KnownHostsFile, InsecureIgnoreHostKey: insecure,
			DialTimeout: c.DialTimeout, CommandTimeout: c.CommandTimeout,
		})
	}
	return out
}

func openSession(ctx context.Context, c Common, store *state.BoltStore, inv *plans.Inventory, hold bool) (*session, error) {
	s := &session{store: store, inv: inv}
	s.plan = plans.Build(inv, plans.Options{Hold: hold})
	s.pool = nodes.NewPool(NodeConfigs(inv, c.InsecureIgnoreHostKeys))
	rt, err := runtimeFor(ctx, inv, storeAdapter{s: store}, poolSource{s.pool})
	if err != nil {
		s.pool.Close()
		return nil, err
	}
	snap := withSnapshot(store, c.StatePath, s.plan, c.Log) // for `rotate status` during the run
	s.engine = New(Options{Store: snap, Plan: s.plan, Runtime: rt, Printer: NewPrinter(c.Out), Log: c.Log})
	return s, nil
}

func runtimeFor(ctx context.Context, inv *plans.Inventory, st steps.Store, ns steps.NodeSource) (steps.Runtime, error) {
	kc := inv.ExpandPath(inv.Kubernetes.Kubeconfig)
	kube, trust, restCfg, err := steps.KubeClient(kc, inv.Kubernetes.Context, st)
	if err != nil {
		return steps.Runtime{}, err
	}
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return steps.Runtime{}, fmt.Errorf("kubeconfig %s: %w", kc, err)
	}
	rt := steps.Runtime{Nodes: ns, Kube: kube, Dynamic: dyn, Trust: trust, Config: inv.StepsConfig()}
	rt.AdminCert = trust.AdminCert()
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
	hold := *inv.Hold && !o.NoHold
	s, err := openSession(ctx, o.Common, store, inv, hold)
	if err != nil {
		store.Close()
		return err
	}
	defer s.close()
	run := state.Run{ID: newRunID(), Cluster: inv.Cluster.Name, InventoryPath: inv.Path, InventoryDigest: inv.Digest}
	s.engine.rt.RunID = run.ID
	// The inventory travels with the run so resume and rollback need only
	// the state file.
	if err := s.engine.commit(ctx, state.Checkpoint{Values: map[string][]byte{keyInventoryRaw: inv.Raw, keyInventoryPath: []byte(inv.Path)}}); err != nil {
		return fmt.Errorf("record inventory: %w", err)
	}
	if err := s.engine.Start(ctx, run, hold); err != nil {
		return err
	}
	s.adviseIfCompleted(ctx)
	return nil
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
	raw, ok, err := store.Value(ctx, keyInventoryRaw)
	if err != nil {
		return nil, run, err
	}
	if !ok {
		return nil, run, state.Corrupt(c.StatePath, fmt.Sprintf("run %s has no inventory recorded with it", run.ID))
	}
	p, _, _ := store.Value(ctx, keyInventoryPath)
	inv, err := plans.Parse(string(p), raw)
	if err != nil {
		return nil, run, fmt.Errorf("inventory recorded with run %s: %w", run.ID, err)
	}
	recs, err := store.Steps(ctx)
	if err != nil {
		return nil, run, err
	}
	if err := checkRecords(plans.Build(inv, plans.Options{Hold: run.Hold}), run, recs); err != nil {
		return nil, run, state.Corrupt(c.StatePath, err.Error())
	}
	sess, err := openSession(ctx, c, store, inv, run.Hold)
	if err != nil {
		return nil, run, err
	}
	sess.engine.rt.RunID = run.ID
	return sess, run, nil
}

// Resume continues a held or failed run.
func Resume(ctx context.Context, c Common) error {
	s, _, err := resumeSession(ctx, c)
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.engine.Resume(ctx); err != nil {
		return err
	}
	s.adviseIfCompleted(ctx)
	return nil
}

// Rollback reverts a run's completed steps in reverse order.
func Rollback(ctx context.Context, c Common) error {
	s, _, err := resumeSession(ctx, c)
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.engine.Rollback(ctx); err != nil {
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
	plan := plans.Build(inv, plans.Options{Hold: *inv.Hold && !o.NoHold})
	var rt *steps.Runtime
	if o.Live {
		mem := state.NewMemStore()
		pool := nodes.NewPool(NodeConfigs(inv, o.InsecureIgnoreHostKeys))
		defer pool.Close()
		r, err := runtimeFor(ctx, inv, storeAdapter{s: mem}, poolSource{pool})
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
	return printPlan(ctx, o.Out, inv, plan, rt)
}

// PrintStaticPlan prints the plan's phases, steps and targets only.
func PrintStaticPlan(out io.Writer, inv *plans.Inventory, noHold bool) error {
	plan := plans.Build(inv, plans.Options{Hold: *inv.Hold && !noHold})
	return printPlan(context.Background(), out, inv, plan, nil)
}

func printPlan(ctx context.Context, out io.Writer, inv *plans.Inventory, plan *plans.Plan, rt *steps.Runtime) error {
	o := struct{ Out io.Writer }{out}
	fmt.Fprintf(o.Out, "Plan for cluster %s (%s), plan version %d\n", inv.Cluster.Name, inv.Path, plan.Version)
	fmt.Fprintf(o.Out, "control plane: %s\n", nodeNames(inv.Nodes.ControlPlane))
	fmt.Fprintf(o.Out, "workers: %s (batch %d)\n", nodeNames(inv.Nodes.Workers), inv.WorkerBatch())
	for _, ph := range plan.Phases {
		hold := ""
		if ph.HoldAfter {
			hold = "  [hold afterwards until `rotate resume`]"
		}
		fmt.Fprintf(o.Out, "\nphase %d/%d %s: %s%s\n", ph.Index, plan.Last(), ph.Name, ph.Short, hold)
		for _, ps := range ph.Steps {
			var ts []string
			for _, t := range ps.Targets {
				ts = append(ts, t.String())
			}
			mode := "one at a time"
			if ps.Concurrency > 1 && len(ps.Targets) > 1 {
				mode = fmt.Sprintf("%d at a time", ps.Concurrency)
			}
			if or, ok := ps.Step.(steps.Orderer); ok && or.Orders() {
				mode += ", current leader last"
			}
			fmt.Fprintf(o.Out, "  step %s on %s (%s)\n", ps.Step.Name(), strings.Join(ts, ", "), mode)
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
	for _, ps := range plan.Phases[0].Steps {
		switch ps.Step.(type) {
		case steps.NewCAs, steps.PrepareCerts:
		default:
			continue
		}
		for _, t := range ps.Targets {
			out := &steps.Outputs{}
			r := *rt
			r.Out = out
			if err := ps.Step.Apply(ctx, &r, t); err != nil {
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

func nodeNames(ns []plans.NodeSpec) string {
	if len(ns) == 0 {
		return "none"
	}
	var out []string
	for _, n := range ns {
		out = append(out, n.Name+" ("+n.Address+")")
	}
	return strings.Join(out, ", ")
}

var _ = x509.Certificate{}
var _ = pki.Describe
