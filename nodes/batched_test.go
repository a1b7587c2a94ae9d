package nodes

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// opsSince returns the MemRunner's operations after the first n.
func opsSince(m *MemRunner, n int) []string { return m.Ops()[n:] }

func TestBatchedReadsFromPrefetch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n1")
	m.SetFile("/etc/a", []byte("A"), 0o644)
	m.SetSymlink("/etc/a", "/etc/link")
	b := NewBatched(m)
	if err := b.Prefetch(ctx, "/etc/a", "/etc/link", "/etc/missing"); err != nil {
		t.Fatal(err)
	}
	n := len(m.Ops())
	if got, err := b.ReadFile(ctx, "/etc/a"); err != nil || string(got) != "A" {
		t.Fatalf("ReadFile = %q, %v", got, err)
	}
	if got, err := b.ReadFile(ctx, "/etc/link"); err != nil || string(got) != "A" {
		t.Fatalf("ReadFile(link) = %q, %v", got, err)
	}
	if fi, err := b.Stat(ctx, "/etc/link"); err != nil || !fi.IsSymlink || fi.LinkTarget != "/etc/a" {
		t.Fatalf("Stat(link) = %+v, %v", fi, err)
	}
	if _, err := b.ReadFile(ctx, "/etc/missing"); !errors.Is(err, ErrNotExist) {
		t.Fatalf("ReadFile(missing) = %v, want ErrNotExist", err)
	}
	if fi, err := b.Stat(ctx, "/etc/missing"); err != nil || fi.Exists {
		t.Fatalf("Stat(missing) = %+v, %v", fi, err)
	}
	if ops := opsSince(m, n); len(ops) != 0 {
		t.Errorf("reads of prefetched paths reached the node: %q", ops)
	}
}

func TestBatchedQueuesWritesUntilFlush(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n1")
	m.SetFileOwner("/etc/a", []byte("old"), 0o640, 7, 8, "u", "g")
	b := NewBatched(m)
	if err := b.Prefetch(ctx, "/etc/a"); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFile(ctx, "/etc/a", []byte("new"), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx, "/etc/gone"); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.File("/etc/a"); string(got) != "old" {
		t.Fatalf("node has %q before Flush, want old", got)
	}
	// A read after a queued write sees it, without a round trip.
	n := len(m.Ops())
	got, err := b.ReadFile(ctx, "/etc/a")
	if err != nil || string(got) != "new" {
		t.Fatalf("ReadFile after write = %q, %v", got, err)
	}
	fi, err := b.Stat(ctx, "/etc/a")
	if err != nil || fi.Mode != 0o640 || fi.UID != 7 || fi.Size != 3 {
		t.Fatalf("Stat after write = %+v, %v (want mode and owner kept)", fi, err)
	}
	if fi, _ := b.Stat(ctx, "/etc/gone"); fi.Exists {
		t.Fatal("a queued removal is not seen")
	}
	if ops := opsSince(m, n); len(ops) != 0 {
		t.Errorf("reads after queued writes reached the node: %q", ops)
	}
	if b.Pending() != 2 {
		t.Fatalf("Pending = %d, want 2", b.Pending())
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.File("/etc/a"); string(got) != "new" {
		t.Fatalf("node has %q after Flush", got)
	}
	if b.Pending() != 0 {
		t.Fatal("queue not empty after Flush")
	}
}

func TestBatchedFlushesBeforeRunAndUnknownReads(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n1")
	var seen string
	m.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (Result, error) {
		got, _ := m.File("/etc/a")
		seen = string(got)
		return Result{}, nil
	}
	b := NewBatched(m)
	if err := b.WriteFile(ctx, "/etc/a", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Run(ctx, "restart", nil); err != nil {
		t.Fatal(err)
	}
	if seen != "x" {
		t.Fatalf("the command ran before the queued write reached the node (saw %q)", seen)
	}
	// A path not known is read after the queue is sent.
	if err := b.WriteFile(ctx, "/etc/b", []byte("y"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := b.ReadFile(ctx, "/etc/b"); err != nil || string(got) != "y" {
		t.Fatalf("ReadFile of a new file = %q, %v", got, err)
	}
	// Run forgets what was read: the command may have changed it.
	m.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (Result, error) {
		m.SetFile("/etc/b", []byte("changed by the command"), 0o600)
		return Result{}, nil
	}
	if _, err := b.Run(ctx, "edit", nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.ReadFile(ctx, "/etc/b"); string(got) != "changed by the command" {
		t.Fatalf("ReadFile after Run = %q, want the node's content", got)
	}
}

func TestBatchedForgetsSymlinksOnWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n1")
	m.SetFile("/pki/cur-1.pem", []byte("1"), 0o600)
	m.SetSymlink("/pki/cur-1.pem", "/pki/current.pem")
	b := NewBatched(m)
	if err := b.Prefetch(ctx, "/pki/current.pem"); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFile(ctx, "/pki/cur-1.pem", []byte("2"), 0); err != nil {
		t.Fatal(err)
	}
	// The link's own description still holds: no round trip for it.
	n := len(m.Ops())
	if fi, err := b.Stat(ctx, "/pki/current.pem"); err != nil || !fi.IsSymlink || fi.LinkTarget != "/pki/cur-1.pem" {
		t.Fatalf("Stat(link) after writing its target = %+v, %v", fi, err)
	}
	if s, err := Snapshot(ctx, b, "/pki/current.pem"); err != nil || !s.IsSymlink || s.LinkTarget != "/pki/cur-1.pem" {
		t.Fatalf("Snapshot(link) after writing its target = %+v, %v", s, err)
	}
	if err := b.Prefetch(ctx, "/pki/current.pem"); err != nil {
		t.Fatal(err)
	}
	if ops := opsSince(m, n); len(ops) != 0 {
		t.Errorf("the link's description was read again: %q", ops)
	}
	// What it resolves to is read again (after the queued write).
	if got, err := b.ReadFile(ctx, "/pki/current.pem"); err != nil || string(got) != "2" {
		t.Fatalf("read through the link after writing its target = %q, %v", got, err)
	}
	if got, err := b.ReadFiles(ctx, []string{"/pki/current.pem"}); err != nil || string(got[0].Content) != "2" {
		t.Fatalf("ReadFiles through the link = %+v, %v", got, err)
	}
}

// A path replaced takes what was known under it along: a directory
// symlink repointed (or removed) changes every file below it. (White-box:
// the model node cannot hold a symlink to a directory.)
func TestBatchedForgetsWhatIsUnderAReplacedPath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n1")
	m.SetFile("/pki/ca.crt", []byte("1"), 0o644)
	m.SetFile("/pki-other/ca.crt", []byte("2"), 0o644)
	b := NewBatched(m)
	if err := b.Prefetch(ctx, "/pki/ca.crt", "/pki-other/ca.crt"); err != nil {
		t.Fatal(err)
	}
	if err := b.Symlink(ctx, "/pki-2", "/pki"); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.known["/pki/ca.crt"]; ok {
		t.Error("/pki/ca.crt is still known after /pki was replaced")
	}
	if _, ok := b.known["/pki-other/ca.crt"]; !ok {
		t.Error("/pki-other/ca.crt was forgotten: it is not under /pki")
	}
}

func TestBatchedRefusesWhatTheNodeWould(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n1")
	m.SetFile("/etc/a", []byte("A"), 0o600)
	m.SetSymlink("/etc/a", "/etc/link")
	b := NewBatched(m)
	if err := b.Prefetch(ctx, "/etc/link"); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFile(ctx, "/etc/link", []byte("x"), 0); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("write through a known symlink = %v, want refused now", err)
	}
	if err := b.WriteFile(ctx, "relative", []byte("x"), 0); err == nil {
		t.Fatal("a relative path was queued")
	}
	if b.Pending() != 0 {
		t.Fatalf("refused operations were queued: %d", b.Pending())
	}
}

func TestBatchedFlushFailureNamesTheOperation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := NewMemRunner("n1")
	m.Fail = func(op, p string) error {
		if p == "/etc/b" {
			return errors.New("disk full")
		}
		return nil
	}
	b := NewBatched(m)
	for _, p := range []string{"/etc/a", "/etc/b", "/etc/c"} {
		if err := b.WriteFile(ctx, p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	err := b.Flush(ctx)
	var be *BatchError
	if !errors.As(err, &be) || be.Index != 1 || be.Done != 1 || be.Op.Path != "/etc/b" {
		t.Fatalf("Flush = %v, want a BatchError at /etc/b after 1 applied", err)
	}
	if !strings.Contains(err.Error(), "/etc/b") || strings.Contains(err.Error(), "x") && strings.Contains(err.Error(), "content") {
		t.Fatalf("error does not name the path: %v", err)
	}
	if _, ok := m.File("/etc/c"); ok {
		t.Fatal("the operation after the failed one was applied")
	}
	if _, ok := m.File("/etc/a"); !ok {
		t.Fatal("the operation before the failed one was not applied")
	}
}
