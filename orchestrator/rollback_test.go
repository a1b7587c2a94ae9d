package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// revertWatch is what the rollback tests observe: the order of reverts,
// how many targets of each step were reverting at once at most, and
// which reverts fail.
type revertWatch struct {
	mu       sync.Mutex
	order    []string // step@target, in the order reverts started
	inFlight map[string]int
	max      map[string]int
	fail     map[string]bool // step@target
}

func newRevertWatch() *revertWatch {
	return &revertWatch{inFlight: map[string]int{}, max: map[string]int{}, fail: map[string]bool{}}
}

// parStep is a step whose revert takes a while, so reverts of targets that
// run at once overlap and the watch sees them.
type parStep struct {
	name string
	w    *revertWatch
}

func (s parStep) Name() string { return s.name }
func (s parStep) Check(context.Context, *steps.Runtime, steps.Target) (bool, error) {
	return false, nil
}
func (s parStep) Apply(context.Context, *steps.Runtime, steps.Target) error { return nil }
func (s parStep) Gate(context.Context, *steps.Runtime, steps.Target) error  { return nil }

func (s parStep) Revert(ctx context.Context, rt *steps.Runtime, t steps.Target) error {
	id := s.name + "@" + t.String()
	w := s.w
	w.mu.Lock()
	w.order = append(w.order, id)
	w.inFlight[s.name]++
	w.max[s.name] = max(w.max[s.name], w.inFlight[s.name])
	fail := w.fail[id]
	w.mu.Unlock()
	time.Sleep(40 * time.Millisecond)
	w.mu.Lock()
	w.inFlight[s.name]--
	w.mu.Unlock()
	if fail {
		return fmt.Errorf("injected revert failure")
	}
	return nil
}

// parPlan: control-plane nodes one at a time, six workers two at a time,
// an API object on the cluster target.
func parPlan(w *revertWatch) *plans.Plan {
	cp := []steps.Target{{Node: "cp1", Role: steps.RoleControlPlane}, {Node: "cp2", Role: steps.RoleControlPlane}, {Node: "cp3", Role: steps.RoleControlPlane}}
	var workers []steps.Target
	for i := 1; i <= 6; i++ {
		workers = append(workers, steps.Target{Node: fmt.Sprintf("w%d", i), Role: steps.RoleWorker})
	}
	st := func(n string) steps.Step { return parStep{name: n, w: w} }
	return &plans.Plan{Version: 1, Phases: []plans.Phase{
		{Index: 0, Name: "preflight", Short: "prepare", Steps: []plans.PlannedStep{
			{Step: st("prepare"), Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
		}},
		{Index: 1, Name: "widen", Short: "widen trust", Steps: []plans.PlannedStep{
			{Step: st("trust-cp"), Targets: cp, Concurrency: 1},
			{Step: st("trust-workers"), Targets: workers, Concurrency: 2},
			{Step: st("publish"), Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
		}},
		{Index: 2, Name: "narrow", Short: "narrow trust", Steps: []plans.PlannedStep{
			{Step: st("narrow-workers"), Targets: workers, Concurrency: 2},
			{Step: st("narrow-cp"), Targets: cp, Concurrency: 1},
		}},
	}}
}

func startPar(t *testing.T) (*Engine, state.Store, *revertWatch) {
	t.Helper()
	w := newRevertWatch()
	s := state.NewMemStore()
	e := New(Options{Store: s, Plan: parPlan(w)})
	if err := e.Start(context.Background(), state.Run{ID: "r", Cluster: "par"}, false); err != nil {
		t.Fatal(err)
	}
	return e, s, w
}

// stepOrder is the order of steps in the reverts, one entry per run.
func stepOrder(order []string) []string {
	var out []string
	for _, id := range order {
		out = appendStep(out, id[:strings.IndexByte(id, '@')])
	}
	return out
}

// TestRollbackFansOut: worker targets of one step revert up to the
// step's batch at once, control-plane targets one at a time, and the
// steps in reverse plan order, each after the one before has finished.
func TestRollbackFansOut(t *testing.T) {
	e, s, w := startPar(t)
	if err := e.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	for step, want := range map[string]int{"trust-workers": 2, "narrow-workers": 2, "trust-cp": 1, "narrow-cp": 1, "publish": 1, "prepare": 1} {
		if got := w.max[step]; got != want {
			t.Errorf("%s: at most %d targets reverting at once, want %d", step, got, want)
		}
	}
	got := strings.Join(stepOrder(w.order), ",")
	if want := "narrow-cp,narrow-workers,publish,trust-workers,trust-cp,prepare"; got != want {
		t.Fatalf("revert order %s, want %s", got, want)
	}
	recs, _ := s.Steps(context.Background())
	for _, r := range recs {
		if r.Status != state.StepReverted {
			t.Errorf("%s is %s after rollback", r.Key, r.Status)
		}
	}
	if run, _ := s.Run(context.Background()); run.State != StateRolledBack {
		t.Fatalf("run is %s", run.State)
	}
}

// TestRollbackFailureStopsGroup: failing reverts in a fanned-out step are
// all named, no later group starts, and a second rollback finishes the
// job without reverting anything twice.
func TestRollbackFailureStopsGroup(t *testing.T) {
	ctx := context.Background()
	e, s, w := startPar(t)
	for i := 1; i <= 6; i++ {
		w.fail[fmt.Sprintf("narrow-workers@w%d", i)] = true
	}
	err := e.Rollback(ctx)
	var re *RunError
	if err == nil || !errors.As(err, &re) || re.Phase != StateRollingBack {
		t.Fatalf("Rollback = %v, want a RunError in rolling-back", err)
	}
	if !strings.Contains(err.Error(), "2 targets failed") || strings.Count(err.Error(), "injected revert failure") != 2 {
		t.Fatalf("error does not name both failed targets: %v", err)
	}
	if got := strings.Join(stepOrder(w.order), ","); got != "narrow-cp,narrow-workers" {
		t.Fatalf("reverts before stopping: %s", got)
	}
	if n := len(w.order); n != 3+2 {
		t.Fatalf("%d reverts started (%v), want the 3 cp and 2 workers", n, w.order)
	}
	run, _ := s.Run(ctx)
	if run.State != StateRollingBack || !strings.Contains(run.LastError, "injected revert failure") {
		t.Fatalf("run after failed rollback = %+v", run)
	}

	w.mu.Lock()
	w.fail = map[string]bool{}
	w.order = nil
	w.mu.Unlock()
	if err := e.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(stepOrder(w.order), ","); got != "narrow-workers,publish,trust-workers,trust-cp,prepare" {
		t.Fatalf("second rollback reverted %s", got)
	}
	if n := strings.Count(strings.Join(w.order, ","), "narrow-workers@"); n != 6 {
		t.Fatalf("second rollback reverted %d narrow-workers targets, want 6", n)
	}
	if run, _ := s.Run(ctx); run.State != StateRolledBack {
		t.Fatalf("run is %s", run.State)
	}
}

func TestRevertGroups(t *testing.T) {
	rec := func(phase, step, target string) state.StepRecord {
		return state.StepRecord{Phase: phase, Step: step, Target: target}
	}
	g := revertGroups([]state.StepRecord{
		rec("b", "x", "n1"), rec("b", "x", "n2"), rec("a", "x", "n1"), rec("a", "y", "n1"), rec("a", "y", "n2"), rec("a", "x", "n2"),
	})
	var got []string
	for _, grp := range g {
		got = append(got, fmt.Sprintf("%s/%s:%d", grp[0].Phase, grp[0].Step, len(grp)))
	}
	if s := strings.Join(got, " "); s != "b/x:2 a/x:1 a/y:2 a/x:1" {
		t.Fatalf("groups %s", s)
	}
}
