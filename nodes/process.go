package nodes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// Commands for the health gates of steps: which process runs, whether a
// local endpoint answers, whether the tools they need are there.

// processScript is a shell script: for the newest process of the component
// that shares this shell's network namespace (static control-plane pods
// use the host network) it prints "<pid> <start-ticks> <ticks-per-second>
// <uptime> <now> <manifest-mtime>" — the process's start in clock ticks
// since boot, the node's uptime and the time now and the manifest's mtime
// as seconds with their fractions — or exits 3 when none runs. Whole
// seconds are not enough: a restart gate must not take a process that
// started in the same second as its manifest changed, but before it, for
// the restarted one.
const processScript = `set -u
name=$1; manifest=$2
self=$(readlink /proc/self/ns/net)
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
best=""; bestticks=-1
for p in $(pgrep -f "(^|/)$name( |$)" || true); do
  [ "$(readlink /proc/$p/ns/net 2>/dev/null)" = "$self" ] || continue
  st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
  set -- $st
  [ $# -ge 20 ] || continue
  ticks=${20}
  if [ "$ticks" -gt "$bestticks" ]; then best=$p; bestticks=$ticks; fi
done
[ -n "$best" ] || exit 3
read up _ < /proc/uptime
now=$(date +%s.%N)
m=$(stat -c %.9Y "$manifest" 2>/dev/null) || m=$(stat -c %Y "$manifest" 2>/dev/null) || m=0
echo "$best $bestticks $hz $up $now $m"
`

// Process is the newest process of a name on a node, as NewestProcess
// found it.
type Process struct {
	Running bool   // false: no such process in the node's network namespace
	PID     string // of the newest one
	// StartedAfterWrite: it started after the file was last written.
	StartedAfterWrite bool
}

// NewestProcess finds the newest process named name that shares the
// shell's network namespace on the node (static control-plane pods use the
// host network) and says whether it started after file was last written.
func NewestProcess(ctx context.Context, r Runner, name, file string) (Process, error) {
	res, err := r.Run(ctx, shCommand(processScript, name, file), nil)
	var ee *ExitError
	if errors.As(err, &ee) && ee.Result.ExitStatus == 3 {
		return Process{}, nil
	}
	if err != nil {
		return Process{}, err
	}
	pid, newer, err := parseProcessReport(string(res.Stdout))
	if err != nil {
		return Process{}, err
	}
	return Process{Running: true, PID: pid, StartedAfterWrite: newer}, nil
}

// parseProcessReport reads processScript's line and says whether the process
// started after the manifest was written: its age (uptime minus its start)
// is below the manifest's (now minus mtime).
func parseProcessReport(out string) (pid string, newer bool, err error) {
	f := strings.Fields(out)
	if len(f) != 6 {
		return "", false, fmt.Errorf("unexpected process report %q", out)
	}
	var v [5]float64
	for i := range v {
		if v[i], err = strconv.ParseFloat(f[i+1], 64); err != nil {
			return "", false, fmt.Errorf("unexpected process report %q: %w", out, err)
		}
	}
	ticks, hz, uptime, now, mtime := v[0], v[1], v[2], v[3], v[4]
	if hz <= 0 {
		return "", false, fmt.Errorf("unexpected process report %q: clock ticks per second %v", out, hz)
	}
	processAge := uptime - ticks/hz
	manifestAge := now - mtime
	return f[0], processAge < manifestAge, nil
}

// LocalHealthz GETs https://127.0.0.1:port/healthz on the node (curl,
// at most 5 s; the component's serving certificate is not what is
// checked) and returns the answer, trimmed. A curl failure is an
// *ExitError.
func LocalHealthz(ctx context.Context, r Runner, port int) (string, error) {
	res, err := r.Run(ctx, fmt.Sprintf("curl -sk --max-time 5 https://127.0.0.1:%d/healthz", port), nil)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(res.Stdout)), nil
}

// MakeDir creates dir and its missing parents on the node; dir itself gets
// mode.
func MakeDir(ctx context.Context, r Runner, dir string, mode fs.FileMode) error {
	_, err := r.Run(ctx, fmt.Sprintf("mkdir -p -m %04o %s", mode.Perm(), shellQuote(dir)), nil)
	return err
}

// HaveCommands fails unless every command is on the node's PATH.
func HaveCommands(ctx context.Context, r Runner, commands ...string) error {
	var checks []string
	for _, c := range commands {
		checks = append(checks, "command -v "+c+" >/dev/null")
	}
	_, err := r.Run(ctx, strings.Join(checks, " && "), nil)
	return err
}
