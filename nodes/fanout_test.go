package nodes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

func names(n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, fmt.Sprintf("node-%02d", i))
	}
	return out
}

func TestFanOutBoundAndErrors(t *testing.T) {
	t.Parallel()
	var running, peak atomic.Int32
	var mu sync.Mutex
	seen := map[string]bool{}
	err := FanOut(context.Background(), names(30), 4, func(ctx context.Context, name string) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		seen[name] = true
		mu.Unlock()
		if strings.HasSuffix(name, "7") {
			return errors.New("boom")
		}
		return nil
	})
	if p := peak.Load(); p > 4 || p < 2 {
		t.Errorf("peak concurrency %d, want 2..4", p)
	}
	if len(seen) != 30 {
		t.Errorf("ran %d nodes, want 30", len(seen))
	}
	var me *multierror.Error
	if !errors.As(err, &me) || len(me.Errors) != 3 {
		t.Fatalf("err = %v, want a multierror of 3", err)
	}
	for i, want := range []string{"node node-07: boom", "node node-17: boom", "node node-27: boom"} {
		if me.Errors[i].Error() != want {
			t.Errorf("error %d = %q, want %q", i, me.Errors[i], want)
		}
	}
	if err := FanOut(context.Background(), names(3), 0, func(context.Context, string) error { return nil }); err != nil {
		t.Errorf("all succeeded: err = %v", err)
	}
	if err := FanOut(context.Background(), nil, 2, func(context.Context, string) error { return nil }); err != nil {
		t.Errorf("no names: err = %v", err)
	}
}

func TestFanOutCancel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var started atomic.Int32
	err := FanOut(ctx, names(10), 2, func(ctx context.Context, name string) error {
		if started.Add(1) == 2 {
			cancel()
		}
		<-ctx.Done()
		return ctx.Err()
	})
	if n := started.Load(); n != 2 {
		t.Errorf("%d calls started, want 2 (none after cancel)", n)
	}
	var me *multierror.Error
	if !errors.As(err, &me) || len(me.Errors) != 10 {
		t.Fatalf("err = %v, want 10 errors", err)
	}
	notStarted := 0
	for _, e := range me.Errors {
		if !errors.Is(e, context.Canceled) {
			t.Errorf("%v does not wrap context.Canceled", e)
		}
		if strings.Contains(e.Error(), "not started") {
			notStarted++
		}
	}
	if notStarted != 8 {
		t.Errorf("%d not-started errors, want 8", notStarted)
	}
}

func TestFanOutResults(t *testing.T) {
	t.Parallel()
	res, err := FanOutResults(context.Background(), names(5), 2, func(ctx context.Context, name string) (int, error) {
		if name == "node-03" {
			return 0, errors.New("down")
		}
		return len(name), nil
	})
	if err == nil || !strings.Contains(err.Error(), "node node-03: down") {
		t.Errorf("err = %v", err)
	}
	if len(res) != 4 || res["node-00"] != 7 {
		t.Errorf("results = %v", res)
	}
}

// TestFanOutOverRealNodes: 24 sshd "nodes" at once through one Pool, each
// written, read back and stat'ed with fan-out; each node keeps one
// connection across the steps.
func TestFanOutOverRealNodes(t *testing.T) {
	t.Parallel()
	const n = 24
	key := filepath.Join(t.TempDir(), "id")
	sshdtest.WriteKey(t, key)
	var cfgs []Config
	dirs := map[string]string{}
	for i, name := range names(n) {
		_, cfg := startNode(t, name, sshdtest.Options{ClientKeyFile: key})
		cfgs = append(cfgs, cfg)
		dirs[name] = t.TempDir()
		_ = i
	}
	pool := NewPool(cfgs)
	t.Cleanup(func() { pool.Close() })
	ctx := testCtx(t)

	err := FanOut(ctx, names(n), 8, func(ctx context.Context, name string) error {
		r, err := pool.Get(ctx, name)
		if err != nil {
			return err
		}
		return r.WriteFile(ctx, dirs[name]+"/ca.crt", []byte("bundle for "+name), 0o644)
	})
	must(t, err)
	sizes, err := FanOutResults(ctx, names(n), 8, func(ctx context.Context, name string) (int64, error) {
		r, err := pool.Get(ctx, name)
		if err != nil {
			return 0, err
		}
		fi, err := r.Stat(ctx, dirs[name]+"/ca.crt")
		return fi.Size, err
	})
	must(t, err)
	for _, name := range names(n) {
		assertFile(t, dirs[name]+"/ca.crt", "bundle for "+name, 0o644, 0, 0)
		if sizes[name] != int64(len("bundle for "+name)) {
			t.Errorf("%s: size %d", name, sizes[name])
		}
	}
	// One connection per node, reused by both rounds.
	seen := map[*Client]bool{}
	for _, name := range names(n) {
		c, err := pool.client(ctx, name)
		must(t, err)
		seen[c] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct connections, want %d", len(seen), n)
	}

	// A node that goes away fails alone; the others still succeed.
	down := cfgs[3]
	down.Port = freeClosedPort(t)
	down.Retries = -1
	cfgs2 := append([]Config{}, cfgs...)
	cfgs2[3] = down
	pool2 := NewPool(cfgs2)
	t.Cleanup(func() { pool2.Close() })
	err = FanOut(ctx, names(n), 8, func(ctx context.Context, name string) error {
		r, err := pool2.Get(ctx, name)
		if err != nil {
			return err
		}
		return r.Remove(ctx, dirs[name]+"/ca.crt")
	})
	var me *multierror.Error
	if !errors.As(err, &me) || len(me.Errors) != 1 || !strings.Contains(me.Errors[0].Error(), "node node-03: connect to node node-03") {
		t.Fatalf("err = %v, want one error for node-03", err)
	}
	for i, name := range names(n) {
		_, err := os.Stat(dirs[name] + "/ca.crt")
		if exists := err == nil; exists != (i == 3) {
			t.Errorf("%s: file exists = %v", name, exists)
		}
	}
}

func TestPoolReusesAndRedials(t *testing.T) {
	t.Parallel()
	s, cfg := startNode(t, "n", sshdtest.Options{})
	p := newProxy(t, s.Addr())
	cfg = p.via(t, s, cfg)
	pool := NewPool([]Config{cfg, {Name: "dup"}, {Name: "dup"}})
	ctx := testCtx(t)
	r, err := pool.Get(ctx, "n")
	must(t, err)
	for i := 0; i < 5; i++ {
		_, err := r.Run(ctx, "true", nil)
		must(t, err)
		r2, err := pool.Get(ctx, "n")
		must(t, err)
		_, err = r2.Stat(ctx, "/")
		must(t, err)
	}
	if n := p.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
	p.Cut()
	// The in-flight view of the old connection is gone; the same Runner
	// re-dials on its next call.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := r.Run(ctx, "true", nil)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrConnectionLost) || time.Now().After(deadline) {
			t.Fatalf("after cut: %v", err)
		}
	}
	if n := p.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	if _, err := pool.Get(ctx, "unknown"); err == nil || !strings.Contains(err.Error(), "not in the inventory") {
		t.Errorf("unknown node: err = %v", err)
	}
	if _, err := pool.Get(ctx, "dup"); err == nil || !strings.Contains(err.Error(), "more than once") {
		t.Errorf("duplicate node: err = %v", err)
	}
	must(t, pool.Close())
	if _, err := r.Run(ctx, "true", nil); !errors.Is(err, ErrPoolClosed) {
		t.Errorf("after Close: err = %v", err)
	}
}

// TestNodeGoesAway: sshd dies under a live Pool connection. The next
// operation fails promptly (connection lost, then refused on re-dial)
// instead of hanging.
func TestNodeGoesAway(t *testing.T) {
	t.Parallel()
	s, cfg := startNode(t, "n", sshdtest.Options{})
	cfg.Retries = -1
	pool := NewPool([]Config{cfg})
	t.Cleanup(func() { pool.Close() })
	r, err := pool.Get(testCtx(t), "n")
	must(t, err)
	s.Stop()
	start := time.Now()
	for i := 0; i < 2; i++ {
		_, err = r.Run(testCtx(t), "true", nil)
		if err == nil {
			t.Fatal("Run succeeded on a stopped node")
		}
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("second call: %v, want connection refused on re-dial", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s", d)
	}
}
