package nodes

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

func TestKeyFileAuth(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "cp-1", sshdtest.Options{})
	c := dial(t, cfg)
	res, err := c.Run(testCtx(t), "id -u; printf %s \"$1\"", nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := string(res.Stdout); got != "0\n" {
		t.Errorf("stdout = %q, want %q", got, "0\n")
	}
	if c.Name() != "cp-1" {
		t.Errorf("Name = %q", c.Name())
	}
}

func TestRunStdinStdoutStderrExit(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	c := dial(t, cfg)
	ctx := testCtx(t)

	res, err := c.Run(ctx, "tr a-z A-Z", []byte("hello\n"))
	if err != nil || string(res.Stdout) != "HELLO\n" {
		t.Fatalf("Run with stdin = %q, %v", res.Stdout, err)
	}

	res, err = c.Run(ctx, "echo out; echo err >&2; exit 3", nil)
	var xe *ExitError
	if !errors.As(err, &xe) {
		t.Fatalf("err = %v, want *ExitError", err)
	}
	if xe.Result.ExitStatus != 3 || res.ExitStatus != 3 {
		t.Errorf("exit status = %d/%d, want 3", xe.Result.ExitStatus, res.ExitStatus)
	}
	if string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
		t.Errorf("stdout %q stderr %q", res.Stdout, res.Stderr)
	}
	if !strings.Contains(err.Error(), "on n: exit status 3: err") {
		t.Errorf("error %q does not name node, status and stderr", err)
	}
}

// startAgent runs a real ssh-agent on a private socket holding keyFile.
func startAgent(t *testing.T, keyFile string) string {
	t.Helper()
	for _, b := range []string{"ssh-agent", "ssh-add"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: install it with `apt-get install -y openssh-client openssh-server`", b)
		}
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Kill()
		_ = agent.Wait()
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent did not create its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	add := exec.Command("ssh-add", keyFile)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
	return sock
}

func TestAgentAuth(t *testing.T) {
	s, cfg := startNode(t, "n", sshdtest.Options{})
	sock := startAgent(t, s.ClientKeyFile)
	cfg.IdentityFile = ""
	cfg.UseAgent = true

	t.Run("socket from SSH_AUTH_SOCK", func(t *testing.T) {
		t.Setenv("SSH_AUTH_SOCK", sock)
		c := dial(t, cfg)
		if res, err := c.Run(testCtx(t), "echo ok", nil); err != nil || string(res.Stdout) != "ok\n" {
			t.Fatalf("Run = %q, %v", res.Stdout, err)
		}
	})
	t.Run("explicit socket", func(t *testing.T) {
		t.Setenv("SSH_AUTH_SOCK", "")
		cfg := cfg
		cfg.AgentSocket = sock
		dial(t, cfg)
	})
	t.Run("no agent", func(t *testing.T) {
		t.Setenv("SSH_AUTH_SOCK", "")
		_, err := Dial(testCtx(t), cfg)
		if err == nil || !strings.Contains(err.Error(), "SSH_AUTH_SOCK") {
			t.Fatalf("err = %v, want a complaint about SSH_AUTH_SOCK", err)
		}
	})
}

func TestAuthFailureIsNotRetried(t *testing.T) {
	t.Parallel()
	s, cfg := startNode(t, "n", sshdtest.Options{})
	p := newProxy(t, s.Addr())
	cfg = p.via(t, s, cfg)
	cfg.IdentityFile = filepath.Join(t.TempDir(), "other_key")
	sshdtest.WriteKey(t, cfg.IdentityFile)
	_, err := Dial(testCtx(t), cfg)
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") || !strings.Contains(err.Error(), "node n") {
		t.Fatalf("err = %v, want an authentication error naming the node", err)
	}
	if n := p.accepted.Load(); n != 1 {
		t.Errorf("%d connection attempts, want 1 (no retry on auth failure)", n)
	}
}

func TestTransientDialErrorsAreRetried(t *testing.T) {
	t.Parallel()
	s, cfg := startNode(t, "n", sshdtest.Options{})
	p := newProxy(t, s.Addr())
	cfg = p.via(t, s, cfg)
	p.refuseFirst.Store(2) // closed during the handshake, like a flapping LB
	cfg.Retries = 3
	var logs strings.Builder // the pool logs from this goroutine only
	pool := NewPool([]Config{cfg})
	pool.SetLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer pool.Close()
	r, err := pool.Get(testCtx(t), cfg.Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(testCtx(t), "true", nil); err != nil {
		t.Fatal(err)
	}
	if n := p.accepted.Load(); n != 3 {
		t.Errorf("%d connection attempts, want 3", n)
	}
	// The retries and the connection are logged with the node, each
	// operation at debug level.
	for _, want := range []string{`msg="connect failed, retrying" node=n`, "attempt=1 retry_in=50ms", "attempt=2 retry_in=100ms",
		"msg=connected node=n addr=" + cfg.Address, "attempt=3", `msg="node operation" node=n op="run command" duration=`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}

	// Nothing listening: refused, retried Retries times, then an error.
	cfg.Port = freeClosedPort(t)
	cfg.Retries = 2
	start := time.Now()
	_, err = Dial(testCtx(t), cfg)
	if err == nil || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Fatalf("err = %v, want connection refused after 3 attempts", err)
	}
	// Backoff 50ms then 100ms.
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("gave up after %s, want exponential backoff (>=150ms)", d)
	}
}

func freeClosedPort(t *testing.T) int {
	p := newProxy(t, "127.0.0.1:1")
	port := p.port()
	p.ln.Close()
	return port
}

func TestBecome(t *testing.T) {
	t.Parallel()
	s, cfg := startNode(t, "n", sshdtest.Options{})
	dir := t.TempDir() // root-owned, 0700: the user cannot write here alone
	target := filepath.Join(dir, "ca.crt")

	t.Run("passwordless sudo", func(t *testing.T) {
		cfg := cfg
		cfg.User = sshdtest.AddUser(t, sshdtest.SudoNoPassword)

		plain := cfg
		c := dial(t, plain)
		res, err := c.Run(testCtx(t), "id -u", nil)
		if err != nil || strings.TrimSpace(string(res.Stdout)) == "0" {
			t.Fatalf("without become: id -u = %q, %v; want the user's uid", res.Stdout, err)
		}
		if err := c.WriteFile(testCtx(t), target, []byte("x"), 0o644); err == nil {
			t.Fatal("write to a root-only directory without become succeeded")
		}

		cfg.Become = true
		c = dial(t, cfg)
		res, err = c.Run(testCtx(t), "id -u", nil)
		if err != nil || string(res.Stdout) != "0\n" {
			t.Fatalf("with become: id -u = %q, %v; want 0", res.Stdout, err)
		}
		if err := c.WriteFile(testCtx(t), target, []byte("pem"), 0o644); err != nil {
			t.Fatalf("WriteFile with become: %v", err)
		}
		assertFile(t, target, "pem", 0o644, 0, 0)
		got, err := c.ReadFile(testCtx(t), target)
		if err != nil || string(got) != "pem" {
			t.Fatalf("ReadFile with become = %q, %v", got, err)
		}
		// Batches run through sudo the same way.
		must(t, c.ApplyFiles(testCtx(t), []FileOp{{Kind: OpWrite, Path: target, Data: []byte("pem2")}, {Kind: OpSymlink, Path: target + ".link", Target: "ca.crt"}}))
		states, err := c.ReadFiles(testCtx(t), []string{target + ".link"})
		if err != nil || string(states[0].Content) != "pem2" || states[0].Err != nil {
			t.Fatalf("ReadFiles with become = %+v, %v", states, err)
		}
	})

	t.Run("sudo wants a password", func(t *testing.T) {
		cfg := cfg
		cfg.User = sshdtest.AddUser(t, sshdtest.SudoWithPassword)
		cfg.Become = true
		c := dial(t, cfg)
		start := time.Now()
		err := c.WriteFile(testCtx(t), target+".2", []byte("x"), 0)
		if !errors.Is(err, ErrBecome) || !strings.Contains(err.Error(), "NOPASSWD") || !strings.Contains(err.Error(), cfg.User) {
			t.Fatalf("err = %v, want ErrBecome naming the user and NOPASSWD", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %s: sudo must not wait for a password", d)
		}
		err = c.ApplyFiles(testCtx(t), []FileOp{{Kind: OpWrite, Path: target + ".3", Data: []byte("x")}})
		var be *BatchError
		if !errors.Is(err, ErrBecome) || !errors.As(err, &be) || be.Index != 0 || be.Done != 0 {
			t.Errorf("ApplyFiles: err = %v, want a BatchError wrapping ErrBecome", err)
		}
	})

	t.Run("not in sudoers", func(t *testing.T) {
		cfg := cfg
		cfg.User = sshdtest.AddUser(t, sshdtest.NoSudo)
		cfg.Become = true
		c := dial(t, cfg)
		_, err := c.Run(testCtx(t), "true", nil)
		if !errors.Is(err, ErrBecome) {
			t.Fatalf("err = %v, want ErrBecome", err)
		}
	})
	_ = s
}

func TestCommandTimeoutKillsRemoteCommand(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	cfg.CommandTimeout = time.Second
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
	}{
		{"CommandTimeout", func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }},
		{"ctx deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 700*time.Millisecond)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, cfg)
			sub := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			_, err := c.Run(ctx, `echo $$ > `+shellQuote(sub)+`/sh.pid; sleep 30 & echo $! > `+shellQuote(sub)+`/sleep.pid; wait; touch `+shellQuote(sub)+`/done`, nil)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out") {
				t.Fatalf("err = %v, want a timeout", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("returned after %s", d)
			}
			for _, f := range []string{"sh.pid", "sleep.pid"} {
				b, err := os.ReadFile(filepath.Join(sub, f))
				if err != nil {
					t.Fatal(err)
				}
				pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
				waitGone(t, pid)
			}
			if _, err := os.Stat(filepath.Join(sub, "done")); err == nil {
				t.Error("command ran to completion after the timeout")
			}
			// The connection is still usable.
			if _, err := c.Run(testCtx(t), "true", nil); err != nil {
				t.Errorf("Run after timeout: %v", err)
			}
		})
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || bytes.Contains(b, []byte(") Z ")) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("process %d still running after the timeout", pid)
}

func TestKeepAliveClosesDeadConnection(t *testing.T) {
	t.Parallel()
	s, cfg := startNode(t, "n", sshdtest.Options{})
	p := newProxy(t, s.Addr())
	cfg = p.via(t, s, cfg)
	cfg.KeepAlive = 100 * time.Millisecond
	pool := NewPool([]Config{cfg})
	t.Cleanup(func() { pool.Close() })
	r, err := pool.Get(testCtx(t), "n")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := pool.client(testCtx(t), "n")
	p.blackhole.Store(true) // the network silently eats everything
	deadline := time.Now().Add(5 * time.Second)
	for c.Alive() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if c.Alive() {
		t.Fatal("keepalive did not notice the dead connection")
	}
	p.blackhole.Store(false)
	if _, err := r.Run(testCtx(t), "true", nil); err != nil {
		t.Fatalf("Run after re-dial: %v", err)
	}
	if n := p.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (one re-dial)", n)
	}
}

// assertFile checks a local file (the "node" is this machine).
func assertFile(t *testing.T, path, content string, mode os.FileMode, uid, gid int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if string(b) != content {
		t.Errorf("%s content = %q, want %q", path, b, content)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode() & permBits; got != mode {
		t.Errorf("%s mode = %v, want %v", path, got, mode)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s owner = %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, gid)
	}
}
