package nodes

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// TestAwaitProcessSSH runs the restart gate's node-side wait through a
// real sshd against a real process and a real local HTTPS endpoint.
func TestAwaitProcessSSH(t *testing.T) {
	_, cfg := startNode(t, "await", sshdtest.Options{})
	c := dial(t, cfg)
	ctx := testCtx(t)
	dir := t.TempDir()
	name := fmt.Sprintf("rotate-await-%d", os.Getpid())
	bin := renamedSleep(t, dir, name)
	manifest := filepath.Join(dir, "component.yaml")
	if err := os.WriteFile(manifest, []byte("kind: Pod\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	setMtime := func(at time.Time) {
		t.Helper()
		if err := os.Chtimes(manifest, at, at); err != nil {
			t.Fatal(err)
		}
	}

	p, health, err := AwaitProcess(ctx, c, name, manifest, 0, time.Second)
	if err != nil || p.Running || health != "" {
		t.Fatalf("nothing running: %+v %q %v", p, health, err)
	}

	setMtime(time.Now().Add(-time.Hour))
	cmd := exec.Command(bin, "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p, _, err = AwaitProcess(ctx, c, name, manifest, 0, 30*time.Second)
	if err != nil || !p.Running || !p.StartedAfterWrite || p.PID != strconv.Itoa(cmd.Process.Pid) {
		t.Fatalf("process started after the write: %+v %v (pid %d)", p, err, cmd.Process.Pid)
	}

	// A newer process of the same name in another network namespace (on
	// the e2e cluster, another node's) is not this node's component.
	other := exec.Command("unshare", "--net", bin, "300")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", other.Process.Pid)); strings.Contains(string(b), name) {
			break // unshare has exec'd it
		}
		if time.Now().After(deadline) {
			t.Fatal("the process in its own network namespace did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p, _, err = AwaitProcess(ctx, c, name, manifest, 0, 30*time.Second)
	if err != nil || p.PID != strconv.Itoa(cmd.Process.Pid) {
		t.Fatalf("newest process in the node's network namespace: %+v %v, want pid %d (not %d, in another namespace)", p, err, cmd.Process.Pid, other.Process.Pid)
	}

	// The manifest written after the process started: it is the old one.
	setMtime(time.Now().Add(time.Hour))
	p, _, err = AwaitProcess(ctx, c, name, manifest, 0, time.Second)
	if err != nil || !p.Running || p.StartedAfterWrite {
		t.Fatalf("process older than its manifest: %+v %v", p, err)
	}

	// With a health port: "ok" ends the wait; anything else is returned
	// after the wait.
	var answer atomic.Value
	answer.Store("ok")
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			fmt.Fprint(w, answer.Load().(string))
		}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	setMtime(time.Now().Add(-time.Hour))
	p, health, err = AwaitProcess(ctx, c, name, manifest, port, 30*time.Second)
	if err != nil || !p.StartedAfterWrite || health != "ok" {
		t.Fatalf("healthy: %+v %q %v", p, health, err)
	}
	answer.Store("[-]poststarthook failed")
	p, health, err = AwaitProcess(ctx, c, name, manifest, port, time.Second)
	if err != nil || !p.StartedAfterWrite || health != "[-]poststarthook failed" {
		t.Fatalf("unhealthy: %+v %q %v", p, health, err)
	}
	srv.Close()
	if _, health, err = AwaitProcess(ctx, c, name, manifest, port, time.Second); err != nil || health != "curl exit 7" {
		t.Fatalf("nothing listening: %q %v, want curl exit 7", health, err)
	}
}

// TestRestartReportSSH runs a restart command through a real sshd that
// starts a real process and reports its start by the node's clock, in
// one round trip; the restart command's own output and failure are kept.
func TestRestartReportSSH(t *testing.T) {
	_, cfg := startNode(t, "restart", sshdtest.Options{})
	c := dial(t, cfg)
	ctx := testCtx(t)
	dir := t.TempDir()
	name := fmt.Sprintf("rotate-restart-%d", os.Getpid())
	bin := renamedSleep(t, dir, name)
	pidFile := filepath.Join(dir, "pid")
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(string(bytes.TrimSpace(b))); err == nil {
				if p, err := os.FindProcess(pid); err == nil {
					p.Kill()
				}
			}
		}
	})

	if _, ok, err := RestartReport(ctx, c, "true", name); err != nil || ok {
		t.Fatalf("nothing running: ok %v, err %v", ok, err)
	}
	before := time.Now()
	// The command prints a line of its own, like a restart script might.
	cmd := fmt.Sprintf("echo restarting; %s 300 </dev/null >/dev/null 2>&1 & echo $! > %s", bin, pidFile)
	started, ok, err := RestartReport(ctx, c, cmd, name)
	after := time.Now()
	if err != nil || !ok {
		t.Fatalf("RestartReport: ok %v, err %v", ok, err)
	}
	// Clock ticks are 10 ms; /proc/uptime has two decimals.
	if started.Before(before.Add(-50*time.Millisecond)) || started.After(after.Add(50*time.Millisecond)) {
		t.Errorf("started %s, want between %s and %s", started.Format(time.RFC3339Nano), before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano))
	}

	if _, _, err := RestartReport(ctx, c, "echo nope >&2; exit 7", name); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("failing restart command: err = %v, want its exit and stderr", err)
	}
}

func TestParseStartReport(t *testing.T) {
	// Started 250 ticks (2.5 s) after boot, 100 s of uptime, now 1000.25:
	// it started at 902.75.
	got, err := parseStartReport("42 250 100 100.00 1000.250000000 0")
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Unix(902, 750_000_000); got.Sub(want).Abs() > time.Microsecond {
		t.Errorf("start = %s, want %s", got.Format(time.RFC3339Nano), want.Format(time.RFC3339Nano))
	}
	for _, bad := range []string{"", "42 250 0 100 1000 0", "42 x 100 100 1000 0"} {
		if _, err := parseStartReport(bad); err == nil {
			t.Errorf("parseStartReport(%q) succeeded", bad)
		}
	}
}

// renamedSleep is a copy of sleep(1) named name in dir: a process the
// node-side scripts find by name.
func renamedSleep(t *testing.T, dir, name string) string {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	raw, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}
