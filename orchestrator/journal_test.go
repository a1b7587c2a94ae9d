package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// memNodes is a NodeSource of in-memory nodes.
type memNodes map[string]*nodes.MemRunner

func (m memNodes) Node(ctx context.Context, name string) (nodes.Runner, error) {
	r, ok := m[name]
	if !ok {
		return nil, fmt.Errorf("node %s: not in the inventory", name)
	}
	return r, nil
}

// fileStep writes one file on its node, backing it up first as the real
// node steps do; with fail set its apply fails after the write, quoting a
// private key.
type fileStep struct {
	name, path string
	content    []byte
	fail       bool
}

func (s fileStep) Name() string { return s.name }

func (s fileStep) Check(ctx context.Context, rt *steps.Runtime, t steps.Target) (bool, error) {
	r, err := rt.Nodes.Node(ctx, t.Node)
	if err != nil {
		return false, err
	}
	b, err := r.ReadFile(ctx, s.path)
	return err == nil && string(b) == string(s.content), nil
}

func (s fileStep) Apply(ctx context.Context, rt *steps.Runtime, t steps.Target) error {
	r, err := rt.Nodes.Node(ctx, t.Node)
	if err != nil {
		return err
	}
	if _, err := nodes.BackupFile(ctx, r, rt.Store, rt.Config.Paths.BackupDir, rt.BackupID, s.path); err != nil {
		return err
	}
	if err := r.WriteFile(ctx, s.path, s.content, 0o644); err != nil {
		return err
	}
	if s.fail {
		return errors.New("broke after writing " + testKeyPEM)
	}
	return nil
}

func (fileStep) Gate(context.Context, *steps.Runtime, steps.Target) error { return nil }

func (s fileStep) Revert(ctx context.Context, rt *steps.Runtime, t steps.Target) error {
	r, err := rt.Nodes.Node(ctx, t.Node)
	if err != nil {
		return err
	}
	b, ok, err := rt.Store.LoadBackup(ctx, t.Node, s.path)
	if err != nil || !ok {
		return err
	}
	return nodes.Restore(ctx, r, b)
}

// TestEventsJournal: the log says which file each step changed on which
// node with the content's SHA-256, which backups it took, failures (their
// keys redacted), the hold and the rollback; while the run holds the state
// file, `rotate events` shows the journal the run keeps, which is the same.
func TestEventsJournal(t *testing.T) {
	ctx := context.Background()
	store, p := newStateFile(t)
	cp1 := nodes.NewMemRunner("cp1")
	cp1.SetFile("/etc/kubernetes/pki/ca.crt", []byte("old CA"), 0o644)
	ca := fileStep{name: "ca-file", path: "/etc/kubernetes/pki/ca.crt", content: []byte("old+new CA")}
	broken := fileStep{name: "kubeconfig", path: "/etc/kubernetes/admin.conf", content: []byte("kc"), fail: true}
	target := []steps.Target{{Node: "cp1", Role: steps.RoleControlPlane}}
	plan := &plans.Plan{Version: 1, Phases: []plans.Phase{
		{Index: 0, Name: "widen", HoldAfter: true, Steps: []plans.PlannedStep{{Step: ca, Targets: target, Concurrency: 1}}},
		{Index: 1, Name: "narrow", Steps: []plans.PlannedStep{{Step: broken, Targets: target, Concurrency: 1}}},
	}}
	snap := withSnapshot(store, p, plan, nil)
	rt := steps.Runtime{Nodes: memNodes{"cp1": cp1}, Config: &steps.Config{Paths: steps.Paths{BackupDir: "/var/lib/rotate/backups"}}, RunID: "r1"}
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := New(Options{Store: snap, Plan: plan, Runtime: rt, Log: log})
	if err := e.Start(ctx, state.Run{ID: "r1", Cluster: "lab"}, true); err != nil {
		t.Fatal(err)
	}
	if err := e.Resume(ctx); err == nil {
		t.Fatal("resume past the hold should fail in narrow")
	}

	// --verbose: structured logs with the run, phase, step, target,
	// attempt and durations, and never a key (the failure quotes one).
	for _, want := range []string{
		"msg=\"phase started\" run=r1 phase=widen index=0",
		"msg=fan-out run=r1 phase=widen step=ca-file targets=1 concurrency=1",
		"msg=\"step started\" run=r1 phase=widen step=ca-file target=cp1 attempt=1",
		"msg=checked run=r1 phase=widen step=ca-file target=cp1 attempt=1 in_place=false duration=",
		"msg=\"gate passed\" run=r1 phase=widen step=ca-file target=cp1 attempt=1 duration=",
		"msg=\"step done\" run=r1 phase=widen step=ca-file target=cp1 attempt=1 skipped=false apply=",
		"msg=\"step failed\" run=r1 phase=narrow step=kubeconfig target=cp1 attempt=1 duration=",
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Fatalf("logs show a key:\n%s", logs.String())
	}

	// While locked: the journal, equal to the store's log once written
	// (the background write may be pending; the session's Stop flushes).
	snap.Flush(ctx)
	v, err := ShowEvents(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if v.Journal != state.JournalPath(p) {
		t.Fatalf("events of a locked file did not come from the journal: %+v", v)
	}
	stored, err := store.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Events) != len(stored) {
		t.Fatalf("journal has %d events, the store %d", len(v.Events), len(stored))
	}
	for i := range stored {
		if want := redactEvent(stored[i]); v.Events[i].Message != want.Message || v.Events[i].Seq != want.Seq || !v.Events[i].Time.Equal(want.Time) {
			t.Fatalf("journal event %d = %+v, store has %+v", i, v.Events[i], want)
		}
	}
	find := func(kind, step string) []state.Event {
		var out []state.Event
		for _, ev := range v.Events {
			if ev.Kind == kind && ev.Step == step {
				out = append(out, ev)
			}
		}
		return out
	}
	ch := find(state.KindChange, "ca-file")
	if len(ch) != 1 || ch[0].Node != "cp1" || ch[0].Path != ca.path || ch[0].SHA256 != sha256Hex(ca.content) ||
		ch[0].Phase != "widen" || ch[0].Target != "cp1" || ch[0].Attempt != 1 || ch[0].Message != "wrote 10 bytes (mode 0644)" {
		t.Fatalf("change events of ca-file = %+v", ch)
	}
	bk := find(state.KindBackup, "ca-file")
	if len(bk) != 1 || bk[0].SHA256 != sha256Hex([]byte("old CA")) || bk[0].Path != ca.path {
		t.Fatalf("backup events of ca-file = %+v", bk)
	}
	// A failed attempt still says what it changed, and its error without
	// the key.
	if ch := find(state.KindChange, "kubeconfig"); len(ch) != 1 || ch[0].Path != broken.path {
		t.Fatalf("change events of the failed step = %+v", ch)
	}
	fails := find(state.KindStep, "kubeconfig")
	last := fails[len(fails)-1]
	if last.Level != "error" || !strings.Contains(last.Message, "<private key redacted>") {
		t.Fatalf("failure event = %+v", last)
	}
	var held, failed bool
	for _, ev := range v.Events {
		if strings.Contains(ev.Message, "PRIVATE KEY") {
			t.Fatalf("journal shows a key: %+v", ev)
		}
		if ev.Kind == state.KindChange && strings.HasPrefix(ev.Path, "/var/lib/rotate/") {
			t.Fatalf("rotate's own backup copy journaled as a change: %+v", ev)
		}
		held = held || ev.Kind == state.KindState && strings.HasSuffix(ev.Message, "-> held")
		failed = failed || ev.Kind == state.KindState && ev.Level == "error"
	}
	if !held || !failed {
		t.Fatalf("hold %v, failure %v not in the log", held, failed)
	}

	// Rollback: reverts and what they restored.
	if err := e.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	store.Close()
	v, err = ShowEvents(ctx, p)
	if err != nil || v.Journal != "" {
		t.Fatalf("events of an unlocked file: %+v %v", v, err)
	}
	var reverted, restored bool
	for _, ev := range v.Events {
		reverted = reverted || ev.Kind == state.KindRevert && ev.Step == "ca-file"
		restored = restored || ev.Kind == state.KindChange && ev.Step == "ca-file" && ev.SHA256 == sha256Hex([]byte("old CA")) && strings.HasPrefix(ev.Message, "restored")
	}
	if !reverted || !restored {
		t.Fatalf("rollback not in the log (reverted %v, restored %v): %+v", reverted, restored, v.Events)
	}
}
