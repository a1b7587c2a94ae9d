package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kubeca/rotate/internal/waits"
	"github.com/kubeca/rotate/orchestrator"
)

// statusReport is what `rotate status -o json` prints; fields a rotate
// under measurement (--rotate-bin) does not print yet stay empty.
type statusReport = orchestrator.StatusReport

type stepTiming = orchestrator.StepTiming

func parseStatus(raw []byte) (*statusReport, error) {
	var r statusReport
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("rotate status -o json: %w", err)
	}
	return &r, nil
}

// report is the bench's JSON output.
type report struct {
	Started      time.Time `json:"started"`
	Finished     time.Time `json:"finished,omitzero"`
	RotateBin    string    `json:"rotateBin"`
	BatchPercent int       `json:"workerBatchPercent"`
	Runs         []result  `json:"runs"`
	Ratios       []ratio   `json:"ratios"`
}

// result is one (mode, N): a rotation and its rollback. Times in seconds.
type result struct {
	Mode            mode    `json:"mode"`
	Workers         int     `json:"workers"`
	RotationSeconds float64 `json:"rotationSeconds"`
	RollbackSeconds float64 `json:"rollbackSeconds"`
	// SettleSeconds is how long after the rollback the cluster took to be
	// where a run starts from (kube-root-ca.crt republished, Nodes Ready).
	SettleSeconds float64 `json:"settleSeconds"`
	// GateSeconds is the union of every step's health-gate interval
	// [finishedAt-gateTime, finishedAt] (parallel gates counted once);
	// WaitSeconds the waits inside steps outside those (rollouts, CSRs
	// signed, publication); RestartSeconds the kubelet restart commands
	// (they return once the kubelet is healthy) outside both; OwnSeconds
	// the rest of the rotation's wall time: rotate's own work, node I/O
	// and state writes included.
	GateSeconds    float64 `json:"gateSeconds"`
	WaitSeconds    float64 `json:"waitSeconds"`
	RestartSeconds float64 `json:"restartSeconds"`
	OwnSeconds     float64 `json:"ownSeconds"`
	OwnFraction    float64 `json:"ownFraction"`
	// HostCPUBusy is the fraction of this machine's CPU time that was busy
	// during the rotation (every node and rotate share it: a saturated
	// machine slows every restart, which real nodes would not);
	// RotateCPUSeconds the CPU time rotate itself used.
	HostCPUBusy      float64       `json:"hostCPUBusy"`
	RotateCPUSeconds float64       `json:"rotateCPUSeconds"`
	Phases           []phaseResult `json:"phases"`
	// RoundTrips are the rotation's SSH round trips, RollbackRoundTrips
	// the rollback's (the state's counters after it, minus the rotation's).
	RoundTrips         trips `json:"roundTrips"`
	RollbackRoundTrips trips `json:"rollbackRoundTrips"`
	// RoundTripsByStep is rotate's own split of the round trips, rotation
	// and rollback together ("state copies": the state mirrored to the
	// control-plane nodes).
	RoundTripsByStep map[string]map[string]int64 `json:"roundTripsByStep,omitempty"`
	ProxyConnections int64                       `json:"proxyConnections,omitempty"`
	ProxyFailedDials int64                       `json:"proxyFailedDials,omitempty"`
	Error            string                      `json:"error,omitempty"`
}

type phaseResult struct {
	Name        string  `json:"name"`
	Steps       int     `json:"steps"`
	WallSeconds float64 `json:"wallSeconds"` // first step start to last step finish
	GateSeconds float64 `json:"gateSeconds"` // union of its steps' gate intervals
	WaitSeconds float64 `json:"waitSeconds"` // waits and restarts inside its steps, outside gates
}

type trips struct {
	ControlPlane map[string]int64 `json:"controlPlane"`
	WorkerMin    int64            `json:"workerMin"`
	WorkerMedian int64            `json:"workerMedian"`
	WorkerMax    int64            `json:"workerMax"`
	Total        int64            `json:"total"`
	Dials        int64            `json:"dials"`
}

type ratio struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
}

// gateSpans are the steps' health-gate intervals [finishedAt-gateTime,
// finishedAt], as waits.Span of kind "gate".
func gateSpans(steps []stepTiming) []waits.Span {
	var out []waits.Span
	for _, s := range steps {
		if s.GateTime > 0 && !s.FinishedAt.IsZero() {
			out = append(out, waits.Span{Kind: "gate", From: s.FinishedAt.Add(-s.GateTime), To: s.FinishedAt})
		}
	}
	return out
}

// split is a set of steps' time outside rotate's own work: in health
// gates, then in waits inside apply not overlapping a gate (rollouts,
// CSRs), then in restart commands overlapping neither. Parallel
// intervals count once.
type split struct{ gates, waits, restarts time.Duration }

func splitOf(steps []stepTiming) split {
	g := gateSpans(steps)
	var w, r []waits.Span
	for _, s := range steps {
		for _, sp := range s.Waits {
			if sp.Kind == waits.Restart {
				r = append(r, sp)
			} else {
				w = append(w, sp)
			}
		}
	}
	gates := waits.Total(g)
	gw := waits.Total(append(slices.Clone(g), w...))
	all := waits.Total(append(append(slices.Clone(g), w...), r...))
	return split{gates: gates, waits: gw - gates, restarts: all - gw}
}

func (s split) total() time.Duration { return s.gates + s.waits + s.restarts }

func (r *result) fromRotation(st *statusReport, wall time.Duration, workers []string) {
	sp := splitOf(st.Steps)
	r.GateSeconds = round3(sp.gates.Seconds())
	r.WaitSeconds = round3(sp.waits.Seconds())
	r.RestartSeconds = round3(sp.restarts.Seconds())
	own := wall - sp.total()
	r.OwnSeconds = round3(own.Seconds())
	if wall > 0 {
		r.OwnFraction = round3(float64(own) / float64(wall))
	}
	byPhase := map[string][]stepTiming{}
	for _, s := range st.Steps {
		byPhase[s.Phase] = append(byPhase[s.Phase], s)
	}
	phases := slices.Clone(st.Phases)
	sort.Slice(phases, func(i, j int) bool { return phases[i].Index < phases[j].Index })
	for _, ph := range phases {
		steps := byPhase[ph.Name]
		if len(steps) == 0 {
			continue
		}
		var first, last time.Time
		for _, s := range steps {
			if !s.StartedAt.IsZero() && (first.IsZero() || s.StartedAt.Before(first)) {
				first = s.StartedAt
			}
			if s.FinishedAt.After(last) {
				last = s.FinishedAt
			}
		}
		psp := splitOf(steps)
		pr := phaseResult{Name: ph.Name, Steps: len(steps), GateSeconds: round3(psp.gates.Seconds()),
			WaitSeconds: round3((psp.waits + psp.restarts).Seconds())}
		if !first.IsZero() && last.After(first) {
			pr.WallSeconds = round3(last.Sub(first).Seconds())
		}
		r.Phases = append(r.Phases, pr)
	}
	r.RoundTrips = summarize(st.RoundTrips, st.Dials, workers)
}

func (r *result) fromRollback(before, after *statusReport, workers []string) {
	diff := func(a, b map[string]int64) map[string]int64 {
		out := map[string]int64{}
		for k, v := range b {
			out[k] = v - a[k]
		}
		return out
	}
	r.RollbackRoundTrips = summarize(diff(before.RoundTrips, after.RoundTrips), diff(before.Dials, after.Dials), workers)
	r.RoundTripsByStep = after.RoundTripsByStep
}

func summarize(rt, dials map[string]int64, workers []string) trips {
	t := trips{ControlPlane: map[string]int64{}}
	isWorker := map[string]bool{}
	var ws []int64
	for _, w := range workers {
		isWorker[w] = true
		ws = append(ws, rt[w])
	}
	for node, n := range rt {
		t.Total += n
		if !isWorker[node] {
			t.ControlPlane[node] = n
		}
	}
	for _, n := range dials {
		t.Dials += n
	}
	if len(ws) > 0 {
		slices.Sort(ws)
		t.WorkerMin, t.WorkerMedian, t.WorkerMax = ws[0], ws[len(ws)/2], ws[len(ws)-1]
	}
	return t
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

func secs(s float64) string { return fmt.Sprintf("%.1fs", s) }

func (rep *report) run(m string, n int) *result {
	for i := range rep.Runs {
		if r := &rep.Runs[i]; r.Mode.Name == m && r.Workers == n && r.Error == "" {
			return r
		}
	}
	return nil
}

// computeRatios: for each mode, largest N over smallest (rotation and
// rollback); for each N and each other mode, its rotation over the first
// mode's (the baseline, normally "none"); each run's own time over wall.
func (rep *report) computeRatios() {
	rep.Ratios = nil
	var modes []string
	var ns []int
	for _, r := range rep.Runs {
		if !slices.Contains(modes, r.Mode.Name) {
			modes = append(modes, r.Mode.Name)
		}
		if !slices.Contains(ns, r.Workers) {
			ns = append(ns, r.Workers)
		}
	}
	add := func(name string, a, b float64) {
		if b > 0 {
			rep.Ratios = append(rep.Ratios, ratio{name, round3(a / b)})
		}
	}
	if len(ns) > 1 {
		lo, hi := ns[0], ns[len(ns)-1]
		for _, m := range modes {
			a, b := rep.run(m, hi), rep.run(m, lo)
			if a == nil || b == nil {
				continue
			}
			add(fmt.Sprintf("rotation(N=%d)/rotation(N=%d) %s", hi, lo, m), a.RotationSeconds, b.RotationSeconds)
			add(fmt.Sprintf("rollback(N=%d)/rollback(N=%d) %s", hi, lo, m), a.RollbackSeconds, b.RollbackSeconds)
		}
	}
	if len(modes) > 1 {
		for _, n := range ns {
			base := rep.run(modes[0], n)
			for _, m := range modes[1:] {
				if r := rep.run(m, n); r != nil && base != nil {
					add(fmt.Sprintf("rotation(%s)/rotation(%s) N=%d", m, modes[0], n), r.RotationSeconds, base.RotationSeconds)
					add(fmt.Sprintf("rollback(%s)/rollback(%s) N=%d", m, modes[0], n), r.RollbackSeconds, base.RollbackSeconds)
				}
			}
		}
	}
	for _, r := range rep.Runs {
		if r.Error == "" {
			rep.Ratios = append(rep.Ratios, ratio{fmt.Sprintf("own/wall %s N=%d", r.Mode.Name, r.Workers), r.OwnFraction})
		}
	}
}

func (rep *report) write(path string) error {
	raw, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(raw, '\n'), 0o644)
}

// table is the human summary: one line per run, the phases' wall times
// (gate time in brackets) per run, then the ratios.
func (rep *report) table() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tN\trotation\trollback\tsettle\tin gates\twaits\trestarts\town\town/wall\thost CPU busy\trotate CPU\tRT cps\tRT workers min/med/max\tRT total\tdials\trollback RT total\t")
	for _, r := range rep.Runs {
		var cps []string
		for _, k := range sortedKeys(r.RoundTrips.ControlPlane) {
			cps = append(cps, fmt.Sprint(r.RoundTrips.ControlPlane[k]))
		}
		failed := ""
		if r.Error != "" {
			failed = " FAILED"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.0f%%\t%s\t%s\t%d/%d/%d\t%d\t%d\t%d\t%s\n", r.Mode.Name, r.Workers,
			secs(r.RotationSeconds), secs(r.RollbackSeconds), secs(r.SettleSeconds), secs(r.GateSeconds), secs(r.WaitSeconds), secs(r.RestartSeconds), secs(r.OwnSeconds), r.OwnFraction, 100*r.HostCPUBusy, secs(r.RotateCPUSeconds),
			strings.Join(cps, "/"), r.RoundTrips.WorkerMin, r.RoundTrips.WorkerMedian, r.RoundTrips.WorkerMax,
			r.RoundTrips.Total, r.RoundTrips.Dials, r.RollbackRoundTrips.Total, failed)
	}
	tw.Flush()
	b.WriteString("\nphase wall time (in gates, waiting inside steps)\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	header := "phase"
	var names []string
	seen := map[string]bool{}
	for _, r := range rep.Runs {
		header += fmt.Sprintf("\t%s N=%d", r.Mode.Name, r.Workers)
		for _, p := range r.Phases {
			if !seen[p.Name] {
				seen[p.Name] = true
				names = append(names, p.Name)
			}
		}
	}
	fmt.Fprintln(tw, header+"\t")
	for _, name := range names {
		line := name
		for _, r := range rep.Runs {
			cell := "-"
			for _, p := range r.Phases {
				if p.Name == name {
					cell = fmt.Sprintf("%s (%s, %s)", secs(p.WallSeconds), secs(p.GateSeconds), secs(p.WaitSeconds))
				}
			}
			line += "\t" + cell
		}
		fmt.Fprintln(tw, line+"\t")
	}
	tw.Flush()
	if len(rep.Ratios) > 0 {
		b.WriteString("\nratios\n")
		for _, r := range rep.Ratios {
			fmt.Fprintf(&b, "  %-45s %.2f\n", r.Name, r.Value)
		}
	}
	return b.String()
}

func sortedKeys(m map[string]int64) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
