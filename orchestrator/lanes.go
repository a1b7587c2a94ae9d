package orchestrator

import (
	"context"
	"errors"
	"sort"
	"sync"

	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
)

// A lane is a background step (plans.PlannedStep.Background) running
// beside the phase's other steps, forward or in a rollback: started by
// the engine, waited for where the plan says, and told to start no new
// target once the other side fails.
type lane struct {
	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}
	err      error
}

// goLane runs fn(stop) in a goroutine.
func goLane(fn func(stop <-chan struct{}) error) *lane {
	l := &lane{stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.err = fn(l.stopCh)
	}()
	return l
}

// stepKey names a step in the plan as the revert order keys it.
func stepKey(phase, step string) string { return phase + "/" + step }

// alongKeys keys the steps that the phase's step i runs alongside (none
// unless it is a background step).
func alongKeys(ph plans.Phase, i int) map[string]bool {
	keys := map[string]bool{}
	for _, o := range ph.Alongside(i) {
		keys[stepKey(ph.Name, o)] = true
	}
	return keys
}

// failed reports, without waiting, whether the lane ended in an error.
func (l *lane) failed() bool {
	select {
	case <-l.done:
		return l.err != nil
	default:
		return false
	}
}

// wait waits for the lane and returns its error.
func (l *lane) wait() error {
	<-l.done
	return l.err
}

// abandon is for the other side's failure err: the lane starts no new
// target, the running ones finish, and both errors are returned.
func (l *lane) abandon(err error) error {
	l.stopOnce.Do(func() { close(l.stopCh) })
	return errors.Join(err, l.wait())
}

// sortForRevert puts the records to revert in revert order. Partial
// steps (no DoneSeq) are the most recent: they go first, the later in
// the plan first (a run recovered from a state copy can have several,
// see recover.go). Completed ones follow newest first, a step's targets
// together, the step ordered by its newest target. A background step
// goes as if it completed with the last of the steps it ran alongside
// and before them, so its rollback lane runs alongside them again.
func sortForRevert(p *plans.Plan, todo []state.StepRecord) {
	pos := map[string]int{}
	window := map[string]map[string]bool{} // step → the steps it runs alongside
	for _, ph := range p.Phases {
		for i, ps := range ph.Steps {
			key := stepKey(ph.Name, ps.Step.Name())
			pos[key] = len(pos)
			window[key] = alongKeys(ph, i)
		}
	}
	newest := map[string]uint64{}
	for _, r := range todo {
		if k := stepKey(r.Phase, r.Step); r.DoneSeq > newest[k] {
			newest[k] = r.DoneSeq
		}
	}
	seq := map[string]uint64{} // where a step's targets go among the completed ones
	for k, n := range newest {
		for o := range window[k] {
			n = max(n, newest[o])
		}
		seq[k] = n
	}
	sort.SliceStable(todo, func(i, j int) bool {
		a, b := todo[i], todo[j]
		if (a.DoneSeq == 0) != (b.DoneSeq == 0) {
			return a.DoneSeq == 0
		}
		ka, kb := stepKey(a.Phase, a.Step), stepKey(b.Phase, b.Step)
		if a.DoneSeq == 0 {
			return pos[ka] > pos[kb]
		}
		if seq[ka] != seq[kb] {
			return seq[ka] > seq[kb]
		}
		if ka != kb {
			return len(window[ka]) > 0 // the background step first
		}
		return a.DoneSeq > b.DoneSeq
	})
}

// revertOutcome is what reverting some targets left to report: the
// change events of the failed targets, their errors, and apart from
// them the error of a checkpoint that could not be written.
type revertOutcome struct {
	changes []state.Event
	ckErr   error
	err     error
}

func (o *revertOutcome) add(p revertOutcome) {
	o.changes = append(o.changes, p.changes...)
	o.ckErr = errors.Join(o.ckErr, p.ckErr)
	o.err = errors.Join(o.err, p.err)
}

func (o revertOutcome) failed() bool { return o.ckErr != nil || o.err != nil }

// revertAll reverts the groups in order, each like the forward run
// applied it; a background step's group runs in a lane alongside the
// groups of the steps it ran alongside forward, and is waited for before
// any other group. It stops at the first failure, once the running
// targets have finished.
func (e *Engine) revertAll(ctx context.Context, groups [][]state.StepRecord, total int) revertOutcome {
	var (
		bg      *lane
		bgAlong map[string]bool // the steps bg reverts alongside
		bgOut   revertOutcome
		out     revertOutcome
	)
	// join waits for the lane (at once told to stop if out failed) and
	// adds what it left to out.
	join := func() {
		if bg == nil {
			return
		}
		if out.failed() {
			_ = bg.abandon(nil)
		} else {
			_ = bg.wait()
		}
		out.add(bgOut)
		bg = nil
	}
	n := 0
	for _, g := range groups {
		if bg != nil && (!bgAlong[stepKey(g[0].Phase, g[0].Step)] || bg.failed()) {
			join()
		}
		if out.failed() {
			return out
		}
		ph, _, _ := e.plan.Phase(g[0].Phase)
		if i := ph.StepIndex(g[0].Step); i >= 0 && ph.Steps[i].Background {
			join()
			first := n
			bgOut, bgAlong = revertOutcome{}, alongKeys(ph, i)
			bg = goLane(func(stop <-chan struct{}) error {
				bgOut.changes, bgOut.ckErr, bgOut.err = e.revertGroup(ctx, stop, g, first, total)
				if bgOut.failed() {
					return errors.Join(bgOut.ckErr, bgOut.err)
				}
				return nil
			})
			n += len(g)
			continue
		}
		var o revertOutcome
		o.changes, o.ckErr, o.err = e.revertGroup(ctx, nil, g, n, total)
		out.add(o)
		if out.failed() {
			join()
			return out
		}
		n += len(g)
	}
	join()
	return out
}
