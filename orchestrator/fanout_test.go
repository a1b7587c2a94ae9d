package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubeca/rotate/steps"
)

func fanTargets(n int) []steps.Target {
	var out []steps.Target
	for i := 0; i < n; i++ {
		out = append(out, steps.Target{Node: fmt.Sprintf("node-%02d", i)})
	}
	return out
}

// TestFanOut: at most limit targets run at once; one at a time, the first
// failure stops the step; several at a time, a failure lets the running
// ones finish and starts no new one, and every error names its target.
func TestFanOut(t *testing.T) {
	ctx := context.Background()
	t.Run("bounded", func(t *testing.T) {
		var running, peak atomic.Int32
		var mu sync.Mutex
		seen := map[string]bool{}
		err := FanOut(ctx, fanTargets(30), 4, func(ctx context.Context, tg steps.Target) error {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			seen[tg.Node] = true
			mu.Unlock()
			return nil
		})
		if err != nil || len(seen) != 30 {
			t.Fatalf("err %v, ran %d of 30", err, len(seen))
		}
		if p := peak.Load(); p > 4 || p < 2 {
			t.Errorf("peak concurrency %d, want 2..4", p)
		}
	})
	t.Run("one at a time stops at the first failure", func(t *testing.T) {
		var ran []string
		boom := errors.New("boom")
		err := FanOut(ctx, fanTargets(10), 1, func(ctx context.Context, tg steps.Target) error {
			ran = append(ran, tg.Node)
			if tg.Node == "node-03" {
				return boom
			}
			return nil
		})
		if !errors.Is(err, boom) || strings.Join(ran, " ") != "node-00 node-01 node-02 node-03" {
			t.Fatalf("err %v, ran %v", err, ran)
		}
	})
	t.Run("a failure starts no new target", func(t *testing.T) {
		var started atomic.Int32
		err := FanOut(ctx, fanTargets(30), 4, func(ctx context.Context, tg steps.Target) error {
			started.Add(1)
			if tg.Node == "node-01" {
				return errors.New("boom")
			}
			time.Sleep(20 * time.Millisecond)
			return nil
		})
		if err == nil || !strings.Contains(err.Error(), "node-01: boom") {
			t.Fatalf("err = %v, want node-01: boom", err)
		}
		if n := started.Load(); n >= 30 {
			t.Errorf("%d targets started after the failure, want fewer than 30", n)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var started atomic.Int32
		err := FanOut(ctx, fanTargets(10), 2, func(ctx context.Context, tg steps.Target) error {
			if started.Add(1) == 2 {
				cancel()
			}
			<-ctx.Done()
			return ctx.Err()
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if n := started.Load(); n > 3 {
			t.Errorf("%d targets started, want at most 3 (none once cancelled, but for a free slot taken at once)", n)
		}
	})
}

// TestFanOutStop: once stop is closed no new target starts, the running
// ones finish, and the targets not started are no error (the caller
// stopped it for a failure of its own).
func TestFanOutStop(t *testing.T) {
	ctx := context.Background()
	for _, limit := range []int{1, 3} {
		stop := make(chan struct{})
		var mu sync.Mutex
		var ran []string
		err := fanOut(ctx, stop, fanTargets(10), limit, func(ctx context.Context, tg steps.Target) error {
			mu.Lock()
			ran = append(ran, tg.Node)
			mu.Unlock()
			if tg.Node == "node-00" {
				close(stop)
				return nil
			}
			<-stop // the others end only after the stop: no slot frees before it
			return nil
		})
		if err != nil {
			t.Fatalf("limit %d: %v", limit, err)
		}
		if len(ran) != limit {
			t.Errorf("limit %d: ran %v, want only the %d started before the stop", limit, ran, limit)
		}
	}
}
