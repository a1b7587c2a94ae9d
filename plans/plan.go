// Package plans turns an inventory into the ordered phases and steps of a
// rotation. A plan is data: phases named like kubeadm's workflow phases,
// each a list of steps with the targets they act on and how many targets
// may run at once. The CLI's plan listing and phase names come from here.
package plans

import (
	"fmt"
	"strings"

	"github.com/kubeca/rotate/steps"
)

// Version is bumped whenever the phase or step list changes shape; a state
// file records it and resume refuses a different one.
const Version = 5

// PlannedStep is one step with its targets.
type PlannedStep struct {
	Step    steps.Step
	Targets []steps.Target
	// Concurrency bounds how many targets run at once (1: one at a time,
	// in order, each gated before the next).
	Concurrency int
	// Background makes the phase start this step and go on with the steps
	// after it while it runs, up to the step named by Until (the end of the
	// phase when Until is ""), which waits for it; a rollback reverts it
	// alongside the same steps. It is for a step that nothing in between
	// needs and whose nodes no step in between touches (Validate checks
	// the nodes): the worker kubelets restarting while the control plane
	// waits on its own gates.
	Background bool
	Until      string
}

// StepIndex is the index of the named step in the phase, or -1.
func (ph Phase) StepIndex(name string) int {
	for i, ps := range ph.Steps {
		if ps.Step.Name() == name {
			return i
		}
	}
	return -1
}

// Alongside names the steps that the phase's step i runs alongside: for
// a background step, those after it up to its Until; otherwise none.
func (ph Phase) Alongside(i int) []string {
	ps := ph.Steps[i]
	if !ps.Background {
		return nil
	}
	var out []string
	for _, o := range ph.Steps[i+1:] {
		if o.Step.Name() == ps.Until {
			break
		}
		out = append(out, o.Step.Name())
	}
	return out
}

// Phase is one of the thirteen phases (0 to 12).
type Phase struct {
	Index int
	Name  string
	Short string
	Steps []PlannedStep
	// HoldAfter pauses the run after this phase until `rotate resume`.
	HoldAfter bool
}

// Plan is the whole rotation.
type Plan struct {
	Version int
	Phases  []Phase
}

// Steps lists every planned step, in plan order.
func (p *Plan) Steps() []PlannedStep {
	var out []PlannedStep
	for _, ph := range p.Phases {
		out = append(out, ph.Steps...)
	}
	return out
}

// StepKey names one step on one target in the state file.
func StepKey(phase, step string, t steps.Target) string {
	return phase + "/" + step + "@" + t.String()
}

// Phase returns the phase with that name.
func (p *Plan) Phase(name string) (Phase, int, bool) {
	for i, ph := range p.Phases {
		if ph.Name == name {
			return ph, i, true
		}
	}
	return Phase{}, -1, false
}

// Last is the index shown as N in "phase i/N".
func (p *Plan) Last() int {
	if len(p.Phases) == 0 {
		return 0
	}
	return p.Phases[len(p.Phases)-1].Index
}

// Validate checks the plan's own consistency: unique phase and step names,
// targets present, no duplicate keys.
func (p *Plan) Validate() error {
	var problems []string
	phases := map[string]bool{}
	for _, ph := range p.Phases {
		if phases[ph.Name] {
			problems = append(problems, "duplicate phase "+ph.Name)
		}
		phases[ph.Name] = true
		names := map[string]bool{}
		for _, ps := range ph.Steps {
			n := ps.Step.Name()
			if names[n] {
				problems = append(problems, fmt.Sprintf("phase %s: duplicate step %s", ph.Name, n))
			}
			names[n] = true
			if len(ps.Targets) == 0 {
				problems = append(problems, fmt.Sprintf("phase %s: step %s has no targets", ph.Name, n))
			}
			if ps.Concurrency < 1 {
				problems = append(problems, fmt.Sprintf("phase %s: step %s has concurrency %d", ph.Name, n, ps.Concurrency))
			}
		}
		for i := range ph.Steps {
			problems = append(problems, ph.checkBackground(i)...)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid plan: %s", strings.Join(problems, "; "))
	}
	return nil
}

// checkBackground checks a background step: its Until is a later step of
// its phase, no other background step starts before it is joined, and no
// step it runs alongside acts on one of its nodes.
func (ph Phase) checkBackground(i int) []string {
	ps := ph.Steps[i]
	if !ps.Background {
		if ps.Until != "" {
			return []string{fmt.Sprintf("phase %s: step %s has until %s but is not a background step", ph.Name, ps.Step.Name(), ps.Until)}
		}
		return nil
	}
	var problems []string
	along := ph.Alongside(i)
	if ps.Until != "" && i+1+len(along) >= len(ph.Steps) {
		problems = append(problems, fmt.Sprintf("phase %s: background step %s runs until %s, which is not a later step of the phase", ph.Name, ps.Step.Name(), ps.Until))
	}
	mine := map[string]bool{}
	for _, t := range ps.Targets {
		if t.Node != "" {
			mine[t.Node] = true
		}
	}
	for _, o := range ph.Steps[i+1 : i+1+len(along)] {
		if o.Background {
			problems = append(problems, fmt.Sprintf("phase %s: background step %s starts before background step %s is waited for", ph.Name, o.Step.Name(), ps.Step.Name()))
		}
		for _, t := range o.Targets {
			if mine[t.Node] {
				problems = append(problems, fmt.Sprintf("phase %s: step %s acts on node %s while background step %s does", ph.Name, o.Step.Name(), t.Node, ps.Step.Name()))
				break
			}
		}
	}
	return problems
}
