package main

import (
	"strings"
	"testing"
	"time"

	"github.com/kubeca/rotate/internal/waits"
)

func TestSplit(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	steps := []stepTiming{
		// Two targets gated in parallel: 10-14 and 12-16 count as 6 s.
		{FinishedAt: at(14), GateTime: 4 * time.Second},
		{FinishedAt: at(16), GateTime: 4 * time.Second},
		// A rollout wait 2-6 and a CSR wait 5-8 inside apply: 6 s.
		{FinishedAt: at(9), Waits: []waits.Span{{Kind: waits.Cluster, From: at(2), To: at(6)}, {Kind: waits.Cluster, From: at(5), To: at(8)}}},
		// A wait overlapping a gate counts once, as gate time.
		{FinishedAt: at(20), Waits: []waits.Span{{Kind: waits.Cluster, From: at(15), To: at(17)}}},
		// A restart 20-23, half inside another step's wait 20-21.
		{FinishedAt: at(24), Waits: []waits.Span{{Kind: waits.Restart, From: at(20), To: at(23)}, {Kind: waits.Cluster, From: at(20), To: at(21)}}},
	}
	got := splitOf(steps)
	want := split{gates: 6 * time.Second, waits: 6*time.Second + time.Second + time.Second, restarts: 2 * time.Second}
	if got != want {
		t.Errorf("split = %+v, want %+v", got, want)
	}
	var r result
	r.fromRotation(&statusReport{Steps: steps}, 40*time.Second, nil)
	if r.GateSeconds != 6 || r.WaitSeconds != 8 || r.RestartSeconds != 2 || r.OwnSeconds != 24 || r.OwnFraction != 0.6 {
		t.Errorf("result %+v, want gates 6, waits 8, restarts 2, own 24 (0.6)", r)
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

func TestHostBusy(t *testing.T) {
	b0, t0, err := cpuTicks()
	if err != nil {
		t.Fatal(err)
	}
	if t0 == 0 || b0 > t0 {
		t.Fatalf("cpuTicks = %d busy of %d", b0, t0)
	}
	if got := hostBusy(100, 1000, 250, 1200); got != 0.75 {
		t.Errorf("hostBusy = %v, want 0.75 (150 of 200 ticks busy)", got)
	}
	if got := hostBusy(100, 1000, 100, 1000); got != 0 {
		t.Errorf("hostBusy over no time = %v, want 0", got)
	}
}
