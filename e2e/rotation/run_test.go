//go:build e2e

package rotation

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var rotateBin string

func TestMain(m *testing.M) {
	dir := os.Getenv("ROTATE_BIN_DIR")
	if dir == "" {
		tmp, err := os.MkdirTemp("", "rotate-e2e-bin")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	rotateBin = filepath.Join(dir, "rotate")
	if _, err := os.Stat(rotateBin); err != nil {
		out, err := exec.Command("go", "build", "-o", rotateBin, "github.com/kubeca/rotate/cmd/rotate").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build rotate: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// runResult is one `rotate` process.
type runResult struct {
	code   int
	killed bool
	out    string
	took   time.Duration
}

// rotate runs the real binary, streaming its progress into the test log.
// When killAt matches a line of its output, the process is SIGKILLed right
// there — the operator's laptop dying mid-run.
func rotate(t *testing.T, ctx context.Context, dir string, killAt *regexp.Regexp, onLine func(string), args ...string) runResult {
	t.Helper()
	cmd := exec.CommandContext(ctx, rotateBin, args...)
	cmd.Dir = dir
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var killed bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			out.WriteString(line + "\n")
			t.Logf("rotate %s| %s", args[0], line)
			if onLine != nil {
				onLine(line)
			}
			if killAt != nil && !killed && killAt.MatchString(line) {
				killed = true
				cmd.Process.Signal(syscall.SIGKILL)
				t.Logf("e2e: SIGKILL rotate %s at: %s", args[0], strings.TrimSpace(line))
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	wg.Wait()
	res := runResult{out: out.String(), took: time.Since(start), killed: killed}
	if ee, ok := err.(*exec.ExitError); ok {
		res.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.killed = true
		}
	} else if err != nil {
		t.Fatalf("rotate %v: %v", args, err)
	}
	return res
}

func mustSucceed(t *testing.T, r runResult, what string) {
	t.Helper()
	if r.killed || r.code != 0 {
		t.Fatalf("%s: exit %d (killed %v)\n%s", what, r.code, r.killed, tail(r.out, 40))
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
