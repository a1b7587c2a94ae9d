package supervisor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the supervised processes:
//
//	<test binary> supervisor-test-helper sleep            runs until SIGTERM
//	<test binary> supervisor-test-helper ignore-term      ignores SIGTERM
//	<test binary> supervisor-test-helper exit             exits 1 at once
//	<test binary> supervisor-test-helper healthz ADDR N   serves ADDR/healthz with status N
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "supervisor-test-helper" {
		helper(os.Args[2:])
		return
	}
	os.Exit(m.Run())
}

func helper(args []string) {
	switch args[0] {
	case "sleep":
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		<-ch
		os.Exit(0)
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		select {}
	case "exit":
		os.Exit(1)
	case "healthz":
		code := http.StatusOK
		fmt.Sscan(args[2], &code)
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			// The previous instance may still hold the port for a moment.
			time.Sleep(200 * time.Millisecond)
			os.Exit(1)
		}
		go func() {
			ch := make(chan os.Signal, 1)
			signal.Notify(ch, syscall.SIGTERM)
			<-ch
			os.Exit(0)
		}()
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }))
	}
	os.Exit(2)
}

func podManifest(name, mode string, annotations string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: kube-system
  annotations: {%s}
spec:
  hostNetwork: true
  containers:
  - name: %s
    image: registry.k8s.io/%s:v0
    command:
    - %s
    - supervisor-test-helper
    - %s
`, name, annotations, name, name, os.Args[0], mode)
}

func TestParseManifestHash(t *testing.T) {
	base := podManifest("kube-apiserver", "sleep", "a: b")
	name, h1, cs, err := ParseManifest([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if name != "kube-apiserver" || len(cs) != 1 || cs[0].Command[1] != "supervisor-test-helper" {
		t.Fatalf("parsed %q %+v", name, cs)
	}
	tests := []struct {
		name string
		raw  string
		same bool
	}{
		{"identical", base, true},
		{"comment and whitespace only", "# edited by hand\n" + strings.ReplaceAll(base, "annotations: {a: b}", "annotations:   {a:   b}"), true},
		{"annotation bumped", podManifest("kube-apiserver", "sleep", "a: c"), false},
		{"argument changed", podManifest("kube-apiserver", "exit", "a: b"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, h2, _, err := ParseManifest([]byte(tt.raw))
			if err != nil {
				t.Fatal(err)
			}
			if (h1 == h2) != tt.same {
				t.Fatalf("same hash = %v, want %v", h1 == h2, tt.same)
			}
		})
	}
	for _, bad := range []string{"kind: Service\nmetadata: {name: x}\n", "kind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n", "{{{"} {
		if _, _, _, err := ParseManifest([]byte(bad)); err == nil {
			t.Errorf("ParseManifest(%q) = nil error", bad)
		}
	}
}

type fixture struct {
	t   *testing.T
	dir string
	cfg Config
	s   *Supervisor
}

func start(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, dir: dir}
	f.cfg = Config{
		NodeName:    "n1",
		ManifestDir: filepath.Join(dir, "manifests"),
		LogDir:      filepath.Join(dir, "log"),
		Socket:      filepath.Join(dir, "s.sock"),
		Path:        "/usr/bin:/bin",
		GracePeriod: 5 * time.Second,
		// Changes must be seen through inotify: the resync is far away.
		Resync:     time.Hour,
		MaxBackoff: 200 * time.Millisecond,
	}
	if err := os.MkdirAll(f.cfg.ManifestDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(&f.cfg)
	}
	f.s = New(f.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.s.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(f.cfg.Socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("supervisor socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return f
}

func (f *fixture) write(file, content string) {
	f.t.Helper()
	p := filepath.Join(f.cfg.ManifestDir, file)
	if err := os.WriteFile(p+".tmp", []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		f.t.Fatal(err)
	}
}

// service returns the status of the named service (zero value if absent).
func (f *fixture) service(name string) ServiceStatus {
	for _, s := range f.s.Status() {
		if s.Name == name {
			return s
		}
	}
	return ServiceStatus{}
}

func (f *fixture) waitFor(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s; status %+v", what, f.s.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ignoresSIGTERM reports whether the process has set SIGTERM to ignored,
// from the SigIgn mask the kernel shows in /proc/PID/status. Tests wait on
// it instead of sleeping: on a loaded machine the helper may not have run
// its signal.Ignore yet when the supervisor sends SIGTERM.
func ignoresSIGTERM(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<(uint(syscall.SIGTERM)-1)) != 0
		}
	}
	return false
}

func alive(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(raw), ')')
	return i > 0 && !strings.HasPrefix(strings.TrimSpace(string(raw[i+1:])), "Z")
}

func TestStaticPodLifecycle(t *testing.T) {
	f := start(t, nil)
	f.write("kube-apiserver.yaml", podManifest("kube-apiserver", "sleep", "a: b"))
	f.waitFor("first start", func() bool { return f.service("kube-apiserver").Running })
	pid1 := f.service("kube-apiserver").PID

	// mtime only: the kubelet does not restart.
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(f.cfg.ManifestDir, "kube-apiserver.yaml"), later, later); err != nil {
		t.Fatal(err)
	}
	// Formatting only: same decoded object, no restart either.
	f.write("kube-apiserver.yaml", "# comment\n"+podManifest("kube-apiserver", "sleep", "a: b"))
	f.settle()
	if got := f.service("kube-apiserver").PID; got != pid1 {
		t.Fatalf("restarted on touch/reformat: pid %d -> %d", pid1, got)
	}

	// Content change: the old process is stopped, a new one started.
	f.write("kube-apiserver.yaml", podManifest("kube-apiserver", "sleep", "a: c"))
	f.waitFor("restart on content change", func() bool {
		s := f.service("kube-apiserver")
		return s.Running && s.PID != pid1
	})
	if alive(pid1) {
		t.Fatalf("old process %d still alive after the manifest changed", pid1)
	}
	pid2 := f.service("kube-apiserver").PID

	// Hidden files are ignored, like the kubelet's file source.
	f.write(".kube-scheduler.yaml.swp", podManifest("kube-scheduler", "sleep", ""))
	f.settle()
	if f.service("kube-scheduler").PID != 0 {
		t.Fatal("hidden manifest was started")
	}

	// Removal: stopped.
	if err := os.Remove(filepath.Join(f.cfg.ManifestDir, "kube-apiserver.yaml")); err != nil {
		t.Fatal(err)
	}
	f.waitFor("stop on removal", func() bool { return f.service("kube-apiserver").PID == 0 })
	f.waitFor("process gone", func() bool { return !alive(pid2) })
}

func TestCrashRestartsWithBackoff(t *testing.T) {
	f := start(t, nil)
	f.write("etcd.yaml", podManifest("etcd", "exit", ""))
	f.waitFor("three restarts", func() bool { return f.service("etcd").Restarts >= 3 })
	log, err := os.ReadFile(filepath.Join(f.cfg.LogDir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "exited: exit status 1") {
		t.Fatalf("log does not record the exits:\n%s", log)
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	f := start(t, func(c *Config) { c.GracePeriod = 300 * time.Millisecond })
	f.write("kcm.yaml", podManifest("kube-controller-manager", "ignore-term", ""))
	f.waitFor("start", func() bool { return f.service("kube-controller-manager").Running })
	pid := f.service("kube-controller-manager").PID
	f.waitFor("SIGTERM ignored", func() bool { return ignoresSIGTERM(pid) })
	start := time.Now()
	if err := os.Remove(filepath.Join(f.cfg.ManifestDir, "kcm.yaml")); err != nil {
		t.Fatal(err)
	}
	f.waitFor("killed", func() bool { return !alive(pid) })
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("killed after %s, before the stop timeout", d)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestRestartKubelet(t *testing.T) {
	addr := freePort(t)
	f := start(t, func(c *Config) {
		c.Services = []ServiceSpec{{Name: KubeletService, Argv: []string{os.Args[0], "supervisor-test-helper", "healthz", addr, "200"}}}
		c.ServiceRestartDelay = 100 * time.Millisecond
	})
	f.waitFor("agent start", func() bool { return f.service(KubeletService).Running })
	old := f.service(KubeletService).PID
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pid, err := RestartKubelet(ctx, f.cfg.Socket, "http://"+addr+"/healthz", 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if pid == old || alive(old) {
		t.Fatalf("restart: old pid %d (alive %v), new pid %d", old, alive(old), pid)
	}
	if got := f.service(KubeletService).PID; got != pid {
		t.Fatalf("status pid %d, restart returned %d", got, pid)
	}
}

func TestRestartKubeletUnhealthyTimesOut(t *testing.T) {
	addr := freePort(t)
	f := start(t, func(c *Config) {
		c.Services = []ServiceSpec{{Name: KubeletService, Argv: []string{os.Args[0], "supervisor-test-helper", "healthz", addr, "500"}}}
		c.ServiceRestartDelay = 100 * time.Millisecond
	})
	f.waitFor("agent start", func() bool { return f.service(KubeletService).Running })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := RestartKubelet(ctx, f.cfg.Socket, "http://"+addr+"/healthz", 20*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "HTTP 500") {
		t.Fatalf("err = %v, want a timeout naming HTTP 500", err)
	}
}

func TestRestartKubeletWithoutAgent(t *testing.T) {
	f := start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Call(ctx, f.cfg.Socket, Request{Op: "restart-kubelet"})
	if err == nil || !strings.Contains(err.Error(), `no service "kubelet"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestStopExceptKeepsNamedPods(t *testing.T) {
	f := start(t, nil)
	f.write("etcd.yaml", podManifest("etcd", "sleep", ""))
	f.write("kube-apiserver.yaml", podManifest("kube-apiserver", "sleep", ""))
	f.waitFor("both running", func() bool { return f.service("etcd").Running && f.service("kube-apiserver").Running })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Call(ctx, f.cfg.Socket, Request{Op: "stop", Except: []string{"etcd"}}); err != nil {
		t.Fatal(err)
	}
	if !f.service("etcd").Running || f.service("kube-apiserver").Running {
		t.Fatalf("after stop except etcd: %+v", f.s.Status())
	}
	f.settle()
	if f.service("kube-apiserver").Running {
		t.Fatal("stopped pod was started again")
	}
}

// settle returns once the supervisor has seen everything written so far.
func (f *fixture) settle() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Call(ctx, f.cfg.Socket, Request{Op: "sync"}); err != nil {
		f.t.Fatal(err)
	}
}

// A manifest change stops the old pod gracefully: it keeps running (and
// serving) after SIGTERM until it exits or the grace period ends, and the
// new pod starts only after the old process is gone.
func TestGracefulReplacement(t *testing.T) {
	f := start(t, func(c *Config) { c.GracePeriod = 0 })
	// terminationGracePeriodSeconds: 1 and a process that ignores SIGTERM.
	m := strings.Replace(podManifest("kube-apiserver", "ignore-term", "a: b"), "spec:\n", "spec:\n  terminationGracePeriodSeconds: 1\n", 1)
	f.write("kube-apiserver.yaml", m)
	f.waitFor("start", func() bool { return f.service("kube-apiserver").Running })
	old := f.service("kube-apiserver").PID
	f.waitFor("SIGTERM ignored", func() bool { return ignoresSIGTERM(old) })
	changed := time.Now()
	f.write("kube-apiserver.yaml", strings.Replace(m, "a: b", "a: c", 1))
	f.waitFor("old pod terminating", func() bool { return f.service("kube-apiserver").Terminating })
	if !alive(old) {
		t.Fatal("old process died at once; it must keep running during its grace period")
	}
	f.waitFor("new pod", func() bool { s := f.service("kube-apiserver"); return s.Running && s.PID != old })
	if alive(old) {
		t.Fatal("new pod started while the old process was still alive")
	}
	if d := time.Since(changed); d < time.Second {
		t.Fatalf("replaced after %s, before the 1s grace period of a process that ignores SIGTERM", d)
	}
}

// With a notice delay the supervisor acts on a change only that long
// after it saw it, and the delay can be changed at run time.
func TestNoticeDelay(t *testing.T) {
	f := start(t, nil)
	f.write("kube-scheduler.yaml", podManifest("kube-scheduler", "sleep", "a: b"))
	f.waitFor("start", func() bool { return f.service("kube-scheduler").Running })
	old := f.service("kube-scheduler").PID
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Call(ctx, f.cfg.Socket, Request{Op: "set-notice-delay", NoticeDelay: 700 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	f.write("kube-scheduler.yaml", podManifest("kube-scheduler", "sleep", "a: c"))
	f.waitFor("restart", func() bool { s := f.service("kube-scheduler"); return s.Running && s.PID != old })
	if d := time.Since(changed); d < 700*time.Millisecond {
		t.Fatalf("acted after %s, before the 700ms notice delay", d)
	}
	if _, err := Call(ctx, f.cfg.Socket, Request{Op: "set-notice-delay", NoticeDelay: -time.Second}); err == nil {
		t.Fatal("a negative notice delay was accepted")
	}
}
