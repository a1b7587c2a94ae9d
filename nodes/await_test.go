package nodes

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
