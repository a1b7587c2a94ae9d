package orchestrator

import (
	"context"
	"testing"
	"time"

	"github.com/kubeca/rotate/internal/waits"
	"github.com/kubeca/rotate/steps"
)

// waitingStep waits in its Apply (a rollout, then a restart) and in its
// Gate.
type waitingStep struct{ gateWaited *bool }

func (waitingStep) Name() string { return "waiting" }
func (waitingStep) Check(context.Context, *steps.Runtime, steps.Target) (bool, error) {
	return false, nil
}
func (waitingStep) Apply(ctx context.Context, _ *steps.Runtime, _ steps.Target) error {
	waits.Start(ctx, waits.Cluster)()
	waits.Start(ctx, waits.Restart)()
	return nil
}
func (s waitingStep) Gate(ctx context.Context, _ *steps.Runtime, _ steps.Target) error {
	*s.gateWaited = true
	waits.Start(ctx, waits.Cluster)() // timed as the gate, not as a wait
	return nil
}
func (waitingStep) Revert(context.Context, *steps.Runtime, steps.Target) error { return nil }

func TestExecuteRecordsWaitsInsideApplyOnly(t *testing.T) {
	var gated bool
	before := time.Now()
	_, tm, err := execute(context.Background(), waitingStep{&gated}, &steps.Runtime{}, steps.ClusterTarget, nil)
	after := time.Now()
	if err != nil || !gated {
		t.Fatalf("execute: %v (gate called: %v)", err, gated)
	}
	kinds := map[waits.Kind]int{}
	for _, s := range tm.waits {
		kinds[s.Kind]++
		if s.From.Before(before) || s.To.After(after) {
			t.Errorf("span %+v outside the attempt [%s, %s]", s, before, after)
		}
	}
	if len(tm.waits) != 2 || kinds[waits.Cluster] != 1 || kinds[waits.Restart] != 1 {
		t.Errorf("waits %+v, want the rollout and the restart of Apply, not the gate's", tm.waits)
	}
}
