package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/kubeca/rotate/internal/redact"
	"github.com/kubeca/rotate/internal/waits"
	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// StatusReport is `rotate status`.
type StatusReport struct {
	Run      state.Run          `json:"run"`
	Phases   []PhaseStatus      `json:"phases"`
	Failed   []state.StepRecord `json:"failedSteps,omitempty"`
	Hold     *steps.HoldReport  `json:"holdReport,omitempty"`
	JoinHash string             `json:"discoveryTokenCACertHash,omitempty"`
	Backups  int                `json:"backups"`
	Events   int                `json:"events"`
	// Mirror is the state's copies on the control-plane nodes, as the
	// running process knows them (only in the snapshot of a running run).
	Mirror []MirrorNodeStatus `json:"mirror,omitempty"`
	// Lock is the cluster lock (lock.go): read from the cluster when
	// status can reach it, else as this run last took or released it.
	Lock *LockStatus `json:"lock,omitempty"`
	// RoundTrips is the SSH round trips the run made to each node so
	// far, over all its processes, Dials its connection attempts per node
	// and RoundTripsByStep the round trips per "phase/step" (a revert:
	// "phase/step (revert)"; the state copies: "state copies"; anything
	// else: "other") and node; see nodes.RoundTrips.
	RoundTrips       map[string]int64            `json:"roundTrips,omitempty"`
	Dials            map[string]int64            `json:"dials,omitempty"`
	RoundTripsByStep map[string]map[string]int64 `json:"roundTripsByStep,omitempty"`
	// Steps is the timing of every step record, in key order: when the
	// last attempt started and finished, how long its apply and its
	// health gate took, and when it was reverted. Benchmarks derive from
	// it how much of a phase's wall time was spent waiting in gates.
	Steps []StepTiming `json:"steps,omitempty"`
}

// StepTiming is one step record's timing (state.StepRecord without its
// error text).
type StepTiming struct {
	Key        string           `json:"key"`
	Phase      string           `json:"phase"`
	Step       string           `json:"step"`
	Target     string           `json:"target"`
	Status     state.StepStatus `json:"status"`
	Attempts   int              `json:"attempts"`
	Skipped    bool             `json:"skipped,omitempty"`
	StartedAt  time.Time        `json:"startedAt,omitzero"`
	FinishedAt time.Time        `json:"finishedAt,omitzero"`
	ApplyTime  time.Duration    `json:"applyTime,omitempty"`
	GateTime   time.Duration    `json:"gateTime,omitempty"`
	// Waits inside apply (rollouts, CSRs, restarts): not rotate's own time.
	Waits      []waits.Span `json:"waits,omitempty"`
	RevertedAt time.Time    `json:"revertedAt,omitzero"`
}

// RoundTripSummary is the report's round trips on one line, as the run
// prints them: "cp1 312, cp2 298 (dials 4)"; "" when none were recorded.
func (r *StatusReport) RoundTripSummary() string {
	c := nodes.RoundTripCounts{Nodes: r.RoundTrips, Dials: r.Dials, Steps: r.RoundTripsByStep}
	if c.Empty() {
		return ""
	}
	return c.String()
}

// PhaseStatus is one phase's progress.
type PhaseStatus struct {
	Index    int           `json:"index"`
	Name     string        `json:"name"`
	State    string        `json:"state"` // pending, running, done, failed, reverted
	Done     int           `json:"stepsDone"`
	Total    int           `json:"stepsTotal"`
	Duration time.Duration `json:"duration"`
}

// Status reads the state file (shared lock) and summarizes the run. A run
// or step record this rotate cannot have written is refused with
// state.ErrCorrupt naming the file, and so is anything that panics while
// the records are read.
func Status(ctx context.Context, statePath string) (rep *StatusReport, err error) {
	store, err := state.Open(statePath, state.OpenOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	defer corruptOnPanic(statePath, &err)
	run, err := store.Run(ctx)
	if err != nil {
		return nil, err
	}
	plan, err := recordedPlan(ctx, store, run)
	if err != nil {
		return nil, state.Corrupt(statePath, err.Error())
	}
	if plan != nil {
		recs, err := store.Steps(ctx)
		if err != nil {
			return nil, err
		}
		if err := checkRecords(plan, run, recs); err != nil {
			return nil, state.Corrupt(statePath, err.Error())
		}
	}
	rep, err = report(ctx, store, plan)
	if err != nil {
		return nil, err
	}
	rep.Lock = liveLock(ctx, store, rep.Lock)
	return rep, nil
}

// lockReadTimeout bounds status's read of the cluster lock.
const lockReadTimeout = 5 * time.Second

// liveLock is the cluster lock read from the cluster of the run in store,
// or recorded (nil: none) with the reason it could not be read.
func liveLock(ctx context.Context, store state.Store, recorded *LockStatus) *LockStatus {
	failed := func(err error) *LockStatus {
		l := LockStatus{Lease: LockNamespace + "/" + LockName, Source: lockRecorded}
		if recorded != nil {
			l = *recorded
		}
		l.Error = "not read from the cluster: " + redact.Text(err.Error())
		return &l
	}
	cfg, err := recordedConfig(ctx, store)
	if err != nil {
		return failed(err)
	}
	kube, _, _, err := steps.KubeClient(cfg.Kubeconfig, cfg.Context, storeAdapter{s: store}, nil)
	if err != nil {
		return failed(err)
	}
	ctx, cancel := context.WithTimeout(ctx, lockReadTimeout)
	defer cancel()
	l, err := ReadLock(ctx, kube)
	if err != nil {
		return failed(err)
	}
	l.Source = lockFromCluster
	return &l
}

// corruptOnPanic, deferred, turns a panic while reading a state file's
// records into state.ErrCorrupt naming the file.
func corruptOnPanic(statePath string, err *error) {
	if r := recover(); r != nil {
		*err = state.Corrupt(statePath, fmt.Sprintf("its records cannot be read (%v)", r))
	}
}

// recordedPlan is the plan of the inventory recorded with run, or nil when
// that inventory does not parse on this machine (status still shows the
// run, without step totals). A run without an inventory is an error: start
// records the inventory before the run.
func recordedPlan(ctx context.Context, store state.Store, run state.Run) (*plans.Plan, error) {
	raw, ok, err := store.Value(ctx, keyInventoryRaw)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("run %s has no inventory recorded with it", run.ID)
	}
	p, _, err := store.Value(ctx, keyInventoryPath)
	if err != nil {
		return nil, err
	}
	inv, err := plans.ParseStructure(string(p), raw)
	if err != nil {
		return nil, nil
	}
	return plans.Build(inv, plans.Options{Hold: run.Hold}), nil
}

// report summarizes the run in store; plan (nil: unknown) gives each
// phase's number of step targets.
func report(ctx context.Context, store state.Store, plan *plans.Plan) (*StatusReport, error) {
	run, err := store.Run(ctx)
	if err != nil {
		return nil, err
	}
	rep := &StatusReport{Run: run}
	recs, err := store.Steps(ctx)
	if err != nil {
		return nil, err
	}
	byPhase := map[string][]state.StepRecord{}
	for _, r := range recs {
		byPhase[r.Phase] = append(byPhase[r.Phase], r)
		rep.Steps = append(rep.Steps, StepTiming{
			Key: r.Key, Phase: r.Phase, Step: r.Step, Target: r.Target, Status: r.Status,
			Attempts: r.Attempts, Skipped: r.Skipped, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt,
			ApplyTime: r.ApplyTime, GateTime: r.GateTime, Waits: r.Waits, RevertedAt: r.RevertedAt,
		})
		if r.Status == state.StepFailed {
			rep.Failed = append(rep.Failed, r)
		}
	}
	totals := map[string]int{}
	if plan != nil {
		for _, ph := range plan.Phases {
			for _, ps := range ph.Steps {
				totals[ph.Name] += len(ps.Targets)
			}
		}
	}
	for i, name := range plans.PhaseNames {
		rep.Phases = append(rep.Phases, phaseStatus(i, name, totals[name], byPhase[name]))
	}
	sort.Slice(rep.Failed, func(i, j int) bool { return rep.Failed[i].Key < rep.Failed[j].Key })
	sort.Slice(rep.Steps, func(i, j int) bool { return rep.Steps[i].Key < rep.Steps[j].Key })
	if v, ok, _ := store.Value(ctx, steps.KeyHoldReport); ok {
		var h steps.HoldReport
		if json.Unmarshal(v, &h) == nil {
			rep.Hold = &h
		}
	}
	if v, ok, _ := store.Value(ctx, keyLockStatus); ok {
		var l LockStatus
		if json.Unmarshal(v, &l) == nil {
			l.Source = lockRecorded
			rep.Lock = &l
		}
	}
	if c, err := recordedTrips(ctx, store); err == nil {
		rep.RoundTrips, rep.Dials, rep.RoundTripsByStep = c.Nodes, c.Dials, c.Steps
	}
	if v, ok, _ := store.Value(ctx, "report/discovery-hash"); ok {
		rep.JoinHash = string(v)
	}
	n, err := store.Counts(ctx)
	if err != nil {
		return nil, err
	}
	rep.Backups, rep.Events = n.Backups, n.Events
	redactReport(rep)
	return rep, nil
}

// redactReport hides key material and tokens in the report's free text
// (errors quote what failed; a step could quote what it wrote), so neither
// the terminal nor the snapshot file ever shows them.
func redactReport(rep *StatusReport) {
	rep.Run.LastError = redact.Text(rep.Run.LastError)
	for i := range rep.Failed {
		rep.Failed[i].Error = redact.Text(rep.Failed[i].Error)
	}
	if h := rep.Hold; h != nil {
		for _, l := range [][]string{h.Verified, h.Attention, h.PreExisting, h.Workloads} {
			for i := range l {
				l[i] = redact.Text(l[i])
			}
		}
	}
}

func phaseStatus(i int, name string, total int, recs []state.StepRecord) PhaseStatus {
	ps := PhaseStatus{Index: i, Name: name, Total: total, State: "pending"}
	var first, last time.Time
	states := map[state.StepStatus]int{}
	for _, r := range recs {
		states[r.Status]++
		if r.Status == state.StepDone {
			ps.Done++
		}
		if !r.StartedAt.IsZero() && (first.IsZero() || r.StartedAt.Before(first)) {
			first = r.StartedAt
		}
		if r.FinishedAt.After(last) {
			last = r.FinishedAt
		}
	}
	switch {
	case states[state.StepFailed] > 0:
		ps.State = "failed"
	case states[state.StepReverted] > 0 && ps.Done == 0:
		ps.State = "reverted"
	case ps.Total > 0 && ps.Done >= ps.Total:
		ps.State = "done"
	case len(recs) > 0:
		ps.State = "running"
	}
	if !first.IsZero() && !last.IsZero() {
		ps.Duration = last.Sub(first).Round(time.Second)
	}
	return ps
}

// ReportJSON is the report as `rotate status -o json` prints it.
func ReportJSON(rep *StatusReport) ([]byte, error) {
	raw, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(raw, '\n'), nil
}
