package nodes

import (
	"context"
	"strings"
	"testing"
	"time"
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
// AwaitProcess reads the answer.
func TestGateCommands(t *testing.T) {
	ctx := context.Background()
	r := NewMemRunner("n")
	answer := Result{Stdout: []byte("42 10025 100 110.00 1700000000.500 1699999990.000\nok\n")}
	r.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (Result, error) { return answer, nil }
	p, health, err := AwaitProcess(ctx, r, "kube-controller-manager", "/etc/kubernetes/manifests/kube-controller-manager.yaml", 10257, 1500*time.Millisecond)
	if err != nil || p != (Process{Running: true, PID: "42", StartedAfterWrite: true}) || health != "ok" {
		t.Errorf("AwaitProcess = %+v, %q, %v", p, health, err)
	}
	answer = Result{Stdout: []byte("none\n\n")}
	if p, health, err := AwaitProcess(ctx, r, "kube-apiserver", "/m", 0, 0); err != nil || p.Running || health != "" {
		t.Errorf("AwaitProcess with none running = %+v, %q, %v", p, health, err)
	}
	answer = Result{Stdout: []byte("7 x\n")}
	if _, _, err := AwaitProcess(ctx, r, "kube-apiserver", "/m", 0, 0); err == nil {
		t.Errorf("AwaitProcess took a garbled report")
	}
	must(t, MakeDir(ctx, r, "/var/lib/rotate/it's", 0o700))
	must(t, HaveCommands(ctx, r, "curl", "pgrep", "awk"))
	cmds := r.Commands()
	if !strings.HasPrefix(cmds[0], "sh -c 'set -u\n") || !strings.HasSuffix(cmds[0], "' sh 'kube-controller-manager' '/etc/kubernetes/manifests/kube-controller-manager.yaml' '10257' '1'") {
		t.Errorf("await command %q", cmds[0])
	}
	if !strings.HasSuffix(cmds[1], "' sh 'kube-apiserver' '/m' '0' '1'") {
		t.Errorf("await command with no port and no time %q (want port 0, at least 1 s)", cmds[1])
	}
	for i, want := range []string{
		`mkdir -p -m 0700 '/var/lib/rotate/it'\''s'`,
		"command -v curl >/dev/null && command -v pgrep >/dev/null && command -v awk >/dev/null",
	} {
		if got := cmds[3+i]; got != want {
			t.Errorf("command %q, want %q", got, want)
		}
	}
}
