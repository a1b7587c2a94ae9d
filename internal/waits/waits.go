// Package waits records when a step waits on something other than rotate
// itself inside its Apply or Revert: a rollout, a publication, a CSR the
// controller-manager signs, a component it restarted coming back. The
// health gates the engine calls are timed by the engine; these are the
// waits inside a step, so that "rotate's own time" (wall time minus gates
// and waits) can be told apart from time spent waiting on the cluster.
//
// A Clock travels in the context; without one, recording is a no-op.
package waits

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Kind says what a span waited for.
type Kind string

const (
	// Cluster: a condition polled over the API or on a node (a rollout,
	// kube-root-ca.crt republished, a CSR signed, a kubelet Ready).
	Cluster Kind = "wait"
	// Restart: a node command that restarts a component and returns once
	// it is healthy (the kubelet's restart command).
	Restart Kind = "restart"
)

// Span is one wait.
type Span struct {
	Kind Kind      `json:"kind"`
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// Clock collects spans; safe for concurrent use (a step may wait on
// several rollouts at once).
type Clock struct {
	mu    sync.Mutex
	spans []Span
}

type clockKey struct{}

// With returns ctx carrying a new Clock.
func With(ctx context.Context) (context.Context, *Clock) {
	c := &Clock{}
	return context.WithValue(ctx, clockKey{}, c), c
}

// Without returns ctx with no Clock: waits under it are not recorded
// (a health gate the engine already times, called from inside a step).
func Without(ctx context.Context) context.Context {
	return context.WithValue(ctx, clockKey{}, (*Clock)(nil))
}

// Start begins a wait of kind under ctx's Clock; the returned func ends
// it. Without a Clock both are no-ops.
func Start(ctx context.Context, kind Kind) (end func()) {
	c, _ := ctx.Value(clockKey{}).(*Clock)
	if c == nil {
		return func() {}
	}
	from := time.Now()
	return func() {
		to := time.Now()
		c.mu.Lock()
		c.spans = append(c.spans, Span{Kind: kind, From: from, To: to})
		c.mu.Unlock()
	}
}

// MaxSpans bounds what Spans returns, so a step record stays small.
const MaxSpans = 16

// Spans returns the recorded spans of each kind merged where they overlap
// or touch, ordered by start. Beyond MaxSpans the closest neighbours of
// the same kind are merged (the gap between them is then counted as a
// wait: the total can only grow by the smallest gaps).
func (c *Clock) Spans() []Span {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	in := append([]Span(nil), c.spans...)
	c.mu.Unlock()
	return Merge(in, MaxSpans)
}

// Merge merges spans of the same kind that overlap or touch, then, while
// more than limit remain, the two closest of one kind. The result is
// ordered by start, then kind.
func Merge(in []Span, limit int) []Span {
	byKind := map[Kind][]Span{}
	for _, s := range in {
		if s.To.Before(s.From) {
			s.To = s.From
		}
		byKind[s.Kind] = append(byKind[s.Kind], s)
	}
	var out []Span
	for _, spans := range byKind {
		sort.Slice(spans, func(i, j int) bool { return spans[i].From.Before(spans[j].From) })
		var merged []Span
		for _, s := range spans {
			if n := len(merged); n > 0 && !s.From.After(merged[n-1].To) {
				if s.To.After(merged[n-1].To) {
					merged[n-1].To = s.To
				}
				continue
			}
			merged = append(merged, s)
		}
		out = append(out, merged...)
	}
	for limit > 0 && len(out) > limit {
		sortSpans(out)
		best := -1
		var gap time.Duration
		for i := 0; i+1 < len(out); i++ {
			j := nextOfKind(out, i)
			if j < 0 {
				continue
			}
			if g := out[j].From.Sub(out[i].To); best < 0 || g < gap {
				best, gap = i, g
			}
		}
		if best < 0 {
			break
		}
		j := nextOfKind(out, best)
		if out[j].To.After(out[best].To) {
			out[best].To = out[j].To
		}
		out = append(out[:j], out[j+1:]...)
	}
	sortSpans(out)
	return out
}

func nextOfKind(s []Span, i int) int {
	for j := i + 1; j < len(s); j++ {
		if s[j].Kind == s[i].Kind {
			return j
		}
	}
	return -1
}

func sortSpans(s []Span) {
	sort.SliceStable(s, func(i, j int) bool {
		if !s[i].From.Equal(s[j].From) {
			return s[i].From.Before(s[j].From)
		}
		return s[i].Kind < s[j].Kind
	})
}

// Total is the length of the union of spans (every kind), overlaps
// counted once.
func Total(spans []Span) time.Duration {
	s := append([]Span(nil), spans...)
	sort.Slice(s, func(i, j int) bool { return s[i].From.Before(s[j].From) })
	var total time.Duration
	var cur Span
	for i, x := range s {
		if i == 0 || x.From.After(cur.To) {
			total += cur.To.Sub(cur.From)
			cur = x
			continue
		}
		if x.To.After(cur.To) {
			cur.To = x.To
		}
	}
	if len(s) > 0 {
		total += cur.To.Sub(cur.From)
	}
	return total
}
