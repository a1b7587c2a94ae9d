package orchestrator

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/state"
)

// TestRecordingRunnerRunBatches: the journal's runner keeps a step's
// writes, command and marker one round trip, and records what was applied
// of them: everything, the first batch when the command fails, the first
// batch's applied prefix when it fails.
func TestRecordingRunnerRunBatches(t *testing.T) {
	ctx := context.Background()
	m := nodes.NewMemRunner("n1")
	m.Trips = nodes.NewRoundTrips()
	log := newChangeLog(nil, time.Now)
	r := &recordingRunner{Runner: m, log: log}
	paths := func() []string {
		var out []string
		for _, e := range log.stamped(state.StepRecord{}) {
			out = append(out, e.Path)
		}
		return out
	}
	write := func(p string) nodes.FileOp { return nodes.FileOp{Kind: nodes.OpWrite, Path: p, Data: []byte("x")} }

	if _, err := nodes.ApplyRunApply(ctx, r, []nodes.FileOp{write("/etc/a")}, "restart", []nodes.FileOp{write("/etc/b")}); err != nil {
		t.Fatal(err)
	}
	if n := m.Trips.Counts().Nodes["n1"]; n != 1 {
		t.Errorf("%d round trips through the recording runner, want 1", n)
	}
	if got := paths(); !slices.Equal(got, []string{"/etc/a", "/etc/b"}) {
		t.Errorf("recorded %q", got)
	}

	m.RunFunc = func(context.Context, string, []byte) (nodes.Result, error) {
		return nodes.Result{}, errors.New("restart failed")
	}
	if _, err := nodes.ApplyRunApply(ctx, r, []nodes.FileOp{write("/etc/c")}, "restart", []nodes.FileOp{write("/etc/d")}); err == nil {
		t.Fatal("a failed command succeeded")
	}
	if got := paths(); !slices.Equal(got, []string{"/etc/a", "/etc/b", "/etc/c"}) {
		t.Errorf("after a failed command recorded %q", got)
	}

	m.Fail = func(op, p string) error {
		if p == "/etc/f" {
			return errors.New("disk full")
		}
		return nil
	}
	if _, err := nodes.ApplyRunApply(ctx, r, []nodes.FileOp{write("/etc/e"), write("/etc/f")}, "restart", nil); err == nil {
		t.Fatal("a failed batch succeeded")
	}
	if got := paths(); !slices.Equal(got, []string{"/etc/a", "/etc/b", "/etc/c", "/etc/e"}) {
		t.Errorf("after a failed batch recorded %q", got)
	}
}
