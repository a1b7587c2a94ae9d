// Package orchestrator runs a plan as a persisted finite-state machine: the
// phases in order, every step on every target checkpointed (started → check
// → apply → gate → done) so a killed run resumes exactly where it stopped,
// and rollback that reverts completed steps in reverse order.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/kubeca/rotate/internal/redact"
	"github.com/kubeca/rotate/internal/waits"
	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

var (
	// ErrUnfinishedRun: start was asked on a state file with a run in it.
	ErrUnfinishedRun = errors.New("state file holds a run")
	// ErrNothingToResume: resume on a run that cannot continue.
	ErrNothingToResume = errors.New("nothing to resume")
	// ErrPlanMismatch: the state file was written for another plan.
	ErrPlanMismatch = errors.New("plan version mismatch")
)

// RunError is a failed run: resumable, exit code 1.
type RunError struct {
	Phase string
	Err   error
}

func (e *RunError) Error() string { return fmt.Sprintf("phase %s: %v", e.Phase, e.Err) }
func (e *RunError) Unwrap() error { return e.Err }

// Options configure an Engine.
type Options struct {
	Store   state.Store
	Plan    *plans.Plan
	Runtime steps.Runtime // template; Store, Out and Progress are filled per step
	Printer *Printer
	Log     *slog.Logger
	Now     func() time.Time
	// AfterCommit, if set, is called after every checkpoint commit with
	// its ordinal; the crash tests kill the process from here.
	AfterCommit func(n int)
	// Mirror keeps copies of the state on the control-plane nodes (see
	// mirror.go); nil: none.
	Mirror Mirror
	// RoundTrips is the count of SSH round trips the run's node runners
	// keep (the pool's); every checkpoint records it (roundtrips.go). nil:
	// not counted.
	RoundTrips *nodes.RoundTrips
}

// Engine runs one plan against one state store.
type Engine struct {
	store   state.Store
	plan    *plans.Plan
	rt      steps.Runtime
	printer *Printer
	log     *slog.Logger
	now     func() time.Time
	after   func(int)
	mirror  Mirror
	trips   *tripLedger

	mu      sync.Mutex // serializes commits and the counters below
	commits int
	doneSeq uint64
}

// New returns an engine; it does no I/O.
func New(o Options) *Engine {
	e := &Engine{store: o.Store, plan: o.Plan, rt: o.Runtime, printer: o.Printer, log: o.Log, now: o.Now, after: o.AfterCommit, mirror: o.Mirror,
		trips: &tripLedger{live: o.RoundTrips}}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.printer == nil {
		e.printer = NewPrinter(nil)
	}
	return e
}

func (e *Engine) commit(ctx context.Context, cp state.Checkpoint) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.trips.stamp(ctx, e.store, &cp); err != nil {
		return err
	}
	if err := e.store.Commit(ctx, cp); err != nil {
		return err
	}
	e.commits++
	if e.after != nil {
		e.after(e.commits)
	}
	return nil
}

// Start records a new run and drives it. The store must hold no run.
func (e *Engine) Start(ctx context.Context, run state.Run, hold bool) error {
	if err := e.plan.Validate(); err != nil {
		return err
	}
	if old, err := e.store.Run(ctx); err == nil {
		return unfinishedError(old)
	} else if !errors.Is(err, state.ErrNoRun) {
		return err
	}
	run.State = StateNew
	run.PlanVersion = e.plan.Version
	run.Hold = hold
	run.CreatedAt = e.now()
	run.UpdatedAt = run.CreatedAt
	if err := e.commit(ctx, state.Checkpoint{Run: &run, Events: []state.Event{{Time: e.now(), Level: "info", Kind: state.KindRun, Message: fmt.Sprintf("run %s started for cluster %s", run.ID, run.Cluster)}}}); err != nil {
		return fmt.Errorf("record run: %w", err)
	}
	return e.drive(ctx, run)
}

func unfinishedError(r state.Run) error {
	switch r.State {
	case StateCompleted, StateRolledBack:
		return fmt.Errorf("%w: run %s of cluster %q ended %s at %s; this file keeps its backups and CA material — start a new rotation with another --state file",
			ErrUnfinishedRun, r.ID, r.Cluster, r.State, r.FinishedAt.Format(time.RFC3339))
	}
	where := r.State
	if r.Phase != "" && r.Phase != r.State {
		where += " (phase " + r.Phase + ")"
	}
	return fmt.Errorf("%w: unfinished run %s of cluster %q is at %s; continue it with `rotate resume` or undo it with `rotate rollback`",
		ErrUnfinishedRun, r.ID, r.Cluster, where)
}

// Resume continues a held or failed run from where it stopped.
func (e *Engine) Resume(ctx context.Context) error {
	run, err := e.loadRun(ctx)
	if err != nil {
		return err
	}
	switch run.State {
	case StateCompleted:
		return fmt.Errorf("%w: run %s already completed", ErrNothingToResume, run.ID)
	case StateRolledBack:
		return fmt.Errorf("%w: run %s was rolled back", ErrNothingToResume, run.ID)
	case StateRollingBack:
		return fmt.Errorf("%w: run %s is rolling back (%s); finish with `rotate rollback`", ErrNothingToResume, run.ID, run.LastError)
	}
	e.printer.Linef("resuming run %s of cluster %s at %s", run.ID, run.Cluster, describeState(run))
	e.runLog().Info("resuming", "cluster", run.Cluster, "state", run.State, "phase", run.Phase)
	return e.drive(ctx, run)
}

func describeState(r state.Run) string {
	if r.Phase != "" && r.Phase != r.State {
		return r.State + " (phase " + r.Phase + ")"
	}
	return r.State
}

func (e *Engine) loadRun(ctx context.Context) (state.Run, error) {
	run, err := e.store.Run(ctx)
	if err != nil {
		return run, err
	}
	if run.PlanVersion != e.plan.Version {
		return run, fmt.Errorf("%w: run %s was started by a rotate with plan version %d, this rotate has plan version %d (its phases have other steps): resume or roll it back with the rotate release that started it; the state file is unchanged", ErrPlanMismatch, run.ID, run.PlanVersion, e.plan.Version)
	}
	recs, err := e.store.Steps(ctx)
	if err != nil {
		return run, err
	}
	if err := checkRecords(e.plan, run, recs); err != nil {
		return run, fmt.Errorf("%w: %v", state.ErrCorrupt, err)
	}
	for _, r := range recs {
		if r.DoneSeq > e.doneSeq {
			e.doneSeq = r.DoneSeq
		}
	}
	return run, nil
}

// drive walks the FSM from the run's recorded state until it completes,
// holds or fails.
func (e *Engine) drive(ctx context.Context, run state.Run) error {
	m := e.newFSM(run.State)
	for {
		cur := m.Current()
		var next string
		var args transitionArgs
		switch cur {
		case StateCompleted:
			e.finishMirror(ctx)
			e.printer.Linef("rotation of cluster %s completed", run.Cluster)
			e.printTrips()
			return nil
		case StateNew:
			next = enterEvent(e.plan.Phases[0].Name)
			args.phase = e.plan.Phases[0].Name
		case StateHeld, StateFailed:
			r, err := e.store.Run(ctx)
			if err != nil {
				return err
			}
			_, i, ok := e.plan.Phase(r.Phase)
			if cur == StateHeld {
				i++
			}
			if !ok || i >= len(e.plan.Phases) {
				return fmt.Errorf("%w: run is %s at phase %q, which this plan cannot continue from", state.ErrCorrupt, cur, r.Phase)
			}
			next = enterEvent(e.plan.Phases[i].Name)
			args.phase = e.plan.Phases[i].Name
		default:
			ph, i, ok := e.plan.Phase(cur)
			if !ok {
				return fmt.Errorf("%w: run is in state %q, which this plan does not have", state.ErrCorrupt, cur)
			}
			if err := e.runPhase(ctx, ph); err != nil {
				if ferr := e.fire(context.WithoutCancel(ctx), m, evFail, transitionArgs{phase: ph.Name, errText: err.Error()}); ferr != nil {
					return fmt.Errorf("%w (and recording the failure failed: %v)", err, ferr)
				}
				if !errors.Is(err, errSyncFailed) {
					e.syncBestEffort(context.WithoutCancel(ctx), "after the failure")
				}
				return &RunError{Phase: ph.Name, Err: err}
			}
			switch {
			case ph.HoldAfter && run.Hold:
				if err := e.fire(ctx, m, evHold, transitionArgs{phase: ph.Name}); err != nil {
					return err
				}
				e.syncBestEffort(ctx, "at the hold")
				e.printer.Linef("held after phase %d/%d %s: review `rotate status`, then `rotate resume` to continue or `rotate rollback` to undo", ph.Index, e.plan.Last(), ph.Name)
				e.printTrips()
				return nil
			case i == len(e.plan.Phases)-1:
				next = evComplete
			default:
				next = enterEvent(e.plan.Phases[i+1].Name)
				args.phase = e.plan.Phases[i+1].Name
			}
		}
		if err := e.fire(ctx, m, next, args); err != nil {
			return err
		}
	}
}

// runLog is the engine's logger with the run's id.
func (e *Engine) runLog() *slog.Logger { return e.log.With("run", e.rt.RunID) }

// runPhase runs the phase's steps in order; targets of one step fan out.
func (e *Engine) runPhase(ctx context.Context, ph plans.Phase) error {
	e.printer.Phase(ph.Index, e.plan.Last(), ph.Name, ph.Short)
	log := e.runLog().With("phase", ph.Name)
	ready := func() error { return nil }
	if e.mirror != nil && ph.Name != e.plan.Phases[0].Name && changes(ph) {
		// Before any step of the phase changes anything: see mirror.go.
		// The copy is written while the first step looks (its Check only
		// reads, and so does the wait for a live leader before it); every
		// Apply of the phase waits for it. It carries the first step's API
		// backups.
		if err := e.earlyBackups(ctx, ph); err != nil {
			return err
		}
		ready = e.syncInBackground(ctx, ph.Name)
		defer func() { _ = ready() }() // never return with a copy in flight
	}
	log.Info("phase started", "index", ph.Index, "steps", len(ph.Steps))
	start := time.Now()
	var bg *lane // a background step running (at most one, plans.Validate)
	var until string
	for _, ps := range ph.Steps {
		if bg != nil && ps.Step.Name() == until {
			if err := bg.wait(); err != nil {
				return err
			}
			bg = nil
		}
		if bg != nil && bg.failed() {
			return bg.wait() // at a step boundary: nothing else is running
		}
		if ps.Background {
			log.Info("background step started", "step", ps.Step.Name(), "until", ps.Until)
			until = ps.Until
			bg = goLane(func(stop <-chan struct{}) error {
				return e.runStep(ctx, stop, ph, ps, ready)
			})
			continue
		}
		if err := e.runStep(ctx, nil, ph, ps, ready); err != nil {
			if bg != nil {
				return bg.abandon(err)
			}
			return err
		}
	}
	if bg != nil {
		if err := bg.wait(); err != nil {
			return err
		}
	}
	log.Info("phase done", "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// earlyBackups takes the API backups of ph's first step (steps.EarlyBackup)
// on each of its targets not done yet, for the phase's copy of the state
// to carry (mirror.go).
func (e *Engine) earlyBackups(ctx context.Context, ph plans.Phase) error {
	if len(ph.Steps) == 0 {
		return nil
	}
	ps := ph.Steps[0]
	eb, ok := ps.Step.(steps.EarlyBackup)
	if !ok {
		return nil
	}
	for _, t := range ps.Targets {
		key := plans.StepKey(ph.Name, ps.Step.Name(), t)
		if rec, ok, err := e.store.Step(ctx, key); err != nil {
			return err
		} else if ok && rec.Status == state.StepDone {
			continue
		}
		rt := e.stepRuntime(key)
		rt.Log = e.log.With("run", rt.RunID, "phase", ph.Name, "step", ps.Step.Name(), "target", t.String(), "op", "backup")
		sctx, cancel := e.stepContext(withCopyToFollow(tripLabel(ctx, ph.Name, ps.Step.Name(), false)), ph.Name, ps.Step)
		err := eb.TakeBackups(sctx, &rt, t)
		cancel()
		if err != nil {
			return fmt.Errorf("%s on %s: back up before the phase's copy of the state: %w", ps.Step.Name(), t, err)
		}
	}
	return nil
}

// changes reports whether a step of ph may change anything (is not a
// steps.Looker).
func changes(ph plans.Phase) bool {
	for _, ps := range ph.Steps {
		if _, looks := ps.Step.(steps.Looker); !looks {
			return true
		}
	}
	return false
}

// stepContext bounds one step on one target by its phase's timeout,
// except a step that bounds each of its waits itself (steps.SelfTimed).
func (e *Engine) stepContext(ctx context.Context, phase string, st steps.Step) (context.Context, context.CancelFunc) {
	if _, ok := st.(steps.SelfTimed); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, e.rt.Config.Timeout(phase))
}

// runStep runs one step on its targets; once stop is closed (nil: never)
// no new target starts. ready returns once the phase may change things.
func (e *Engine) runStep(ctx context.Context, stop <-chan struct{}, ph plans.Phase, ps plans.PlannedStep, ready func() error) error {
	name := ps.Step.Name()
	targets := ps.Targets
	targets, orderWaits := e.orderTargets(ctx, ph.Name, ps.Step, targets, false)
	var firstMu sync.Mutex
	total := len(targets)
	var doneMu sync.Mutex
	done := 0
	log := e.runLog().With("phase", ph.Name, "step", name)
	log.Debug("fan-out", "targets", total, "concurrency", ps.Concurrency)
	start := time.Now()
	defer func() {
		log.Debug("fan-out over", "targets", total, "done", done, "duration", time.Since(start).Round(time.Millisecond))
	}()
	return fanOut(ctx, stop, targets, ps.Concurrency, func(ctx context.Context, t steps.Target) error {
		firstMu.Lock()
		pre := orderWaits // the first target to run carries the step's wait for a live leader
		orderWaits = nil
		firstMu.Unlock()
		err := e.runTarget(ctx, ph, ps.Step, t, pre, ready)
		doneMu.Lock()
		if err == nil {
			done++
		}
		n := done
		doneMu.Unlock()
		if total > 1 {
			e.printer.Count(name, n, total)
		}
		return err
	})
}

// orderTargets orders a step's targets at run time when the step chooses
// its order (steps.Ordering: after a live leader, the current leader
// last), and returns the time it waited, a wait on the cluster like a
// gate's, for the step's timing.
func (e *Engine) orderTargets(ctx context.Context, phase string, st steps.Step, targets []steps.Target, revert bool) ([]steps.Target, []waits.Span) {
	o := steps.OrderingOf(st)
	if o == nil {
		return targets, nil
	}
	op := "order"
	if revert {
		op = "revert order"
	}
	rt := e.stepRuntime(plans.StepKey(phase, st.Name(), steps.ClusterTarget))
	rt.Log = e.log.With("run", rt.RunID, "phase", phase, "step", st.Name(), "op", op)
	rt.Progress = func(msg string) { e.printer.Detail(st.Name(), "leaders", msg) }
	wctx, clock := waits.With(tripLabel(ctx, phase, st.Name(), revert))
	targets = o.Order(wctx, &rt, targets)
	return targets, clock.Spans()
}

// runTarget runs one target of a step; pre are waits of the step's own
// before it (orderTargets), recorded with this target's; ready returns
// once the phase may change things.
func (e *Engine) runTarget(ctx context.Context, ph plans.Phase, st steps.Step, t steps.Target, pre []waits.Span, ready func() error) error {
	key := plans.StepKey(ph.Name, st.Name(), t)
	rec, ok, err := e.store.Step(ctx, key)
	if err != nil {
		return err
	}
	if ok && rec.Status == state.StepDone {
		return nil
	}
	if !ok {
		rec = state.StepRecord{Key: key, Phase: ph.Name, Step: st.Name(), Target: t.String()}
	}
	rec.Status = state.StepStarted
	rec.Attempts++
	rec.Error = ""
	rec.StartedAt = e.now()
	rec.FinishedAt = time.Time{}
	if err := e.commit(ctx, state.Checkpoint{Steps: []state.StepRecord{rec}, Events: []state.Event{e.event("info", state.KindStep, rec, fmt.Sprintf("started (attempt %d)", rec.Attempts))}}); err != nil {
		return fmt.Errorf("checkpoint %s: %w", key, err)
	}
	e.printer.Step(st.Name(), t.String(), "running")
	start := e.now()

	sctx, cancel := e.stepContext(tripLabel(ctx, ph.Name, st.Name(), false), ph.Name, st)
	defer cancel()
	rt := e.stepRuntime(key)
	rt.Progress = func(msg string) { e.printer.Detail(st.Name(), t.String(), msg) }
	rt.Log = e.log.With("run", rt.RunID, "phase", ph.Name, "step", st.Name(), "target", t.String(), "attempt", rec.Attempts)
	changes := e.recordChanges(&rt)
	rt.Log.Info("step started")

	skipped, tm, err := execute(sctx, st, &rt, t, ready)
	if len(pre) > 0 {
		tm.waits = waits.Merge(append(pre, tm.waits...), waits.MaxSpans)
	}
	rec.ApplyTime, rec.GateTime, rec.Waits = tm.apply, tm.gate, tm.waits
	if err != nil {
		if sctx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w (timed out after %s)", err, e.rt.Config.Timeout(ph.Name))
		}
		err = fmt.Errorf("%s on %s: %w", st.Name(), t, err)
		rt.Log.Info("step failed", "duration", e.now().Sub(start).Round(time.Millisecond), "err", redact.Text(err.Error()))
		rec.Status = state.StepFailed
		rec.Error = err.Error()
		rec.FinishedAt = e.now()
		evs := append(changes.stamped(rec), e.event("error", state.KindStep, rec, err.Error()))
		if cerr := e.commit(context.WithoutCancel(ctx), state.Checkpoint{Steps: []state.StepRecord{rec}, Events: evs}); cerr != nil {
			return fmt.Errorf("%w (and recording it failed: %v)", err, cerr)
		}
		e.printer.Step(st.Name(), t.String(), "FAILED: "+err.Error())
		return err
	}
	e.mu.Lock()
	e.doneSeq++
	rec.DoneSeq = e.doneSeq
	e.mu.Unlock()
	rec.Status = state.StepDone
	rec.Skipped = skipped
	rec.FinishedAt = e.now()
	cp := state.Checkpoint{Steps: []state.StepRecord{rec}, Values: rt.Out.Values}
	for _, c := range rt.Out.CAs {
		cp.CAs = append(cp.CAs, caMaterial(c))
	}
	msg := "done"
	if skipped {
		msg = "already in place"
	}
	cp.Events = append(changes.stamped(rec), e.event("info", state.KindStep, rec, msg))
	if err := e.commit(ctx, cp); err != nil {
		return fmt.Errorf("checkpoint %s: %w", key, err)
	}
	rt.Log.Info("step done", "skipped", skipped, "apply", tm.apply.Round(time.Millisecond), "gate", tm.gate.Round(time.Millisecond),
		"duration", e.now().Sub(start).Round(time.Millisecond))
	e.printer.Step(st.Name(), t.String(), fmt.Sprintf("%s (%s)", msg, e.now().Sub(start).Round(10*time.Millisecond)))
	return nil
}

// recordChanges makes rt's node runners record what they change.
func (e *Engine) recordChanges(rt *steps.Runtime) *changeLog {
	l := newChangeLog(rt.Config, e.now)
	if rt.Nodes != nil {
		rt.Nodes = recordingNodes{inner: rt.Nodes, log: l}
	}
	return l
}

// stepRuntime is the runtime of one step on one target: its backups are
// scoped to the step key so its revert restores exactly its own "before".
func (e *Engine) stepRuntime(key string) steps.Runtime {
	rt := e.rt
	rt.Store = storeAdapter{s: e.store, scope: key}
	rt.Out = &steps.Outputs{}
	rt.BackupID = backupID(rt.RunID, key)
	return rt
}

// backupID names a step's backup directory on a node: run id and step key
// with everything but [A-Za-z0-9._-] replaced.
func backupID(run, key string) string {
	b := []byte(run + "." + key)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	if b[0] == '.' || b[0] == '-' || b[0] == '_' {
		b[0] = 'r'
	}
	return string(b)
}

// timing is one attempt's time in Check+Apply and in the health gate,
// and the waits inside Check+Apply (rollouts, CSRs, restarts).
type timing struct {
	apply, gate time.Duration
	waits       []waits.Span
}

// execute is check → apply → gate, logged at debug level to rt.Log.
func execute(ctx context.Context, st steps.Step, rt *steps.Runtime, t steps.Target, ready func() error) (skipped bool, tm timing, err error) {
	log := rt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	gctx := waits.Without(ctx) // the gate is timed here, as a whole
	ctx, clock := waits.With(ctx)
	defer func() { tm.waits = clock.Spans() }()
	done, err := st.Check(ctx, rt, t)
	if err != nil {
		return false, tm, fmt.Errorf("check: %w", err)
	}
	log.Debug("checked", "in_place", done, "duration", time.Since(start).Round(time.Millisecond))
	if ready != nil {
		// Only Check may run before the phase's copy of the state is
		// written; Apply and Gate (a gate may approve or clean up) wait.
		if err := ready(); err != nil {
			tm.apply = time.Since(start)
			return false, tm, err
		}
	}
	if !done {
		as := time.Now()
		if err := st.Apply(ctx, rt, t); err != nil {
			tm.apply = time.Since(start)
			return false, tm, fmt.Errorf("apply: %w", err)
		}
		log.Debug("applied", "duration", time.Since(as).Round(time.Millisecond))
	}
	tm.apply = time.Since(start)
	gs := time.Now()
	err = st.Gate(nodes.CountAsGate(gctx), rt, t)
	tm.gate = time.Since(gs)
	if err != nil {
		return done, tm, fmt.Errorf("health gate: %w", err)
	}
	log.Debug("gate passed", "duration", tm.gate.Round(time.Millisecond))
	return done, tm, nil
}

func (e *Engine) event(level, kind string, r state.StepRecord, msg string) state.Event {
	return state.Event{Time: e.now(), Level: level, Kind: kind, Phase: r.Phase, Step: r.Step, Target: r.Target, Attempt: r.Attempts, Message: msg}
}

// Rollback reverts every step that was started, in reverse order of
// completion (partial steps first), and ends in rolled-back. The targets
// of one step revert like the forward run applied them: fanned out with
// the step's concurrency (one at a time for control-plane nodes), and
// the next step only after all of them are reverted.
func (e *Engine) Rollback(ctx context.Context) error {
	run, err := e.loadRun(ctx)
	if err != nil {
		return err
	}
	if run.State == StateRolledBack {
		e.printer.Linef("run %s is already rolled back", run.ID)
		return nil
	}
	m := e.newFSM(run.State)
	if run.State != StateRollingBack {
		if err := e.fire(ctx, m, evRollback, transitionArgs{phase: run.Phase}); err != nil {
			return err
		}
	}
	recs, err := e.store.Steps(ctx)
	if err != nil {
		return err
	}
	if e.mirror != nil && e.changedNodes(recs) {
		// The copies say "rolling back" before anything is reverted.
		if err := e.mirror.Sync(ctx); err != nil {
			return e.rollbackFailed(ctx, m, fmt.Errorf("before reverting: %w", err), nil)
		}
	}
	var todo []state.StepRecord
	for _, r := range recs {
		switch r.Status {
		case state.StepDone, state.StepStarted, state.StepFailed:
			todo = append(todo, r)
		}
	}
	sortForRevert(e.plan, todo)
	e.printer.Linef("rolling back run %s of cluster %s: %d step target(s) to revert", run.ID, run.Cluster, len(todo))
	if out := e.revertAll(ctx, revertGroups(todo), len(todo)); out.ckErr != nil {
		return out.ckErr
	} else if out.err != nil {
		return e.rollbackFailed(ctx, m, out.err, out.changes)
	}
	if err := e.fire(ctx, m, evFinishRollback, transitionArgs{}); err != nil {
		return err
	}
	e.finishMirror(ctx)
	e.printer.Linef("rollback of run %s complete: cluster %s is back on its old CAs", run.ID, run.Cluster)
	e.printTrips()
	return nil
}

// revertGroups cuts the records to revert, already in revert order, into
// runs of the same phase and step: each run reverts like the forward run
// applied it, its targets fanned out.
func revertGroups(todo []state.StepRecord) [][]state.StepRecord {
	var groups [][]state.StepRecord
	for i, r := range todo {
		if i == 0 || r.Phase != todo[i-1].Phase || r.Step != todo[i-1].Step {
			groups = append(groups, nil)
		}
		groups[len(groups)-1] = append(groups[len(groups)-1], r)
	}
	return groups
}

// revertGroup reverts the targets of one phase/step, at most as many at
// once as the forward run applied (one at a time where it went one at a
// time, such as control-plane nodes); records first..first+len(g) of total.
// Every target that started finishes; no new one starts after a failure.
// It returns the failed targets' change events and their errors, and
// apart from them the error of a checkpoint that could not be written.
func (e *Engine) revertGroup(ctx context.Context, stop <-chan struct{}, g []state.StepRecord, first, total int) (changes []state.Event, ckErr, err error) {
	ps, err := lookupPlanned(e.plan, g[0])
	if err != nil {
		return nil, nil, err
	}
	targets := make([]steps.Target, len(g))
	index := map[string]int{}
	for i, r := range g {
		if _, targets[i], err = e.lookup(r); err != nil {
			return nil, nil, err
		}
		index[r.Target] = i
	}
	// The revert restarts the same components: it waits for a live
	// leader as the forward run does, and the nodes that hold the leader
	// leases now (the forward run may have moved them) go last here too,
	// or each leadership moves twice.
	targets, _ = e.orderTargets(ctx, g[0].Phase, ps.Step, targets, true)
	var mu sync.Mutex
	err = fanOut(ctx, stop, targets, ps.Concurrency, func(ctx context.Context, t steps.Target) error {
		i := index[t.String()]
		evs, cerr, err := e.revertTarget(ctx, ps.Step, t, g[i], first+i+1, total)
		if cerr != nil || err != nil {
			mu.Lock()
			changes = append(changes, evs...)
			ckErr = errors.Join(ckErr, cerr)
			mu.Unlock()
		}
		if cerr != nil {
			return cerr
		}
		return err
	})
	return changes, ckErr, err
}

// revertTarget reverts one step target (revert, then its revert gate)
// and checkpoints it as reverted. A failed revert returns its change
// events for the rollback's failure record; a failed checkpoint is ckErr.
func (e *Engine) revertTarget(ctx context.Context, st steps.Step, t steps.Target, r state.StepRecord, i, total int) (failed []state.Event, ckErr, err error) {
	e.printer.Revert(i, total, r.Phase, r.Step, r.Target)
	sctx, cancel := e.stepContext(tripLabel(ctx, r.Phase, r.Step, true), r.Phase, st)
	defer cancel()
	rt := e.stepRuntime(r.Key)
	rt.Progress = func(msg string) { e.printer.Detail(r.Step, r.Target, msg) }
	rt.Log = e.log.With("run", rt.RunID, "phase", r.Phase, "step", r.Step, "target", r.Target, "op", "revert")
	changes := e.recordChanges(&rt)
	rs := time.Now()
	err = st.Revert(sctx, &rt, t)
	if err == nil {
		if g, ok := st.(steps.RevertGater); ok {
			err = g.RevertGate(nodes.CountAsGate(sctx), &rt, t)
		}
	}
	if err != nil {
		return changes.stamped(r), nil, fmt.Errorf("revert %s/%s on %s: %w", r.Phase, r.Step, r.Target, err)
	}
	rt.Log.Info("reverted", "duration", time.Since(rs).Round(time.Millisecond))
	r.Status = state.StepReverted
	r.RevertedAt = e.now()
	evs := append(changes.stamped(r), e.event("info", state.KindRevert, r, "reverted"))
	if err := e.commit(ctx, state.Checkpoint{Steps: []state.StepRecord{r}, Events: evs}); err != nil {
		return nil, fmt.Errorf("checkpoint revert of %s: %w", r.Key, err), nil
	}
	return nil, nil, nil
}

// printTrips prints the run's SSH round trips per node (none: nothing).
func (e *Engine) printTrips() {
	if l := e.trips.summary(); l != "" {
		e.printer.Linef("%s", l)
	}
}

func (e *Engine) rollbackFailed(ctx context.Context, m interface{ Current() string }, err error, changes []state.Event) error {
	run, rerr := e.store.Run(ctx)
	if rerr == nil {
		run.LastError = err.Error()
		run.UpdatedAt = e.now()
		evs := append(changes, state.Event{Time: e.now(), Level: "error", Kind: state.KindRevert, Message: "rollback: " + err.Error()})
		_ = e.commit(context.WithoutCancel(ctx), state.Checkpoint{Run: &run, Events: evs})
	}
	if !errors.Is(err, errSyncFailed) {
		// The reverts done so far: background copies may be an interval
		// behind them (mirror.go).
		e.syncBestEffort(context.WithoutCancel(ctx), "after the failed rollback")
	}
	return &RunError{Phase: StateRollingBack, Err: err}
}

// changedNodes reports whether any step after the first phase was started:
// before that, nothing on a node changed and no copy of the state exists.
func (e *Engine) changedNodes(recs []state.StepRecord) bool {
	for _, r := range recs {
		if r.Phase != e.plan.Phases[0].Name && r.Status != state.StepPending {
			return true
		}
	}
	return false
}

// syncInBackground starts the copy of the state at phase's start and
// returns what waits for it: the copy's outcome, the same to every caller.
// A failure wraps errSyncFailed, so the run fails without another copy.
func (e *Engine) syncInBackground(ctx context.Context, phase string) func() error {
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		if serr := e.mirror.Sync(ctx); serr != nil {
			err = fmt.Errorf("before phase %s changes anything: %w", phase, serr)
		}
	}()
	return func() error {
		<-done
		return err
	}
}

// syncBestEffort copies the state to the control-plane nodes where the
// run stops (hold, failure); a failure is logged and journaled, the
// next run of rotate copies it again before it changes anything.
func (e *Engine) syncBestEffort(ctx context.Context, when string) {
	if e.mirror == nil || !e.mirror.Active() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := e.mirror.Sync(ctx); err != nil {
		e.runLog().Warn("cannot copy the state to the control-plane nodes "+when, "err", err)
		_ = e.commit(context.WithoutCancel(ctx), state.Checkpoint{Events: []state.Event{{Time: e.now(), Level: "warn", Kind: state.KindMirror,
			Message: "state not copied to every control-plane node " + when + ": " + err.Error()}}})
	}
}

// finishMirror removes the state's copies of a run that ended.
func (e *Engine) finishMirror(ctx context.Context) {
	if e.mirror == nil || !e.mirror.Active() {
		return // no copy was made: the run never changed a node
	}
	run, err := e.store.Run(ctx)
	if err == nil {
		err = e.mirror.Finish(ctx, run)
	}
	ev := state.Event{Time: e.now(), Level: "info", Kind: state.KindMirror, Message: "state copies on the control-plane nodes removed (tombstones left)"}
	if err != nil {
		e.runLog().Warn("cannot remove the state copies; remove them by hand", "err", err)
		ev.Level, ev.Message = "warn", "state copies not removed everywhere, remove them by hand: "+err.Error()
	}
	_ = e.commit(context.WithoutCancel(ctx), state.Checkpoint{Events: []state.Event{ev}})
}

func (e *Engine) lookup(r state.StepRecord) (steps.Step, steps.Target, error) {
	return lookupStep(e.plan, r)
}
