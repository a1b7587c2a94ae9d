package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubeca/rotate/orchestrator"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/state/statetest"
)

// stateCommands are every command that opens the state file; the first
// four act on its records (events only prints the log, whatever the
// records say).
func stateCommands(inv string) [][]string {
	return [][]string{{"status"}, {"status", "-o", "json"}, {"resume"}, {"rollback"}, {"start", "--inventory", inv}, {"events"}, {"events", "-o", "json"}}
}

// refused runs the real binary and checks it exits 2 with a message that
// names the file and the problem, without a panic's stack trace, and leaves
// the file's bytes and mode as they were.
func refused(t *testing.T, dir, p, says string, args ...string) {
	t.Helper()
	before := statetest.Digest(t, p)
	r := rotate(t, dir, append(args, "--state", p)...)
	if r.code != 2 || !strings.Contains(r.stderr, p) || !strings.Contains(r.stderr, says) {
		t.Errorf("%v: exit %d, stderr %q\nwant exit 2 naming %s and saying %q", args, r.code, r.stderr, p, says)
	}
	if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic") {
		t.Errorf("%v panicked:\n%s", args, r.stderr)
	}
	if statetest.Digest(t, p) != before {
		t.Fatalf("%v changed the state file", args)
	}
}

// TestCorruptStateFilesExit2 runs every command of the binary over the
// corruption table (state/statetest).
func TestCorruptStateFilesExit2(t *testing.T) {
	dir, inv := env(t, "127.0.0.1:22")
	for _, tc := range statetest.Corrupt(t) {
		t.Run(tc.Name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "rotate.db")
			tc.Make(t, p)
			for _, args := range stateCommands(inv) {
				refused(t, dir, p, tc.Says, args...)
			}
		})
	}
}

// craft writes a well-formed state file holding run, recs and, unless
// noInventory, the inventory at inv, as `rotate start` records it.
func craft(t *testing.T, p, inv string, run state.Run, recs []state.StepRecord, noInventory bool) {
	t.Helper()
	raw, err := os.ReadFile(inv)
	if err != nil {
		t.Fatal(err)
	}
	s, err := state.Open(p, state.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cp := state.Checkpoint{Run: &run, Steps: recs}
	if !noInventory {
		cp.Values = map[string][]byte{"inventory/raw": raw, "inventory/path": []byte(inv)}
	}
	if err := s.Commit(context.Background(), cp); err != nil {
		t.Fatal(err)
	}
}

// TestCraftedRunRecordsExit2: run and step records that no rotate writes
// (the orchestrator would index past its phases, act on steps it does not
// have, or guess) are refused by status, resume and rollback alike.
func TestCraftedRunRecordsExit2(t *testing.T) {
	dir, inv := env(t, "127.0.0.1:22")
	loaded, err := plans.Load(inv)
	if err != nil {
		t.Fatal(err)
	}
	version := plans.Build(loaded, plans.Options{Hold: true}).Version
	run := func(st, phase string) state.Run {
		return state.Run{ID: "r1", Cluster: "lab", PlanVersion: version, Hold: true, State: st, Phase: phase, CreatedAt: time.Unix(1, 0)}
	}
	step := func(key, phase, name, target string, status state.StepStatus) state.StepRecord {
		return state.StepRecord{Key: key, Phase: phase, Step: name, Target: target, Status: status}
	}
	good := step("preflight/nodes-reachable@cp1", "preflight", "nodes-reachable", "cp1", state.StepDone)
	cases := []struct {
		name        string
		run         state.Run
		recs        []state.StepRecord
		noInventory bool
		says        string
	}{
		{name: "held after the last phase", run: run(orchestrator.StateHeld, "narrow-trust"), says: `held after phase "narrow-trust", where this plan never holds`},
		{name: "held after a phase that never holds", run: run(orchestrator.StateHeld, "preflight"), says: `held after phase "preflight"`},
		{name: "unknown state", run: run("bogus", ""), says: `in state "bogus", which this plan does not have`},
		{name: "failed at an unknown phase", run: run(orchestrator.StateFailed, "nowhere"), says: `failed at phase "nowhere"`},
		{name: "unknown step", run: run(orchestrator.StateFailed, "preflight"), recs: []state.StepRecord{good, step("preflight/frobnicate@cp1", "preflight", "frobnicate", "cp1", state.StepDone)},
			says: "step preflight/frobnicate on cp1 that the plan does not have"},
		{name: "unknown target", run: run(orchestrator.StateFailed, "preflight"), recs: []state.StepRecord{step("preflight/nodes-reachable@cp9", "preflight", "nodes-reachable", "cp9", state.StepDone)},
			says: "on cp9 that the plan does not have"},
		{name: "key and fields disagree", run: run(orchestrator.StateFailed, "preflight"), recs: []state.StepRecord{step("x", "preflight", "nodes-reachable", "cp1", state.StepDone)},
			says: `step record "x" is for preflight/nodes-reachable@cp1`},
		{name: "unknown step status", run: run(orchestrator.StateFailed, "preflight"), recs: []state.StepRecord{step(good.Key, good.Phase, good.Step, good.Target, "sideways")},
			says: `has status "sideways"`},
		{name: "no inventory recorded", run: run(orchestrator.StateFailed, "preflight"), noInventory: true, says: "run r1 has no inventory recorded with it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "rotate.db")
			craft(t, p, inv, tc.run, tc.recs, tc.noInventory)
			for _, args := range stateCommands(inv)[:4] {
				refused(t, dir, p, tc.says, args...)
			}
		})
	}
}

// TestNoStateFile: resume, rollback and status on a missing file say so
// (exit 2) and create nothing.
func TestNoStateFile(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{{"status"}, {"resume"}, {"rollback"}} {
		r := rotate(t, dir, append(args, "--state", "none.db")...)
		if r.code != 2 || !strings.Contains(r.stderr, "none.db") || !strings.Contains(r.stderr, "no such file") {
			t.Errorf("%v: exit %d %q", args, r.code, r.stderr)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
}

// TestStateFilePermissionDenied: a user who may not read the state file
// (here nobody, on root's file) gets exit 2 and who owns it.
func TestStateFilePermissionDenied(t *testing.T) {
	nobody, err := user.Lookup("nobody")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and a nobody user")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	dir, err := os.MkdirTemp("", "rotate-perm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, d := range []string{dir, filepath.Dir(rotateBin)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "rotate.db")
	statetest.Write(statetest.Valid(t), 0o600)(t, p)
	before := statetest.Digest(t, p)
	for _, args := range [][]string{{"status"}, {"resume"}, {"rollback"}} {
		cmd := exec.Command(rotateBin, append(args, "--state", p)...)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), p) || !strings.Contains(string(out), "permission denied") || !strings.Contains(string(out), "owned by root") {
			t.Errorf("%v as nobody: %v\n%s", args, err, out)
		}
	}
	if statetest.Digest(t, p) != before {
		t.Fatal("the state file changed")
	}
}

// TestExitCodes: state file problems are input errors (2) even inside a
// failed run; a run's own failure is 1 even when it wraps a missing file
// on a node.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("x: %w", state.ErrBusy), exitBusy},
		{fmt.Errorf("x: %w", state.ErrCorrupt), exitUsage},
		{&orchestrator.RunError{Phase: "p", Err: fmt.Errorf("commit: %w", state.ErrCorrupt)}, exitUsage},
		{fmt.Errorf("x: %w", state.ErrOwner), exitUsage},
		{fmt.Errorf("x: %w", state.ErrPermissions), exitUsage},
		{fmt.Errorf("state file x: %w", fs.ErrPermission), exitUsage},
		{fmt.Errorf("state file x: %w", fs.ErrNotExist), exitUsage},
		{&orchestrator.RunError{Phase: "p", Err: fmt.Errorf("read /etc/kubernetes/pki/ca.crt on cp1: %w", fs.ErrNotExist)}, exitFailed},
		{errors.New("anything else"), exitFailed},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
