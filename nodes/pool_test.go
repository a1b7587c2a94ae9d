package nodes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

func names(n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, fmt.Sprintf("node-%02d", i))
	}
	return out
}

// eachNode calls fn for every name, at most limit at once, and returns
// the failures by name: the fan-out a caller of Pool does (the
// orchestrator's, for steps).
func eachNode(ctx context.Context, names []string, limit int, fn func(ctx context.Context, name string) error) map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for _, name := range names {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, name); err != nil {
				mu.Lock()
				errs[name] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// TestPoolOverManyRealNodes: 24 sshd "nodes" at once through one Pool,
// each written, read back and stat'ed 8 at a time; each node keeps one
// connection across the rounds.
func TestPoolOverManyRealNodes(t *testing.T) {
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

	errs := eachNode(ctx, names(n), 8, func(ctx context.Context, name string) error {
		r, err := pool.Get(ctx, name)
		if err != nil {
			return err
		}
		return r.WriteFile(ctx, dirs[name]+"/ca.crt", []byte("bundle for "+name), 0o644)
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	var mu sync.Mutex
	sizes := map[string]int64{}
	errs = eachNode(ctx, names(n), 8, func(ctx context.Context, name string) error {
		r, err := pool.Get(ctx, name)
		if err != nil {
			return err
		}
		fi, err := r.Stat(ctx, dirs[name]+"/ca.crt")
		mu.Lock()
		sizes[name] = fi.Size
		mu.Unlock()
		return err
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
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
	errs = eachNode(ctx, names(n), 8, func(ctx context.Context, name string) error {
		r, err := pool2.Get(ctx, name)
		if err != nil {
			return err
		}
		return r.Remove(ctx, dirs[name]+"/ca.crt")
	})
	if err := errs["node-03"]; len(errs) != 1 || err == nil || !strings.Contains(err.Error(), "connect to node node-03") {
		t.Fatalf("errors %v, want one for node-03", errs)
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
	runUntilRedialed(t, ctx, r)
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
