package orchestrator

import (
	"context"
	"errors"
	"fmt"

	"github.com/looplab/fsm"

	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
)

// FSM states besides the phase names.
const (
	StateNew         = "new"
	StateHeld        = "held"
	StateCompleted   = "completed"
	StateFailed      = "failed"
	StateRollingBack = "rolling-back"
	StateRolledBack  = "rolled-back"
)

// FSM events besides "enter-<phase>".
const (
	evHold           = "hold"
	evComplete       = "complete"
	evFail           = "fail"
	evRollback       = "rollback"
	evFinishRollback = "finish-rollback"
)

func enterEvent(phase string) string { return "enter-" + phase }

// newFSM builds the state machine for a plan. Transitions are persisted in
// leave_state: the run record's State is written before the FSM moves, and a
// failed write cancels the transition, so the file never lags the machine.
func (e *Engine) newFSM(initial string) *fsm.FSM {
	var events []fsm.EventDesc
	all := []string{StateNew}
	for i, ph := range e.plan.Phases {
		src := []string{StateFailed}
		if i == 0 {
			src = append(src, StateNew)
		} else {
			prev := e.plan.Phases[i-1]
			src = append(src, prev.Name)
			if prev.HoldAfter {
				src = append(src, StateHeld)
			}
		}
		events = append(events, fsm.EventDesc{Name: enterEvent(ph.Name), Src: src, Dst: ph.Name})
		all = append(all, ph.Name)
		if ph.HoldAfter {
			events = append(events, fsm.EventDesc{Name: evHold, Src: []string{ph.Name}, Dst: StateHeld})
		}
	}
	phases := all[1:]
	events = append(events,
		fsm.EventDesc{Name: evComplete, Src: []string{e.plan.Phases[len(e.plan.Phases)-1].Name}, Dst: StateCompleted},
		fsm.EventDesc{Name: evFail, Src: phases, Dst: StateFailed},
		fsm.EventDesc{Name: evRollback, Src: append(append([]string{}, all...), StateHeld, StateFailed, StateCompleted), Dst: StateRollingBack},
		fsm.EventDesc{Name: evFinishRollback, Src: []string{StateRollingBack}, Dst: StateRolledBack},
	)
	return fsm.NewFSM(initial, events, fsm.Callbacks{
		"leave_state": func(ctx context.Context, ev *fsm.Event) {
			if err := e.persistTransition(ctx, ev); err != nil {
				ev.Cancel(fmt.Errorf("persist transition %s -> %s: %w", ev.Src, ev.Dst, err))
			}
		},
	})
}

// transitionArgs travel with an event into leave_state.
type transitionArgs struct {
	phase   string // phase to record (entered, failed or held)
	errText string
}

func (e *Engine) persistTransition(ctx context.Context, ev *fsm.Event) error {
	run, err := e.store.Run(ctx)
	if err != nil {
		return err
	}
	run.State = ev.Dst
	run.UpdatedAt = e.now()
	msg := fmt.Sprintf("%s -> %s", ev.Src, ev.Dst)
	if len(ev.Args) > 0 {
		if a, ok := ev.Args[0].(transitionArgs); ok {
			if a.phase != "" {
				run.Phase = a.phase
			}
			run.LastError = a.errText
			if a.errText != "" {
				msg += ": " + a.errText
			}
		}
	}
	level := "info"
	switch ev.Dst {
	case StateCompleted, StateRolledBack:
		run.FinishedAt = e.now()
	case StateFailed:
		level = "error"
	}
	cp := state.Checkpoint{Run: &run, Events: []state.Event{{Time: e.now(), Level: level, Kind: state.KindState, Phase: run.Phase, Message: "state " + msg}}}
	if err := e.trips.stamp(ctx, e.store, &cp); err != nil {
		return err
	}
	return e.store.Commit(ctx, cp)
}

// fire moves the machine, treating "already there" as success.
func (e *Engine) fire(ctx context.Context, m *fsm.FSM, event string, args transitionArgs) error {
	err := m.Event(ctx, event, args)
	var nt fsm.NoTransitionError
	if errors.As(err, &nt) && nt.Err == nil {
		return nil
	}
	return err
}

// Diagram renders the plan's state machine as Mermaid.
func Diagram(p *plans.Plan) (string, error) {
	e := &Engine{plan: p}
	return fsm.VisualizeWithType(e.newFSM(StateNew), fsm.MERMAID)
}
