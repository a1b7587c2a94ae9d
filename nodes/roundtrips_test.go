package nodes

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// TestRoundTripsCounter: counts per node, per label and dials, from many
// goroutines at once (run with -race), merged with an earlier process's
// counts, and the summary line.
func TestRoundTripsCounter(t *testing.T) {
	r := NewRoundTrips()
	ctx := context.Background()
	labelled := CountAs(ctx, "widen/distribute")
	const workers, each = 8, 250
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			node := []string{"cp1", "w1"}[i%2]
			for j := 0; j < each; j++ {
				r.Trip(labelled, node)
				if j%5 == 0 {
					r.Trip(ctx, node)
				}
				if j%50 == 0 {
					r.Dial(node)
				}
				_ = r.Counts() // readers race with writers too
			}
		}(i)
	}
	wg.Wait()
	perNode := int64(workers / 2 * (each + each/5))
	want := RoundTripCounts{
		Nodes: map[string]int64{"cp1": perNode, "w1": perNode},
		Dials: map[string]int64{"cp1": workers / 2 * each / 50, "w1": workers / 2 * each / 50},
		Steps: map[string]map[string]int64{
			"widen/distribute": {"cp1": workers / 2 * each, "w1": workers / 2 * each},
			OtherLabel:         {"cp1": workers / 2 * each / 5, "w1": workers / 2 * each / 5},
		},
	}
	got := r.Counts()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("counts = %+v, want %+v", got, want)
	}
	if s := got.String(); s != "cp1 1200, w1 1200 (dials 40)" {
		t.Errorf("summary = %q", s)
	}

	// Counts is a copy: changing it changes nothing counted.
	got.Nodes["cp1"] = 0
	got.Steps["widen/distribute"]["cp1"] = 0
	if c := r.Counts(); c.Nodes["cp1"] != perNode || c.Steps["widen/distribute"]["cp1"] != workers/2*each {
		t.Errorf("Counts shares its maps with the counter: %+v", c)
	}

	// What an earlier process counted adds up with this one's.
	r2 := NewRoundTrips()
	r2.Trip(CountAs(ctx, "narrow/narrow"), "cp2")
	r2.Dial("cp2")
	r2.Add(r.Counts())
	c2 := r2.Counts()
	if c2.Nodes["cp1"] != perNode || c2.Nodes["cp2"] != 1 || c2.Dials["cp2"] != 1 || c2.Dials["cp1"] != 20 ||
		c2.Steps["narrow/narrow"]["cp2"] != 1 || c2.Steps["widen/distribute"]["w1"] != workers/2*each {
		t.Errorf("after Add: %+v", c2)
	}
	if s := c2.String(); s != "cp1 1200, cp2 1, w1 1200 (dials 41)" {
		t.Errorf("summary after Add = %q", s)
	}

	// A nil counter counts nothing and does not panic; empty counts say so.
	var none *RoundTrips
	none.Trip(ctx, "cp1")
	none.Dial("cp1")
	if s := NewRoundTrips().Counts().String(); s != "none" {
		t.Errorf("empty summary = %q", s)
	}
	dialsOnly := NewRoundTrips()
	dialsOnly.Dial("cp1")
	if s := dialsOnly.Counts().String(); s != "none (dials 1)" {
		t.Errorf("dials-only summary = %q", s)
	}
}

// TestMemRunnerCountsRoundTrips: the fake counts one round trip per
// operation, as the SSH client does, and none for a refused path.
func TestMemRunnerCountsRoundTrips(t *testing.T) {
	ctx := CountAs(context.Background(), "p/s")
	m := NewMemRunner("n")
	m.Trips = NewRoundTrips()
	must(t, m.WriteFile(ctx, "/etc/a", []byte("x"), 0o644))
	_, err := m.ReadFile(ctx, "/etc/a")
	must(t, err)
	_, err = m.ReadFile(ctx, "/etc/missing")
	if !errors.Is(err, ErrNotExist) {
		t.Fatalf("read missing: %v", err)
	}
	_, err = m.Stat(ctx, "relative")
	if err == nil {
		t.Fatal("stat of a relative path succeeded")
	}
	_, err = m.Run(ctx, "true", nil)
	must(t, err)
	if c := m.Trips.Counts(); c.Nodes["n"] != 4 || c.Steps["p/s"]["n"] != 4 {
		t.Errorf("counts = %+v, want 4 round trips labelled p/s", c)
	}
}

// TestRoundTripsOverRealSSH: a known sequence of operations on a real
// sshd, through a Pool as the orchestrator uses it, counts exactly one
// round trip per operation (two for a command killed at its deadline: the
// kill is a session of its own), one per TCP connection from the node, none
// for an operation refused before it leaves, and one dial per connection,
// including a re-dial after the connection dropped.
func TestRoundTripsOverRealSSH(t *testing.T) {
	t.Parallel()
	s, cfg := startNode(t, "n", sshdtest.Options{})
	p := newProxy(t, s.Addr())
	cfg = p.via(t, s, cfg)
	ln := serveTCP(t, "")
	pool := NewPool([]Config{cfg})
	defer pool.Close()
	trips := pool.RoundTrips()
	ctx := testCtx(t)
	step := CountAs(ctx, "widen/distribute")

	r, err := pool.Get(ctx, "n")
	must(t, err)
	f := t.TempDir() + "/f"
	must(t, r.WriteFile(step, f, []byte("data"), 0o600)) // 1
	_, err = r.ReadFile(step, f)                         // 2
	must(t, err)
	_, err = r.Stat(step, f) // 3
	must(t, err)
	must(t, r.Symlink(step, f, f+".link"))  // 4
	must(t, r.Remove(step, f+".link"))      // 5
	_, err = r.ReadFile(step, f+".missing") // 6: fails on the node
	if !errors.Is(err, ErrNotExist) {
		t.Fatalf("read missing: %v", err)
	}
	if _, err := r.Stat(step, "not/absolute"); err == nil { // refused here: 0
		t.Fatal("stat of a relative path succeeded")
	}
	_, err = r.Run(ctx, "true", nil) // 1 unlabelled
	must(t, err)
	conn, err := pool.DialNode(ctx, "n", ln.Addr().String()) // 2 unlabelled
	must(t, err)
	conn.Close()

	want := RoundTripCounts{
		Nodes: map[string]int64{"n": 8},
		Dials: map[string]int64{"n": 1},
		Steps: map[string]map[string]int64{"widen/distribute": {"n": 6}, OtherLabel: {"n": 2}},
	}
	if got := trips.Counts(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the operations: %+v, want %+v", got, want)
	}

	// A command killed at its deadline: its session and the kill's.
	dctx, cancel := context.WithTimeout(CountAs(ctx, "gate"), 700*time.Millisecond)
	_, err = r.Run(dctx, "sleep 30", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run past its deadline: %v", err)
	}
	if got := trips.Counts().Steps["gate"]["n"]; got != 2 {
		t.Errorf("timed-out command: %d round trips, want 2", got)
	}

	// The connection drops; the next call re-dials (a second dial) and
	// counts its own round trip.
	p.Cut()
	lost := runUntilRedialed(t, ctx, r)
	got := trips.Counts()
	if got.Dials["n"] != 2 || p.accepted.Load() != 2 {
		t.Errorf("dials = %d (proxy accepted %d), want 2", got.Dials["n"], p.accepted.Load())
	}
	if want := 8 + 2 + lost + 1; got.Nodes["n"] != want {
		t.Errorf("round trips = %d, want %d", got.Nodes["n"], want)
	}
}

func TestRoundTripsGatePollsApart(t *testing.T) {
	t.Parallel()
	rt := NewRoundTrips()
	step := CountAs(context.Background(), "servers/kubelet-trust-cp")
	rt.Trip(step, "cp1")
	rt.Trip(step, "cp1")
	gate := CountAsGate(step)
	for range 5 {
		rt.Trip(gate, "cp1")
	}
	rt.Trip(step, "w1")
	c := rt.Counts()
	if got := c.GatePolls(); got["cp1"] != 5 || got["w1"] != 0 {
		t.Fatalf("GatePolls = %v, want cp1 5", got)
	}
	if n := c.Steps["servers/kubelet-trust-cp (gate)"]["cp1"]; n != 5 {
		t.Fatalf("gate label counted %d, want 5 (labels %v)", n, c.Steps)
	}
	if got, want := c.String(), "cp1 7 (5 gate polls), w1 1 (dials 0)"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}
}
