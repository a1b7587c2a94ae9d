package nodes

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// spareState reports whether c holds all its spare channels and whether
// the server has closed any (its requests channel is closed then).
func spareState(c *Client) (have, closedByServer bool) {
	c.spares.mu.Lock()
	defer c.spares.mu.Unlock()
	for _, s := range c.spares.warm {
		select {
		case _, ok := <-s.reqs:
			closedByServer = closedByServer || !ok
		default:
		}
	}
	return len(c.spares.warm) == spareChannels, closedByServer
}

// spareSessions are c's warm spares.
func spareSessions(c *Client) []*session {
	c.spares.mu.Lock()
	defer c.spares.mu.Unlock()
	return append([]*session(nil), c.spares.warm...)
}

// waitSpare waits until cond holds for c's spare, or fails after 20 s.
func waitSpare(t *testing.T, c *Client, what string, cond func(have, closed bool) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond(spareState(c)) {
		if time.Now().After(deadline) {
			have, closed := spareState(c)
			t.Fatalf("waited 20s for %s: spare held %v, closed by the server %v", what, have, closed)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An operation leaves a spare session channel open for the next one, and
// input larger than a channel window (2 MB at OpenSSH) still arrives whole
// behind the exec request that was not waited for.
func TestExecSpareAndLargeInput(t *testing.T) {
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	ctx := testCtx(t)
	if _, err := c.Run(ctx, "true", nil); err != nil {
		t.Fatal(err)
	}
	waitSpare(t, c, "a spare channel after the first operation", func(have, closed bool) bool { return have && !closed })

	in := make([]byte, 5<<20+17)
	if _, err := rand.Read(in); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(in)
	res, err := c.Run(ctx, "sha256sum | cut -d' ' -f1", in)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(res.Stdout)), hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("the command read other input than was sent: sha256 %s, want %s", got, want)
	}
	// Exit status and stderr come back as with a plain session.
	res, err = c.Run(ctx, "echo out; echo err >&2; exit 3", nil)
	var xe *ExitError
	if !errors.As(err, &xe) || res.ExitStatus != 3 || string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
		t.Fatalf("exit 3: res %+v, err %v", res, err)
	}
	res, err = c.Run(ctx, "kill -KILL $$", nil)
	if !errors.As(err, &xe) || xe.Signal != "KILL" || res.ExitStatus != -1 {
		t.Fatalf("killed by a signal: res %+v, err %v", res, err)
	}
}

// A spare lost while it waited never ran the command: the operation is
// sent again on a new channel and runs exactly once, and the connection
// warms new spares. Lost here means closed (OpenSSH 9.2 closes no idle
// session channel, not even with ChannelTimeout, so the test closes it,
// which is what a server's close looks like from here) or its stub
// killed (sudo refusing the stub looks the same from here).
func TestExecSpareLost(t *testing.T) {
	for name, lose := range map[string]func(t *testing.T, s *session){
		"closed": func(t *testing.T, s *session) { s.ch.Close() },
		"stub killed": func(t *testing.T, s *session) {
			line, err := bufio.NewReader(s.ch.Stderr()).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, pidMarker) {
				t.Fatalf("the stub's first stderr line %q, %v", line, err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, pidMarker)))
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatalf("kill the stub %d: %v", pid, err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, cfg := startNode(t, "n", sshdtest.Options{})
			c := dial(t, cfg)
			ctx := testCtx(t)
			dir := t.TempDir()
			if _, err := c.Run(ctx, "true", nil); err != nil {
				t.Fatal(err)
			}
			waitSpare(t, c, "warm spares", func(have, closed bool) bool { return have })
			for _, s := range spareSessions(c) {
				lose(t, s)
			}
			res, err := c.Run(ctx, "cat >> "+dir+"/ran; cat "+dir+"/ran", []byte("once\n"))
			if err != nil {
				t.Fatalf("operation on a lost spare: %v", err)
			}
			if string(res.Stdout) != "once\n" {
				t.Fatalf("the command ran %q times, want once", res.Stdout)
			}
			if !c.Alive() {
				t.Fatal("the connection was given up over a lost spare")
			}
			waitSpare(t, c, "warm spares again", func(have, closed bool) bool { return have && !closed })
			if res, err := c.Run(ctx, "cat", []byte("warm")); err != nil || string(res.Stdout) != "warm" {
				t.Fatalf("on a new spare: %q, %v", res.Stdout, err)
			}
		})
	}
}

// Concurrent operations on one connection each get their own channel;
// the spare is taken by one of them at most.
func TestExecConcurrent(t *testing.T) {
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				want := fmt.Sprintf("%d-%d", i, j)
				res, err := c.Run(ctx, "cat", []byte(want))
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(res.Stdout, []byte(want)) {
					errs <- fmt.Errorf("got %q, want %q", res.Stdout, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Input reaches the command byte for byte, behind the exec request that
// was not waited for, at sizes below and above a channel window, as root
// and through sudo, with every byte value.
func TestExecInput(t *testing.T) {
	_, cfg := startNode(t, "n", sshdtest.Options{})
	user := cfg
	user.User, user.Become = sshdtest.AddUser(t, sshdtest.SudoNoPassword), true
	const cmd = "id -u; sha256sum | cut -d' ' -f1"
	for _, login := range []struct {
		name string
		cfg  Config
	}{{"root", cfg}, {"sudo", user}} {
		c := dial(t, login.cfg)
		for _, n := range []int{1, 255, 64 << 10, 3<<20 + 1} {
			in := make([]byte, n)
			for i := range in {
				in[i] = byte(i * 7)
			}
			sum := sha256.Sum256(in)
			res, err := c.Run(testCtx(t), cmd, in)
			if err != nil {
				t.Fatalf("%s, %d bytes: %v", login.name, n, err)
			}
			if got, want := string(res.Stdout), "0\n"+hex.EncodeToString(sum[:])+"\n"; got != want {
				t.Fatalf("%s, %d bytes: got %q, want %q", login.name, n, got, want)
			}
		}
	}
}

// A batch whose paths nearly fill the command line runs, its contents on
// the channel.
func TestExecInputWithLongBatch(t *testing.T) {
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	dir := t.TempDir()
	var ops []FileOp
	// About 84 KB of quoted paths (one session) and 42 KB of input (had
	// the input been carried in the command line, it would pass 128 KiB).
	for i := 0; i < 400; i++ {
		data := []byte(fmt.Sprintf("%-20d", i))
		ops = append(ops, FileOp{Kind: OpWrite, Path: fmt.Sprintf("%s/%s-%04d", dir, strings.Repeat("p", 200), i), Data: data, Mode: 0o600})
	}
	if err := ApplyFiles(testCtx(t), c, ops); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 199, 399} {
		got, err := os.ReadFile(ops[i].Path)
		if err != nil || string(got) != string(ops[i].Data) {
			t.Fatalf("%s: %q, %v", ops[i].Path, got, err)
		}
	}
}
