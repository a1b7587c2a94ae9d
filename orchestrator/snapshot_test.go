package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubeca/rotate/state"
)

const testKeyPEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkq\n-----END EC PRIVATE KEY-----\n"

// TestStatusShowsSnapshotWhileLocked: while a process holds the state
// file (here a second BoltStore open in this process, which is what the
// flock sees), status shows the snapshot that process's checkpoints keep,
// byte for byte what `status -o json` prints, without key material.
func TestStatusShowsSnapshotWhileLocked(t *testing.T) {
	ctx := context.Background()
	store, p := newStateFile(t)
	dir := filepath.Dir(p)
	plan := testPlan(t.TempDir()) // its journal elsewhere
	snap := withSnapshot(store, p, plan, nil)
	e := New(Options{Store: snap, Plan: plan})
	if err := e.Start(ctx, state.Run{ID: "r1", Cluster: "c"}, true); err != nil {
		t.Fatal(err)
	}
	// CA material is in the state file; it must not reach the snapshot.
	if err := snap.Commit(ctx, state.Checkpoint{CAs: []state.CAMaterial{{Name: "cluster", NewCert: []byte("C"), NewKey: []byte(testKeyPEM), OldKey: []byte(testKeyPEM)}}}); err != nil {
		t.Fatal(err)
	}
	snap.Flush(ctx) // what the background write would have written

	v, err := ShowStatus(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if v.Snapshot != state.SnapshotPath(p) || v.SnapshotTime.IsZero() {
		t.Fatalf("status did not show the snapshot: %+v", v)
	}
	if v.Report.Run.State != StateHeld || v.Report.Phases[0].Total != 1 || v.Report.Phases[0].Done != 1 {
		t.Fatalf("snapshot report = %+v", v.Report)
	}
	file, err := os.ReadFile(state.SnapshotPath(p))
	if err != nil {
		t.Fatal(err)
	}
	want, err := report(ctx, store, plan)
	if err != nil {
		t.Fatal(err)
	}
	wantJSON, _ := ReportJSON(want)
	if !bytes.Equal(v.JSON, file) || !bytes.Equal(file, wantJSON) {
		t.Fatalf("snapshot shown, on disk and status -o json differ:\n%s\n%s\n%s", v.JSON, file, wantJSON)
	}
	if bytes.Contains(file, []byte("PRIVATE KEY")) {
		t.Fatalf("snapshot holds key material:\n%s", file)
	}
	if st, _ := os.Stat(state.SnapshotPath(p)); st.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot mode %04o", st.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Fatalf("left %v next to the state file, want it, its snapshot and its journal", ents)
	}

	// Without a snapshot, a locked file is still busy.
	os.Remove(state.SnapshotPath(p))
	if _, err := ShowStatus(ctx, p); !errors.Is(err, state.ErrBusy) {
		t.Fatalf("locked, no snapshot: %v, want ErrBusy", err)
	}
}

// TestSnapshotNeverHoldsKeys: a private key quoted in a failed step's
// error is redacted in the report, so the snapshot keeps the error without
// the key (state.WriteSnapshot would refuse it otherwise).
func TestSnapshotNeverHoldsKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "rotate.db")
	mem := state.NewMemStore()
	snap := withSnapshot(mem, p, testPlan(dir), nil)
	run := state.Run{ID: "r1", State: StateFailed, Phase: "widen"}
	rec := state.StepRecord{Key: "widen/trust-cp@a", Phase: "widen", Step: "trust-cp", Target: "a", Status: state.StepFailed, Error: "apply: wrote " + testKeyPEM}
	if err := snap.Commit(ctx, state.Checkpoint{Run: &run, Steps: []state.StepRecord{rec}}); err != nil {
		t.Fatal(err)
	}
	snap.Flush(ctx)
	raw, err := os.ReadFile(state.SnapshotPath(p))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) || !bytes.Contains(raw, []byte(`"error": "apply: wrote \u003cprivate key redacted\u003e`)) {
		t.Fatalf("snapshot:\n%s", raw)
	}
}

// newStateFile creates a state file in a directory of its own, closed at
// the end of the test.
func newStateFile(t *testing.T) (*state.BoltStore, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rotate.db")
	store, err := state.Open(p, state.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store, p
}

// readsBlocked is a store whose step records, which every snapshot reads,
// are not handed out until release is closed; entered says a read began.
type readsBlocked struct {
	state.Store
	release chan struct{}
	entered chan struct{}
}

func (s *readsBlocked) Steps(ctx context.Context) ([]state.StepRecord, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return s.Store.Steps(ctx)
}

// TestCheckpointsDoNotWaitForTheSnapshot: while a snapshot is being
// written, the run's checkpoints go on, and all the commits made
// meanwhile wait for one write, scheduled once; a commit when the last
// write is old enough is written in the background; Stop writes a last
// time and no commit after it schedules another.
func TestCheckpointsDoNotWaitForTheSnapshot(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "rotate.db")
	store := &readsBlocked{Store: state.NewMemStore(), release: make(chan struct{}), entered: make(chan struct{}, 1)}
	snap := withSnapshot(store, p, testPlan(t.TempDir()), nil)
	snap.interval = time.Hour // the write after the first is Flush's
	var writes atomic.Int32
	snap.wrote = func() { writes.Add(1) }
	commit := func(phase string) {
		t.Helper()
		run := state.Run{ID: "r1", State: phase, Phase: phase}
		if err := snap.Commit(ctx, state.Checkpoint{Run: &run, Events: []state.Event{{Message: phase}}}); err != nil {
			t.Fatal(err)
		}
	}
	pending := func() bool {
		snap.pmu.Lock()
		defer snap.pmu.Unlock()
		return snap.pending != nil
	}
	shows := func(phase string) bool {
		raw, _, err := state.ReadSnapshot(p)
		return err == nil && strings.Contains(string(raw), `"phase": "`+phase+`"`)
	}

	commit("p0") // no write yet: this one starts at once, in the background
	select {
	case <-store.entered: // it reads the store, and waits
	case <-time.After(time.Minute):
		t.Fatal("no snapshot written after the first checkpoint")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= 50; i++ {
			commit(fmt.Sprintf("p%d", i))
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("checkpoints waited for the snapshot being written")
	}
	if !pending() || writes.Load() != 0 {
		t.Fatalf("after 50 checkpoints during a write: pending %v, %d writes done; want one write pending, none done", pending(), writes.Load())
	}
	close(store.release)
	snap.Flush(ctx)
	snap.inflight.Wait()
	if n := writes.Load(); n != 2 || pending() || !shows("p50") {
		t.Fatalf("%d writes (pending %v; shows the last checkpoint: %v), want 2: the first and Flush's, which dropped the pending one", n, pending(), shows("p50"))
	}
	if raw, _, err := state.ReadJournal(p); err != nil || bytes.Count(raw, []byte("\n")) != 51 {
		t.Fatalf("journal (%v):\n%s\nwant 51 events", err, raw)
	}

	// A commit long enough after the last write is written in the
	// background.
	snap.pmu.Lock()
	snap.interval = 0
	snap.pmu.Unlock()
	commit("p51")
	for deadline := time.Now().Add(time.Minute); !shows("p51"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the snapshot never showed a checkpoint written in the background")
		}
	}

	commit("p52")
	snap.Stop(ctx)
	if !shows("p52") {
		t.Fatal("Stop did not write the last checkpoint")
	}
	n := writes.Load()
	commit("p53")
	if pending() || writes.Load() != n {
		t.Fatal("a checkpoint after Stop scheduled a write")
	}
}
