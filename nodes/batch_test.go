package nodes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// batchRunner is what the batch contract is run against.
type batchRunner interface {
	Runner
	Batcher
}

// batchSuite is the Batcher contract, run against the SSH client on a real
// sshd, a Pool's runner and MemRunner (TestRunnerContract*,
// TestBatchContractPool). root is a directory the runner may use.
func batchSuite(t *testing.T, r batchRunner, root string) {
	ctx := testCtx(t)
	p := func(name string) string { return root + "/" + name }
	bin := []byte("line\n\x00nul\x00\r\n\xff\xfe end without newline")
	odd := p("it's a \"file\"\nwith a newline")
	const anyMode = 1 << 20 // MemRunner's directories are all 0755

	t.Run("read a mixed batch", func(t *testing.T) {
		must(t, r.WriteFile(ctx, p("bin"), bin, 0o640))
		must(t, r.WriteFile(ctx, p("empty"), nil, 0))
		must(t, r.WriteFile(ctx, odd, []byte("odd\n\n"), 0))
		must(t, r.Symlink(ctx, "bin", p("link")))
		must(t, r.Symlink(ctx, p("nowhere"), p("dangling")))
		must(t, r.Symlink(ctx, root, p("dirlink")))
		paths := []string{p("bin"), p("missing"), p("empty"), odd, p("link"), p("dangling"), root, p("dirlink")}
		got, err := r.ReadFiles(ctx, paths)
		must(t, err)
		if len(got) != len(paths) {
			t.Fatalf("%d states for %d paths", len(got), len(paths))
		}
		for i, st := range got {
			if st.Err != nil || st.Info.Path != paths[i] {
				t.Errorf("%q: path %q, err %v", paths[i], st.Info.Path, st.Err)
			}
		}
		if st := got[0]; !st.HasContent || !bytes.Equal(st.Content, bin) || !st.Info.IsRegular || st.Info.Mode != 0o640 || st.Info.Size != int64(len(bin)) {
			t.Errorf("binary file: %+v", st)
		}
		if st := got[1]; st.Info.Exists || st.HasContent {
			t.Errorf("missing: %+v", st)
		}
		if st := got[2]; !st.HasContent || len(st.Content) != 0 || !st.Info.IsRegular {
			t.Errorf("empty: %+v", st)
		}
		if st := got[3]; !st.HasContent || string(st.Content) != "odd\n\n" {
			t.Errorf("odd path: %+v", st)
		}
		if st := got[4]; !st.Info.IsSymlink || st.Info.LinkTarget != "bin" || !st.HasContent || !bytes.Equal(st.Content, bin) {
			t.Errorf("symlink: %+v", st)
		}
		if st := got[5]; !st.Info.Exists || !st.Info.IsSymlink || st.HasContent {
			t.Errorf("dangling symlink: %+v", st)
		}
		if st := got[6]; !st.Info.IsDir || st.HasContent {
			t.Errorf("directory: %+v", st)
		}
		if st := got[7]; !st.Info.IsSymlink || st.HasContent {
			t.Errorf("link to a directory: %+v", st)
		}
	})

	t.Run("apply in order", func(t *testing.T) {
		must(t, r.WriteFile(ctx, p("kept"), []byte("old"), 0o640))
		must(t, r.Symlink(ctx, "bin", p("replaced")))
		ops := []FileOp{
			{Kind: OpMkdirPrivate, Path: p("priv/run"), Dirs: []string{p("priv")}},
			{Kind: OpWrite, Path: p("priv/run/new"), Data: bin},
			{Kind: OpWrite, Path: p("kept"), Data: []byte("new")},
			{Kind: OpWrite, Path: odd, Data: []byte("x"), Mode: 0o644},
			{Kind: OpWriteExact, Path: p("replaced"), Data: []byte("exact"), Mode: 0o444},
			{Kind: OpSymlink, Path: p("cur"), Target: "kept"},
			{Kind: OpRemove, Path: p("empty")},
			{Kind: OpRemove, Path: p("never-was")},
			{Kind: OpWrite, Path: p("priv/run/last"), Data: []byte("2")},
			{Kind: OpWrite, Path: p("priv/run/last"), Data: []byte("3")},
		}
		must(t, r.ApplyFiles(ctx, ops))
		got, err := r.ReadFiles(ctx, []string{p("priv/run/new"), p("kept"), odd, p("replaced"), p("cur"), p("empty"), p("priv/run/last"), p("priv/run"), p("bin")})
		must(t, err)
		want := []struct {
			content string
			mode    uint32
		}{{string(bin), 0o600}, {"new", 0o640}, {"x", 0o644}, {"exact", 0o444}, {"new", 0o777}, {"", 0}, {"3", 0o600}, {"", anyMode}, {string(bin), 0o640}}
		for i, w := range want {
			st := got[i]
			if string(st.Content) != w.content || (w.mode != anyMode && uint32(st.Info.Mode.Perm()) != w.mode) || st.Err != nil {
				t.Errorf("%s: content %q mode %o (err %v), want %q %o", st.Info.Path, st.Content, st.Info.Mode.Perm(), st.Err, w.content, w.mode)
			}
		}
		if !got[3].Info.IsRegular || !got[4].Info.IsSymlink || got[5].Info.Exists || !got[7].Info.IsDir {
			t.Errorf("kinds: %+v %+v %+v %+v", got[3].Info, got[4].Info, got[5].Info, got[7].Info)
		}
	})

	t.Run("a refusal stops the batch there", func(t *testing.T) {
		must(t, r.Symlink(ctx, "bin", p("ln")))
		must(t, r.WriteFile(ctx, p("after"), []byte("before"), 0))
		ops := []FileOp{
			{Kind: OpWrite, Path: p("first"), Data: []byte("1")},
			{Kind: OpWrite, Path: p("ln"), Data: []byte("SECRET-CONTENT")},
			{Kind: OpWrite, Path: p("after"), Data: []byte("changed")},
		}
		err := r.ApplyFiles(ctx, ops)
		var be *BatchError
		if !errors.As(err, &be) || be.Index != 1 || be.Done != 1 || be.Op.Path != p("ln") {
			t.Fatalf("err = %#v, want BatchError at 1 with 1 done", err)
		}
		if !strings.Contains(err.Error(), p("ln")) || !strings.Contains(err.Error(), "symlink") || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error %q does not name the path and reason, or leaks content", err)
		}
		got, err := r.ReadFiles(ctx, []string{p("first"), p("bin"), p("after")})
		must(t, err)
		if string(got[0].Content) != "1" || !bytes.Equal(got[1].Content, bin) || string(got[2].Content) != "before" {
			t.Errorf("after the refusal: %q %q %q", got[0].Content, got[1].Content, got[2].Content)
		}
	})

	t.Run("private dir through a symlink is refused", func(t *testing.T) {
		must(t, r.Symlink(ctx, root, p("dl")))
		err := r.ApplyFiles(ctx, []FileOp{
			{Kind: OpWrite, Path: p("w"), Data: []byte("w")},
			{Kind: OpMkdirPrivate, Path: p("dl")},
		})
		var be *BatchError
		if !errors.As(err, &be) || be.Index != 1 || be.Done != 1 || be.Op.Kind != OpMkdirPrivate {
			t.Fatalf("err = %v, want BatchError at 1", err)
		}
	})

	t.Run("an invalid batch is refused before anything is applied", func(t *testing.T) {
		err := r.ApplyFiles(ctx, []FileOp{
			{Kind: OpWrite, Path: p("not-written"), Data: []byte("x")},
			{Kind: OpWrite, Path: root + "/../escape", Data: []byte("x")},
		})
		var be *BatchError
		if !errors.As(err, &be) || be.Index != 1 || be.Done != 0 {
			t.Fatalf("err = %v, want BatchError at 1 with 0 done", err)
		}
		err = r.ApplyFiles(ctx, []FileOp{{Kind: OpMkdirPrivate, Path: p("a/b"), Dirs: []string{"/elsewhere"}}})
		if !errors.As(err, &be) || be.Index != 0 {
			t.Errorf("Dirs outside Path: err = %v", err)
		}
		if st, _ := r.Stat(ctx, p("not-written")); st.Exists {
			t.Error("an operation of a refused batch was applied")
		}
		if _, err := r.ReadFiles(ctx, []string{p("ok"), "relative"}); err == nil {
			t.Error("ReadFiles with a relative path succeeded")
		}
	})
}

func TestBatchContractPool(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	pool := NewPool([]Config{cfg})
	t.Cleanup(func() { pool.Close() })
	r, err := pool.Get(testCtx(t), "n")
	must(t, err)
	batchSuite(t, r.(batchRunner), t.TempDir())
}

// TestReadFilesPerPathErrorSSH: a path the node cannot stat (a file used
// as a directory) is that path's error, naming it; the others are read.
func TestReadFilesPerPathErrorSSH(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	must(t, os.WriteFile(f, []byte("SECRET"), 0o600))
	got, err := c.ReadFiles(testCtx(t), []string{f + "/child", f})
	must(t, err)
	if got[0].Err == nil || !strings.Contains(got[0].Err.Error(), f+"/child") || strings.Contains(got[0].Err.Error(), "SECRET") {
		t.Errorf("ENOTDIR: %v", got[0].Err)
	}
	if got[1].Err != nil || string(got[1].Content) != "SECRET" {
		t.Errorf("the other path: %+v", got[1])
	}
}

// TestReadFilesNeverMixesVersionsSSH: while a file is rewritten in place
// over and over (truncate, write: no atomic rename), every read either
// returns the file as it was at one instant, matching its description
// (one version, or a prefix of one while it was being written), or says
// the file changed; never a mix of versions or padding.
func TestReadFilesNeverMixesVersionsSSH(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	f := filepath.Join(t.TempDir(), "busy")
	versions := [][]byte{bytes.Repeat([]byte("a"), 100<<10), bytes.Repeat([]byte("b"), 300<<10)}
	must(t, os.WriteFile(f, versions[0], 0o600))
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; !stop.Load(); i++ {
			_ = os.WriteFile(f, versions[i%2], 0o600)
			time.Sleep(time.Millisecond)
		}
	}()
	var changed, whole int
	for i := 0; i < 30; i++ {
		got, err := c.ReadFiles(testCtx(t), []string{f})
		must(t, err)
		st := got[0]
		switch {
		case errors.Is(st.Err, errChanged):
			changed++
		case st.Err != nil:
			t.Fatalf("read %d: %v", i, st.Err)
		case int64(len(st.Content)) != st.Info.Size || !(onlyByte(st.Content, 'a') || onlyByte(st.Content, 'b')):
			// The file as it was at one instant (possibly half
			// written: a prefix of one version), never a mix.
			t.Fatalf("read %d: %d bytes described as %d, not (a prefix of) one version", i, len(st.Content), st.Info.Size)
		default:
			whole++
		}
	}
	stop.Store(true)
	<-done
	t.Logf("%d whole reads, %d reported changed", whole, changed)
}

func onlyByte(b []byte, c byte) bool { return len(bytes.Trim(b, string(c))) == 0 }

// TestApplyFilesOwnersAndModesSSH: OpWrite with Mode 0 keeps an existing
// file's owner, group and mode (setgid included), with a mode only the
// mode changes, OpWriteExact sets all three; a new file is root's, 0600;
// no temp file is left.
func TestApplyFilesOwnersAndModesSSH(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	dir := t.TempDir()
	kept, moded, exact, fresh := filepath.Join(dir, "kubelet.conf"), filepath.Join(dir, "moded"), filepath.Join(dir, "exact"), filepath.Join(dir, "new.key")
	for _, f := range []string{kept, moded, exact} {
		must(t, os.WriteFile(f, []byte("old"), 0o600))
		must(t, os.Chown(f, 1234, 2345))
		must(t, os.Chmod(f, 0o640|os.ModeSetgid))
	}
	must(t, c.ApplyFiles(testCtx(t), []FileOp{
		{Kind: OpWrite, Path: kept, Data: []byte("new")},
		{Kind: OpWrite, Path: moded, Data: []byte("new"), Mode: 0o600},
		{Kind: OpWriteExact, Path: exact, Data: []byte("exact"), Mode: 0o644, UID: 7, GID: 8},
		{Kind: OpWrite, Path: fresh, Data: []byte("k")},
	}))
	assertFile(t, kept, "new", 0o640|os.ModeSetgid, 1234, 2345)
	assertFile(t, moded, "new", 0o600, 1234, 2345)
	assertFile(t, exact, "exact", 0o644, 7, 8)
	assertFile(t, fresh, "k", 0o600, 0, 0)
	if entries, _ := os.ReadDir(dir); len(entries) != 4 {
		t.Errorf("directory holds %d entries, want 4: %v", len(entries), entries)
	}
}

// TestApplyFilesSymlinkOwnerSSH: a symlink restored exactly is repointed
// and owned (the link itself) by the backup's owner in one operation,
// beside a plain repointing, whose link is the running user's; the file it
// pointed at keeps its owner.
func TestApplyFilesSymlinkOwnerSSH(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	pool := NewPool([]Config{cfg})
	defer pool.Close()
	c, err := pool.Get(testCtx(t), "n")
	must(t, err)
	dir := t.TempDir()
	target, exact, plain := filepath.Join(dir, "kubelet-client-old.pem"), filepath.Join(dir, "current.pem"), filepath.Join(dir, "plain.pem")
	must(t, os.WriteFile(target, []byte("pem"), 0o600))
	must(t, os.Chown(target, 1234, 2345))
	must(t, os.Symlink("elsewhere", exact))
	trips := pool.RoundTrips()
	must(t, ApplyFiles(testCtx(t), c, []FileOp{
		{Kind: OpSymlinkExact, Path: exact, Target: target, UID: 7, GID: 8},
		{Kind: OpSymlink, Path: plain, Target: target},
	}))
	if n := trips.Counts().Nodes["n"]; n != 1 {
		t.Errorf("%d round trips, want 1", n)
	}
	for _, l := range []struct {
		path     string
		uid, gid int
	}{{exact, 7, 8}, {plain, 0, 0}} {
		got, err := os.Readlink(l.path)
		if err != nil || got != target {
			t.Errorf("%s -> %q, %v; want %s", l.path, got, err, target)
		}
		var st syscall.Stat_t
		must(t, syscall.Lstat(l.path, &st))
		if int(st.Uid) != l.uid || int(st.Gid) != l.gid {
			t.Errorf("%s is owned by %d:%d, want %d:%d", l.path, st.Uid, st.Gid, l.uid, l.gid)
		}
	}
	assertFile(t, target, "pem", 0o600, 1234, 2345)
}

// TestApplyFilesDroppedConnectionSSH cuts the connection while the second
// operation's content is on its way (the proxy stops passing the client's
// bytes inside it, the test waits for the first operation to land, then
// cuts): the first operation is applied, the second file keeps its old
// content and mode, the third is never written, and no temporary file is
// left once the node has noticed.
func TestApplyFilesDroppedConnectionSSH(t *testing.T) {
	t.Parallel()
	p, r := proxiedNode(t)

	dir := t.TempDir()
	first, big, third := filepath.Join(dir, "first"), filepath.Join(dir, "ca.crt"), filepath.Join(dir, "third")
	must(t, os.WriteFile(big, []byte("old CA\n"), 0o644))
	huge := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16) // 4 MiB

	p.stall.Store(true)
	p.budget.Store(1 << 20) // ~1 MiB more from the client: inside the second op
	errc := make(chan error, 1)
	go func() {
		errc <- ApplyFiles(testCtx(t), r, []FileOp{
			{Kind: OpWrite, Path: first, Data: []byte("first")},
			{Kind: OpWrite, Path: big, Data: huge},
			{Kind: OpWrite, Path: third, Data: []byte("third")},
		})
	}()
	waitFor(t, "the first operation", func() bool {
		select {
		case err := <-errc:
			t.Fatalf("the batch ended before the cut: %v", err)
		default:
		}
		b, _ := os.ReadFile(first)
		return string(b) == "first"
	})
	p.Cut()
	err := <-errc
	// Whether the first operation's "ok" got back before the cut is not
	// known (sshd sent nothing more once the client's bytes stopped, in
	// practice), so the error may name it: "may or may not have been
	// applied" (BatchError), and here it was.
	var be *BatchError
	if !errors.As(err, &be) || !errors.Is(err, ErrConnectionLost) || be.Index > 1 || be.Done != be.Index {
		t.Fatalf("err = %v, want a BatchError at operation 0 or 1, connection lost", err)
	}
	waitFor(t, "the temp file to go", func() bool { e, _ := os.ReadDir(dir); return len(e) == 2 })
	assertFile(t, first, "first", 0o600, 0, 0)
	assertFile(t, big, "old CA\n", 0o644, 0, 0)
	if _, err := os.Stat(third); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("third: %v", err)
	}

	// The pool re-dials and the rest of the batch completes.
	p.budget.Store(-1)
	must(t, ApplyFiles(testCtx(t), r, []FileOp{{Kind: OpWrite, Path: big, Data: huge}, {Kind: OpWrite, Path: third, Data: []byte("third")}}))
	if got, _ := os.ReadFile(big); !bytes.Equal(got, huge) {
		t.Fatal("write after re-dial did not land")
	}
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestBatchRoundTripsSSH: a ReadFiles and an ApplyFiles are one round trip
// each whatever their size, a failing batch too, a refused one none; a
// batch too long for one command line is split into a few; BackupFile
// is two, one once the copy exists; EnsurePrivateDir is one.
func TestBatchRoundTripsSSH(t *testing.T) {
	t.Parallel()
	r, trips := pooledNode(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	count := func(what string, want int64, f func()) {
		t.Helper()
		before := trips.Counts().Nodes["n"]
		f()
		if got := trips.Counts().Nodes["n"] - before; got != want {
			t.Errorf("%s: %d round trips, want %d", what, got, want)
		}
	}
	var ops []FileOp
	var paths []string
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		ops = append(ops, FileOp{Kind: OpWrite, Path: dir + "/" + name, Data: []byte(name)})
		paths = append(paths, dir+"/"+name)
	}
	count("apply 5", 1, func() { must(t, ApplyFiles(ctx, r, ops)) })
	count("read 5", 1, func() {
		_, err := ReadFiles(ctx, r, paths)
		must(t, err)
	})
	count("failing apply", 1, func() {
		if err := ApplyFiles(ctx, r, []FileOp{{Kind: OpWrite, Path: "/nonexistent-dir/x"}}); err == nil {
			t.Error("write into a missing directory succeeded")
		}
	})
	count("refused apply", 0, func() {
		if err := ApplyFiles(ctx, r, []FileOp{{Kind: OpWrite, Path: "relative"}}); err == nil {
			t.Error("relative path accepted")
		}
	})
	long := make([]string, 1000) // ~210 KiB of arguments: three sessions
	for i := range long {
		long[i] = dir + "/" + strings.Repeat("x", 200) + string(rune('a'+i%26)) + strings.Repeat("y", i%7)
	}
	count("read 1000 long paths", 3, func() {
		got, err := ReadFiles(ctx, r, long)
		must(t, err)
		if len(got) != len(long) || got[999].Info.Path != long[999] || got[999].Info.Exists {
			t.Errorf("long batch: %d states", len(got))
		}
	})
	backupDir := filepath.Join(t.TempDir(), "backups")
	store := NewMemBackupStore()
	count("first BackupFile", 2, func() {
		_, err := BackupFile(ctx, r, store, backupDir, "run-1", paths[0])
		must(t, err)
	})
	count("BackupFile again", 1, func() {
		_, err := BackupFile(ctx, r, store, backupDir, "run-1", paths[0])
		must(t, err)
	})
	count("BackupFiles of four", 2, func() {
		bs, err := BackupFiles(ctx, r, store, backupDir, "run-1", paths[1:])
		must(t, err)
		if len(bs) != 4 || string(bs[3].Content) != "e" {
			t.Errorf("BackupFiles = %+v", bs)
		}
	})
	count("EnsurePrivateDir", 1, func() { must(t, EnsurePrivateDir(ctx, r, filepath.Join(dir, "priv"))) })
	count("Snapshot", 1, func() {
		_, err := Snapshot(ctx, r, paths[0])
		must(t, err)
	})
}

// TestMemRunnerBatches: one round trip per batch, Fail per item, the batch
// recorded with its items.
func TestMemRunnerBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n")
	m.Trips = NewRoundTrips()
	m.SetFile("/etc/a", []byte("a"), 0o644)
	m.Fail = func(op, p string) error {
		if (op == "read" && p == "/etc/b") || (op == "write" && p == "/etc/y") {
			return errors.New("injected")
		}
		return nil
	}
	got, err := m.ReadFiles(ctx, []string{"/etc/a", "/etc/b", "/etc/c"})
	must(t, err)
	if string(got[0].Content) != "a" || got[1].Err == nil || got[2].Info.Exists || got[2].Err != nil {
		t.Errorf("ReadFiles = %+v", got)
	}
	err = m.ApplyFiles(ctx, []FileOp{{Kind: OpWrite, Path: "/etc/x", Data: []byte("x")}, {Kind: OpWrite, Path: "/etc/y"}, {Kind: OpWrite, Path: "/etc/z"}})
	var be *BatchError
	if !errors.As(err, &be) || be.Index != 1 || be.Done != 1 {
		t.Fatalf("ApplyFiles = %v", err)
	}
	if _, ok := m.File("/etc/x"); !ok {
		t.Error("the operation before the failure was not applied")
	}
	if _, ok := m.File("/etc/z"); ok {
		t.Error("the operation after the failure was applied")
	}
	if _, err := m.ReadFiles(ctx, []string{"relative"}); err == nil {
		t.Error("relative path accepted")
	}
	if c := m.Trips.Counts(); c.Nodes["n"] != 2 {
		t.Errorf("round trips = %d, want 2", c.Nodes["n"])
	}
	want := []string{"read-batch 3", "read /etc/a", "read /etc/b", "read /etc/c", "apply-batch 3", "write /etc/x", "write /etc/y", "write /etc/z", "read-batch 1", "read relative"}
	if ops := m.Ops(); !reflect.DeepEqual(ops, want) {
		t.Errorf("Ops = %q", ops)
	}
	m.Fail = func(op, p string) error { return errors.New("host down") }
	if _, err := m.ReadFiles(ctx, []string{"/etc/a"}); err == nil {
		t.Error("ReadFiles with the host down succeeded")
	}
}

// TestBackupFilesMem: many paths in one read and one apply; the first
// stored copy wins per path; a second call writes nothing more.
func TestBackupFilesMem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n")
	m.Trips = NewRoundTrips()
	m.SetFile("/etc/kubernetes/admin.conf", []byte("v0"), 0o600)
	m.SetSymlink("/var/lib/kubelet/pki/kubelet-client-2024.pem", "/var/lib/kubelet/pki/kubelet-client-current.pem")
	store := NewMemBackupStore()
	old, err := BackupFile(ctx, m, store, defaultBackupDir, "r0", "/etc/kubernetes/admin.conf")
	must(t, err)
	m.SetFile("/etc/kubernetes/admin.conf", []byte("v1"), 0o600)
	before := m.Trips.Counts().Nodes["n"]
	paths := []string{"/etc/kubernetes/admin.conf", "/var/lib/kubelet/pki/kubelet-client-current.pem", "/etc/kubernetes/missing", "/etc/kubernetes/admin.conf"}
	bs, err := BackupFiles(ctx, m, store, defaultBackupDir, "r1", paths)
	must(t, err)
	if n := m.Trips.Counts().Nodes["n"] - before; n != 2 {
		t.Errorf("%d round trips, want 2", n)
	}
	if string(bs[0].Content) != "v0" || bs[0].RunID != "r0" || !bs[0].TakenAt.Equal(old.TakenAt) || bs[3].RunID != "r0" {
		t.Errorf("the first stored copy did not win: %+v", bs[0])
	}
	if !bs[1].IsSymlink || bs[1].LinkTarget != "/var/lib/kubelet/pki/kubelet-client-2024.pem" || bs[2].Exists {
		t.Errorf("link, missing: %+v %+v", bs[1], bs[2])
	}
	for _, b := range bs {
		_, meta := NodeBackupPaths(defaultBackupDir, b)
		if _, ok := m.File(meta); !ok {
			t.Errorf("no node copy of %s", b.Path)
		}
	}
	before = m.Trips.Counts().Nodes["n"]
	_, err = BackupFiles(ctx, m, store, defaultBackupDir, "r1", paths)
	must(t, err)
	if n := m.Trips.Counts().Nodes["n"] - before; n != 1 {
		t.Errorf("again: %d round trips, want 1 (the read)", n)
	}
}

// TestParseReadFiles: framing with any bytes, the last record of a path
// winning, and output cut short or unexpected refused.
func TestParseReadFiles(t *testing.T) {
	paths := []string{"/a", "/b"}
	stat := func(i, size int) string {
		s := fmt.Sprintf("81a4 0 0 %d root root\n", size)
		return fmt.Sprintf("P %d stat %d\n%s", i, len(s), s)
	}
	good := stat(1, 5) + "C 5\nx\nK\x00\nK ok\n" +
		stat(2, 1) + "C 1\nzK changed\n" +
		stat(2, 1) + "C 1\nyK ok\n"
	got, err := parseReadFiles("n", paths, []byte(good))
	must(t, err)
	if string(got[0].Content) != "x\nK\x00\n" || string(got[1].Content) != "y" || got[1].Err != nil {
		t.Errorf("got %+v", got)
	}
	changed := "P 1 missing\n" + stat(2, 1) + "C 1\nzK changed\n"
	got, err = parseReadFiles("n", paths, []byte(changed))
	must(t, err)
	if !errors.Is(got[1].Err, errChanged) || got[1].HasContent || got[0].Info.Exists {
		t.Errorf("changed: %+v", got)
	}
	for name, bad := range map[string]string{
		"cut short":   "P 1 missing\nP 2 stat 22\n81a4 0",
		"no answer":   "P 1 missing\n",
		"bad index":   "P 3 missing\n",
		"unknown":     "Q 1 missing\n",
		"no newline":  "P 1 missing",
		"content cut": "P 1 missing\n" + stat(2, 1) + "C 9\nz",
	} {
		if _, err := parseReadFiles("n", paths, []byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
