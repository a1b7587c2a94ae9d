package steps

import (
	"sync"
	"sync/atomic"
	"testing"
)

// Every index is called once, never more than limit at a time; a limit
// below one is one.
func TestForEachBounded(t *testing.T) {
	for _, tc := range []struct{ n, limit, want int }{{20, 3, 3}, {5, 0, 1}, {2, 8, 2}, {0, 4, 0}} {
		var running, peak atomic.Int32
		var mu sync.Mutex
		seen := map[int]int{}
		release := make(chan struct{})
		started := make(chan struct{}, tc.n)
		go func() {
			// Hold the calls until as many as may run are running, then
			// let them all go.
			for i := 0; i < tc.want; i++ {
				<-started
			}
			close(release)
		}()
		forEachBounded(tc.n, tc.limit, func(i int) {
			now := running.Add(1)
			for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
			}
			started <- struct{}{}
			<-release
			mu.Lock()
			seen[i]++
			mu.Unlock()
			running.Add(-1)
		})
		if int(peak.Load()) != tc.want {
			t.Errorf("n=%d limit=%d: %d ran at once, want %d", tc.n, tc.limit, peak.Load(), tc.want)
		}
		if len(seen) != tc.n {
			t.Errorf("n=%d limit=%d: %d indices called, want %d", tc.n, tc.limit, len(seen), tc.n)
		}
		for i, c := range seen {
			if c != 1 {
				t.Errorf("n=%d: index %d called %d times", tc.n, i, c)
			}
		}
	}
}
