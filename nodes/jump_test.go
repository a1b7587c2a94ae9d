package nodes

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// behindBastion is the control-plane node's address: a name only the
// jump host resolves (sshdtest.Options.Hosts), so the node is reachable
// through the jump host only. Where the jump host cannot have names of
// its own, the node is at 127.0.0.1 (reachable directly as well).
const behindBastion = "cp1-behind-bastion"

// jumpFixture is two real sshds: a jump host (logging each forwarded
// channel) and a control-plane node behind it, each with its own client
// key, and one known_hosts file listing both.
type jumpFixture struct {
	jump, target *sshdtest.Server
	cfg          Config // the node, through the jump host
	// isolated is why the node's address is not the jump host's own
	// name (nil: it is).
	isolated error
}

func newJumpFixture(t *testing.T) *jumpFixture {
	t.Helper()
	opts := sshdtest.Options{Name: "bastion", ExtraConfig: []string{"LogLevel DEBUG1", "AllowTcpForwarding yes"}}
	f := &jumpFixture{isolated: sshdtest.CanIsolateHosts()}
	if f.isolated == nil {
		opts.Hosts = map[string]string{behindBastion: "127.0.0.1"}
	}
	f.jump = sshdtest.Start(t, opts)
	f.target, f.cfg = startNode(t, "cp1", sshdtest.Options{})
	if f.isolated == nil {
		f.cfg.Address = behindBastion
	}
	f.cfg.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
	f.cfg.JumpHost = &JumpHost{Address: f.jump.Host, Port: f.jump.Port, IdentityFile: f.jump.ClientKeyFile}
	f.writeKnownHosts(t, nil, nil)
	return f
}

// targetAddr is the node's address as the jump host dials it.
func (f *jumpFixture) targetAddr() string {
	return net.JoinHostPort(f.cfg.Address, strconv.Itoa(f.target.Port))
}

// writeKnownHosts replaces the fixture's known_hosts: each server's line
// with key (nil: the server's own).
func (f *jumpFixture) writeKnownHosts(t *testing.T, jumpKey, targetKey ssh.PublicKey) {
	t.Helper()
	if jumpKey == nil {
		jumpKey = f.jump.HostKey.PublicKey()
	}
	if targetKey == nil {
		targetKey = f.target.HostKey.PublicKey()
	}
	text := knownhosts.Line([]string{knownhosts.Normalize(f.jump.Addr())}, jumpKey) + "\n" +
		knownhosts.Line([]string{knownhosts.Normalize(f.targetAddr())}, targetKey) + "\n"
	must(t, os.WriteFile(f.cfg.KnownHostsFile, []byte(text), 0o644))
}

func TestJumpHost(t *testing.T) {
	t.Parallel()
	f := newJumpFixture(t)

	t.Run("the node is not reachable directly", func(t *testing.T) {
		if f.isolated != nil {
			t.Skipf("the jump host cannot resolve names of its own here (%v); the node is at %s", f.isolated, f.cfg.Address)
		}
		cfg := f.cfg
		cfg.JumpHost, cfg.Retries = nil, -1
		if _, err := Dial(testCtx(t), cfg); err == nil || !strings.Contains(err.Error(), "connect to node cp1 ("+f.targetAddr()+")") {
			t.Fatalf("Dial without the jump host = %v, want a connect error", err)
		}
	})

	t.Run("the node through the jump host", func(t *testing.T) {
		c := dial(t, f.cfg)
		res, err := c.Run(testCtx(t), "echo $SSH_CONNECTION", nil)
		if err != nil {
			t.Fatal(err)
		}
		// The node sees the connection arrive at its own port, and the
		// jump host logged the channel it forwarded there.
		if fields := strings.Fields(string(res.Stdout)); len(fields) != 4 || fields[3] != strconv.Itoa(f.target.Port) {
			t.Fatalf("SSH_CONNECTION on the node: %q", res.Stdout)
		}
		if want := "port " + strconv.Itoa(f.target.Port); !strings.Contains(f.jump.Logs(), "direct-tcpip") || !strings.Contains(f.jump.Logs(), want) {
			t.Fatalf("the jump host forwarded no channel to %s:\n%s", want, f.jump.Logs())
		}
		c.Close()
		if c.Alive() {
			t.Fatal("closed client still alive")
		}
	})

	t.Run("the node's key does not open the jump host", func(t *testing.T) {
		cfg := f.cfg
		cfg.JumpHost = &JumpHost{Address: f.jump.Host, Port: f.jump.Port} // the node's identity file
		_, err := Dial(testCtx(t), cfg)
		if err == nil || !strings.Contains(err.Error(), "authenticate as root to jump host "+f.jump.Addr()+" of node cp1") {
			t.Fatalf("Dial = %v, want an authentication error naming the jump host", err)
		}
	})

	other := sshdtest.WriteKey(t, filepath.Join(t.TempDir(), "other")).PublicKey()
	otherFP := ssh.FingerprintSHA256(other)
	for _, tc := range []struct {
		name             string
		jumpKey, nodeKey ssh.PublicKey
		wants            []string
	}{
		{"wrong jump host key", other, nil, []string{"host key mismatch for jump host " + f.jump.Addr() + " of node cp1",
			ssh.FingerprintSHA256(f.jump.HostKey.PublicKey()), otherFP, "refusing to connect"}},
		{"wrong node key", nil, other, []string{"host key mismatch for node cp1 (" + f.targetAddr() + ")",
			ssh.FingerprintSHA256(f.target.HostKey.PublicKey()), otherFP, "refusing to connect"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.writeKnownHosts(t, tc.jumpKey, tc.nodeKey)
			t.Cleanup(func() { f.writeKnownHosts(t, nil, nil) })
			_, err := Dial(testCtx(t), f.cfg)
			if !errors.Is(err, ErrHostKey) {
				t.Fatalf("Dial = %v, want ErrHostKey", err)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}

	t.Run("jump host down", func(t *testing.T) {
		f.jump.Stop()
		cfg := f.cfg
		cfg.Retries = -1
		_, err := Dial(testCtx(t), cfg)
		if err == nil || !strings.Contains(err.Error(), "connect to jump host "+f.jump.Addr()+" of node cp1") {
			t.Fatalf("Dial = %v, want the jump host named", err)
		}
	})
}

// Logins to one jump host are limited (its sshd drops unauthenticated
// connections beyond MaxStartups); another jump host has its own slots.
func TestJumpSlotLimitsLoginsPerJumpHost(t *testing.T) {
	ctx := context.Background()
	var releases []func()
	for i := 0; i < jumpHandshakes; i++ {
		r, err := jumpSlot(ctx, "bastion-a:22")
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := jumpSlot(short, "bastion-a:22"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("login %d to one jump host: err = %v, want it to wait", jumpHandshakes+1, err)
	}
	other, err := jumpSlot(ctx, "bastion-b:22")
	if err != nil {
		t.Fatalf("another jump host: %v", err)
	}
	other()
	releases[0]()
	r, err := jumpSlot(ctx, "bastion-a:22")
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	r()
	for _, r := range releases[1:] {
		r()
	}
}
