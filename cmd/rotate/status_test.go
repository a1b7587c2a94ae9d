package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kubeca/rotate/orchestrator"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// TestStatusShowsPreExisting: a held run's report lists what failed before
// the rotation too, between what was verified and what needs attention;
// a report without any prints and encodes as before.
func TestStatusShowsPreExisting(t *testing.T) {
	const pre = "apiserver → kubelet w1: dial tcp 10.0.0.3:10250: i/o timeout (already failing before the rotation)"
	tests := []struct {
		name        string
		preExisting []string
		wantTable   string // "" = no pre-existing line
		wantJSON    bool
	}{
		{name: "with pre-existing problems", preExisting: []string{pre},
			wantTable: "  ok: verified\n  pre-existing: " + pre + "\n  attention: look\n", wantJSON: true},
		{name: "without"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hold := &steps.HoldReport{CheckedAt: time.Date(2026, 11, 27, 4, 18, 40, 0, time.UTC),
				Verified: []string{"verified"}, Attention: []string{"look"}, PreExisting: tt.preExisting}
			rep := &orchestrator.StatusReport{Run: state.Run{ID: "r1", Cluster: "c", State: orchestrator.StateHeld, Phase: "verify"}, Hold: hold}
			var out bytes.Buffer
			printStatus(&out, rep)
			if tt.wantTable != "" && !strings.Contains(out.String(), tt.wantTable) {
				t.Errorf("status lacks\n%s\ngot:\n%s", tt.wantTable, out.String())
			}
			if tt.wantTable == "" && strings.Contains(out.String(), "pre-existing") {
				t.Errorf("status shows pre-existing without any:\n%s", out.String())
			}
			raw, err := json.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(string(raw), `"preExisting":`); got != tt.wantJSON {
				t.Errorf("JSON has preExisting = %v, want %v: %s", got, tt.wantJSON, raw)
			}
		})
	}
}

// TestStatusShowsStateCopies: during a run, each node's copy of the state
// and a copy that lags are shown.
func TestStatusShowsStateCopies(t *testing.T) {
	at := time.Date(2026, 11, 27, 4, 18, 40, 0, time.UTC)
	rep := &orchestrator.StatusReport{Run: state.Run{ID: "r1", Cluster: "c", State: "servers"}, Mirror: []orchestrator.MirrorNodeStatus{
		{Node: "cp1", Path: "/var/lib/rotate/state/c.db", WrittenAt: at},
		{Node: "cp2", Path: "/var/lib/rotate/state/c.db", WrittenAt: at, Error: "write /var/lib/rotate/state/c.db on cp2: exit status 69: no space left on device"},
	}}
	var out bytes.Buffer
	printStatus(&out, rep)
	for _, want := range []string{
		"state copy on cp1 (/var/lib/rotate/state/c.db) written 2026-11-27T04:18:40Z",
		"state copy on cp2 (/var/lib/rotate/state/c.db) lags: write /var/lib/rotate/state/c.db on cp2: exit status 69: no space left on device",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}

// TestStatusShowsRoundTrips: the run's SSH round trips per node on one
// line, the same the run prints; no line for a run that recorded none.
func TestStatusShowsRoundTrips(t *testing.T) {
	run := state.Run{ID: "r1", Cluster: "c", State: orchestrator.StateCompleted}
	var out bytes.Buffer
	printStatus(&out, &orchestrator.StatusReport{Run: run,
		RoundTrips: map[string]int64{"cp2": 298, "cp1": 312, "w1": 120}, Dials: map[string]int64{"cp1": 2, "cp2": 1, "w1": 1}})
	if want := "\nround trips: cp1 312, cp2 298, w1 120 (dials 4)\n"; !strings.Contains(out.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, out.String())
	}
	out.Reset()
	printStatus(&out, &orchestrator.StatusReport{Run: run})
	if strings.Contains(out.String(), "round trips") {
		t.Errorf("status shows round trips of a run that recorded none:\n%s", out.String())
	}
}
