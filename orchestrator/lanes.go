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
// the engine, waited for before the step named by its Until, and told to
// start no new target once the other side fails.
type lane struct {
	step  string
	until string
	along map[string]bool // the steps it runs alongside

	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}
	err      error
}

// goLane runs fn(stop) in a goroutine.
func goLane(step, until string, along []string, fn func(stop <-chan struct{}) error) *lane {
	l := &lane{step: step, until: until, along: map[string]bool{}, stopCh: make(chan struct{}), done: make(chan struct{})}
	for _, s := range along {
		l.along[s] = true
	}
	go func() {
		defer close(l.done)
		l.err = fn(l.stopCh)
	}()
	return l
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
	window := map[string][]string{} // background step → the steps it runs alongside
	for _, ph := range p.Phases {
		for i, ps := range ph.Steps {
			key := ph.Name + "/" + ps.Step.Name()
			pos[key] = len(pos)
			for _, o := range ph.Alongside(i) {
				window[key] = append(window[key], ph.Name+"/"+o)
			}
		}
	}
	newest := map[string]uint64{}
	for _, r := range todo {
		if k := r.Phase + "/" + r.Step; r.DoneSeq > newest[k] {
			newest[k] = r.DoneSeq
		}
	}
	seq := func(r state.StepRecord) uint64 {
		k := r.Phase + "/" + r.Step
		n := newest[k]
		for _, o := range window[k] {
			n = max(n, newest[o])
		}
		return n
	}
	sort.SliceStable(todo, func(i, j int) bool {
		a, b := todo[i], todo[j]
		if (a.DoneSeq == 0) != (b.DoneSeq == 0) {
			return a.DoneSeq == 0
		}
		ka, kb := a.Phase+"/"+a.Step, b.Phase+"/"+b.Step
		if a.DoneSeq == 0 {
			return pos[ka] > pos[kb]
		}
		if sa, sb := seq(a), seq(b); sa != sb {
			return sa > sb
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
		bg    *lane
		bgOut revertOutcome
		out   revertOutcome
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
		key := g[0].Phase + "/" + g[0].Step
		if bg != nil && (!bg.along[key] || bg.failed()) {
			join()
		}
		if out.failed() {
			return out
		}
		ph, _, _ := e.plan.Phase(g[0].Phase)
		if i := stepIndex(ph, g[0].Step); i >= 0 && ph.Steps[i].Background {
			join()
			var along []string
			for _, o := range ph.Alongside(i) {
				along = append(along, ph.Name+"/"+o)
			}
			first := n
			bgOut = revertOutcome{}
			bg = goLane(key, "", along, func(stop <-chan struct{}) error {
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

// stepIndex is the index of the named step in the phase, or -1.
func stepIndex(ph plans.Phase, step string) int {
	for i, ps := range ph.Steps {
		if ps.Step.Name() == step {
			return i
		}
	}
	return -1
}
