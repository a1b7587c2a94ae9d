package nodes

import (
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// backupSuite backs up a regular file, a symlink and a missing path, with
// node copies under backupDir, changes all three, and restores them; run
// against MemRunner and a real node.
func backupSuite(t *testing.T, r Runner, root, backupDir, runID string, chown func(p string, uid, gid int)) {
	ctx := testCtx(t)
	store := NewMemBackupStore()
	file, link, missing := root+"/ca.crt", root+"/kubelet-client-current.pem", root+"/ca-new.crt"
	must(t, r.WriteFile(ctx, file, []byte("C0 cert"), 0o640))
	chown(file, 1234, 2345)
	must(t, r.WriteFile(ctx, root+"/kubelet-client-2024.pem", []byte("old client"), 0o600))
	must(t, r.Symlink(ctx, root+"/kubelet-client-2024.pem", link))

	bf, err := BackupFile(ctx, r, store, backupDir, runID, file)
	must(t, err)
	if !bf.Exists || string(bf.Content) != "C0 cert" || bf.Mode != 0o640 || bf.UID != 1234 || bf.GID != 2345 ||
		bf.Digest != sha256hex([]byte("C0 cert")) || bf.RunID != runID || bf.Node != r.Name() || bf.TakenAt.IsZero() {
		t.Fatalf("file backup = %+v", bf)
	}
	bl, err := BackupFile(ctx, r, store, backupDir, runID, link)
	must(t, err)
	if !bl.Exists || !bl.IsSymlink || bl.LinkTarget != root+"/kubelet-client-2024.pem" || len(bl.Content) != 0 {
		t.Fatalf("link backup = %+v", bl)
	}
	bm, err := BackupFile(ctx, r, store, backupDir, runID, missing)
	must(t, err)
	if bm.Exists {
		t.Fatalf("missing backup = %+v", bm)
	}

	// The node copy: content 0600 and a metadata file, in a 0700 dir.
	content, meta := NodeBackupPaths(backupDir, bf)
	if got, err := r.ReadFile(ctx, content); err != nil || string(got) != "C0 cert" {
		t.Errorf("node copy = %q, %v", got, err)
	}
	fi, err := r.Stat(ctx, content)
	if err != nil || fi.Mode != 0o600 {
		t.Errorf("node copy stat = %+v, %v", fi, err)
	}
	m, err := r.ReadFile(ctx, meta)
	if err != nil || !bytes.Contains(m, []byte("mode=0640\nuid=1234\ngid=2345\n")) || !bytes.Contains(m, []byte("sha256="+bf.Digest)) {
		t.Errorf("metadata = %q, %v", m, err)
	}
	if bytes.Contains(m, []byte("C0 cert")) {
		t.Error("metadata contains the content")
	}
	_, lmeta := NodeBackupPaths(backupDir, bl)
	if m, err := r.ReadFile(ctx, lmeta); err != nil || !bytes.Contains(m, []byte("type=symlink")) {
		t.Errorf("link metadata = %q, %v", m, err)
	}
	if !strings.HasPrefix(content, backupDir+"/"+runID+"/") || strings.Count(strings.TrimPrefix(content, backupDir+"/"+runID+"/"), "/") != 0 {
		t.Errorf("node copy path %q is not flat under the run directory", content)
	}

	// Change everything.
	must(t, r.WriteFile(ctx, file, []byte("C0+C1 bundle"), 0o644))
	chown(file, 0, 0)
	must(t, r.WriteFile(ctx, root+"/kubelet-client-2025.pem", []byte("new client"), 0o600))
	must(t, r.Symlink(ctx, root+"/kubelet-client-2025.pem", link))
	must(t, r.WriteFile(ctx, missing, []byte("C1"), 0o644))

	// A second backup keeps the first copy.
	again, err := BackupFile(ctx, r, store, backupDir, runID, file)
	must(t, err)
	if string(again.Content) != "C0 cert" || !again.TakenAt.Equal(bf.TakenAt) {
		t.Errorf("second backup replaced the first: %q", again.Content)
	}
	if got, _ := r.ReadFile(ctx, content); string(got) != "C0 cert" {
		t.Errorf("node copy replaced: %q", got)
	}

	for _, b := range []Backup{bf, bl, bm} {
		must(t, Restore(ctx, r, b))
	}
	got, err := r.ReadFile(ctx, file)
	fi, _ = r.Stat(ctx, file)
	if err != nil || string(got) != "C0 cert" || fi.Mode != 0o640 || fi.UID != 1234 || fi.GID != 2345 {
		t.Errorf("restored file = %q %+v, %v", got, fi, err)
	}
	if fi, _ := r.Stat(ctx, link); !fi.IsSymlink || fi.LinkTarget != root+"/kubelet-client-2024.pem" {
		t.Errorf("restored link = %+v", fi)
	}
	if fi, _ := r.Stat(ctx, missing); fi.Exists {
		t.Errorf("restored missing path exists: %+v", fi)
	}
	// Restoring again is a no-op.
	for _, b := range []Backup{bf, bl, bm} {
		must(t, Restore(ctx, r, b))
	}

	// A file turned into a symlink is restored as a file, atomically.
	must(t, r.Remove(ctx, file))
	must(t, r.Symlink(ctx, root+"/kubelet-client-2025.pem", file))
	must(t, Restore(ctx, r, bf))
	if fi, _ := r.Stat(ctx, file); !fi.IsRegular || fi.UID != 1234 {
		t.Errorf("restore over a symlink = %+v", fi)
	}

	// Corrupt backups are refused.
	bad := bf
	bad.Content = []byte("tampered")
	if err := Restore(ctx, r, bad); err == nil || strings.Contains(err.Error(), "tampered") {
		t.Errorf("restore of tampered backup: %v", err)
	}
	// Backups of another node are refused.
	other := bf
	other.Node = "elsewhere"
	if err := Restore(ctx, r, other); err == nil {
		t.Error("restore of another node's backup succeeded")
	}
	if _, err := BackupFile(ctx, r, store, backupDir, "../x", file); err == nil {
		t.Error("run id with a slash accepted")
	}
	if _, err := BackupFile(ctx, r, store, backupDir, runID, root); err == nil {
		t.Error("backup of a directory accepted")
	}
	if _, err := BackupFile(ctx, r, store, "backups", runID, file); err == nil || !strings.Contains(err.Error(), "backup directory") {
		t.Errorf("relative backup directory: %v", err)
	}
}

// defaultBackupDir is the inventory's default paths.backupDir: no test
// may write there (an e2e cluster mounts its nodes' own directories there).
const defaultBackupDir = "/var/lib/rotate/backups"

func TestBackupRestoreMem(t *testing.T) {
	t.Parallel()
	m := NewMemRunner("n")
	m.MkdirAll("/etc/kubernetes/pki")
	backupSuite(t, m, "/etc/kubernetes/pki", "/srv/rotate/backups", "run-mem", func(p string, uid, gid int) {
		data, _ := m.File(p)
		fi, _ := m.Stat(context.Background(), p)
		m.SetFileOwner(p, data, fi.Mode, uid, gid, "u", "g")
	})
	for _, p := range m.Paths() {
		if strings.HasPrefix(p, path.Dir(defaultBackupDir)) {
			t.Errorf("%s written outside the configured backup directory", p)
		}
	}
}

// On a real node the copies go to the configured directory (created 0700
// with missing parents), and nothing to the default one.
func TestBackupRestoreSSH(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	runID := "test-" + filepath.Base(t.TempDir())
	backupDir := filepath.Join(t.TempDir(), "rotate", "backups")
	backupSuite(t, c, t.TempDir(), backupDir, runID, func(p string, uid, gid int) {
		must(t, os.Chown(p, uid, gid))
	})
	for _, d := range []string{backupDir, path.Join(backupDir, runID)} {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v, %v; want 0700", d, fi.Mode(), err)
		}
	}
	if _, err := os.Stat(path.Join(defaultBackupDir, runID)); err == nil {
		t.Errorf("a backup copy went to %s despite the configured %s", defaultBackupDir, backupDir)
	}
}

// Concurrent BackupFile calls for one path all return the same first copy.
func TestBackupFirstCopyWinsConcurrently(t *testing.T) {
	t.Parallel()
	m := NewMemRunner("n")
	m.SetFile("/etc/kubernetes/admin.conf", []byte("v0"), 0o600)
	store := NewMemBackupStore()
	var wg sync.WaitGroup
	got := make([]Backup, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := BackupFile(context.Background(), m, store, defaultBackupDir, "r1", "/etc/kubernetes/admin.conf")
			if err != nil {
				t.Error(err)
			}
			got[i] = b
		}()
	}
	wg.Wait()
	for _, b := range got {
		if !b.TakenAt.Equal(got[0].TakenAt) || string(b.Content) != "v0" {
			t.Errorf("backups differ: %+v vs %+v", b, got[0])
		}
	}
	if n := len(store.All()); n != 1 {
		t.Errorf("%d stored backups, want 1", n)
	}
}

// The store is written before the node copy: a failing node write leaves
// the stored backup, and a retry completes the node copy.
func TestBackupStoreFirst(t *testing.T) {
	t.Parallel()
	m := NewMemRunner("n")
	m.SetFile("/etc/kubernetes/pki/ca.key", []byte("KEY"), 0o600)
	store := NewMemBackupStore()
	fail := true
	m.Fail = func(op, p string) error {
		if op == "write" && strings.HasPrefix(p, defaultBackupDir) && fail {
			return os.ErrPermission
		}
		return nil
	}
	if _, err := BackupFile(context.Background(), m, store, defaultBackupDir, "r1", "/etc/kubernetes/pki/ca.key"); err == nil {
		t.Fatal("want error from node copy")
	}
	if n := len(store.All()); n != 1 {
		t.Fatalf("%d stored backups, want 1 (store first)", n)
	}
	fail = false
	b, err := BackupFile(context.Background(), m, store, defaultBackupDir, "r1", "/etc/kubernetes/pki/ca.key")
	must(t, err)
	content, _ := NodeBackupPaths(defaultBackupDir, b)
	if got, ok := m.File(content); !ok || string(got) != "KEY" {
		t.Errorf("node copy after retry = %q, %v", got, ok)
	}
}

// TestBackupCopiesReadBack: what BackupFile left on a real node (a file, a
// symlink, a missing path) reads back as the same backups, and a copy whose
// content does not match its metadata is refused.
func TestBackupCopiesReadBack(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	root := t.TempDir()
	backupDir := filepath.Join(t.TempDir(), "rotate", "backups")
	store := NewMemBackupStore()
	file, link, gone := root+"/ca.crt", root+"/current.pem", root+"/ca-new.key"
	must(t, os.WriteFile(file, []byte("old CA"), 0o640))
	must(t, os.Symlink("ca.crt", link))
	var want []Backup
	for _, p := range []string{file, link, gone} {
		b, err := BackupFile(ctx, c, store, backupDir, "run-1.step_a", p)
		must(t, err)
		want = append(want, b)
	}
	got, err := BackupCopies(ctx, c, backupDir, []string{"run-1.step_a", "run-1.step_b"})
	must(t, err)
	if len(got) != 1 || len(got["run-1.step_a"]) != 3 {
		t.Fatalf("BackupCopies = %v", got)
	}
	for _, w := range want {
		b, err := ReadBackupCopy(ctx, c, backupDir, "run-1.step_a", w.Path)
		must(t, err)
		if b.Exists != w.Exists || b.IsSymlink != w.IsSymlink || b.LinkTarget != w.LinkTarget || string(b.Content) != string(w.Content) ||
			b.Mode != w.Mode || b.UID != w.UID || b.Digest != w.Digest || b.Node != "n" || b.RunID != w.RunID || !b.TakenAt.Equal(w.TakenAt.Truncate(time.Second)) {
			t.Errorf("read back %+v, backed up %+v", b, w)
		}
	}
	content, _ := NodeBackupPaths(backupDir, want[0])
	must(t, os.WriteFile(content, []byte("tampered"), 0o600))
	if _, err := ReadBackupCopy(ctx, c, backupDir, "run-1.step_a", file); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("tampered copy: %v", err)
	}
	// EnsurePrivateDir: 0700, and a symlink to a directory is refused.
	d := filepath.Join(t.TempDir(), "a", "state")
	must(t, EnsurePrivateDir(ctx, c, d))
	if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v %v", d, fi.Mode(), err)
	}
	l := filepath.Join(t.TempDir(), "link")
	must(t, os.Symlink(d, l))
	if err := EnsurePrivateDir(ctx, c, l); err == nil {
		t.Error("a symlink to a directory accepted")
	}
}
