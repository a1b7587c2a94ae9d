package nodes

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// RoundTrips counts, per node, the SSH requests rotate makes that wait for
// the node's answer, so that a run can say what it cost and later work can
// cut it. It is safe for concurrent use (steps fan out over nodes).
//
// What counts, at the lowest level that maps one to one onto a Runner
// operation:
//
//   - one round trip per SSH session opened: every ReadFile, Stat,
//     WriteFile(Exact), Symlink, Remove and Run opens exactly one (its
//     command runs in it), and so does the kill that ends a command whose
//     deadline passed;
//   - one round trip per channel opened by DialTCP (a TCP connection from
//     the node);
//   - one dial per attempt to connect to the node (TCP, SSH handshake and
//     authentication, through the jump host if any), counted apart.
//
// An operation refused before it leaves this machine (a path that is not
// absolute and clean) counts nothing; one that fails on the node or on the
// way counts, as it cost the trip. Keepalives, which the connection sends on
// its own every few seconds whatever the run does, are not counted. A
// session is several SSH messages (channel open, exec, data, exit status)
// but one operation's worth of latency to cut: the unit the counts are in.
//
// Each round trip is also counted under the label its context carries
// (CountAs; "other" without one), which the orchestrator sets to the phase
// and step, so a run's counts say which steps cost what.
type RoundTrips struct {
	mu     sync.Mutex
	nodes  map[string]int64
	dials  map[string]int64
	labels map[string]map[string]int64
}

// RoundTripCounts is a copy of a RoundTrips' counts, as recorded with a
// run and shown by `rotate status -o json`.
type RoundTripCounts struct {
	// Nodes is round trips per node.
	Nodes map[string]int64 `json:"nodes,omitempty"`
	// Dials is connection attempts per node.
	Dials map[string]int64 `json:"dials,omitempty"`
	// Steps is round trips per label ("phase/step", see CountAs), then
	// per node.
	Steps map[string]map[string]int64 `json:"steps,omitempty"`
}

// OtherLabel is the label of round trips made under no CountAs label.
const OtherLabel = "other"

type labelKey struct{}

// CountAs returns ctx with the label the round trips made under it are
// counted with (the innermost label wins).
func CountAs(ctx context.Context, label string) context.Context {
	return context.WithValue(ctx, labelKey{}, label)
}

// GateSuffix ends the label of the round trips a health gate makes while
// it polls (CountAsGate): they grow with how long a component takes to
// come back, not with what the step does, and are counted apart.
const GateSuffix = " (gate)"

// CountAsGate returns ctx with its label marked as a gate's polling.
func CountAsGate(ctx context.Context) context.Context {
	return CountAs(ctx, labelOf(ctx)+GateSuffix)
}

func labelOf(ctx context.Context) string {
	if l, ok := ctx.Value(labelKey{}).(string); ok && l != "" {
		return l
	}
	return OtherLabel
}

// NewRoundTrips returns a counter at zero.
func NewRoundTrips() *RoundTrips {
	return &RoundTrips{nodes: map[string]int64{}, dials: map[string]int64{}, labels: map[string]map[string]int64{}}
}

// Trip counts one round trip to node under ctx's label. A nil *RoundTrips
// counts nothing, so runners without a counter need no check. Runner
// implementations call it once per request that waits for the node.
func (r *RoundTrips) Trip(ctx context.Context, node string) {
	if r == nil {
		return
	}
	label := labelOf(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodes[node]++
	byNode := r.labels[label]
	if byNode == nil {
		byNode = map[string]int64{}
		r.labels[label] = byNode
	}
	byNode[node]++
}

// Dial counts one attempt to connect to node (nil: nothing).
func (r *RoundTrips) Dial(node string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dials[node]++
}

// Counts returns a copy of the counts.
func (r *RoundTrips) Counts() RoundTripCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := RoundTripCounts{Nodes: maps.Clone(r.nodes), Dials: maps.Clone(r.dials), Steps: map[string]map[string]int64{}}
	for l, byNode := range r.labels {
		out.Steps[l] = maps.Clone(byNode)
	}
	return out
}

// Add adds c to the counts: what earlier processes of the same run
// counted, so that a resumed run's counts are the whole run's.
func (r *RoundTrips) Add(c RoundTripCounts) {
	r.mu.Lock()
	defer r.mu.Unlock()
	addTo(r.nodes, c.Nodes)
	addTo(r.dials, c.Dials)
	for l, byNode := range c.Steps {
		if r.labels[l] == nil {
			r.labels[l] = map[string]int64{}
		}
		addTo(r.labels[l], byNode)
	}
}

func addTo(dst, src map[string]int64) {
	for k, v := range src {
		dst[k] += v
	}
}

// Empty reports whether nothing was counted.
func (c RoundTripCounts) Empty() bool { return len(c.Nodes) == 0 && len(c.Dials) == 0 }

// GatePolls is, per node, the round trips of health gates polling (labels
// ending in GateSuffix).
func (c RoundTripCounts) GatePolls() map[string]int64 {
	out := map[string]int64{}
	for l, byNode := range c.Steps {
		if strings.HasSuffix(l, GateSuffix) {
			addTo(out, byNode)
		}
	}
	return out
}

// String is the one-line summary the run and `rotate status` print:
// "cp1 312, cp2 298, w1 120 (dials 4)", nodes by name, each with the part
// that was gates polling when there was some ("cp1 312 (90 gate polls)");
// "none" when nothing was counted.
func (c RoundTripCounts) String() string {
	if c.Empty() {
		return "none"
	}
	names := slices.Sorted(maps.Keys(c.Nodes))
	gates := c.GatePolls()
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %d", n, c.Nodes[n])
		if g := gates[n]; g > 0 {
			parts[i] += fmt.Sprintf(" (%d gate polls)", g)
		}
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	var dials int64
	for _, d := range c.Dials {
		dials += d
	}
	return fmt.Sprintf("%s (dials %d)", strings.Join(parts, ", "), dials)
}
