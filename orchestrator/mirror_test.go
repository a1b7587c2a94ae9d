package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/state"
)

const testMirror = "/var/lib/rotate/state/lab.db"

// mirrorNodes are three in-memory control-plane nodes whose mkdir works.
func mirrorNodes() memNodes {
	ns := memNodes{}
	for _, n := range []string{"cp1", "cp2", "cp3"} {
		m := nodes.NewMemRunner(n)
		m.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (nodes.Result, error) {
			if strings.Contains(cmd, "mkdir -p") && strings.Contains(cmd, "'/var/lib/rotate/state'") {
				m.MkdirAll("/var/lib/rotate/state")
			}
			return nodes.Result{}, nil
		}
		ns[n] = m
	}
	return ns
}

// counter is a state whose snapshot says how often it changed.
type counter struct{ n atomic.Int64 }

func (c *counter) snap(context.Context) ([]byte, error) {
	return fmt.Appendf(nil, "state %d", c.n.Load()), nil
}

func (c *counter) change(m *mirror) { c.n.Add(1); m.mark() }

func writes(m *nodes.MemRunner) int {
	n := 0
	for _, op := range m.Ops() {
		if op == "write "+testMirror {
			n++
		}
	}
	return n
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMirrorPath(t *testing.T) {
	for _, tc := range []struct{ backupDir, cluster, want string }{
		{"/var/lib/rotate/backups", "lab", "/var/lib/rotate/state/lab.db"},
		{"/srv/rotate/backups", "prod-eu.1", "/srv/rotate/state/prod-eu.1.db"},
		{"/var/lib/rotate/backups", "../../etc/x y", "/var/lib/rotate/state/_.._.._etc_x_y.db"},
		{"/var/lib/rotate/backups", ".hidden", "/var/lib/rotate/state/_.hidden.db"},
	} {
		if got := MirrorPath(tc.backupDir, tc.cluster); got != tc.want {
			t.Errorf("MirrorPath(%q, %q) = %q, want %q", tc.backupDir, tc.cluster, got, tc.want)
		}
	}
}

// TestMirrorSyncPlacesCopies: Sync writes the latest snapshot to every
// control-plane node, 0600 in a 0700 directory beside the backups, and
// nothing is uploaded before the first Sync.
func TestMirrorSyncPlacesCopies(t *testing.T) {
	ns := mirrorNodes()
	var c counter
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, c.snap, nil)
	defer m.Close()
	c.change(m) // before the first Sync: preflight, nothing leaves
	time.Sleep(50 * time.Millisecond)
	if writes(ns["cp1"]) != 0 {
		t.Fatal("a copy was written before the first Sync")
	}
	c.change(m)
	if err := m.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, n := range ns {
		data, ok := n.File(testMirror)
		fi, _ := n.Stat(context.Background(), testMirror)
		if !ok || string(data) != "state 2" || fi.Mode.Perm() != 0o600 || fi.Owner != "root" {
			t.Errorf("%s: copy %q (%v), mode %04o owner %s", name, data, ok, fi.Mode.Perm(), fi.Owner)
		}
		if d, b := mkdirs(t, n), batches(n); d != 1 || b != 1 {
			t.Errorf("%s: the directory made %d times in %d round trips, want 1 in 1 (with the copy)", name, d, b)
		}
	}
	if st := m.Status(); len(st) != 3 || st[0].WrittenAt.IsZero() || st[0].Path != testMirror || st[0].Error != "" {
		t.Fatalf("Status = %+v", st)
	}
}

// TestMirrorInStatusSnapshot: `rotate status` during a run shows the
// copies once they are kept, not while the run is in preflight.
func TestMirrorInStatusSnapshot(t *testing.T) {
	ctx := context.Background()
	ns := mirrorNodes()
	var c counter
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, c.snap, nil)
	defer m.Close()
	p := filepath.Join(t.TempDir(), "rotate.db")
	snap := withSnapshot(withMirror(state.NewMemStore(), m, nil), p, testPlan(t.TempDir()), nil)
	snap.mirrorStatus = m.activeStatus
	run := state.Run{ID: "r1", State: "preflight"}
	if err := snap.Commit(ctx, state.Checkpoint{Run: &run}); err != nil {
		t.Fatal(err)
	}
	snap.Flush(ctx)
	if raw, _, _ := state.ReadSnapshot(p); strings.Contains(string(raw), `"mirror"`) {
		t.Fatalf("snapshot in preflight shows copies:\n%s", raw)
	}
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := snap.Commit(ctx, state.Checkpoint{Run: &run}); err != nil {
		t.Fatal(err)
	}
	snap.Flush(ctx)
	if raw, _, _ := state.ReadSnapshot(p); !strings.Contains(string(raw), `"node": "cp3"`) || !strings.Contains(string(raw), `"writtenAt"`) {
		t.Fatalf("snapshot lacks the copies:\n%s", raw)
	}
}

// TestMirrorCoalesces: while an upload to a slow node is in flight, the
// run's checkpoints never wait for it and wake its uploader once; the next
// upload is of the latest snapshot. A Sync waits for the upload in flight,
// then writes the latest, so a node never gets an older copy after a newer.
func TestMirrorCoalesces(t *testing.T) {
	ns := mirrorNodes()
	gates := map[int32]chan struct{}{2: make(chan struct{}), 4: make(chan struct{})}
	var n atomic.Int32
	ns["cp2"].Fail = func(op, p string) error {
		if op == "write" && p == testMirror {
			if g, ok := gates[n.Add(1)]; ok {
				<-g // this upload hangs until released
			}
		}
		return nil
	}
	var c counter
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, c.snap, nil)
	m.interval = 0 // every change wakes an upload at once (TestMirrorInterval)
	defer m.Close()
	ctx := context.Background()
	if err := m.Sync(ctx); err != nil { // write 1
		t.Fatal(err)
	}
	c.change(m) // write 2, in the background, hangs
	waitUntil(t, "the background upload to cp2", func() bool { return n.Load() == 2 })
	start := time.Now()
	for range 50 {
		c.change(m)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("50 checkpoints waited %s for the uploads", d)
	}
	close(gates[2])
	waitUntil(t, "the latest copy on cp2", func() bool { d, _ := ns["cp2"].File(testMirror); return string(d) == "state 51" })
	time.Sleep(50 * time.Millisecond)
	if w := writes(ns["cp2"]); w != 3 {
		t.Fatalf("cp2 got %d writes, want 3 (sync, the one in flight, the latest)", w)
	}

	c.change(m) // write 4 hangs
	waitUntil(t, "the next background upload to cp2", func() bool { return n.Load() == 4 })
	c.change(m)
	synced := make(chan error)
	go func() { synced <- m.Sync(ctx) }()
	select {
	case err := <-synced:
		t.Fatalf("Sync returned (%v) while an upload to cp2 was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(gates[4])
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	if d, _ := ns["cp2"].File(testMirror); string(d) != "state 53" {
		t.Fatalf("after Sync cp2 holds %q, want the latest", d)
	}
}

// TestMirrorFailures: a node that cannot be written fails Sync naming it
// and keeps its previous copy whole; in the background a failure is only
// reported (Status), never blocking.
func TestMirrorFailures(t *testing.T) {
	ns := mirrorNodes()
	var c counter
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, c.snap, nil)
	m.backoff = time.Millisecond
	m.interval = 0
	defer m.Close()
	ctx := context.Background()
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	ns["cp3"].Fail = func(op, p string) error {
		if op == "write" {
			return errors.New("no space left on device")
		}
		return nil
	}
	c.change(m)
	err := m.Sync(ctx)
	if !errors.Is(err, errSyncFailed) || !strings.Contains(err.Error(), "node cp3") || !strings.Contains(err.Error(), "no space left") || strings.Contains(err.Error(), "cp1") {
		t.Fatalf("Sync = %v, want a failure naming cp3 alone", err)
	}
	if d, _ := ns["cp3"].File(testMirror); string(d) != "state 0" {
		t.Fatalf("cp3 holds %q after a failed write, want its previous copy", d)
	}
	start := time.Now()
	for range 20 {
		c.change(m)
	}
	if time.Since(start) > 100*time.Millisecond {
		t.Fatal("checkpoints waited for a failing node")
	}
	waitUntil(t, "cp1 to get the latest", func() bool { d, _ := ns["cp1"].File(testMirror); return string(d) == "state 21" })
	st := m.Status()
	if st[2].Node != "cp3" || !strings.Contains(st[2].Error, "no space left") || st[0].Error != "" {
		t.Fatalf("Status = %+v", st)
	}
}

// backupMirror is a mirror over cp1-cp3 whose copies say how many backups
// the state holds, and the store that copies them, nodes keeping file
// backups' copies of their own.
func backupMirror(t *testing.T, ns memNodes, nodesWithCopies ...string) (*mirror, mirrorStore) {
	mem := state.NewMemStore()
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, func(ctx context.Context) ([]byte, error) {
		n, _ := mem.Counts(ctx)
		return fmt.Appendf(nil, "backups %d", n.Backups), nil
	}, nil)
	t.Cleanup(m.Close)
	return m, withMirror(mem, m, nodesWithCopies)
}

// TestMirrorBackupWriteAhead: a backup without a copy on a node (an API
// object's) is on every node before SaveBackupIfAbsent returns, also when
// the step is retried after the copy failed; a file backup (its node keeps
// a copy) is not waited for.
func TestMirrorBackupWriteAhead(t *testing.T) {
	ns := mirrorNodes()
	ctx := context.Background()
	m, s := backupMirror(t, ns, "cp1", "cp2", "cp3", "w1")
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	ns["cp1"].Fail = func(op, p string) error { return errors.New("host down") }
	api := state.Backup{Scope: "publication/cm@cluster", Node: "api", Path: "configmap/kube-system/x", Exists: true}
	if _, err := s.SaveBackupIfAbsent(ctx, api); err == nil || !strings.Contains(err.Error(), "before the change it guards") {
		t.Fatalf("API backup with a node down = %v, want the step to fail", err)
	}
	ns["cp1"].Fail = nil
	if saved, err := s.SaveBackupIfAbsent(ctx, api); err != nil || saved { // the retry
		t.Fatalf("retry = %v %v", saved, err)
	}
	for name, n := range ns {
		if d, _ := n.File(testMirror); string(d) != "backups 1" {
			t.Errorf("%s holds %q, want the API backup", name, d)
		}
	}
	file := state.Backup{Scope: "distribute/ca@cp1", Node: "cp1", Path: "/etc/kubernetes/pki/ca.crt", Exists: true}
	ns["cp2"].Fail = func(op, p string) error { return errors.New("host down") }
	if _, err := s.SaveBackupIfAbsent(ctx, file); err != nil {
		t.Fatalf("file backup waited for the copies: %v", err)
	}
}

// TestMirrorBackupCarriedByPhaseCopy: an API backup taken before a phase's
// copy (withCopyToFollow) is not copied on its own; the phase's copy
// carries it, and the step's own save of it (found saved) copies nothing
// again, even after later checkpoints; one copy failed is made again.
func TestMirrorBackupCarriedByPhaseCopy(t *testing.T) {
	ns := mirrorNodes()
	ctx := context.Background()
	m, s := backupMirror(t, ns, "cp1", "cp2", "cp3")
	m.interval = time.Hour // no background copies
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	all := func() (n int) {
		for _, r := range ns {
			n += writes(r)
		}
		return n
	}
	base := all()
	api := state.Backup{Scope: "cluster-info/cluster-info@cluster", Node: "api", Path: "configmaps/kube-public/cluster-info", Exists: true}
	if saved, err := s.SaveBackupIfAbsent(withCopyToFollow(ctx), api); err != nil || !saved {
		t.Fatalf("early backup = %v %v", saved, err)
	}
	if w := all() - base; w != 0 {
		t.Fatalf("the early backup was copied on its own (%d writes)", w)
	}
	if err := m.Sync(ctx); err != nil { // the phase's copy
		t.Fatal(err)
	}
	for name, n := range ns {
		if d, _ := n.File(testMirror); string(d) != "backups 1" {
			t.Errorf("%s holds %q, want the API backup", name, d)
		}
	}
	base = all()
	if err := s.Commit(ctx, state.Checkpoint{Values: map[string][]byte{"k": []byte("v")}}); err != nil { // the step starts
		t.Fatal(err)
	}
	if saved, err := s.SaveBackupIfAbsent(ctx, api); err != nil || saved { // Apply's own backup
		t.Fatalf("Apply's backup = %v %v", saved, err)
	}
	if w := all() - base; w != 0 {
		t.Errorf("a backup the copies hold was copied again (%d writes)", w)
	}

	// A later backup whose phase copy failed on one node: the step's save
	// copies it.
	api2 := state.Backup{Scope: "narrow-trust/extension-auth-narrowed@cluster", Node: "api", Path: "configmaps/kube-system/extension-apiserver-authentication", Exists: true}
	if _, err := s.SaveBackupIfAbsent(withCopyToFollow(ctx), api2); err != nil {
		t.Fatal(err)
	}
	ns["cp2"].Fail = func(op, p string) error { return errors.New("host down") }
	if err := m.Sync(ctx); err == nil {
		t.Fatal("a copy to a node that is down succeeded")
	}
	ns["cp2"].Fail = nil
	if _, err := s.SaveBackupIfAbsent(ctx, api2); err != nil {
		t.Fatal(err)
	}
	if d, _ := ns["cp2"].File(testMirror); string(d) != "backups 2" {
		t.Errorf("cp2 holds %q after the step's save, want both backups", d)
	}
}

// TestMirrorFinish: a finished run leaves a tombstone naming it instead of
// its copy, written in one round trip, and nothing is uploaded afterwards.
func TestMirrorFinish(t *testing.T) {
	ns := mirrorNodes()
	var c counter
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, c.snap, nil)
	defer m.Close()
	ctx := context.Background()
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Finish(ctx, state.Run{ID: "r1", Cluster: "lab", State: StateCompleted}); err != nil {
		t.Fatal(err)
	}
	c.change(m)
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for name, n := range ns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok := n.File(testMirror); ok {
				t.Errorf("%s still has its copy", name)
			}
			if b := batches(n); b != 2 {
				t.Errorf("%s: %d round trips for the copy and its tombstone, want 2", name, b)
			}
			tomb, _ := n.File(tombstonePath(testMirror))
			fi, _ := n.Stat(ctx, tombstonePath(testMirror))
			if !tombstoneNames(tomb, "r1") || !strings.Contains(string(tomb), "state=completed") || fi.Mode.Perm() != 0o600 {
				t.Errorf("%s tombstone %q mode %04o", name, tomb, fi.Mode.Perm())
			}
		}()
	}
	wg.Wait()
}

// mkdirs counts the times the copies' directory was made on a node; each
// must be in the batch that writes into it, as its first operation.
func mkdirs(t *testing.T, m *nodes.MemRunner) int {
	t.Helper()
	n := 0
	ops := m.Ops()
	for i, op := range ops {
		if op == "mkdir "+path.Dir(testMirror) {
			n++
			if i == 0 || !strings.HasPrefix(ops[i-1], "apply-batch ") {
				t.Errorf("%s: the directory was made outside a batch's start: %q", m.Name(), ops[max(0, i-1):i+1])
			}
		}
	}
	return n
}

// batches counts a node's round trips that apply files.
func batches(m *nodes.MemRunner) int {
	n := 0
	for _, op := range m.Ops() {
		if strings.HasPrefix(op, "apply-batch ") {
			n++
		}
	}
	return n
}

// TestMirrorInterval: many changes within the interval after a node's
// last upload make one background upload, at the interval's end, of the
// latest snapshot; each upload is one round trip that makes the directory
// too.
func TestMirrorInterval(t *testing.T) {
	ns := mirrorNodes()
	var c counter
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, c.snap, nil)
	m.interval = 300 * time.Millisecond
	defer m.Close()
	if err := m.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	synced := time.Now()
	for range 50 {
		c.change(m)
	}
	time.Sleep(100 * time.Millisecond)
	within := time.Since(synced) < m.interval // a slow machine may oversleep
	for name, n := range ns {
		if w := writes(n); within && w != 1 {
			t.Fatalf("%s: %d writes within the interval, want the Sync's alone", name, w)
		}
	}
	for name, n := range ns {
		waitUntil(t, name+" to get the latest", func() bool { d, _ := n.File(testMirror); return string(d) == "state 50" })
	}
	if d := time.Since(synced); d < m.interval {
		t.Fatalf("the background upload came %s after the last, before the interval", d)
	}
	time.Sleep(2 * m.interval)
	for name, n := range ns {
		if w, d, b := writes(n), mkdirs(t, n), batches(n); w != 2 || d != 2 || b != 2 {
			t.Errorf("%s: %d writes and %d directory checks in %d round trips, want 2, 2 and 2", name, w, d, b)
		}
	}
}

// TestMirrorIntervalCountsFromSyncs: a Sync within the interval restarts
// it: a background upload comes an interval after the node's last upload,
// whichever made it (the phase copies come more often than the interval,
// so most runs need few background ones).
func TestMirrorIntervalCountsFromSyncs(t *testing.T) {
	ns := mirrorNodes()
	var c counter
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, c.snap, nil)
	m.interval = 400 * time.Millisecond
	defer m.Close()
	ctx := context.Background()
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	c.change(m) // the uploaders now wait out the interval
	time.Sleep(m.interval / 2)
	c.change(m)
	if err := m.Sync(ctx); err != nil { // a phase starts
		t.Fatal(err)
	}
	synced := time.Now()
	c.change(m)
	time.Sleep(m.interval * 3 / 4) // past the first Sync's interval
	within := time.Since(synced) < m.interval
	for name, n := range ns {
		if w := writes(n); within && w != 2 {
			t.Fatalf("%s: %d writes before the interval after the second Sync, want its 2", name, w)
		}
	}
	for name, n := range ns {
		waitUntil(t, name+" to get the latest", func() bool { d, _ := n.File(testMirror); return string(d) == "state 3" })
		if w := writes(n); w != 3 {
			t.Errorf("%s: %d writes, want 3", name, w)
		}
	}
	if d := time.Since(synced); d < m.interval {
		t.Fatalf("the background upload came %s after the Sync, before the interval", d)
	}
}

// TestMirrorSyncNeverWaits: within the interval, a Sync (the one at a
// phase start, before an API change, at the hold or after a failure)
// still writes the latest snapshot at once, and no change made before it
// is lost; a node whose write failed has its directory made again (as
// every upload does, in its own round trip).
func TestMirrorSyncNeverWaits(t *testing.T) {
	ns := mirrorNodes()
	var c counter
	m := newMirror(ns, []string{"cp1", "cp2", "cp3"}, testMirror, c.snap, nil)
	m.interval = time.Hour
	defer m.Close()
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		for range 10 {
			c.change(m)
		}
		start := time.Now()
		if err := m.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Sync %d took %s", i, d)
		}
		for name, n := range ns {
			if d, _ := n.File(testMirror); string(d) != fmt.Sprintf("state %d", 10*i) {
				t.Fatalf("after Sync %d %s holds %q", i, name, d)
			}
			if w := writes(n); w != i {
				t.Fatalf("after Sync %d %s got %d writes", i, name, w)
			}
		}
	}
	// A Sync with nothing new writes nothing.
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if w := writes(ns["cp1"]); w != 3 {
		t.Fatalf("a Sync without a change wrote: %d writes", w)
	}
	ns["cp3"].Fail = func(op, p string) error {
		if op == "write" {
			return errors.New("no such file or directory")
		}
		return nil
	}
	c.change(m)
	if err := m.Sync(ctx); err == nil {
		t.Fatal("Sync with cp3 failing succeeded")
	}
	ns["cp3"].Fail = nil
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if d, _ := ns["cp3"].File(testMirror); string(d) != "state 31" {
		t.Fatalf("cp3 holds %q", d)
	}
	if d1, d3 := mkdirs(t, ns["cp1"]), mkdirs(t, ns["cp3"]); d1 != 4 || d3 != 5 {
		t.Fatalf("directory made %d times on cp1 and %d on cp3, want 4 and 5 (with each upload, and the failed one)", d1, d3)
	}
	if b1, b3 := batches(ns["cp1"]), batches(ns["cp3"]); b1 != 4 || b3 != 5 {
		t.Fatalf("%d round trips to cp1 and %d to cp3, want 4 and 5 (one per upload)", b1, b3)
	}
}

// TestCopyCompression: the copies are gzipped and read back whole; a raw
// copy (older versions) is read as it is; a damaged gzip copy is refused.
func TestCopyCompression(t *testing.T) {
	raw := bytes.Repeat([]byte("-----BEGIN CERTIFICATE-----\nMIIC\x00\x00\x00\x00"), 4096)
	gz, err := compressed(func(context.Context) ([]byte, error) { return raw, nil })(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(gz) >= len(raw)/5 {
		t.Errorf("gzipped copy is %d bytes of %d", len(gz), len(raw))
	}
	for name, tc := range map[string]struct{ in, want []byte }{"gzipped": {gz, raw}, "raw": {raw, raw}} {
		got, err := decodeCopy(tc.in)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: %d bytes, %v", name, len(got), err)
		}
	}
	if _, err := decodeCopy(gz[:len(gz)/2]); err == nil {
		t.Error("a copy cut short was accepted")
	}
}
