package nodes

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestApplyRunApplySSH: on a real sshd, ApplyRunApply is one session that
// applies the first batch before the command runs (the command sees it),
// the second only after the command succeeded, and says which part failed.
func TestApplyRunApplySSH(t *testing.T) {
	t.Parallel()
	r, trips := pooledNode(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	read := func(name string) string {
		b, err := os.ReadFile(p(name))
		if errors.Is(err, os.ErrNotExist) {
			return "<missing>"
		}
		must(t, err)
		return string(b)
	}
	trips0 := func() int64 { return trips.Counts().Nodes["n"] }

	t.Run("the command sees the first batch; the second follows it", func(t *testing.T) {
		before := trips0()
		// Output with "ok" lines and no final newline: carried as is.
		cmd := "cat " + shellQuote(p("in")) + "; printf 'ok\\nR 0 5\\nlast'; umask > " + shellQuote(p("umask"))
		res, err := ApplyRunApply(ctx, r,
			[]FileOp{{Kind: OpWrite, Path: p("in"), Data: []byte("written first\n"), Mode: 0o640}},
			cmd,
			[]FileOp{{Kind: OpMkdirPrivate, Path: p("marks")}, {Kind: OpWrite, Path: p("marks/done"), Data: []byte("after"), Mode: 0o600}})
		must(t, err)
		if got := trips0() - before; got != 1 {
			t.Errorf("%d round trips, want 1", got)
		}
		if string(res.Stdout) != "written first\nok\nR 0 5\nlast" || res.ExitStatus != 0 {
			t.Errorf("stdout %q, status %d", res.Stdout, res.ExitStatus)
		}
		if read("marks/done") != "after" || read("in") != "written first\n" {
			t.Errorf("files: in %q, marks/done %q", read("in"), read("marks/done"))
		}
		if st, err := os.Stat(p("in")); err != nil || st.Mode().Perm() != 0o640 {
			t.Errorf("mode of the first batch's file: %v %v", st.Mode(), err)
		}
		if st, err := os.Stat(p("marks")); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("the second batch's private directory: %v %v", st.Mode(), err)
		}
		if u := strings.TrimSpace(read("umask")); u != "0022" {
			t.Errorf("the command ran with umask %s, want 0022 (a login's, not the batch's 077)", u)
		}
	})

	t.Run("a failing command: its error, its output, nothing after it", func(t *testing.T) {
		res, err := ApplyRunApply(ctx, r,
			[]FileOp{{Kind: OpWrite, Path: p("fail-in"), Data: []byte("1")}},
			"echo partial; echo 'restart refused' >&2; exit 3",
			[]FileOp{{Kind: OpWrite, Path: p("fail-mark"), Data: []byte("x")}})
		var xe *ExitError
		var be *BatchError
		if !errors.As(err, &xe) || errors.As(err, &be) || xe.Result.ExitStatus != 3 || !strings.Contains(err.Error(), "restart refused") {
			t.Fatalf("err = %v, want the command's exit status 3 with its stderr", err)
		}
		if string(res.Stdout) != "partial" || res.ExitStatus != 3 {
			t.Errorf("result %q %d", res.Stdout, res.ExitStatus)
		}
		if read("fail-in") != "1" || read("fail-mark") != "<missing>" {
			t.Errorf("files: %q %q", read("fail-in"), read("fail-mark"))
		}
	})

	t.Run("a failing first batch: its operation, the command never runs", func(t *testing.T) {
		must(t, os.WriteFile(p("file"), []byte("f"), 0o600))
		_, err := ApplyRunApply(ctx, r,
			[]FileOp{{Kind: OpWrite, Path: p("b1"), Data: []byte("1")}, {Kind: OpWrite, Path: p("file/under"), Data: []byte("2")}},
			"touch "+shellQuote(p("ran")),
			nil)
		var be *BatchError
		if !errors.As(err, &be) || be.Index != 1 || be.Done != 1 || be.Op.Path != p("file/under") {
			t.Fatalf("err = %v, want a BatchError at operation 2", err)
		}
		if read("ran") != "<missing>" || read("b1") != "1" {
			t.Errorf("ran %q b1 %q", read("ran"), read("b1"))
		}
	})

	t.Run("a failing second batch says it came after the command", func(t *testing.T) {
		res, err := ApplyRunApply(ctx, r, nil, "echo ran",
			[]FileOp{{Kind: OpWrite, Path: p("a1"), Data: []byte("1")}, {Kind: OpWrite, Path: p("file/under2"), Data: []byte("2")}})
		var be *BatchError
		if !errors.As(err, &be) || be.Index != 1 || be.Done != 1 || !strings.Contains(err.Error(), "after the command succeeded") || !errors.As(err, new(*StageError)) {
			t.Fatalf("err = %v, want a BatchError at the second batch's operation 2", err)
		}
		if string(res.Stdout) != "ran" || read("a1") != "1" {
			t.Errorf("stdout %q, a1 %q", res.Stdout, read("a1"))
		}
	})

	t.Run("a command cut by the deadline is the command's failure", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := ApplyRunApply(cctx, r,
			[]FileOp{{Kind: OpWrite, Path: p("slow-in"), Data: []byte("1")}},
			"sleep 30",
			[]FileOp{{Kind: OpWrite, Path: p("slow-mark"), Data: []byte("x")}})
		var be *BatchError
		if err == nil || errors.As(err, &be) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the deadline, not a batch error", err)
		}
		if read("slow-in") != "1" || read("slow-mark") != "<missing>" {
			t.Errorf("files: %q %q", read("slow-in"), read("slow-mark"))
		}
	})
}

// TestRestartReportBatched: a step's queued writes, the restart and the
// marker after it are one round trip; the restart sees the writes.
func TestRestartReportBatched(t *testing.T) {
	ctx := context.Background()
	trips := NewRoundTrips()
	m := NewMemRunner("n")
	m.Trips = trips
	var saw string
	m.RunFunc = func(ctx context.Context, cmd string, _ []byte) (Result, error) {
		b, _ := m.ReadFile(ctx, "/etc/kubelet.conf")
		saw = string(b)
		return Result{}, nil
	}
	b := NewBatched(m)
	must(t, b.WriteFile(ctx, "/etc/kubelet.conf", []byte("new"), 0o600))
	_, ok, err := RestartReport(ctx, b, "systemctl restart kubelet", "kubelet",
		FileOp{Kind: OpMkdirPrivate, Path: "/var/lib/rotate/kubelet"},
		FileOp{Kind: OpWrite, Path: "/var/lib/rotate/kubelet/run", Data: []byte("restarted\n")})
	must(t, err)
	if ok || saw != "new" {
		t.Errorf("ok %v (a fake node reports no start), the restart saw %q", ok, saw)
	}
	if got := trips.Counts().Nodes["n"]; got != 1 {
		t.Errorf("%d round trips, want 1", got)
	}
	if c, err := m.ReadFile(ctx, "/var/lib/rotate/kubelet/run"); err != nil || string(c) != "restarted\n" {
		t.Errorf("marker %q %v", c, err)
	}
	if b.Pending() != 0 {
		t.Error("the queue was not sent")
	}

	// The restart fails: the marker is not written.
	m.RunFunc = func(context.Context, string, []byte) (Result, error) { return Result{}, errors.New("unit failed") }
	must(t, b.WriteFile(ctx, "/etc/kubelet.conf", []byte("newer"), 0o600))
	if _, _, err := RestartReport(ctx, b, "systemctl restart kubelet", "kubelet", FileOp{Kind: OpWrite, Path: "/var/lib/rotate/kubelet/run2", Data: []byte("x")}); err == nil {
		t.Fatal("a failed restart succeeded")
	}
	if st, _ := m.Stat(ctx, "/var/lib/rotate/kubelet/run2"); st.Exists {
		t.Error("the marker was written after a failed restart")
	}
	if c, _ := m.ReadFile(ctx, "/etc/kubelet.conf"); string(c) != "newer" {
		t.Errorf("the queued write before the restart: %q", c)
	}
}

// TestListFilesKeepsBatchedView: a listing through a Batched sends the
// queue first but forgets nothing read (it changes nothing on the node).
func TestListFilesKeepsBatchedView(t *testing.T) {
	ctx := context.Background()
	m := NewMemRunner("n")
	m.Trips = NewRoundTrips()
	m.SetFile("/etc/kubernetes/manifests/etcd.yaml", []byte("etcd"), 0o600)
	m.RunFunc = func(context.Context, string, []byte) (Result, error) {
		return Result{Stdout: []byte("etcd.yaml\nnew.yaml\n")}, nil
	}
	b := NewBatched(m)
	must(t, b.Prefetch(ctx, "/etc/kubernetes/manifests/etcd.yaml"))
	must(t, b.WriteFile(ctx, "/etc/kubernetes/manifests/new.yaml", []byte("new"), 0o600))
	got, err := ListFiles(ctx, b, "/etc/kubernetes/manifests")
	must(t, err)
	if len(got) != 2 || got[1] != "/etc/kubernetes/manifests/new.yaml" {
		t.Errorf("listed %q", got)
	}
	if c, _ := m.ReadFile(ctx, "/etc/kubernetes/manifests/new.yaml"); string(c) != "new" {
		t.Error("the queued write was not sent before the listing")
	}
	before := m.Trips.Counts().Nodes["n"]
	if c, err := b.ReadFile(ctx, "/etc/kubernetes/manifests/etcd.yaml"); err != nil || string(c) != "etcd" {
		t.Fatalf("read %q %v", c, err)
	}
	if n := m.Trips.Counts().Nodes["n"] - before; n != 0 {
		t.Errorf("a read after the listing took %d round trips, want 0 (the view holds)", n)
	}
}
