package sshdtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// Sudo says what a test user may do with sudo.
type Sudo int

const (
	// NoSudo: the user is not in sudoers.
	NoSudo Sudo = iota
	// SudoNoPassword: `USER ALL=(ALL) NOPASSWD: ALL`.
	SudoNoPassword
	// SudoWithPassword: `USER ALL=(ALL) ALL`; the user has no usable
	// password, so sudo -n always refuses.
	SudoWithPassword
)

var userSeq atomic.Int64

// AddUser creates a throw-away local user with /bin/sh as shell, an
// unlocked account without a password (key login only) and the given sudo
// rights, and removes user, home and sudoers entry in t.Cleanup.
func AddUser(t testing.TB, sudo Sudo) string {
	t.Helper()
	RequireSSHD(t)
	if sudo != NoSudo {
		if _, err := exec.LookPath("sudo"); err != nil {
			t.Fatalf("sudo not found: install it with `apt-get install -y sudo` (make test does this)")
		}
	}
	name := fmt.Sprintf("rt%d-%d", os.Getpid(), userSeq.Add(1))
	home, err := os.MkdirTemp("", "rotate-home-")
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("userdel", "-f", name).Run()
		_ = os.RemoveAll(home)
	})
	// -p '*': no password, but not locked ('!'), which sshd refuses
	// without PAM.
	run("useradd", "-M", "-d", home, "-s", "/bin/sh", "-p", "*", name)
	run("chown", name+":", home)
	if sudo == NoSudo {
		return name
	}
	rule := name + " ALL=(ALL) NOPASSWD: ALL\n"
	if sudo == SudoWithPassword {
		rule = name + " ALL=(ALL) ALL\n"
	}
	// Defaults lecture off so a refusal is one clear line.
	rule = "Defaults:" + name + " !lecture\n" + rule
	f := filepath.Join("/etc/sudoers.d", "rotate-test-"+strings.ReplaceAll(name, "-", "_"))
	if err := os.WriteFile(f, []byte(rule), 0o440); err != nil {
		t.Fatalf("write sudoers entry: %v", err)
	}
	t.Cleanup(func() { _ = os.Remove(f) })
	run("visudo", "-c", "-q", "-f", f)
	return name
}
