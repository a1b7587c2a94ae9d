package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

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
