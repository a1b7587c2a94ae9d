// Benchmarks of writing one small file to N real sshd nodes, all at once
// through one Pool versus one node after another. Run them and print the speed-up with
//
//	sh nodes/testdata/ratio.sh
//
// (what `make bench` runs), which is
//
//	go test -run '^$' -bench 'WriteFile(FanOut|Sequential)' -benchtime 20x ./nodes/
//
// followed by an awk script that prints "fan-out vs sequential: N.Nx".
// Connections are dialed before the timer starts: the numbers are for
// steps on a warm Pool, as in a rotation run.
package nodes

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

const benchNodes = 10

func benchPool(b *testing.B) (*Pool, []string, map[string]string) {
	b.Helper()
	key := filepath.Join(b.TempDir(), "id")
	sshdtest.WriteKey(b, key)
	var cfgs []Config
	dirs := map[string]string{}
	ns := names(benchNodes)
	for _, name := range ns {
		_, cfg := startNode(b, name, sshdtest.Options{ClientKeyFile: key})
		cfgs = append(cfgs, cfg)
		dirs[name] = b.TempDir()
	}
	pool := NewPool(cfgs)
	b.Cleanup(func() { pool.Close() })
	for _, name := range ns {
		if _, err := pool.Get(context.Background(), name); err != nil {
			b.Fatal(err)
		}
	}
	return pool, ns, dirs
}

func writeOne(ctx context.Context, pool *Pool, dirs map[string]string, name string, i int) error {
	r, err := pool.Get(ctx, name)
	if err != nil {
		return err
	}
	return r.WriteFile(ctx, dirs[name]+"/ca.crt", []byte("-----BEGIN CERTIFICATE-----\n"+strconv.Itoa(i)+"\n"), 0o644)
}

func BenchmarkWriteFileFanOut(b *testing.B) {
	pool, ns, dirs := benchPool(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		errs := eachNode(ctx, ns, len(ns), func(ctx context.Context, name string) error {
			return writeOne(ctx, pool, dirs, name, i)
		})
		if len(errs) > 0 {
			b.Fatal(errs)
		}
	}
	b.ReportMetric(float64(benchNodes), "nodes")
}

func BenchmarkWriteFileSequential(b *testing.B) {
	pool, ns, dirs := benchPool(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, name := range ns {
			if err := writeOne(ctx, pool, dirs, name, i); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(benchNodes), "nodes")
}

// BenchmarkApplyFiles is one batch of 40 file writes of 1.5 KB on a real
// sshd, half of them replacing a file (its owner and mode kept), as a
// control-plane step's batch is: the time is the node's work (the
// processes the write script starts, one fsync per file), the link being
// local. The metric ms/write is per file.
func BenchmarkApplyFiles(b *testing.B) {
	_, cfg := startNode(b, "n", sshdtest.Options{})
	c := dial(b, cfg)
	dir := b.TempDir()
	var ops []FileOp
	for i := 0; i < 40; i++ {
		p := filepath.Join(dir, "f"+strconv.Itoa(i))
		if i%2 == 0 {
			if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		ops = append(ops, FileOp{Kind: OpWrite, Path: p, Data: bytes.Repeat([]byte("x"), 1500)})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := ApplyFiles(context.Background(), c, ops); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N*len(ops)), "ms/write")
}

// BenchmarkReadFilesFast and BenchmarkReadFilesCareful read one batch of
// 13 files of 1.5 KB and a symlink on a real sshd, as a control-plane
// step's first read does, with the fast script (readfast.go) and with the
// careful per-file one it falls back to: the time is the node's work (the
// processes each script starts), the link being local.
func BenchmarkReadFilesFast(b *testing.B) { benchReadFiles(b, false) }

func BenchmarkReadFilesCareful(b *testing.B) { benchReadFiles(b, true) }

func benchReadFiles(b *testing.B, careful bool) {
	_, cfg := startNode(b, "n", sshdtest.Options{})
	c := dial(b, cfg)
	dir := b.TempDir()
	var paths []string
	for i := 0; i < 13; i++ {
		p := filepath.Join(dir, "f"+strconv.Itoa(i))
		if err := os.WriteFile(p, bytes.Repeat([]byte("x"), 1500), 0o600); err != nil {
			b.Fatal(err)
		}
		paths = append(paths, p)
	}
	if err := os.Symlink(paths[0], filepath.Join(dir, "current")); err != nil {
		b.Fatal(err)
	}
	paths = append(paths, filepath.Join(dir, "current"))
	read := c.readFiles
	if careful {
		read = c.readFilesCarefully
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		states, err := read(ctx, paths)
		if err != nil {
			b.Fatal(err)
		}
		if len(states[13].Content) != 1500 {
			b.Fatalf("read %+v", states[13])
		}
	}
}
