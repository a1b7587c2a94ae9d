package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/sshdtest"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
)

// The test world's node a keeps its copy of the state in the test's
// directory (the sshd node is this machine).
func worldBackupDir(dir string) string { return filepath.Join(dir, "node-a", "backups") }
func worldMirror(dir string) string    { return MirrorPath(worldBackupDir(dir), "world") }

// helperMirror is the helper process's mirror to node a over SSH.
func helperMirror(dir, rawCfg string, s *state.BoltStore) (*mirror, func(), error) {
	var cfg nodes.Config
	if err := json.Unmarshal([]byte(rawCfg), &cfg); err != nil {
		return nil, nil, err
	}
	pool := nodes.NewPool([]nodes.Config{cfg})
	m := newMirror(poolSource{pool}, []string{"a"}, worldMirror(dir), s.Snapshot, nil)
	return m, func() { m.Close(); pool.Close() }, nil
}

// sshNodeA starts a real sshd as node a and returns its configuration as
// the helper's environment wants it.
func sshNodeA(t *testing.T) (nodes.Config, string) {
	t.Helper()
	srv := sshdtest.Start(t, sshdtest.Options{Name: "a"})
	cfg := nodes.Config{Name: "a", Address: srv.Host, Port: srv.Port, IdentityFile: srv.ClientKeyFile, KnownHostsFile: srv.KnownHosts,
		DialTimeout: 5 * time.Second, CommandTimeout: 30 * time.Second, RetryBackoff: 50 * time.Millisecond}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, "ROTATE_TEST_MIRROR_NODE=" + string(raw)
}

// loseStateFile is the operator's machine dying: the state file and the
// files beside it are gone.
func loseStateFile(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, "rotate.db")
	for _, f := range []string{p, state.SnapshotPath(p), state.JournalPath(p)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

// recoverWorld rebuilds dir's state file from node a's copy (nodes b and
// c, whose backup copies recovery reads too, are the same sshd).
func recoverWorld(t *testing.T, dir string, cfg nodes.Config) (string, error) {
	t.Helper()
	b, c := cfg, cfg
	b.Name, c.Name = "b", "c"
	pool := nodes.NewPool([]nodes.Config{cfg, b, c})
	defer pool.Close()
	var out strings.Builder
	rc := &recovery{node: "a", path: worldMirror(dir), cluster: "world", src: poolSource{pool}, controlPlane: []string{"a"},
		backupDir: worldBackupDir(dir), planFor: func(bool) *plans.Plan { return testPlan(dir) }, out: NewPrinter(&out), now: time.Now}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := rc.install(ctx, filepath.Join(dir, "rotate.db"))
	return out.String(), err
}

// TestRecoverMatrix kills the run (SIGKILL, a real process that keeps a copy
// of its state on node a, a real sshd) after every checkpoint in turn,
// deletes its state file, recovers it from node a and continues it: to
// the same end state as one clean run, no apply twice past its check; or
// back to nothing with a rollback. Before the first copy (in preflight,
// which changes no node) recovery says there is nothing to recover.
func TestRecoverMatrix(t *testing.T) {
	cfg, nodeEnv := sshNodeA(t)
	want, commits := cleanRun(t)
	before := commitsBeforeHold(t)
	lagged := 0 // recoveries from a copy older than the run
	for k := 1; k <= commits; k++ {
		for _, then := range []string{"resume", "rollback"} {
			if then == "rollback" && k%3 != 0 {
				continue // a third of the kill points suffice for rollback
			}
			t.Run(fmt.Sprintf("kill-after-commit-%02d-%s", k, then), func(t *testing.T) {
				dir := t.TempDir()
				r := runHelper(t, dir, "start", nodeEnv, "ROTATE_TEST_KILL_AFTER="+strconv.Itoa(k))
				if !r.killed {
					r = runHelper(t, dir, "resume", nodeEnv, "ROTATE_TEST_KILL_AFTER="+strconv.Itoa(k-before))
				}
				if !r.killed {
					t.Fatalf("the process was never killed at commit %d: %s", k, r.out)
				}
				loseStateFile(t, dir)
				said, err := recoverWorld(t, dir, cfg)
				if strings.Contains(said, "marked started") {
					lagged++
				}
				if errors.Is(err, ErrCannotRecover) && strings.Contains(err.Error(), "no copy of a run's state") {
					// Killed before the first copy: nothing but preflight ran.
					if got := readWorld(t, dir); len(got) > 1 || len(got) == 1 && got[0] != "prepare@cluster" {
						t.Fatalf("no copy on the node, but the world has %v", got)
					}
					return
				}
				if err != nil {
					t.Fatalf("recover: %v", err)
				}
				if then == "rollback" {
					if r := runHelper(t, dir, "rollback", nodeEnv); r.killed || r.code != 0 {
						t.Fatalf("rollback: code %d\n%s", r.code, r.out)
					}
					if got := readWorld(t, dir); len(got) != 0 {
						t.Fatalf("world after rollback = %v, want empty", got)
					}
					assertFinished(t, dir)
					return
				}
				finishWith(t, dir, nodeEnv)
				if got := readWorld(t, dir); strings.Join(got, ",") != strings.Join(want, ",") {
					t.Fatalf("world after recovery = %v, want %v", got, want)
				}
				for id, n := range countApplies(readJournal(t, dir)) {
					if n != 1 {
						t.Errorf("apply of %s ran %d times", id, n)
					}
				}
				assertFinished(t, dir)
			})
		}
	}
	if lagged == 0 {
		t.Error("no recovery was from a copy that lagged the run: the matrix did not test that")
	}
	t.Logf("%d recoveries from a lagging copy", lagged)
}

// finishWith resumes (with the copy kept) until the run completes.
func finishWith(t *testing.T, dir string, env ...string) {
	t.Helper()
	for range 5 {
		if runState(t, dir) == StateCompleted {
			return
		}
		if r := runHelper(t, dir, "resume", env...); r.killed || r.code != 0 {
			t.Fatalf("resume: killed=%v code=%d\n%s", r.killed, r.code, r.out)
		}
	}
	t.Fatalf("run did not complete after 5 resumes; state %s", runState(t, dir))
}

// assertFinished: a run that ended left a tombstone instead of its copy,
// and recovering it again is refused.
func assertFinished(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(worldMirror(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the ended run's copy is still on the node: %v", err)
	}
	if tomb, err := os.ReadFile(tombstonePath(worldMirror(dir))); err != nil || !tombstoneNames(tomb, "test") {
		t.Fatalf("tombstone %q %v", tomb, err)
	}
}

// TestRecoverFromNode: `--recover-from NODE --inventory FILE` against a
// real sshd node: it refuses an existing state file, a node outside the
// control plane, a node without a copy, a copy of another cluster or of
// another cluster's CAs, and a run a tombstone says has ended; otherwise
// it installs the copy (0600) with this machine's inventory, the backups
// the node has copies of, and the phase's unrecorded steps marked started.
func TestRecoverFromNode(t *testing.T) {
	ctx := context.Background()
	srv := sshdtest.Start(t, sshdtest.Options{Name: "cp1"})
	root := t.TempDir() // the node's files
	pkiDir, backupDir := filepath.Join(root, "k8s", "pki"), filepath.Join(root, "rotate", "backups")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(pkiDir, 0o755))
	oldCA, err := pki.NewCA(pki.CAOptions{CommonName: "kubernetes"})
	must(err)
	newCA, err := pki.NewCA(pki.CAOptions{CommonName: "kubernetes-new"})
	must(err)
	caFile := filepath.Join(pkiDir, "ca.crt")
	must(os.WriteFile(caFile, append(append([]byte{}, oldCA.CertPEM...), newCA.CertPEM...), 0o644))

	invDir := t.TempDir()
	inventory := func(cluster string) string {
		p := filepath.Join(invDir, cluster+".yaml")
		must(os.WriteFile(filepath.Join(invDir, "admin.conf"), []byte(testKubeconfig), 0o600))
		must(os.WriteFile(p, fmt.Appendf(nil, `apiVersion: rotate.kubeca.io/v1alpha1
kind: Inventory
cluster: {name: %s}
kubernetes: {kubeconfig: admin.conf}
ssh: {identityFile: %s, knownHostsFile: %s, dialTimeout: 5s}
nodes:
  controlPlane:
    - {name: cp1, address: %s, port: %d}
paths: {kubernetesDir: %s, pkiDir: %s, backupDir: %s}
`, cluster, srv.ClientKeyFile, srv.KnownHosts, srv.Host, srv.Port, filepath.Join(root, "k8s"), pkiDir, backupDir), 0o600))
		return p
	}
	inv := inventory("lab")

	// The run as the lost machine left it: in phase distribute, one step
	// done on cp1 and its backup copy on the node.
	loaded, err := plans.Load(inv)
	must(err)
	plan := loaded.Config().Plan(plans.Options{Hold: true})
	dist := plan.Phases[1]
	cp1 := dist.Steps[0].Targets[0]
	doneKey := plans.StepKey(dist.Name, dist.Steps[0].Step.Name(), cp1)
	live, _ := newStateFile(t)
	run := state.Run{ID: "run-1", Cluster: "lab", PlanVersion: plan.Version, State: dist.Name, Phase: dist.Name, Hold: true}
	must(live.Commit(ctx, state.Checkpoint{Run: &run, Values: startValues(t, inv),
		CAs: []state.CAMaterial{{Name: "cluster", OldCert: oldCA.CertPEM, OldKey: oldCA.KeyPEM, NewCert: newCA.CertPEM, NewKey: newCA.KeyPEM}}}))
	snap, err := live.Snapshot(ctx)
	must(err)
	mirrorPath := MirrorPath(backupDir, "lab")
	must(os.MkdirAll(filepath.Dir(mirrorPath), 0o700))
	gz, err := compressed(live.Snapshot)(ctx) // as the mirror writes it
	must(err)
	must(os.WriteFile(mirrorPath, gz, 0o600))
	// After the copy: a step on cp1 backed up ca.crt and changed it.
	client, err := nodes.Dial(ctx, loaded.Config().Nodes[0])
	must(err)
	defer client.Close()
	_, err = nodes.BackupFile(ctx, client, nodes.NewMemBackupStore(), backupDir, backupID("run-1", doneKey), caFile)
	must(err)

	statePath := filepath.Join(t.TempDir(), "rotate.db")
	var out strings.Builder
	c := Common{StatePath: statePath, RecoverFrom: "cp1", InventoryPath: inv, Out: &out}
	refused := func(name string, c Common, says string) {
		t.Helper()
		err := recoverFromNode(ctx, c)
		if !errors.Is(err, ErrCannotRecover) || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v, want ErrCannotRecover saying %q", name, err, says)
		}
		if _, err := os.Stat(statePath); name != "state file exists" && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: a state file was left: %v", name, err)
		}
	}

	other := c
	other.RecoverFrom = "cp9"
	refused("not a control-plane node", other, "cp9 is not a control-plane node of "+inv)

	elsewhere := c
	elsewhere.InventoryPath = inventory("prod")
	refused("no copy", elsewhere, "node cp1 has no copy of a run's state at "+MirrorPath(backupDir, "prod"))
	must(os.WriteFile(MirrorPath(backupDir, "prod"), snap, 0o600)) // a raw copy, as older versions wrote
	refused("another cluster's copy", elsewhere, `the copy is of run run-1 of cluster "lab", the inventory's cluster is "prod"`)

	foreign, err := pki.NewCA(pki.CAOptions{CommonName: "kubernetes"})
	must(err)
	must(os.Rename(caFile, caFile+".real"))
	must(os.WriteFile(caFile, foreign.CertPEM, 0o644))
	refused("another cluster's CAs", c, "holds none of run run-1's cluster CAs")
	must(os.Rename(caFile+".real", caFile))

	must(os.WriteFile(tombstonePath(mirrorPath), []byte("run=run-1\nstate=completed\n"), 0o600))
	refused("ended run", c, "says run run-1 has ended")
	must(os.Remove(tombstonePath(mirrorPath)))

	must(os.WriteFile(statePath, []byte("mine"), 0o600))
	refused("state file exists", c, "state file "+statePath+" exists")
	if b, _ := os.ReadFile(statePath); string(b) != "mine" {
		t.Fatalf("an existing state file was changed: %q", b)
	}
	must(os.Remove(statePath))

	if err := recoverFromNode(ctx, c); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(statePath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("recovered state file: %v %v", st, err)
	}
	got, err := state.Open(statePath, state.OpenOptions{ReadOnly: true})
	must(err)
	r, err := got.Run(ctx)
	must(err)
	if r.ID != "run-1" || r.InventoryPath != inv || r.State != dist.Name {
		t.Fatalf("recovered run = %+v", r)
	}
	if b, ok, _ := got.Backup(ctx, doneKey, "cp1", caFile); !ok || !b.Exists || b.Digest == "" {
		t.Fatalf("the node's backup copy was not taken back: %+v %v", b, ok)
	}
	rec, ok, _ := got.Step(ctx, doneKey)
	if !ok || rec.Status != state.StepStarted {
		t.Fatalf("unrecorded step of the phase in progress = %+v %v, want started", rec, ok)
	}
	evs, _ := got.Events(ctx)
	if last := evs[len(evs)-1]; last.Kind != state.KindRecover || !strings.Contains(last.Message, "recovered from node cp1") || !strings.Contains(out.String(), "1 backup(s) taken back") {
		t.Fatalf("recovery event %+v, printed %q", last, out.String())
	}
	// The recovered file resumes like any state file: from here, with this
	// inventory's files.
	got.Close()
	s, _, err := resumeSession(ctx, Common{StatePath: statePath})
	must(err)
	s.close()
}
