package orchestrator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// worldStep is a test step whose side effects are lines appended to a
// journal file with one write(2) each, so a process kill lands either before
// or after an effect, never inside it. The "world" is derived from the
// journal: an id is in effect when it was applied more often than reverted.
type worldStep struct {
	name string
	dir  string
}

func (s worldStep) Name() string { return s.name }

func (s worldStep) journal(line string) error {
	f, err := os.OpenFile(filepath.Join(s.dir, "journal"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(line + "\n")
	return err
}

func (s worldStep) inEffect(id string) (bool, error) {
	raw, err := os.ReadFile(filepath.Join(s.dir, "journal"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	return worldOf(strings.Split(string(raw), "\n"))[id], nil
}

func worldOf(journal []string) map[string]bool {
	n := map[string]int{}
	for _, l := range journal {
		if id, ok := strings.CutPrefix(l, "apply "); ok {
			n[id]++
		} else if id, ok := strings.CutPrefix(l, "revert "); ok {
			n[id]--
		}
	}
	w := map[string]bool{}
	for id, c := range n {
		if c > 0 {
			w[id] = true
		}
	}
	return w
}

func (s worldStep) Check(ctx context.Context, rt *steps.Runtime, t steps.Target) (bool, error) {
	if err := s.trip(ctx, rt, t); err != nil {
		return false, err
	}
	return s.inEffect(s.name + "@" + t.String())
}

// trip makes one round trip to t's node when the runtime has nodes (the
// round-trip tests give it counting in-memory nodes), journaled first as
// "trip NODE" so the test knows every trip made.
func (s worldStep) trip(ctx context.Context, rt *steps.Runtime, t steps.Target) error {
	if rt.Nodes == nil || t.Node == "" {
		return nil
	}
	if err := s.journal("trip " + t.Node); err != nil {
		return err
	}
	r, err := rt.Nodes.Node(ctx, t.Node)
	if err != nil {
		return err
	}
	_, err = r.Stat(ctx, "/world")
	return err
}

func (s worldStep) Apply(ctx context.Context, rt *steps.Runtime, t steps.Target) error {
	id := s.name + "@" + t.String()
	if _, err := os.Stat(filepath.Join(s.dir, "fail-"+id)); err == nil {
		return fmt.Errorf("injected failure")
	}
	if err := s.trip(ctx, rt, t); err != nil {
		return err
	}
	if err := s.journal("apply " + id); err != nil {
		return err
	}
	rt.Out.Put("out/"+id, []byte("produced by "+id))
	if os.Getenv("ROTATE_TEST_KILL_IN_APPLY") == id {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return nil
}

func (s worldStep) Gate(ctx context.Context, rt *steps.Runtime, t steps.Target) error { return nil }

func (s worldStep) Revert(ctx context.Context, rt *steps.Runtime, t steps.Target) error {
	id := s.name + "@" + t.String()
	on, err := s.inEffect(id)
	if err != nil || !on {
		return err // never applied, or already reverted
	}
	if err := s.trip(ctx, rt, t); err != nil {
		return err
	}
	return s.journal("revert " + id)
}

var nodesABC = []steps.Target{{Node: "a", Role: steps.RoleControlPlane}, {Node: "b", Role: steps.RoleWorker}, {Node: "c", Role: steps.RoleWorker}}

func testPlan(dir string) *plans.Plan {
	st := func(n string) steps.Step { return worldStep{name: n, dir: dir} }
	return &plans.Plan{Version: 1, Phases: []plans.Phase{
		{Index: 0, Name: "preflight", Short: "prepare", Steps: []plans.PlannedStep{
			{Step: st("prepare"), Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
		}},
		{Index: 1, Name: "widen", Short: "widen trust", Steps: []plans.PlannedStep{
			{Step: st("trust-cp"), Targets: nodesABC[:1], Concurrency: 1},
			{Step: st("trust-all"), Targets: nodesABC, Concurrency: 3},
		}},
		{Index: 2, Name: "switch", Short: "switch issuance", HoldAfter: true, Steps: []plans.PlannedStep{
			{Step: st("issue"), Targets: nodesABC, Concurrency: 1},
		}},
		{Index: 3, Name: "narrow", Short: "narrow trust", Steps: []plans.PlannedStep{
			{Step: st("narrow"), Targets: nodesABC, Concurrency: 2},
		}},
	}}
}

// TestMain doubles as the helper process the crash tests kill.
func TestMain(m *testing.M) {
	if cmd := os.Getenv("ROTATE_TEST_HELPER"); cmd != "" {
		os.Exit(helperMain(cmd, os.Getenv("ROTATE_TEST_DIR")))
	}
	os.Exit(m.Run())
}

func helperMain(cmd, dir string) int {
	ctx := context.Background()
	s, err := state.Open(filepath.Join(dir, "rotate.db"), state.OpenOptions{Create: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	defer s.Close()
	killAt, _ := strconv.Atoi(os.Getenv("ROTATE_TEST_KILL_AFTER"))
	o := Options{Store: s, Plan: testPlan(dir), AfterCommit: func(n int) {
		if n == killAt {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}}
	if os.Getenv("ROTATE_TEST_TRIPS") != "" {
		// Nodes a, b and c count their round trips; the run prints them.
		o.RoundTrips, o.Runtime.Nodes = countingNodes(nodes.NewRoundTrips(), "a", "b", "c")
		o.Printer = NewPrinter(os.Stdout)
	}
	if raw := os.Getenv("ROTATE_TEST_MIRROR_NODE"); raw != "" {
		// Node a (the control plane) keeps a copy of the state.
		m, closeMirror, err := helperMirror(dir, raw, s)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
		defer closeMirror()
		o.Store, o.Mirror = withMirror(s, m, []string{"a", "b", "c"}), m
	}
	e := New(o)
	switch cmd {
	case "start":
		err = e.Start(ctx, state.Run{ID: "test", Cluster: "world"}, true)
	case "resume":
		err = e.Resume(ctx)
	case "rollback":
		err = e.Rollback(ctx)
	case "count":
		err = e.Start(ctx, state.Run{ID: "test", Cluster: "world"}, true)
		for err == nil {
			r, _ := s.Run(ctx)
			if r.State == StateCompleted {
				break
			}
			err = e.Resume(ctx)
		}
		fmt.Println(e.commits)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

type helperResult struct {
	killed bool
	code   int
	out    string
}

func runHelper(t *testing.T, dir, cmd string, env ...string) helperResult {
	t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), append([]string{"ROTATE_TEST_HELPER=" + cmd, "ROTATE_TEST_DIR=" + dir}, env...)...)
	out, err := c.CombinedOutput()
	res := helperResult{out: string(out)}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			res.killed = true
			return res
		}
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("helper %s: %v", cmd, err)
	}
	return res
}

func readWorld(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for id := range worldOf(readJournal(t, dir)) {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func readJournal(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "journal"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// finish resumes until the run completes (a held run needs one more).
func finish(t *testing.T, dir string) {
	t.Helper()
	for i := 0; i < 5; i++ {
		ctx := context.Background()
		if st := runState(t, dir); st == StateCompleted {
			return
		}
		r := runHelper(t, dir, "resume")
		if r.killed || r.code != 0 {
			t.Fatalf("resume: killed=%v code=%d\n%s", r.killed, r.code, r.out)
		}
		_ = ctx
	}
	t.Fatalf("run did not complete after 5 resumes; state %s", runState(t, dir))
}

func runState(t *testing.T, dir string) string {
	t.Helper()
	s, err := state.Open(filepath.Join(dir, "rotate.db"), state.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Run(context.Background())
	if errors.Is(err, state.ErrNoRun) {
		return StateNew
	}
	if err != nil {
		t.Fatal(err)
	}
	return r.State
}

func countApplies(journal []string) map[string]int {
	n := map[string]int{}
	for _, l := range journal {
		if strings.HasPrefix(l, "apply ") {
			n[strings.TrimPrefix(l, "apply ")]++
		}
	}
	return n
}

func cleanRun(t *testing.T) (world []string, commits int) {
	dir := t.TempDir()
	r := runHelper(t, dir, "count")
	if r.code != 0 || r.killed {
		t.Fatalf("clean run failed: %s", r.out)
	}
	commits, err := strconv.Atoi(strings.TrimSpace(r.out))
	if err != nil {
		t.Fatalf("commit count %q: %v", r.out, err)
	}
	return readWorld(t, dir), commits
}

// TestCrashResumeMatrix kills the run (SIGKILL, a real process) after
// every checkpoint in turn, resumes, and checks the end state equals one
// clean run and no apply ran twice past its check.
func TestCrashResumeMatrix(t *testing.T) {
	want, commits := cleanRun(t)
	if len(want) != 1+1+3+3+3 || commits < 20 {
		t.Fatalf("clean run: world %v, %d commits", want, commits)
	}
	for k := 1; k <= commits; k++ {
		t.Run(fmt.Sprintf("kill-after-commit-%02d", k), func(t *testing.T) {
			dir := t.TempDir()
			r := runHelper(t, dir, "start", "ROTATE_TEST_KILL_AFTER="+strconv.Itoa(k))
			if !r.killed {
				// The kill point may lie past the hold; then resume hits it.
				r = runHelper(t, dir, "resume", "ROTATE_TEST_KILL_AFTER="+strconv.Itoa(k-commitsBeforeHold(t)))
			}
			if !r.killed {
				t.Fatalf("the process was never killed at commit %d: %s", k, r.out)
			}
			finish(t, dir)
			if got := readWorld(t, dir); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("world after resume = %v, want %v", got, want)
			}
			for id, n := range countApplies(readJournal(t, dir)) {
				if n != 1 {
					t.Errorf("apply of %s ran %d times", id, n)
				}
			}
		})
	}
}

var holdCommits int

// commitsBeforeHold counts the commits a clean start makes before it holds.
func commitsBeforeHold(t *testing.T) int {
	if holdCommits == 0 {
		dir := t.TempDir()
		s, err := state.Open(filepath.Join(dir, "rotate.db"), state.OpenOptions{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		e := New(Options{Store: s, Plan: testPlan(dir)})
		if err := e.Start(context.Background(), state.Run{ID: "x"}, true); err != nil {
			t.Fatal(err)
		}
		holdCommits = e.commits
		s.Close()
	}
	return holdCommits
}

// TestKillInsideApply: the effect landed but its checkpoint did not; the
// resumed run's check must find it and not apply again.
func TestKillInsideApply(t *testing.T) {
	for _, id := range []string{"prepare@cluster", "trust-all@b", "issue@c"} {
		t.Run(id, func(t *testing.T) {
			dir := t.TempDir()
			r := runHelper(t, dir, "start", "ROTATE_TEST_KILL_IN_APPLY="+id)
			if !r.killed {
				r = runHelper(t, dir, "resume", "ROTATE_TEST_KILL_IN_APPLY="+id)
				if !r.killed {
					t.Fatalf("helper was not killed in apply of %s: %s", id, r.out)
				}
			}
			finish(t, dir)
			if n := countApplies(readJournal(t, dir))[id]; n != 1 {
				t.Fatalf("apply of %s ran %d times", id, n)
			}
		})
	}
}

// TestRollbackMatrix: rollback after every checkpoint (including after
// completion) reverts every effect, newest first.
func TestRollbackMatrix(t *testing.T) {
	_, commits := cleanRun(t)
	for k := 1; k <= commits+1; k++ {
		t.Run(fmt.Sprintf("after-commit-%02d", k), func(t *testing.T) {
			dir := t.TempDir()
			if k <= commits {
				r := runHelper(t, dir, "start", "ROTATE_TEST_KILL_AFTER="+strconv.Itoa(k))
				if !r.killed {
					r = runHelper(t, dir, "resume", "ROTATE_TEST_KILL_AFTER="+strconv.Itoa(k-commitsBeforeHold(t)))
				}
				if !r.killed {
					t.Fatalf("the process was never killed at commit %d: %s", k, r.out)
				}
			} else {
				runHelper(t, dir, "start")
				finish(t, dir)
			}
			r := runHelper(t, dir, "rollback")
			if r.killed || r.code != 0 {
				t.Fatalf("rollback: code %d\n%s", r.code, r.out)
			}
			if got := readWorld(t, dir); len(got) != 0 {
				t.Fatalf("world after rollback = %v, want empty", got)
			}
			if st := runState(t, dir); st != StateRolledBack {
				t.Fatalf("state after rollback = %s", st)
			}
			assertReverseOrder(t, readJournal(t, dir))
			// A second rollback is a no-op.
			if r := runHelper(t, dir, "rollback"); r.code != 0 {
				t.Fatalf("second rollback: %s", r.out)
			}
		})
	}
}

// assertReverseOrder checks the reverts mirror the applies: the last
// applied effect is the first reverted.
func assertReverseOrder(t *testing.T, journal []string) {
	t.Helper()
	var applied, reverted []string
	for _, l := range journal {
		if id, ok := strings.CutPrefix(l, "apply "); ok {
			applied = append(applied, id)
		} else if id, ok := strings.CutPrefix(l, "revert "); ok {
			reverted = append(reverted, id)
		}
	}
	if len(applied) != len(reverted) {
		t.Fatalf("applied %v but reverted %v", applied, reverted)
	}
	// Within one fan-out step the completion order may differ from the
	// apply order, so compare step by step rather than target by target.
	stepOf := func(id string) string { return id[:strings.IndexByte(id, '@')] }
	var a, r []string
	for i := range applied {
		a = appendStep(a, stepOf(applied[len(applied)-1-i]))
		r = appendStep(r, stepOf(reverted[i]))
	}
	if strings.Join(a, ",") != strings.Join(r, ",") {
		t.Fatalf("revert order %v is not the reverse of apply order %v", r, a)
	}
}

func appendStep(s []string, step string) []string {
	if len(s) > 0 && s[len(s)-1] == step {
		return s
	}
	return append(s, step)
}

// TestFailureResumeAndRollback: an apply error fails the run (resumable),
// resume retries after the cause is gone, rollback from failure works.
func TestFailureResumeAndRollback(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "fail-trust-all@b"), nil, 0o600)
	s := state.NewMemStore()
	e := New(Options{Store: s, Plan: testPlan(dir)})
	err := e.Start(ctx, state.Run{ID: "r", Cluster: "world"}, true)
	var re *RunError
	if !errors.As(err, &re) || re.Phase != "widen" || !strings.Contains(err.Error(), "b: trust-all on b: apply: injected failure") {
		t.Fatalf("Start = %v, want RunError in phase widen naming node b", err)
	}
	run, _ := s.Run(ctx)
	if run.State != StateFailed || run.Phase != "widen" || !strings.Contains(run.LastError, "injected failure") {
		t.Fatalf("run after failure = %+v", run)
	}
	rec, _, _ := s.Step(ctx, "widen/trust-all@b")
	if rec.Status != state.StepFailed || rec.Attempts != 1 {
		t.Fatalf("failed step record = %+v", rec)
	}
	// Start again on the same store is refused and says how to continue.
	if err := e.Start(ctx, state.Run{ID: "r2"}, true); !errors.Is(err, ErrUnfinishedRun) || !strings.Contains(err.Error(), "rotate resume") {
		t.Fatalf("second Start = %v", err)
	}
	os.Remove(filepath.Join(dir, "fail-trust-all@b"))
	if err := e.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if run, _ := s.Run(ctx); run.State != StateHeld {
		t.Fatalf("after resume state = %s, want held", run.State)
	}
	rec, _, _ = s.Step(ctx, "widen/trust-all@b")
	if rec.Status != state.StepDone || rec.Attempts != 2 {
		t.Fatalf("retried step record = %+v", rec)
	}
	if v, ok, _ := s.Value(ctx, "out/trust-all@b"); !ok || string(v) != "produced by trust-all@b" {
		t.Fatalf("step output not committed: %q %v", v, ok)
	}
	// Fail in the phase after the hold, then roll back from failure.
	os.WriteFile(filepath.Join(dir, "fail-narrow@c"), nil, 0o600)
	if err := e.Resume(ctx); err == nil {
		t.Fatal("resume past hold should fail on narrow@c")
	}
	if err := e.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readWorld(t, dir); len(got) != 0 {
		t.Fatalf("world after rollback = %v", got)
	}
	if err := e.Resume(ctx); !errors.Is(err, ErrNothingToResume) {
		t.Fatalf("resume after rollback = %v", err)
	}
	evs, _ := s.Events(ctx)
	if len(evs) < 20 {
		t.Fatalf("event log has %d events", len(evs))
	}
}

// TestNoHold runs straight through when the plan's hold is off.
func TestNoHold(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := state.NewMemStore()
	e := New(Options{Store: s, Plan: testPlan(dir)})
	if err := e.Start(ctx, state.Run{ID: "r"}, false); err != nil {
		t.Fatal(err)
	}
	if run, _ := s.Run(ctx); run.State != StateCompleted || run.FinishedAt.IsZero() {
		t.Fatalf("run = %+v", run)
	}
}

// TestPersistFailureCancelsTransition: if the state write fails, the FSM
// does not move.
func TestPersistFailureCancelsTransition(t *testing.T) {
	ctx := context.Background()
	s := &failingStore{MemStore: state.NewMemStore()}
	e := New(Options{Store: s, Plan: testPlan(t.TempDir())})
	run := state.Run{ID: "r", State: StateNew}
	s.Commit(ctx, state.Checkpoint{Run: &run})
	m := e.newFSM(StateNew)
	s.fail = true
	err := e.fire(ctx, m, enterEvent("preflight"), transitionArgs{phase: "preflight"})
	if err == nil || m.Current() != StateNew {
		t.Fatalf("fire with failing store: err=%v state=%s", err, m.Current())
	}
}

type failingStore struct {
	*state.MemStore
	fail bool
}

func (f *failingStore) Commit(ctx context.Context, cp state.Checkpoint) error {
	if f.fail {
		return errors.New("disk full")
	}
	return f.MemStore.Commit(ctx, cp)
}

func TestDiagram(t *testing.T) {
	d, err := Diagram(testPlan(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"preflight", "held", "rolling-back", "rolled-back", "failed"} {
		if !strings.Contains(d, want) {
			t.Errorf("diagram lacks %s:\n%s", want, d)
		}
	}
}

// seqStep journals its Check, Apply and Gate in a shared log.
type seqStep struct {
	name string
	j    *seqJournal
}

type seqJournal struct {
	mu  sync.Mutex
	log []string
}

func (j *seqJournal) add(s string) { j.mu.Lock(); j.log = append(j.log, s); j.mu.Unlock() }

func (j *seqJournal) index(s string) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Index(j.log, s)
}

func (s seqStep) Name() string { return s.name }
func (s seqStep) Check(_ context.Context, _ *steps.Runtime, t steps.Target) (bool, error) {
	s.j.add("check " + s.name + "@" + t.String())
	return false, nil
}
func (s seqStep) Apply(_ context.Context, _ *steps.Runtime, t steps.Target) error {
	s.j.add("apply " + s.name + "@" + t.String())
	return nil
}
func (s seqStep) Gate(_ context.Context, _ *steps.Runtime, t steps.Target) error {
	s.j.add("gate " + s.name + "@" + t.String())
	return nil
}
func (s seqStep) Revert(context.Context, *steps.Runtime, steps.Target) error { return nil }

// overlapMirror's Sync waits (up to 5 s) for the first step's Check, so
// the test sees the copy overlap it, then fails with err if set.
type overlapMirror struct {
	j      *seqJournal
	first  string
	err    error
	active bool
}

func (m *overlapMirror) Sync(context.Context) error {
	m.active = true
	m.j.add("sync")
	for deadline := time.Now().Add(5 * time.Second); m.j.index(m.first) < 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	m.j.add("synced")
	return m.err
}
func (m *overlapMirror) Finish(context.Context, state.Run) error { return nil }
func (m *overlapMirror) Active() bool                            { return m.active }

// TestPhaseCopyBeforeChanges: at a phase's start the state's copy is
// written while the first step's Check runs, and no Apply or Gate of the
// phase runs before it is written; a copy that fails fails the run before
// anything of the phase changed.
func TestPhaseCopyBeforeChanges(t *testing.T) {
	ctx := context.Background()
	plan := func(j *seqJournal) *plans.Plan {
		return &plans.Plan{Version: 1, Phases: []plans.Phase{
			{Index: 0, Name: "preflight", Short: "prepare", Steps: []plans.PlannedStep{
				{Step: seqStep{"prepare", j}, Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
			}},
			{Index: 1, Name: "widen", Short: "widen trust", Steps: []plans.PlannedStep{
				{Step: seqStep{"first", j}, Targets: nodesABC, Concurrency: 1},
				{Step: seqStep{"second", j}, Targets: nodesABC, Concurrency: 3},
			}},
		}}
	}
	j := &seqJournal{}
	m := &overlapMirror{j: j, first: "check first@a"}
	if err := New(Options{Store: state.NewMemStore(), Plan: plan(j), Mirror: m}).Start(ctx, state.Run{ID: "r"}, false); err != nil {
		t.Fatal(err)
	}
	synced := j.index("synced")
	if c := j.index("check first@a"); synced < 0 || c < 0 || c > synced {
		t.Fatalf("the copy did not overlap the first Check: %q", j.log)
	}
	for i, l := range j.log {
		if (strings.HasPrefix(l, "apply ") || strings.HasPrefix(l, "gate ")) && !strings.HasSuffix(l, "prepare@cluster") && i < synced {
			t.Fatalf("%s before the phase's copy was written: %q", l, j.log)
		}
	}

	j = &seqJournal{}
	m = &overlapMirror{j: j, first: "check first@a", err: fmt.Errorf("%w: node cp3: no space left on device", errSyncFailed)}
	err := New(Options{Store: state.NewMemStore(), Plan: plan(j), Mirror: m}).Start(ctx, state.Run{ID: "r"}, false)
	if !errors.Is(err, errSyncFailed) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("Start with a failing copy = %v", err)
	}
	for _, l := range j.log {
		if strings.HasPrefix(l, "apply first") || strings.HasPrefix(l, "gate first") || strings.Contains(l, "second") {
			t.Fatalf("%s although the phase's copy failed: %q", l, j.log)
		}
	}
}

// lookStep is a seqStep that only looks (steps.Looker).
type lookStep struct{ seqStep }

func (lookStep) OnlyLooks() {}

// TestNoPhaseCopyWhereNothingChanges: a phase whose steps only look or
// wait gets no copy of the state at its start (it changes nothing a copy
// would guard); the phases around it that change things each get one.
func TestNoPhaseCopyWhereNothingChanges(t *testing.T) {
	j := &seqJournal{}
	plan := &plans.Plan{Version: 1, Phases: []plans.Phase{
		{Index: 0, Name: "preflight", Short: "prepare", Steps: []plans.PlannedStep{
			{Step: seqStep{"prepare", j}, Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
		}},
		{Index: 1, Name: "widen", Short: "widen trust", Steps: []plans.PlannedStep{
			{Step: seqStep{"widen", j}, Targets: nodesABC, Concurrency: 3},
		}},
		{Index: 2, Name: "publication", Short: "wait", Steps: []plans.PlannedStep{
			{Step: lookStep{seqStep{"wait", j}}, Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
			{Step: lookStep{seqStep{"look", j}}, Targets: nodesABC, Concurrency: 3},
		}},
		{Index: 3, Name: "switch", Short: "switch issuance", Steps: []plans.PlannedStep{
			{Step: lookStep{seqStep{"wait-again", j}}, Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
			{Step: seqStep{"switch", j}, Targets: nodesABC, Concurrency: 3},
		}},
	}}
	m := &overlapMirror{j: j, first: "check widen@a"}
	if err := New(Options{Store: state.NewMemStore(), Plan: plan, Mirror: m}).Start(context.Background(), state.Run{ID: "r"}, false); err != nil {
		t.Fatal(err)
	}
	var syncs []int
	for i, l := range j.log {
		if l == "synced" {
			syncs = append(syncs, i)
		}
	}
	// widen's and switch's; none for publication.
	if len(syncs) != 2 {
		t.Fatalf("%d copies, want 2 (none at the phase that only looks): %q", len(syncs), j.log)
	}
	if w, s := j.index("check wait@cluster"), j.index("apply switch@a"); !(syncs[0] < w && w < syncs[1] && syncs[1] < s) {
		t.Errorf("copies not at widen's and switch's start: %q", j.log)
	}
}

// earlyStep is a seqStep that backs up API objects (steps.EarlyBackup).
type earlyStep struct{ seqStep }

func (s earlyStep) TakeBackups(_ context.Context, _ *steps.Runtime, t steps.Target) error {
	s.j.add("backup " + s.name + "@" + t.String())
	return nil
}

// TestEarlyBackupsBeforePhaseCopy: the first step's API backups are taken
// before the phase's copy of the state starts (so that it carries them);
// a later step's are its own business.
func TestEarlyBackupsBeforePhaseCopy(t *testing.T) {
	j := &seqJournal{}
	plan := &plans.Plan{Version: 1, Phases: []plans.Phase{
		{Index: 0, Name: "preflight", Short: "prepare", Steps: []plans.PlannedStep{
			{Step: seqStep{"prepare", j}, Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
		}},
		{Index: 1, Name: "cluster-info", Short: "cluster-info", Steps: []plans.PlannedStep{
			{Step: earlyStep{seqStep{"cluster-info", j}}, Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
			{Step: earlyStep{seqStep{"later", j}}, Targets: []steps.Target{steps.ClusterTarget}, Concurrency: 1},
		}},
	}}
	m := &overlapMirror{j: j, first: "check cluster-info@cluster"}
	if err := New(Options{Store: state.NewMemStore(), Plan: plan, Mirror: m}).Start(context.Background(), state.Run{ID: "r"}, false); err != nil {
		t.Fatal(err)
	}
	b, s := j.index("backup cluster-info@cluster"), j.index("sync")
	if b < 0 || s < 0 || b > s {
		t.Errorf("the first step's backups were not taken before the phase's copy: %q", j.log)
	}
	if j.index("backup later@cluster") >= 0 {
		t.Errorf("a later step's backups were taken at the phase's start: %q", j.log)
	}
}
