package orchestrator

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/state"
)

// countingNodes is in-memory nodes that count their round trips in trips.
func countingNodes(trips *nodes.RoundTrips, names ...string) (*nodes.RoundTrips, memNodes) {
	ns := memNodes{}
	for _, n := range names {
		m := nodes.NewMemRunner(n)
		m.Trips = trips
		ns[n] = m
	}
	return trips, ns
}

// recordedTripsIn reads the round trips recorded in the state file in dir.
func recordedTripsIn(t *testing.T, dir string) nodes.RoundTripCounts {
	t.Helper()
	s, err := state.Open(filepath.Join(dir, "rotate.db"), state.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := recordedTrips(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// journalTrips counts the "trip NODE" lines of journal: the round trips
// the world steps made.
func journalTrips(journal []string) map[string]int64 {
	n := map[string]int64{}
	for _, l := range journal {
		if node, ok := strings.CutPrefix(l, "trip "); ok {
			n[node]++
		}
	}
	return n
}

// TestRoundTripsSurviveResume kills the run (SIGKILL) after every
// checkpoint in turn, resumes it to the end and rolls it back, in new
// processes each time, and checks that the recorded round trips are what
// the killed process recorded plus every round trip the later processes
// made (the journal's), per node and per step, and that the last process
// prints that whole-run count.
func TestRoundTripsSurviveResume(t *testing.T) {
	_, commits := cleanRun(t)
	for k := 1; k <= commits; k++ {
		t.Run(fmt.Sprintf("kill-after-commit-%02d", k), func(t *testing.T) {
			dir := t.TempDir()
			r := runHelper(t, dir, "start", "ROTATE_TEST_TRIPS=1", "ROTATE_TEST_KILL_AFTER="+strconv.Itoa(k))
			if !r.killed {
				r = runHelper(t, dir, "resume", "ROTATE_TEST_TRIPS=1", "ROTATE_TEST_KILL_AFTER="+strconv.Itoa(k-commitsBeforeHold(t)))
			}
			if !r.killed {
				t.Fatalf("the process was never killed at commit %d: %s", k, r.out)
			}
			atKill := recordedTripsIn(t, dir)
			before := len(readJournal(t, dir))

			out := ""
			for i := 0; runState(t, dir) != StateCompleted; i++ {
				if i == 5 {
					t.Fatalf("run did not complete after 5 resumes; state %s", runState(t, dir))
				}
				r := runHelper(t, dir, "resume", "ROTATE_TEST_TRIPS=1")
				if r.killed || r.code != 0 {
					t.Fatalf("resume: killed=%v code=%d\n%s", r.killed, r.code, r.out)
				}
				out = r.out
			}
			done := recordedTripsIn(t, dir)
			assertTripsAdd(t, "after resuming", atKill, journalTrips(readJournal(t, dir)[before:]), done)
			if want := "round trips: " + done.String(); !strings.Contains(out, want+"\n") {
				t.Errorf("the completing process did not print %q:\n%s", want, out)
			}

			before = len(readJournal(t, dir))
			r = runHelper(t, dir, "rollback", "ROTATE_TEST_TRIPS=1")
			if r.killed || r.code != 0 {
				t.Fatalf("rollback: code %d\n%s", r.code, r.out)
			}
			back := recordedTripsIn(t, dir)
			reverts := journalTrips(readJournal(t, dir)[before:])
			if len(reverts) == 0 {
				t.Fatal("rollback made no round trips (the test exercises nothing)")
			}
			assertTripsAdd(t, "after rolling back", done, reverts, back)
			if back.Steps["widen/trust-all (revert)"]["b"] != 1 {
				t.Errorf("revert of widen/trust-all on b: %d round trips recorded, want 1 (%+v)", back.Steps["widen/trust-all (revert)"]["b"], back.Steps)
			}
			if want := "round trips: " + back.String(); !strings.Contains(r.out, want+"\n") {
				t.Errorf("rollback did not print %q:\n%s", want, r.out)
			}
			assertStatusTrips(t, dir, back)
		})
	}
}

// assertTripsAdd checks got = prev + made per node, and that the per-step
// counts add up to the per-node ones.
func assertTripsAdd(t *testing.T, when string, prev nodes.RoundTripCounts, made map[string]int64, got nodes.RoundTripCounts) {
	t.Helper()
	for _, n := range []string{"a", "b", "c"} {
		if want := prev.Nodes[n] + made[n]; got.Nodes[n] != want {
			t.Errorf("%s: node %s: %d round trips recorded, want %d recorded before + %d made since", when, n, got.Nodes[n], prev.Nodes[n], made[n])
		}
		var sum int64
		for _, byNode := range got.Steps {
			sum += byNode[n]
		}
		if sum != got.Nodes[n] {
			t.Errorf("%s: node %s: steps add up to %d, node total %d (%+v)", when, n, sum, got.Nodes[n], got.Steps)
		}
	}
}

// assertStatusTrips checks that the status report of the run in dir (what
// `rotate status` and its snapshot show) carries the recorded counts.
func assertStatusTrips(t *testing.T, dir string, want nodes.RoundTripCounts) {
	t.Helper()
	s, err := state.Open(filepath.Join(dir, "rotate.db"), state.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rep, err := report(context.Background(), s, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := nodes.RoundTripCounts{Nodes: rep.RoundTrips, Dials: rep.Dials, Steps: rep.RoundTripsByStep}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("status report: %+v, want %+v", got, want)
	}
	if rep.RoundTripSummary() != want.String() {
		t.Errorf("status summary %q, want %q", rep.RoundTripSummary(), want.String())
	}
	raw, err := ReportJSON(rep)
	if err != nil {
		t.Fatal(err)
	}
	wantJSON := fmt.Sprintf(`"roundTrips": {
    "a": %d,`, want.Nodes["a"])
	if !strings.Contains(string(raw), wantJSON) || !strings.Contains(string(raw), `"widen/trust-all (revert)": {`) {
		t.Errorf("status JSON lacks %s or the reverts' counts:\n%s", wantJSON, raw)
	}
}
