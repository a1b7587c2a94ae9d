package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubeca/rotate/internal/waits"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// laneWorld is what the background-step tests observe. Steps meet at
// rendezvous points: a step that must run alongside another waits until
// the other has started, so a sequential engine would never get there
// (the wait is bounded: rendezvousTimeout fails the step, not the test
// run's clock).
type laneWorld struct {
	mu      sync.Mutex
	log     []string // "apply step@target" / "revert step@target", when it ended
	started map[string]chan struct{}
	fail    map[string]bool // "apply step@target" / "revert step@target"
	// waitFor: before acting on any target, a step waits until the
	// named step has started the same operation.
	waitFor map[string]string
}

const rendezvousTimeout = 20 * time.Second

func newLaneWorld() *laneWorld {
	return &laneWorld{started: map[string]chan struct{}{}, fail: map[string]bool{}, waitFor: map[string]string{}}
}

func (w *laneWorld) ch(key string) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	c, ok := w.started[key]
	if !ok {
		c = make(chan struct{})
		w.started[key] = c
	}
	return c
}

func (w *laneWorld) act(ctx context.Context, op, step string, t steps.Target) error {
	c := w.ch(op + " " + step)
	w.mu.Lock()
	select {
	case <-c:
	default:
		close(c)
	}
	other, wait := w.waitFor[step]
	fail := w.fail[op+" "+step+"@"+t.String()]
	w.mu.Unlock()
	if wait {
		select {
		case <-w.ch(op + " " + other):
		case <-time.After(rendezvousTimeout):
			return fmt.Errorf("%s never started while %s ran", other, step)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail {
		return fmt.Errorf("injected %s failure", op)
	}
	w.mu.Lock()
	w.log = append(w.log, op+" "+step+"@"+t.String())
	w.mu.Unlock()
	return nil
}

// heal makes every failure go away.
func (w *laneWorld) heal() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fail = map[string]bool{}
}

// index is the position of entry in the log, -1 if absent.
func (w *laneWorld) index(entry string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Index(w.log, entry)
}

type laneStep struct {
	name string
	w    *laneWorld
}

func (s laneStep) Name() string { return s.name }
func (s laneStep) Check(context.Context, *steps.Runtime, steps.Target) (bool, error) {
	return false, nil
}
func (s laneStep) Apply(ctx context.Context, _ *steps.Runtime, t steps.Target) error {
	return s.w.act(ctx, "apply", s.name, t)
}
func (s laneStep) Gate(context.Context, *steps.Runtime, steps.Target) error { return nil }
func (s laneStep) Revert(ctx context.Context, _ *steps.Runtime, t steps.Target) error {
	return s.w.act(ctx, "revert", s.name, t)
}

var (
	laneCP      = []steps.Target{{Node: "cp1", Role: steps.RoleControlPlane}, {Node: "cp2", Role: steps.RoleControlPlane}}
	laneWorkers = []steps.Target{{Node: "w1", Role: steps.RoleWorker}, {Node: "w2", Role: steps.RoleWorker}, {Node: "w3", Role: steps.RoleWorker}, {Node: "w4", Role: steps.RoleWorker}}
)

// lanePlan: in phase "servers", kubelets on the workers restart in the
// background (two at a time) while the control plane takes "cp" and
// "api"; "after" waits for them.
func lanePlan(w *laneWorld) *plans.Plan {
	st := func(n string) steps.Step { return laneStep{name: n, w: w} }
	cluster := []steps.Target{steps.ClusterTarget}
	return &plans.Plan{Version: 1, Phases: []plans.Phase{
		{Index: 0, Name: "widen", Short: "widen", Steps: []plans.PlannedStep{
			{Step: st("before"), Targets: cluster, Concurrency: 1},
		}},
		{Index: 1, Name: "servers", Short: "servers", Steps: []plans.PlannedStep{
			{Step: st("first"), Targets: cluster, Concurrency: 1},
			{Step: st("workers"), Targets: laneWorkers, Concurrency: 2, Background: true, Until: "after"},
			{Step: st("cp"), Targets: laneCP, Concurrency: 1},
			{Step: st("api"), Targets: cluster, Concurrency: 1},
			{Step: st("after"), Targets: cluster, Concurrency: 1},
		}},
	}}
}

func startLanes(t *testing.T, w *laneWorld) (*Engine, state.Store, error) {
	t.Helper()
	s := state.NewMemStore()
	e := New(Options{Store: s, Plan: lanePlan(w)})
	return e, s, e.Start(context.Background(), state.Run{ID: "r", Cluster: "lanes"}, false)
}

// TestBackgroundStepRunsAlongside: the background step runs while the
// steps after it do (each waits for the other to have started), the
// step named by its Until runs only after every background target is
// done, and a rollback reverts it alongside the same steps: after the
// step it was waited for by, before the steps that ran before it.
func TestBackgroundStepRunsAlongside(t *testing.T) {
	w := newLaneWorld()
	w.waitFor["workers"] = "cp"
	w.waitFor["cp"] = "workers"
	e, s, err := startLanes(t, w)
	if err != nil {
		t.Fatal(err)
	}
	if err := lanePlan(w).Validate(); err != nil {
		t.Fatal(err)
	}
	after := w.index("apply after@cluster")
	for _, wk := range laneWorkers {
		i := w.index("apply workers@" + wk.String())
		if i < 0 || i > after {
			t.Errorf("workers on %s applied at %d, after at %d: the Until step must wait for it", wk, i, after)
		}
	}
	if w.index("apply workers@w1") < w.index("apply first@cluster") {
		t.Error("the background step started before the step ahead of it finished")
	}
	if run, _ := s.Run(context.Background()); run.State != StateCompleted {
		t.Fatalf("run is %s", run.State)
	}

	if err := e.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	afterR, firstR := w.index("revert after@cluster"), w.index("revert first@cluster")
	for _, wk := range laneWorkers {
		i := w.index("revert workers@" + wk.String())
		if i < afterR || i > firstR {
			t.Errorf("workers on %s reverted at %d: want after the revert of after (%d) and before that of first (%d)", wk, i, afterR, firstR)
		}
	}
	if w.index("revert before@cluster") < firstR {
		t.Error("before reverted ahead of first")
	}
	recs, _ := s.Steps(context.Background())
	for _, r := range recs {
		if r.Status != state.StepReverted {
			t.Errorf("%s is %s after rollback", r.Key, r.Status)
		}
	}
}

// TestBackgroundFailureStopsPhase: a failed background target fails the
// run at the next step boundary, the Until step never runs, and resume
// finishes the job.
func TestBackgroundFailureStopsPhase(t *testing.T) {
	w := newLaneWorld()
	w.fail["apply workers@w3"] = true
	e, s, err := startLanes(t, w)
	var re *RunError
	if !errors.As(err, &re) || re.Phase != "servers" || !strings.Contains(err.Error(), "workers on w3") {
		t.Fatalf("Start = %v, want a failure of workers on w3 in servers", err)
	}
	if w.index("apply after@cluster") >= 0 {
		t.Fatal("the Until step ran although the background step failed")
	}
	if run, _ := s.Run(context.Background()); run.State != StateFailed {
		t.Fatalf("run is %s", run.State)
	}
	w.heal()
	if err := e.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, wk := range laneWorkers {
		if w.index("apply workers@"+wk.String()) < 0 {
			t.Errorf("workers never applied on %s", wk)
		}
	}
	if w.index("apply after@cluster") < 0 {
		t.Fatal("after never ran")
	}
}

// TestForegroundFailureStopsLane: a failed step alongside the background
// step fails the run with its error once the background targets that
// started have finished; resume completes it.
func TestForegroundFailureStopsLane(t *testing.T) {
	w := newLaneWorld()
	w.fail["apply cp@cp1"] = true
	w.waitFor["cp"] = "workers" // the lane is running when cp fails
	e, s, err := startLanes(t, w)
	if err == nil || !strings.Contains(err.Error(), "cp on cp1") {
		t.Fatalf("Start = %v, want the failure of cp on cp1", err)
	}
	recs, _ := s.Steps(context.Background())
	for _, r := range recs {
		if r.Step == "workers" && r.Status == state.StepStarted {
			t.Errorf("%s left started: the lane must let its running targets finish", r.Key)
		}
	}
	w.heal()
	if err := e.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if run, _ := s.Run(context.Background()); run.State != StateCompleted {
		t.Fatalf("run is %s", run.State)
	}
}

// TestBackgroundRevertFailure: a failed revert in the lane fails the
// rollback, nothing that ran before the background step is reverted, and
// a second rollback finishes.
func TestBackgroundRevertFailure(t *testing.T) {
	w := newLaneWorld()
	e, s, err := startLanes(t, w)
	if err != nil {
		t.Fatal(err)
	}
	w.fail["revert workers@w2"] = true
	err = e.Rollback(context.Background())
	if err == nil || !strings.Contains(err.Error(), "injected revert failure") {
		t.Fatalf("Rollback = %v, want the injected failure", err)
	}
	if w.index("revert first@cluster") >= 0 {
		t.Fatal("first was reverted although the background step's revert failed")
	}
	if run, _ := s.Run(context.Background()); run.State != StateRollingBack {
		t.Fatalf("run is %s", run.State)
	}
	w.heal()
	if err := e.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w.index("revert before@cluster") < 0 || w.index("revert workers@w2") < 0 {
		t.Fatalf("second rollback did not finish: %v", w.log)
	}
}

// TestSortForRevertBackground: with the background step's targets done
// in between those of the steps it ran alongside, the revert order keeps
// each step's targets together, puts the background step right after
// what followed its window, and keeps everything else newest first.
func TestSortForRevertBackground(t *testing.T) {
	p := lanePlan(newLaneWorld())
	var recs []state.StepRecord
	seq := uint64(0)
	done := func(phase, step, target string) {
		seq++
		recs = append(recs, state.StepRecord{Phase: phase, Step: step, Target: target, Status: state.StepDone, DoneSeq: seq})
	}
	done("widen", "before", "cluster")
	done("servers", "first", "cluster")
	done("servers", "workers", "w1")
	done("servers", "cp", "cp1")
	done("servers", "workers", "w2")
	done("servers", "cp", "cp2")
	done("servers", "workers", "w3")
	done("servers", "api", "cluster")
	done("servers", "workers", "w4")
	done("servers", "after", "cluster")
	recs = append(recs, state.StepRecord{Phase: "servers", Step: "cp", Target: "cp9", Status: state.StepFailed})
	sortForRevert(p, recs)
	var got []string
	for _, g := range revertGroups(recs) {
		got = append(got, fmt.Sprintf("%s:%d", g[0].Step, len(g)))
	}
	if s, want := strings.Join(got, " "), "cp:1 after:1 workers:4 api:1 cp:2 first:1 before:1"; s != want {
		t.Fatalf("revert groups %s, want %s", s, want)
	}
}

// leaderStep restarts the controller-manager: the current leader goes
// last, forward and in the rollback.
type leaderStep struct{ laneStep }

func (leaderStep) Ordering() *steps.Ordering {
	return &steps.Ordering{Leaders: []steps.Component{steps.ControllerManager}}
}

// startLeaderStep runs a plan of one leader-ordered step on cp1-cp3.
func startLeaderStep(t *testing.T, w *laneWorld, kube *fake.Clientset) (*Engine, state.Store) {
	t.Helper()
	cp := append(append([]steps.Target{}, laneCP...), steps.Target{Node: "cp3", Role: steps.RoleControlPlane})
	p := &plans.Plan{Version: 1, Phases: []plans.Phase{{Name: "narrow", Steps: []plans.PlannedStep{
		{Step: leaderStep{laneStep{name: "canonical", w: w}}, Targets: cp, Concurrency: 1},
	}}}}
	s := state.NewMemStore()
	e := New(Options{Store: s, Plan: p, Runtime: steps.Runtime{Kube: kube}})
	if err := e.Start(context.Background(), state.Run{ID: "r", Cluster: "leaders"}, false); err != nil {
		t.Fatal(err)
	}
	return e, s
}

// TestRevertLeaderLast: the rollback orders a control-plane step's
// targets by who leads now, not by the forward run's order: the forward
// run moved the leadership, and restarting the new leader first would
// move it twice.
func TestRevertLeaderLast(t *testing.T) {
	ctx := context.Background()
	w := newLaneWorld()
	holder := "cp1_0f3a"
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "kube-controller-manager", Namespace: metav1.NamespaceSystem},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}
	kube := fake.NewSimpleClientset(lease)
	e, _ := startLeaderStep(t, w, kube)
	if got := strings.Join(w.log, ","); got != "apply canonical@cp2,apply canonical@cp3,apply canonical@cp1" {
		t.Fatalf("forward order %s, want the leader cp1 last", got)
	}
	// cp1's restart handed the lease to cp3.
	newHolder := "cp3_77c1"
	lease.Spec.HolderIdentity = &newHolder
	if _, err := kube.CoordinationV1().Leases(metav1.NamespaceSystem).Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(w.log[3:], ","); got != "revert canonical@cp1,revert canonical@cp2,revert canonical@cp3" {
		t.Fatalf("revert order %s, want the leader now, cp3, last", got)
	}
}

// TestOrderWaitTimed: the wait for a live leader before a leader-ordered
// step is a wait on the cluster, recorded with the step's first target
// (the bench counts it out of rotate's own time), not with the others.
func TestOrderWaitTimed(t *testing.T) {
	ctx := context.Background()
	w := newLaneWorld()
	holder := "cp1_0f3a"
	kube := fake.NewSimpleClientset()
	var mu sync.Mutex
	reads := 0
	start := time.Now()
	kube.PrependReactor("get", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		reads++
		at := metav1.NewMicroTime(start)
		if reads >= 3 { // renewed after the first poll
			at = metav1.NewMicroTime(start.Add(2 * time.Second))
		}
		return true, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "kube-controller-manager", Namespace: metav1.NamespaceSystem},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &at}}, nil
	})
	_, s := startLeaderStep(t, w, kube)
	recs, err := s.Steps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waited := map[string]time.Duration{}
	for _, r := range recs {
		for _, sp := range r.Waits {
			if sp.Kind == waits.Cluster {
				waited[r.Target] += sp.To.Sub(sp.From)
			}
		}
	}
	// The first read, a poll that sees no renewal, then after a poll
	// interval (500 ms) one that does.
	if waited["cp2"] < 400*time.Millisecond || waited["cp3"] != 0 || waited["cp1"] != 0 {
		t.Errorf("recorded waits %v, want the wait for a live leader (one poll) on the first target, cp2, only", waited)
	}
}
