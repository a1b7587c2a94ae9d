package orchestrator

import (
	"context"
	"errors"
	"testing"

	"github.com/kubeca/rotate/state"
)

// TestEngineRefusesCraftedRecords: Resume and Rollback refuse records the
// plan cannot have written with state.ErrCorrupt, before any write (the
// store's event log stays empty), instead of indexing past the phases or
// starting a rollback they cannot finish.
func TestEngineRefusesCraftedRecords(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		run  state.Run
		recs []state.StepRecord
	}{
		{"held after the last phase", state.Run{State: StateHeld, Phase: "narrow"}, nil},
		{"held after a phase that never holds", state.Run{State: StateHeld, Phase: "widen"}, nil},
		{"unknown state", state.Run{State: "bogus"}, nil},
		{"failed at an unknown phase", state.Run{State: StateFailed, Phase: "nowhere"}, nil},
		{"unknown step", state.Run{State: StateFailed, Phase: "widen"}, []state.StepRecord{{Key: "widen/frob@a", Phase: "widen", Step: "frob", Target: "a", Status: state.StepDone}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for op, do := range map[string]func(*Engine) error{
				"resume":   func(e *Engine) error { return e.Resume(ctx) },
				"rollback": func(e *Engine) error { return e.Rollback(ctx) },
			} {
				s := state.NewMemStore()
				run := tc.run
				run.ID, run.PlanVersion = "r1", 1
				if err := s.Commit(ctx, state.Checkpoint{Run: &run, Steps: tc.recs}); err != nil {
					t.Fatal(err)
				}
				e := New(Options{Store: s, Plan: testPlan(t.TempDir())})
				if err := do(e); !errors.Is(err, state.ErrCorrupt) {
					t.Errorf("%s: %v, want ErrCorrupt", op, err)
				}
				if evs, _ := s.Events(ctx); len(evs) != 0 || e.commits != 0 {
					t.Errorf("%s wrote to the store: %d commits, events %v", op, e.commits, evs)
				}
			}
		})
	}
}
