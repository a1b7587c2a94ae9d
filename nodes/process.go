package nodes

import (
	"context"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"
)

// Commands for the health gates of steps: which process runs, whether a
// local endpoint answers, whether the tools they need are there.

// The restart gates ask, for the newest process of a component that
// shares the shell's network namespace (static control-plane pods use the
// host network), "<pid> <start-ticks> <ticks-per-second> <uptime> <now>
// <manifest-mtime>": the process's start in clock ticks since boot, the
// node's uptime and the time now and the manifest's mtime as seconds with
// their fractions. Whole seconds are not enough: a restart gate must not
// take a process that started in the same second as its manifest changed,
// but before it, for the restarted one.

// newestFunc defines the shell function newest: the report above for the
// newest process named $name and the file $manifest, or status 3.
//
// The loop over the matching processes forks nothing: test's -ef compares
// the namespaces' inodes and read takes the stat line, so a node where
// many processes match (the e2e nodes share one pid namespace: every
// kubelet of the cluster) pays no fork per process.
const newestFunc = `newest() {
  hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
  best=""; bestticks=-1
  for p in $(pgrep -f "(^|/)$name( |$)" || true); do
    [ /proc/$p/ns/net -ef /proc/self/ns/net ] 2>/dev/null || continue
    { read -r st < "/proc/$p/stat"; } 2>/dev/null || continue
    st=${st##*) }
    set -- $st
    [ $# -ge 20 ] || continue
    ticks=${20}
    if [ "$ticks" -gt "$bestticks" ]; then best=$p; bestticks=$ticks; fi
  done
  [ -n "$best" ] || return 3
  read up _ < /proc/uptime
  now=$(date +%s.%N)
  m=$(stat -c %.9Y "$manifest" 2>/dev/null) || m=$(stat -c %Y "$manifest" 2>/dev/null) || m=0
  echo "$best $bestticks $hz $up $now $m"
}`

// awaitScript waits on the node, in one session, for what a restart gate
// used to poll over SSH: every 0.5 s (the rate rotate polled at) it runs
// newest and, with a port other than 0, GETs
// https://127.0.0.1:$port/healthz (curl, at most 5 s, the component's
// serving certificate not checked), until the newest process started
// after the manifest was written and answers "ok", or until $within
// seconds passed. It prints two lines: newest's report ("none" when no
// process runs) and the healthz answer ("" when not asked, "curl exit N"
// when the GET failed). The shell's verdict only ends the loop early
// (awk; without awk it waits the whole time): the caller judges the
// report itself.
const awaitScript = `set -u
name=$1; manifest=$2; port=$3; within=$4
` + newestFunc + `
started() {
  echo "$1" | awk '{ exit !(($4 - $2 / $3) < ($5 - $6)) }' 2>/dev/null
}
end=$(( $(date +%s) + within ))
while :; do
  line=$(newest) || line=none
  health=""
  if [ "$line" != none ] && started "$line"; then
    [ "$port" = 0 ] && break
    health=$(curl -sk --max-time 5 "https://127.0.0.1:$port/healthz") || health="curl exit $?"
    [ "$health" = ok ] && break
  fi
  [ "$(date +%s)" -ge "$end" ] && break
  sleep 0.5 2>/dev/null || sleep 1
done
echo "$line"
echo "$health"
`

// AwaitProcess waits on the node, up to within (whole seconds, at least
// one), for the newest process named name to have started after file was
// last written and, with port other than 0, for https://127.0.0.1:port/healthz
// to answer "ok": one round trip where polling takes one per check. It
// returns what it saw last: the process and the healthz
// answer ("" when port is 0 or the process had not restarted yet; "curl
// exit N" when the GET failed). The verdict is the caller's.
func AwaitProcess(ctx context.Context, r Runner, name, file string, port int, within time.Duration) (Process, string, error) {
	secs := max(int(within/time.Second), 1)
	res, err := r.Run(ctx, shCommand(awaitScript, name, file, strconv.Itoa(port), strconv.Itoa(secs)), nil)
	if err != nil {
		return Process{}, "", err
	}
	report, health, _ := strings.Cut(strings.TrimRight(string(res.Stdout), "\n"), "\n")
	if strings.TrimSpace(report) == "none" {
		return Process{}, strings.TrimSpace(health), nil
	}
	pid, newer, err := parseProcessReport(report)
	if err != nil {
		return Process{}, "", err
	}
	return Process{Running: true, PID: pid, StartedAfterWrite: newer}, strings.TrimSpace(health), nil
}

// Process is the newest process of a name on a node, as AwaitProcess
// found it.
type Process struct {
	Running bool   // false: no such process in the node's network namespace
	PID     string // of the newest one
	// StartedAfterWrite: it started after the file was last written.
	StartedAfterWrite bool
}

// newestReport is newest's line: the process, its age and the node's
// time now (seconds, from its start ticks and the uptime), and the
// manifest's mtime.
type newestReport struct {
	pid             string
	age, now, mtime float64
}

func parseNewest(out string) (newestReport, error) {
	f := strings.Fields(out)
	if len(f) != 6 {
		return newestReport{}, fmt.Errorf("unexpected process report %q", out)
	}
	var v [5]float64
	for i := range v {
		var err error
		if v[i], err = strconv.ParseFloat(f[i+1], 64); err != nil {
			return newestReport{}, fmt.Errorf("unexpected process report %q: %w", out, err)
		}
	}
	ticks, hz, uptime, now, mtime := v[0], v[1], v[2], v[3], v[4]
	if hz <= 0 {
		return newestReport{}, fmt.Errorf("unexpected process report %q: clock ticks per second %v", out, hz)
	}
	return newestReport{pid: f[0], age: uptime - ticks/hz, now: now, mtime: mtime}, nil
}

// parseProcessReport reads newest's line and says whether the process
// started after the manifest was written: its age (uptime minus its start)
// is below the manifest's (now minus mtime).
func parseProcessReport(out string) (pid string, newer bool, err error) {
	r, err := parseNewest(out)
	if err != nil {
		return "", false, err
	}
	return r.pid, r.age < r.now-r.mtime, nil
}

// restartScript runs the restart command $1 (under sh -c, as Run would)
// and then prints, as its last line, newest's report for the process
// named $2 ("none" when none runs): one round trip for the restart and
// the new process's start.
const restartScript = `set -u
restart=$1; name=$2; manifest=/dev/null
sh -c "$restart" || exit $?
` + newestFunc + `
newest || echo none
`

// RestartReport runs command on the node (a restart that returns once
// the process is up, such as the inventory's kubelet restart command) and
// says when the newest process named name in the node's network
// namespace started, by the node's clock (to about a clock tick; the
// caller leaves a margin). ok is false when no such process is found
// there (another network namespace, or not running).
//
// after is applied once the command succeeded; it, what r queued (a
// *Batched) and the command make one round trip (ApplyRunApply).
func RestartReport(ctx context.Context, r Runner, command, name string, after ...FileOp) (started time.Time, ok bool, err error) {
	cmd := shCommand(restartScript, command, name)
	var res Result
	if b, batched := r.(*Batched); len(after) > 0 || batched && b.Pending() > 0 {
		res, err = ApplyRunApply(ctx, r, nil, cmd, after)
	} else {
		res, err = r.Run(ctx, cmd, nil)
	}
	if err != nil {
		return time.Time{}, false, err
	}
	out := strings.TrimRight(string(res.Stdout), "\n")
	if i := strings.LastIndexByte(out, '\n'); i >= 0 {
		out = out[i+1:]
	}
	if started, err = parseStartReport(out); err != nil {
		// "none", or the last line of a restart command that put its
		// output past the report's: the start is unknown, which only makes
		// the caller wait longer.
		return time.Time{}, false, nil
	}
	return started, true, nil
}

// restartCommandOf is the restart command of a RestartReport command
// line (for fakes, which run it themselves).
func restartCommandOf(cmd string) (string, bool) {
	rest, ok := strings.CutPrefix(cmd, shCommand(restartScript)+" ")
	if !ok || !strings.HasPrefix(rest, "'") {
		return "", false
	}
	var b strings.Builder
	rest = rest[1:]
	for {
		i := strings.IndexByte(rest, '\'')
		if i < 0 {
			return "", false
		}
		b.WriteString(rest[:i])
		rest = rest[i+1:]
		if r, ok := strings.CutPrefix(rest, `\''`); ok {
			b.WriteByte('\'')
			rest = r
			continue
		}
		return b.String(), true
	}
}

// parseStartReport reads newest's line as the process's start by the
// node's clock: now less its age.
func parseStartReport(out string) (time.Time, error) {
	r, err := parseNewest(out)
	if err != nil {
		return time.Time{}, err
	}
	start := r.now - r.age
	sec := int64(start)
	return time.Unix(sec, int64((start-float64(sec))*1e9)), nil
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
