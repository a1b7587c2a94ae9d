package nodes

import (
	"context"
	"errors"
	"io/fs"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestShellQuoteRoundTrip(t *testing.T) {
	t.Parallel()
	args := []string{"", "plain", "it's", `"`, "$(id)", "`id`", "a\nb", "'''", `\`, "-n", "--", "*", "ünï"}
	script := `for a in "$@"; do printf '%s\0' "$a"; done`
	out, err := exec.Command("sh", "-c", shCommand(script, args...)).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if len(got) != len(args) {
		t.Fatalf("got %d args, want %d: %q", len(got), len(args), got)
	}
	for i := range args {
		if got[i] != args[i] {
			t.Errorf("arg %d = %q, want %q", i, got[i], args[i])
		}
	}
}

func TestParseStat(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, out string
		want      FileInfo
		err       bool
	}{
		{"missing", "missing\n", FileInfo{Path: "/p"}, false},
		{"file", "81a4 0 0 12 root root\n", FileInfo{Path: "/p", Exists: true, Mode: 0o644, Size: 12, Owner: "root", Group: "root", IsRegular: true}, false},
		{"sticky dir", "43ed 5 6 4096 u g\n", FileInfo{Path: "/p", Exists: true, Mode: 0o755 | fs.ModeSticky, UID: 5, GID: 6, Size: 4096, Owner: "u", Group: "g", IsDir: true}, false},
		{"link", "a1ff 0 0 9 root root\n/a b\nc\n", FileInfo{Path: "/p", Exists: true, Mode: 0o777, Size: 9, Owner: "root", Group: "root", IsSymlink: true, LinkTarget: "/a b\nc"}, false},
		{"garbage", "what\n", FileInfo{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat("/p", []byte(tc.out))
			if (err != nil) != tc.err {
				t.Fatalf("err = %v", err)
			}
			if !tc.err && got != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestOctalMode(t *testing.T) {
	t.Parallel()
	for m, want := range map[fs.FileMode]string{
		0o600:                  "0600",
		0o755 | fs.ModeSetuid:  "4755",
		0o2770 & fs.ModePerm:   "0770",
		fs.ModeSetgid | 0o750:  "2750",
		fs.ModeSticky | 0o777:  "1777",
		fs.ModeSymlink | 0o777: "0777",
	} {
		if got := octalMode(m); got != want {
			t.Errorf("octalMode(%v) = %s, want %s", m, got, want)
		}
		if got := modeFromUnix(0o100000 | uint32(parseOctal(want))); octalMode(got) != want {
			t.Errorf("modeFromUnix round trip of %s = %v", want, got)
		}
	}
}

func parseOctal(s string) int {
	n := 0
	for _, c := range s {
		n = n*8 + int(c-'0')
	}
	return n
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "/run/agent.sock")
	t.Setenv("HOME", "/home/op")
	c := Config{Name: "cp-1", Address: "10.0.0.1", UseAgent: true}.WithDefaults()
	want := Config{Name: "cp-1", Address: "10.0.0.1", Port: 22, User: "root", UseAgent: true, AgentSocket: "/run/agent.sock",
		KnownHostsFile: "/home/op/.ssh/known_hosts", DialTimeout: 10 * time.Second, CommandTimeout: 2 * time.Minute,
		KeepAlive: 15 * time.Second, Retries: 3, RetryBackoff: 500 * time.Millisecond}
	if c != want {
		t.Errorf("WithDefaults =\n%+v\nwant\n%+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	for name, bad := range map[string]Config{
		"no name":    {Address: "a", IdentityFile: "k"},
		"no address": {Name: "n", IdentityFile: "k"},
		"no auth":    {Name: "n", Address: "a"},
		"bad port":   {Name: "n", Address: "a", IdentityFile: "k", Port: 70000},
		"url":        {Name: "n", Address: "ssh://a/", IdentityFile: "k"},
	} {
		if err := bad.WithDefaults().Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, bad)
		}
	}
	if (Config{User: "root", Become: true}).become() {
		t.Error("root does not need sudo")
	}
	if _, err := Dial(context.Background(), Config{Name: "n"}); err == nil || !strings.Contains(err.Error(), "node n: invalid ssh config") {
		t.Errorf("Dial with bad config: %v", err)
	}
}

func TestTransientClassification(t *testing.T) {
	t.Parallel()
	if transient(ErrHostKey) || transient(&authError{errors.New("x")}) || transient(context.Canceled) {
		t.Error("final errors classified transient")
	}
}

func TestMemRunnerExtras(t *testing.T) {
	t.Parallel()
	m := NewMemRunner("w-1")
	m.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (Result, error) {
		if cmd == "systemctl restart kubelet" {
			return Result{Stdout: []byte("ok")}, nil
		}
		return Result{ExitStatus: 1}, &ExitError{Node: "w-1", Op: "run command", Result: Result{ExitStatus: 1}}
	}
	ctx := context.Background()
	if res, err := m.Run(ctx, "systemctl restart kubelet", nil); err != nil || string(res.Stdout) != "ok" {
		t.Errorf("Run = %q, %v", res.Stdout, err)
	}
	var xe *ExitError
	if _, err := m.Run(ctx, "false", nil); !errors.As(err, &xe) {
		t.Errorf("Run false: %v", err)
	}
	if got := m.Commands(); len(got) != 2 || got[0] != "systemctl restart kubelet" {
		t.Errorf("Commands = %q", got)
	}
	m.Fail = func(op, p string) error {
		if op == "write" {
			return errors.New("disk full")
		}
		return nil
	}
	if err := m.WriteFile(ctx, "/x", nil, 0); err == nil || err.Error() != "disk full" {
		t.Errorf("Fail: %v", err)
	}
	m.Fail = nil
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.ReadFile(cctx, "/x"); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled ctx: %v", err)
	}
	if ops := m.Ops(); ops[len(ops)-1] != "write /x" {
		t.Errorf("Ops = %q", ops)
	}
	// Inspection follows links without recording or consulting Fail.
	m.SetFile("/a/target", []byte("t"), 0o600)
	m.SetSymlink("/a/target", "/a/link")
	m.Fail = func(op, p string) error { return errors.New("inspected through Fail") }
	before := len(m.Ops())
	if b, ok := m.Resolve("/a/link"); !ok || string(b) != "t" {
		t.Errorf("Resolve = %q, %v", b, ok)
	}
	if _, ok := m.Resolve("/a/missing"); ok {
		t.Error("Resolve of a missing path is ok")
	}
	if l, ok := m.Link("/a/link"); !ok || l != "/a/target" {
		t.Errorf("Link = %q, %v", l, ok)
	}
	if _, ok := m.Link("/a/target"); ok {
		t.Error("Link of a regular file is ok")
	}
	if len(m.Ops()) != before {
		t.Errorf("inspection was recorded: %q", m.Ops()[before:])
	}
	// A clone has the files, links, modes and owners, and nothing else.
	m.SetFileOwner("/a/owned", []byte("o"), 0o640, 7, 8, "kube", "kube")
	c := m.Clone()
	m.Fail = nil
	if err := m.WriteFile(ctx, "/a/target", []byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	if b, _ := c.Resolve("/a/link"); string(b) != "t" {
		t.Errorf("clone follows the original: %q", b)
	}
	if fi, _ := c.Stat(ctx, "/a/owned"); fi.Mode != 0o640 || fi.UID != 7 || fi.Owner != "kube" {
		t.Errorf("clone's /a/owned = %+v", fi)
	}
	if c.Fail != nil || c.RunFunc != nil || len(c.Ops()) != 1 {
		t.Errorf("clone carries hooks or recorded operations: %q", c.Ops())
	}
}

func TestStderrSniffer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		writes []string
		pid    int
		rest   string
	}{
		{"first line", []string{"rotate-pid:42\nerr\n"}, 42, "err\n"},
		{"split writes", []string{"rotate-", "pid:7", "\nx", "y\n"}, 7, "xy\n"},
		{"after noise", []string{"Could not chdir to home directory /x\n", "rotate-pid:9\nboom\n"}, 9, "Could not chdir to home directory /x\nboom\n"},
		{"no marker", []string{"just stderr"}, 0, "just stderr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &stderrSniffer{rest: &capBuffer{max: 1 << 10}}
			for _, s := range tc.writes {
				w.Write([]byte(s))
			}
			if w.remotePid() != tc.pid || string(w.bytes()) != tc.rest {
				t.Errorf("pid %d rest %q", w.remotePid(), w.bytes())
			}
		})
	}
}
