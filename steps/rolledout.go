package steps

import (
	"context"
	"encoding/json"
	"fmt"
)

// RolledOut waits for the rollouts a deferred restart step started (see
// InClusterClientsRestart): each workload up to its own timeout, from
// when this step starts. A workload all available before the run that
// does not finish in time fails the step (a regression); the others are
// findings. It records the restart's findings and the late rollouts
// under the restart step's report key, which the hold report reads.
// Nothing to revert: the restart step's revert re-rolls.
type RolledOut struct {
	StepName string
	Restart  *RestartWorkloads
}

func (s *RolledOut) Name() string { return s.StepName }

// SelfTimed: each workload has its own timeout.
func (s *RolledOut) SelfTimed() {}

// recorded is what the restart step left.
func (s *RolledOut) recorded(ctx context.Context, rt *Runtime) (recordedRollouts, error) {
	var r recordedRollouts
	key := rolloutsKey(s.Restart.StepName)
	raw, ok, err := rt.Store.Value(ctx, key)
	if err != nil {
		return r, err
	}
	if !ok {
		return r, fmt.Errorf("step %s recorded no rollouts (state key %s): it must run first", s.Restart.StepName, key)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return r, fmt.Errorf("read %s: %w", key, err)
	}
	return r, nil
}

// waited is the rollouts that are waited for.
func (r recordedRollouts) waited() []rollout {
	var out []rollout
	for _, ro := range r.Rollouts {
		if ro.Wait {
			out = append(out, ro)
		}
	}
	return out
}

// Check: every rollout waited for has finished.
func (s *RolledOut) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	r, err := s.recorded(ctx, rt)
	if err != nil {
		return false, err
	}
	for _, ro := range r.waited() {
		done, _, err := rt.rolledOut(ctx, ro.workload(), r.Value)
		if err != nil || !done {
			return false, err
		}
	}
	return true, nil
}

func (s *RolledOut) Apply(ctx context.Context, rt *Runtime, t Target) error {
	r, err := s.recorded(ctx, rt)
	if err != nil {
		return err
	}
	late, regressed, err := rt.rollWorkloads(ctx, r.waited(), r.Value, rt.Config.WorkloadConcurrency, waitOnly)
	if err != nil {
		return err
	}
	if err := regressionError(regressed); err != nil {
		return err
	}
	return putJSON(rt, workloadReportKey(s.Restart.StepName), append(r.Findings, late...))
}

// Gate records the findings when Check found every rollout finished.
func (s *RolledOut) Gate(ctx context.Context, rt *Runtime, t Target) error {
	if _, ok := rt.Out.Values[workloadReportKey(s.Restart.StepName)]; ok {
		return nil
	}
	r, err := s.recorded(ctx, rt)
	if err != nil {
		return err
	}
	return putJSON(rt, workloadReportKey(s.Restart.StepName), r.Findings)
}

func (s *RolledOut) Revert(context.Context, *Runtime, Target) error { return nil }

// Describe lists the waits: from the restart step's record once it ran,
// from its plan before (`plan --live`).
func (s *RolledOut) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	var rs []rollout
	if r, err := s.recorded(ctx, rt); err == nil {
		rs = r.waited()
	} else {
		p, err := s.Restart.plan(ctx, rt)
		if err != nil {
			return nil, err
		}
		rs = recordedRollouts{Rollouts: rollouts(p.tasks)}.waited()
	}
	out := []string{fmt.Sprintf("wait for the %d rollout(s) step %s started, %d at a time", len(rs), s.Restart.StepName, rt.Config.WorkloadConcurrency)}
	for _, ro := range rs {
		out = append(out, fmt.Sprintf("wait up to %s for %s", ro.Timeout, ro.workload()))
	}
	return out, nil
}

func (s *RolledOut) Explain(c *Config) []string {
	return []string{
		fmt.Sprintf("waits for the rollouts step %s started, each up to its timeout from here, %d at a time; they ran while trust widened", s.Restart.StepName, c.WorkloadConcurrency),
		"a workload all available before the run that does not finish in time stops the run: a regression, named in the error",
	}
}
