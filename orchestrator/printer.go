package orchestrator

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Printer is the operator's progress output (not a log): one line per
// phase, step outcome and fan-out count. Safe for concurrent use.
type Printer struct {
	mu    sync.Mutex
	w     io.Writer
	phase string
	start time.Time
	now   func() time.Time
}

// NewPrinter writes to w; nil discards.
func NewPrinter(w io.Writer) *Printer {
	if w == nil {
		w = io.Discard
	}
	return &Printer{w: w, now: time.Now}
}

func (p *Printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// progressf prints a progress line with the local wall-clock time first,
// so a long run can be lined up with component logs.
func (p *Printer) progressf(format string, args ...any) {
	p.printf(p.now().Format("15:04:05")+" "+format, args...)
}

// Phase announces phase i of n.
func (p *Printer) Phase(i, n int, name, short string) {
	p.mu.Lock()
	p.phase = fmt.Sprintf("%2d/%d %s", i, n, name)
	p.start = time.Now()
	p.mu.Unlock()
	p.progressf("==> phase %d/%d %s: %s", i, n, name, short)
}

func (p *Printer) tag() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.phase
}

// Step reports a step's status on a target.
func (p *Printer) Step(step, target, status string) {
	p.progressf("    [%s] %-28s %-12s %s", p.tag(), step, target, status)
}

// Detail is a step's own progress line.
func (p *Printer) Detail(step, target, msg string) {
	p.progressf("    [%s] %-28s %-12s   %s", p.tag(), step, target, msg)
}

// Count reports fan-out progress.
func (p *Printer) Count(step string, done, total int) {
	p.progressf("    [%s] %-28s %d/%d targets done", p.tag(), step, done, total)
}

// Revert reports rollback progress.
func (p *Printer) Revert(i, n int, phase, step, target string) {
	p.progressf("<== revert %d/%d %s/%s on %s", i, n, phase, step, target)
}

// Linef prints a free line.
func (p *Printer) Linef(format string, args ...any) { p.printf(format, args...) }
