package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubeca/rotate/state"
)

// TestEventsCommand: `rotate events` prints the log as a table and as
// JSON (the fields kept, keys redacted), and exits 2 without a state file
// or with a bad --output.
func TestEventsCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "rotate.db")
	s, err := state.Open(p, state.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	sum := "3f2a9c1b7e0d5a4c3f2a9c1b7e0d5a4c3f2a9c1b7e0d5a4c3f2a9c1b7e0d5a4c"
	err = s.Commit(ctx, state.Checkpoint{Run: &state.Run{ID: "r1", Cluster: "lab", State: "failed"}, Events: []state.Event{
		{Time: at, Level: "info", Kind: state.KindRun, Message: "run r1 started for cluster lab"},
		{Time: at, Level: "info", Kind: state.KindChange, Phase: "distribute", Step: "ca-files", Target: "cp1", Attempt: 2,
			Node: "cp1", Path: "/etc/kubernetes/pki/ca.crt", SHA256: sum, Message: "wrote 1188 bytes (mode 0644)"},
		{Time: at, Level: "error", Kind: state.KindStep, Phase: "distribute", Step: "ca-files", Target: "cp1", Attempt: 2,
			Message: "ca-files on cp1: apply: -----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"},
	}})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	r := rotate(t, dir, "events")
	if r.code != 0 {
		t.Fatalf("events: exit %d %s", r.code, r.stderr)
	}
	for _, want := range []string{"KIND", "run r1 started", "distribute/ca-files@cp1 #2", "cp1:/etc/kubernetes/pki/ca.crt sha256:3f2a9c1b7e0d5a4c  wrote 1188 bytes", "<private key redacted>"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("events table lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "PRIVATE KEY-----") {
		t.Errorf("events shows a key:\n%s", r.stdout)
	}
	r = rotate(t, dir, "events", "-o", "json", "--state", p)
	var evs []state.Event
	if err := json.Unmarshal([]byte(r.stdout), &evs); r.code != 0 || err != nil || len(evs) != 3 {
		t.Fatalf("events -o json: exit %d, %v:\n%s", r.code, err, r.stdout)
	}
	if evs[1].SHA256 != sum || evs[1].Node != "cp1" || evs[1].Attempt != 2 || evs[1].Kind != "change" || strings.Contains(r.stdout, "PRIVATE KEY-----") {
		t.Errorf("events -o json = %+v", evs)
	}
	if r := rotate(t, t.TempDir(), "events"); r.code != 2 || !strings.Contains(r.stderr, "rotate.db") {
		t.Errorf("events without a state file: exit %d %q", r.code, r.stderr)
	}
	if r := rotate(t, dir, "events", "-o", "yaml"); r.code != 2 || !strings.Contains(r.stderr, "--output must be table or json") {
		t.Errorf("events -o yaml: exit %d %q", r.code, r.stderr)
	}
}

// TestRecoverFromUsage: --recover-from and --inventory go together, and
// what recovery refuses exits 2 naming the file or node.
func TestRecoverFromUsage(t *testing.T) {
	dir, inv := env(t, "127.0.0.1:22")
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"resume", "--recover-from", "cp1"}, "resume: --recover-from needs --inventory"},
		{[]string{"rollback", "--inventory", inv}, "rollback: --inventory goes with --recover-from"},
		{[]string{"rollback", "--recover-from", "cp9", "--inventory", inv}, "cp9 is not a control-plane node of " + inv},
	} {
		if r := rotate(t, dir, tc.args...); r.code != 2 || !strings.Contains(r.stderr, tc.says) {
			t.Errorf("%v: exit %d %q, want 2 saying %q", tc.args, r.code, r.stderr, tc.says)
		}
	}
	p := filepath.Join(dir, "rotate.db")
	if err := os.WriteFile(p, []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := rotate(t, dir, "resume", "--recover-from", "cp1", "--inventory", inv)
	if r.code != 2 || !strings.Contains(r.stderr, "state file rotate.db exists; --recover-from only rebuilds a missing one") {
		t.Errorf("recover over a state file: exit %d %q", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(p); string(b) != "kept" {
		t.Errorf("recover changed the state file: %q", b)
	}
}
