package orchestrator

import (
	"fmt"

	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// checkRecords refuses a run record or step records this plan cannot have
// written: a state the FSM does not have, a held or failed run at a phase
// the plan does not have, a run held after a phase that never holds (such
// as the last), a step record whose key is not one of the plan's steps and
// targets, or whose status is unknown. Resume, rollback and status check
// before they act, so such a file is refused as it is, never driven, never
// written to.
//
// Records of another plan version are left to the engine's version check
// (ErrPlanMismatch), which says so more usefully.
func checkRecords(p *plans.Plan, run state.Run, recs []state.StepRecord) error {
	if run.PlanVersion != p.Version {
		return nil
	}
	switch run.State {
	case StateNew, StateCompleted, StateRollingBack, StateRolledBack:
	case StateHeld, StateFailed:
		ph, i, ok := p.Phase(run.Phase)
		switch {
		case !ok:
			return fmt.Errorf("run %s is %s at phase %q, which this plan does not have", run.ID, run.State, run.Phase)
		case run.State == StateHeld && (!ph.HoldAfter || i == len(p.Phases)-1):
			return fmt.Errorf("run %s is held after phase %q, where this plan never holds", run.ID, run.Phase)
		}
	default:
		if _, _, ok := p.Phase(run.State); !ok {
			return fmt.Errorf("run %s is in state %q, which this plan does not have", run.ID, run.State)
		}
	}
	for _, r := range recs {
		_, t, err := lookupStep(p, r)
		if err != nil {
			return err
		}
		if want := plans.StepKey(r.Phase, r.Step, t); r.Key != want {
			return fmt.Errorf("step record %q is for %s", r.Key, want)
		}
		switch r.Status {
		case state.StepPending, state.StepStarted, state.StepDone, state.StepFailed, state.StepReverted:
		default:
			return fmt.Errorf("step record %q has status %q", r.Key, r.Status)
		}
	}
	return nil
}

// lookupStep finds a step record's step and target in the plan.
func lookupStep(p *plans.Plan, r state.StepRecord) (steps.Step, steps.Target, error) {
	ps, err := lookupPlanned(p, r)
	if err != nil {
		return nil, steps.Target{}, err
	}
	for _, t := range ps.Targets {
		if t.String() == r.Target {
			return ps.Step, t, nil
		}
	}
	return nil, steps.Target{}, fmt.Errorf("state records step %s/%s on %s that the plan does not have", r.Phase, r.Step, r.Target)
}

// lookupPlanned finds a step record's planned step (its targets and how
// many of them run at once) in the plan.
func lookupPlanned(p *plans.Plan, r state.StepRecord) (plans.PlannedStep, error) {
	ph, _, ok := p.Phase(r.Phase)
	if !ok {
		return plans.PlannedStep{}, fmt.Errorf("state records phase %q that the plan does not have", r.Phase)
	}
	if i := ph.StepIndex(r.Step); i >= 0 {
		return ph.Steps[i], nil
	}
	return plans.PlannedStep{}, fmt.Errorf("state records step %s/%s on %s that the plan does not have", r.Phase, r.Step, r.Target)
}
