package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/state"
)

// keyRoundTrips is the run's SSH round trips so far (nodes.RoundTripCounts,
// JSON), written with every checkpoint.
const keyRoundTrips = "stats/round-trips"

// tripLedger keeps a run's count of SSH round trips (nodes.RoundTrips)
// with its state: every checkpoint carries the counts so far, in the same
// transaction, and the first one of a process adds what earlier processes
// of the run recorded, so a killed and resumed run counts the whole run.
// What a killed process counted after its last checkpoint is lost with it.
type tripLedger struct {
	live *nodes.RoundTrips // nil: not counted

	mu     sync.Mutex
	loaded bool
}

// stamp adds the counts to cp, reading the recorded ones on first use.
func (l *tripLedger) stamp(ctx context.Context, store state.Store, cp *state.Checkpoint) error {
	if l == nil || l.live == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.loaded {
		prev, err := recordedTrips(ctx, store)
		if err != nil {
			return err
		}
		l.live.Add(prev)
		l.loaded = true
	}
	raw, err := json.Marshal(l.live.Counts())
	if err != nil {
		return err
	}
	values := make(map[string][]byte, len(cp.Values)+1)
	for k, v := range cp.Values {
		values[k] = v
	}
	values[keyRoundTrips] = raw
	cp.Values = values
	return nil
}

// recordedTrips is the round trips recorded with the run (zero: none).
func recordedTrips(ctx context.Context, store state.Store) (nodes.RoundTripCounts, error) {
	var c nodes.RoundTripCounts
	raw, ok, err := store.Value(ctx, keyRoundTrips)
	if err != nil || !ok {
		return c, err
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, fmt.Errorf("%w: round trips recorded with the run: %v", state.ErrCorrupt, err)
	}
	return c, nil
}

// summary is the line the run prints where it stops: the whole run's
// round trips per node (this process's and the ones recorded before).
func (l *tripLedger) summary() string {
	if l == nil || l.live == nil {
		return ""
	}
	return "round trips: " + l.live.Counts().String()
}

// tripLabel labels the round trips of one step (on any target) for
// nodes.RoundTrips: "phase/step", and "phase/step (revert)" for its revert.
func tripLabel(ctx context.Context, phase, step string, revert bool) context.Context {
	l := phase + "/" + step
	if revert {
		l += " (revert)"
	}
	return nodes.CountAs(ctx, l)
}
