package main

import (
	"strings"
	"testing"
	"time"
)

func TestUnion(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	for _, tc := range []struct {
		name string
		iv   []interval
		want time.Duration
	}{
		{"none", nil, 0},
		{"one", []interval{{at(0), at(3)}}, 3 * time.Second},
		{"disjoint", []interval{{at(5), at(6)}, {at(0), at(3)}}, 4 * time.Second},
		{"parallel gates count once", []interval{{at(0), at(4)}, {at(1), at(3)}, {at(2), at(6)}}, 6 * time.Second},
		{"touching", []interval{{at(0), at(2)}, {at(2), at(3)}}, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := union(tc.iv); got != tc.want {
				t.Errorf("union = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestWithBatchPercent(t *testing.T) {
	in := "# head\napiVersion: x\nrollout:\n  workerBatchSize: 1\n  workloadConcurrency: 2\nhold: true\n"
	out, err := withBatchPercent([]byte(in), 25)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if strings.Contains(s, "workerBatchSize") || !strings.Contains(s, "workerBatchPercent: 25") || !strings.Contains(s, "workloadConcurrency: 2") {
		t.Errorf("got:\n%s", s)
	}
}

func TestSummarize(t *testing.T) {
	rt := map[string]int64{"cp1": 10, "cp2": 11, "worker1": 3, "worker2": 9, "worker3": 5}
	got := summarize(rt, map[string]int64{"cp1": 2, "worker1": 1}, []string{"worker1", "worker2", "worker3"})
	if got.WorkerMin != 3 || got.WorkerMedian != 5 || got.WorkerMax != 9 || got.Total != 38 || got.Dials != 3 || len(got.ControlPlane) != 2 {
		t.Errorf("got %+v", got)
	}
}
