package waits

import (
	"context"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func TestStartWithoutClockIsNoOp(t *testing.T) {
	Start(context.Background(), Cluster)() // must not panic
	ctx, c := With(context.Background())
	Start(Without(ctx), Cluster)()
	if got := c.Spans(); len(got) != 0 {
		t.Errorf("a wait under Without was recorded: %v", got)
	}
}

func TestClockRecordsConcurrentWaits(t *testing.T) {
	ctx, c := With(context.Background())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			end := Start(ctx, Cluster)
			time.Sleep(5 * time.Millisecond)
			end()
		})
	}
	wg.Wait()
	Start(ctx, Restart)()
	spans := c.Spans()
	kinds := map[Kind]int{}
	for _, s := range spans {
		kinds[s.Kind]++
		if s.To.Before(s.From) {
			t.Errorf("span ends before it starts: %+v", s)
		}
	}
	// Eight overlapping waits merge into one (they ran at once); the
	// restart is its own kind.
	if kinds[Cluster] != 1 || kinds[Restart] != 1 {
		t.Errorf("spans %+v, want one wait and one restart", spans)
	}
}

func TestMerge(t *testing.T) {
	in := []Span{
		{Cluster, at(5), at(6)},
		{Cluster, at(0), at(2)},
		{Cluster, at(1), at(3)},  // overlaps the first
		{Cluster, at(3), at(4)},  // touches
		{Restart, at(2), at(7)},  // another kind overlapping: kept apart
		{Cluster, at(10), at(9)}, // backwards: treated as empty
	}
	got := Merge(in, 0)
	want := []Span{{Cluster, at(0), at(4)}, {Restart, at(2), at(7)}, {Cluster, at(5), at(6)}, {Cluster, at(10), at(10)}}
	if len(got) != len(want) {
		t.Fatalf("Merge = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].Kind != want[i].Kind || !got[i].From.Equal(want[i].From) || !got[i].To.Equal(want[i].To) {
			t.Errorf("span %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if tot := Total(got); tot != 7*time.Second {
		t.Errorf("Total = %s, want 7s (0-7 covered once)", tot)
	}
}

func TestMergeLimitJoinsClosest(t *testing.T) {
	var in []Span
	// Waits 1 s long at 0, 10, 12, 30: the closest pair (10 and 12) is
	// joined first, then 0 and 10-13 (gap 9 s) before 13 and 30 (17 s).
	for _, s := range []float64{0, 10, 12, 30} {
		in = append(in, Span{Cluster, at(s), at(s + 1)})
	}
	got := Merge(in, 3)
	if len(got) != 3 || !got[1].From.Equal(at(10)) || !got[1].To.Equal(at(13)) {
		t.Errorf("Merge limit 3 = %+v, want 10-13 joined", got)
	}
	got = Merge(in, 2)
	if len(got) != 2 || !got[0].From.Equal(at(0)) || !got[0].To.Equal(at(13)) {
		t.Errorf("Merge limit 2 = %+v, want 0-13 and 30-31", got)
	}
	// Never fewer than one span per kind.
	got = Merge(append(in, Span{Restart, at(40), at(41)}), 1)
	if len(got) != 2 {
		t.Errorf("Merge limit 1 over two kinds = %+v, want one span of each", got)
	}
}

func TestTotal(t *testing.T) {
	if got := Total(nil); got != 0 {
		t.Errorf("Total(nil) = %s", got)
	}
	got := Total([]Span{{Cluster, at(0), at(4)}, {Restart, at(1), at(3)}, {Restart, at(6), at(8)}})
	if got != 6*time.Second {
		t.Errorf("Total = %s, want 6s", got)
	}
}
