package nodes

import (
	"context"
	"strings"
	"testing"
)

func TestParseProcessReport(t *testing.T) {
	tests := []struct {
		name, out string
		newer     bool
		bad       bool
	}{
		// Started 100.25 s after boot, uptime 110.00: 9.75 s old; the
		// manifest was written 10.5 s ago.
		{"started after the write", "42 10025 100 110.00 1700000000.500 1699999990.000\n", true, false},
		// Same second, but 0.3 s before the write: older.
		{"started just before the write, same second", "42 10020 100 110.00 1700000000.500 1699999990.800\n", false, false},
		{"old process", "7 500 100 110.00 1700000000.0 1699999999.0", false, false},
		{"whole-second stat", "7 10500 100 110.00 1700000000.9 1699999995", true, false},
		{"garbage", "7 x 100 110 1 1", false, true},
		{"short", "7 1 2", false, true},
		{"zero hz", "7 1 0 1 1 1", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid, newer, err := parseProcessReport(tt.out)
			if (err != nil) != tt.bad {
				t.Fatalf("err = %v, want error %v", err, tt.bad)
			}
			if !tt.bad && (newer != tt.newer || pid == "") {
				t.Fatalf("pid %q newer %v, want newer %v", pid, newer, tt.newer)
			}
		})
	}
}

// TestGateCommands: what the gate helpers run on a node, and how
// NewestProcess reads the answer (exit 3: no such process).
func TestGateCommands(t *testing.T) {
	ctx := context.Background()
	r := NewMemRunner("n")
	answer := Result{Stdout: []byte("42 10025 100 110.00 1700000000.500 1699999990.000\n")}
	var exit error
	r.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (Result, error) { return answer, exit }
	p, err := NewestProcess(ctx, r, "kube-apiserver", "/etc/kubernetes/manifests/kube-apiserver.yaml")
	if err != nil || p != (Process{Running: true, PID: "42", StartedAfterWrite: true}) {
		t.Errorf("NewestProcess = %+v, %v", p, err)
	}
	exit = &ExitError{Node: "n", Op: "run", Result: Result{ExitStatus: 3}}
	if p, err := NewestProcess(ctx, r, "kube-apiserver", "/m"); err != nil || p.Running {
		t.Errorf("NewestProcess with none running = %+v, %v", p, err)
	}
	exit, answer = nil, Result{Stdout: []byte("ok\n")}
	if body, err := LocalHealthz(ctx, r, 10257); err != nil || body != "ok" {
		t.Errorf("LocalHealthz = %q, %v", body, err)
	}
	must(t, MakeDir(ctx, r, "/var/lib/rotate/it's", 0o700))
	must(t, HaveCommands(ctx, r, "curl", "pgrep"))
	cmds := r.Commands()
	if !strings.HasPrefix(cmds[0], "sh -c 'set -u\n") || !strings.HasSuffix(cmds[0], "' sh 'kube-apiserver' '/etc/kubernetes/manifests/kube-apiserver.yaml'") {
		t.Errorf("process command %q", cmds[0])
	}
	for i, want := range []string{
		"curl -sk --max-time 5 https://127.0.0.1:10257/healthz",
		`mkdir -p -m 0700 '/var/lib/rotate/it'\''s'`,
		"command -v curl >/dev/null && command -v pgrep >/dev/null",
	} {
		if got := cmds[2+i]; got != want {
			t.Errorf("command %q, want %q", got, want)
		}
	}
}
