package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// ErrCannotRecover: --recover-from cannot rebuild the state file from the
// node's copy (the node, the inventory or the local state file is not
// what recovery needs; exit 2).
var ErrCannotRecover = errors.New("cannot recover the run")

// recoverFromNode rebuilds the missing state file c.StatePath from the copy
// of the run's state on control-plane node c.RecoverFrom (see mirror.go),
// reaching the node with the inventory c.InventoryPath (the local state,
// which records it, is gone). It refuses an existing state file, a node
// that is not one of the inventory's control plane, a copy of another
// cluster's run or of a run that has ended, and a copy whose CAs the node
// does not have; then it takes back the backups the nodes have copies of
// and the copy lacks, marks the steps of the phase in progress the copy
// has no record of as started, records this machine's inventory with the
// run, and installs the file (0600). Resume or rollback then continue it.
func recoverFromNode(ctx context.Context, c Common) error {
	inv, err := plans.Load(c.InventoryPath)
	if err != nil {
		return err
	}
	cfg := inv.Config()
	node := c.RecoverFrom
	if _, err := os.Lstat(c.StatePath); err == nil {
		return fmt.Errorf("%w: state file %s exists; --recover-from only rebuilds a missing one: continue with it (without --recover-from), or move it away first", ErrCannotRecover, c.StatePath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state file %s: %w", c.StatePath, err)
	}
	if !slices.Contains(cfg.Steps.ControlPlane, node) {
		return fmt.Errorf("%w: %s is not a control-plane node of %s (control plane: %s); only they keep copies of the state",
			ErrCannotRecover, node, cfg.InventoryPath, strings.Join(cfg.Steps.ControlPlane, ", "))
	}
	pool := nodes.NewPool(NodeConfigs(cfg, c.InsecureIgnoreHostKeys))
	if c.Log != nil {
		pool.SetLogger(c.Log)
	}
	defer pool.Close()
	values, err := inventoryValues(inv)
	if err != nil {
		return err
	}
	rc := &recovery{
		node: node, path: MirrorPath(cfg.Steps.Paths.BackupDir, cfg.Steps.Cluster), cluster: cfg.Steps.Cluster,
		src: poolSource{pool}, controlPlane: cfg.Steps.ControlPlane, backupDir: cfg.Steps.Paths.BackupDir,
		caFile: path.Join(cfg.Steps.Paths.PKIDir, "ca.crt"), values: values, paths: cfg.Steps.Paths, invDigest: inv.Digest,
		planFor: func(hold bool) *plans.Plan { return cfg.Plan(plans.Options{Hold: hold}) },
		out:     NewPrinter(c.Out), now: time.Now,
	}
	return rc.install(ctx, c.StatePath)
}

// recovery rebuilds a state file from a node's copy.
type recovery struct {
	node, path   string // the node and its copy
	cluster      string // the inventory's
	src          steps.NodeSource
	controlPlane []string
	backupDir    string
	// caFile is the cluster CA file on the nodes, which must hold the
	// run's old or new cluster CA ("": not checked).
	caFile string
	// values replace the inventory recorded with the run (nil: kept), so
	// that resume and rollback use this machine's files; the run's
	// recorded paths on the nodes must then be paths.
	values    map[string][]byte
	paths     steps.Paths
	invDigest string
	planFor   func(hold bool) *plans.Plan
	out       *Printer
	now       func() time.Time
}

// install downloads the copy and installs it at statePath once adopt
// accepted it.
func (rc *recovery) install(ctx context.Context, statePath string) error {
	r, err := rc.src.Node(ctx, rc.node)
	if err != nil {
		return fmt.Errorf("recover from node %s: %w", rc.node, err)
	}
	data, err := r.ReadFile(ctx, rc.path)
	if errors.Is(err, fs.ErrNotExist) {
		why := "a run that completed or was rolled back removes its copies, and one that never got past preflight has none"
		if tomb, terr := r.ReadFile(ctx, tombstonePath(rc.path)); terr == nil {
			why = "the node's tombstone says: " + strings.Join(strings.Fields(strings.ReplaceAll(string(tomb), "# rotate: ", "")), " ")
		}
		return fmt.Errorf("%w: node %s has no copy of a run's state at %s (%s)", ErrCannotRecover, rc.node, rc.path, why)
	}
	if err != nil {
		return fmt.Errorf("recover from node %s: %w", rc.node, err)
	}
	if data, err = decodeCopy(data); err != nil {
		return fmt.Errorf("%w: node %s, %s: %w", ErrCannotRecover, rc.node, rc.path, err)
	}
	var msg string
	err = state.Install(statePath, data, func(s *state.BoltStore) error {
		var err error
		msg, err = rc.adopt(ctx, s)
		return err
	})
	switch {
	case errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%w: %w", ErrCannotRecover, err)
	case errors.Is(err, state.ErrCorrupt), errors.Is(err, state.ErrSchema):
		return fmt.Errorf("the copy %s on node %s: %w", rc.path, rc.node, err)
	case err != nil:
		return err
	}
	rc.out.Linef("%s; state file %s written", msg, statePath)
	return nil
}

// adopt checks the copy (opened as s) and prepares it to be continued
// here. It returns what it did, for the operator.
func (rc *recovery) adopt(ctx context.Context, s state.Store) (string, error) {
	refuse := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w from node %s (%s): %s", ErrCannotRecover, rc.node, rc.path, fmt.Sprintf(format, args...))
	}
	run, err := s.Run(ctx)
	if errors.Is(err, state.ErrNoRun) {
		return refuse("the copy holds no run")
	}
	if err != nil {
		return "", err
	}
	switch {
	case run.Cluster != rc.cluster:
		return refuse("the copy is of run %s of cluster %q, the inventory's cluster is %q", run.ID, run.Cluster, rc.cluster)
	case run.State == StateCompleted || run.State == StateRolledBack:
		return refuse("run %s has ended (%s); there is nothing to continue", run.ID, run.State)
	}
	if err := rc.checkTombstones(ctx, run); err != nil {
		return "", err
	}
	plan := rc.planFor(run.Hold)
	if rc.values != nil {
		if why := rc.samePlan(ctx, s, run, plan); why != "" {
			return refuse("%s", why)
		}
	}
	if run.PlanVersion != plan.Version {
		return refuse("run %s was written by plan version %d, this rotate has %d", run.ID, run.PlanVersion, plan.Version)
	}
	recs, err := s.Steps(ctx)
	if err != nil {
		return "", err
	}
	if err := checkRecords(plan, run, recs); err != nil {
		return "", state.Corrupt(rc.path, err.Error())
	}
	if err := rc.checkCA(ctx, s, run); err != nil {
		return "", err
	}
	taken, err := rc.takeBackBackups(ctx, s, run, plan)
	if err != nil {
		return "", err
	}
	phase, marked := rc.unknownSteps(plan, run, recs)
	cp := state.Checkpoint{Steps: marked, Values: rc.values}
	asOf := run.UpdatedAt
	run.UpdatedAt = rc.now()
	if rc.values != nil {
		run.InventoryPath, run.InventoryDigest = string(rc.values[keyInventoryPath]), rc.invDigest
	}
	cp.Run = &run
	msg := fmt.Sprintf("run %s of cluster %s recovered from node %s (%s, state %s as of %s): %d backup(s) taken back from the nodes' copies",
		run.ID, run.Cluster, rc.node, rc.path, describeState(run), asOf.Format(time.RFC3339), taken)
	if len(marked) > 0 {
		msg += fmt.Sprintf(", %d step target(s) of phase %s the copy has no record of marked started (resume checks them, rollback reverts them)", len(marked), phase)
	}
	cp.Events = []state.Event{{Time: rc.now(), Level: "info", Kind: state.KindRecover, Node: rc.node, Path: rc.path, Message: msg}}
	return msg, s.Commit(ctx, cp)
}

// checkTombstones refuses a run that a control-plane node says has ended
// (its copy there may be one that could not be removed).
func (rc *recovery) checkTombstones(ctx context.Context, run state.Run) error {
	for _, n := range rc.controlPlane {
		r, err := rc.src.Node(ctx, n)
		if err != nil {
			return fmt.Errorf("recover: check node %s for a tombstone of run %s: %w", n, run.ID, err)
		}
		tomb, err := r.ReadFile(ctx, tombstonePath(rc.path))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("recover: check node %s for a tombstone of run %s: %w", n, run.ID, err)
		}
		if tombstoneNames(tomb, run.ID) {
			return fmt.Errorf("%w from node %s: node %s's %s says run %s has ended; there is nothing to continue",
				ErrCannotRecover, rc.node, n, tombstonePath(rc.path), run.ID)
		}
	}
	return nil
}

// samePlan says why the inventory does not describe the run's plan ("" if
// it does): its steps and targets, and the paths on the nodes, must be the
// ones recorded (addresses, SSH settings and local files may differ).
func (rc *recovery) samePlan(ctx context.Context, s state.Store, run state.Run, plan *plans.Plan) string {
	recorded, err := recordedConfig(ctx, s)
	if err != nil {
		return fmt.Sprintf("run %s's recorded inventory cannot be read (%v)", run.ID, err)
	}
	keys := func(p *plans.Plan) []string {
		var out []string
		for _, ph := range p.Phases {
			for _, ps := range ph.Steps {
				for _, t := range ps.Targets {
					out = append(out, plans.StepKey(ph.Name, ps.Step.Name(), t))
				}
			}
		}
		return out
	}
	if !slices.Equal(keys(recorded.Plan(plans.Options{Hold: run.Hold})), keys(plan)) {
		return fmt.Sprintf("the inventory's nodes are not those of run %s (recorded: control plane %s, workers %s)", run.ID,
			strings.Join(recorded.Steps.ControlPlane, ", "), strings.Join(recorded.Steps.Workers, ", "))
	}
	if recorded.Steps.Paths != rc.paths {
		return fmt.Sprintf("the inventory's paths on the nodes are not those of run %s (recorded: %+v)", run.ID, recorded.Steps.Paths)
	}
	return ""
}

// checkCA refuses a copy whose cluster CA (old or new) the node does not
// hold: a copy of another cluster's run under the same name.
func (rc *recovery) checkCA(ctx context.Context, s state.Store, run state.Run) error {
	if rc.caFile == "" {
		return nil
	}
	ca, ok, err := s.CA(ctx, steps.CACluster)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w from node %s (%s): run %s has no cluster CA recorded", ErrCannotRecover, rc.node, rc.path, run.ID)
	}
	want := map[string]bool{}
	for _, pemData := range [][]byte{ca.OldCert, ca.NewCert} {
		certs, _ := pki.ScanPEM(pemData)
		for _, c := range certs {
			want[pki.Fingerprint(c)] = true
		}
	}
	r, err := rc.src.Node(ctx, rc.node)
	if err != nil {
		return err
	}
	have, err := r.ReadFile(ctx, rc.caFile)
	if err != nil {
		return fmt.Errorf("recover: read the cluster CA of node %s: %w", rc.node, err)
	}
	certs, _ := pki.ScanPEM(have)
	var seen []string
	for _, c := range certs {
		if want[pki.Fingerprint(c)] {
			return nil
		}
		seen = append(seen, pki.Describe(c))
	}
	return fmt.Errorf("%w from node %s (%s): the node's %s holds none of run %s's cluster CAs (it holds: %s)",
		ErrCannotRecover, rc.node, rc.path, rc.caFile, run.ID, strings.Join(seen, "; "))
}

// takeBackBackups stores every backup a node keeps a copy of that the
// state lacks: those taken after the copy was written.
func (rc *recovery) takeBackBackups(ctx context.Context, s state.Store, run state.Run, plan *plans.Plan) (int, error) {
	if rc.backupDir == "" {
		return 0, nil
	}
	byNode := map[string]map[string]string{} // node → backup id → step key
	for _, ph := range plan.Phases {
		for _, ps := range ph.Steps {
			for _, t := range ps.Targets {
				if t.Node == "" {
					continue
				}
				key := plans.StepKey(ph.Name, ps.Step.Name(), t)
				if byNode[t.Node] == nil {
					byNode[t.Node] = map[string]string{}
				}
				byNode[t.Node][backupID(run.ID, key)] = key
			}
		}
	}
	taken := 0
	for _, n := range slices.Sorted(maps.Keys(byNode)) {
		ids := byNode[n]
		r, err := rc.src.Node(ctx, n)
		if err != nil {
			return taken, fmt.Errorf("recover: take back the backups of node %s: %w", n, err)
		}
		copies, err := nodes.BackupCopies(ctx, r, rc.backupDir, slices.Sorted(maps.Keys(ids)))
		if err != nil {
			return taken, fmt.Errorf("recover: %w", err)
		}
		for id, paths := range copies {
			for _, p := range paths {
				if _, ok, err := s.Backup(ctx, ids[id], n, p); err != nil || ok {
					if err != nil {
						return taken, err
					}
					continue
				}
				b, err := nodes.ReadBackupCopy(ctx, r, rc.backupDir, id, p)
				if err != nil {
					return taken, fmt.Errorf("recover: %w", err)
				}
				if _, err := (storeAdapter{s: s, scope: ids[id]}).SaveBackupIfAbsent(ctx, b); err != nil {
					return taken, err
				}
				taken++
			}
		}
	}
	return taken, nil
}

// unknownSteps are the step targets of the phase in progress that the copy
// has no record of (or only a pending one), marked started: work of that
// phase may have been done after the copy was written.
func (rc *recovery) unknownSteps(plan *plans.Plan, run state.Run, recs []state.StepRecord) (string, []state.StepRecord) {
	phase := run.State
	if run.State == StateHeld || run.State == StateFailed {
		phase = run.Phase
	}
	ph, _, ok := plan.Phase(phase)
	if !ok {
		return "", nil // new, rolling back: nothing of a phase can be missing
	}
	known := map[string]bool{}
	for _, r := range recs {
		known[r.Key] = r.Status != state.StepPending
	}
	var out []state.StepRecord
	for _, ps := range ph.Steps {
		for _, t := range ps.Targets {
			key := plans.StepKey(ph.Name, ps.Step.Name(), t)
			if !known[key] {
				out = append(out, state.StepRecord{Key: key, Phase: ph.Name, Step: ps.Step.Name(), Target: t.String(), Status: state.StepStarted, StartedAt: rc.now()})
			}
		}
	}
	return ph.Name, out
}
