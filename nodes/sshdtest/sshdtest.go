// Package sshdtest starts real OpenSSH sshd processes on loopback addresses
// for tests of code that reaches nodes over SSH. Each server runs from its
// own temp directory with its own host key, config and authorized_keys; it
// never reads /etc/ssh or depends on the system's sshd service. Everything a
// test starts is killed in t.Cleanup, also when the test fails.
//
// The tests need root (sshd must switch users) and Debian's openssh-server
// (`apt-get install -y openssh-server`); tests of become also need sudo
// (`apt-get install -y sudo`). A missing binary fails the test with that
// command rather than skipping it.
package sshdtest

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is the sshd binary the tests run.
const SSHD = "/usr/sbin/sshd"

// Server is one running sshd.
type Server struct {
	Name string
	Host string // 127.0.0.1
	Port int
	Dir  string // private temp directory of this server
	// HostKey is the server's host key; KnownHosts a known_hosts file that
	// lists it (and nothing else) for [Host]:Port.
	HostKey    ssh.Signer
	KnownHosts string
	// ClientKeyFile is an unencrypted private key authorized for every
	// user; ClientKey is its signer.
	ClientKeyFile string
	ClientKey     ssh.Signer

	proc *proc
	logs *syncBuffer
}

// proc is one sshd process.
type proc struct {
	cmd    *exec.Cmd
	exited chan error
	once   sync.Once
}

// Options tune Start.
type Options struct {
	// Name labels the server in logs (default "node").
	Name string
	// ClientKeyFile, when set, is authorized instead of a fresh key, so
	// many servers can share one client key.
	ClientKeyFile string
	// AuthorizedKeys are authorized in addition to the client key.
	AuthorizedKeys []ssh.PublicKey
	// UserHome keeps the login user's own HOME. By default sessions get
	// HOME set to an empty directory of the server, so the test machine's
	// dotfiles (a root ~/.bashrc that runs pyenv costs 200ms per command)
	// neither slow the tests down nor change what they measure.
	UserHome bool
	// ExtraConfig lines go first in sshd_config (sshd keeps the first
	// value of a keyword, so they override the defaults).
	ExtraConfig []string
	// Hosts are names only this server resolves (name -> IP address): it
	// runs in its own mount namespace with an /etc/hosts that adds them,
	// as a jump host resolves the private names of the nodes behind it.
	// See CanIsolateHosts.
	Hosts map[string]string
}

// CanIsolateHosts reports whether Options.Hosts works here: unshare(1)
// can make a mount namespace and bind-mount over /etc/hosts (root with
// CAP_SYS_ADMIN, as on the test machine; not in every container).
func CanIsolateHosts() error {
	out, err := exec.Command("unshare", "-m", "sh", "-c", "mount --bind /etc/hosts /etc/hosts").CombinedOutput()
	if err != nil {
		return fmt.Errorf("unshare -m with a bind mount: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// RequireSSHD fails the test unless it can run sshd: the binary is
// installed and the test runs as root.
func RequireSSHD(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(SSHD); err != nil {
		t.Fatalf("%s not found: install OpenSSH's server with `apt-get install -y openssh-server` (make test does this): %v", SSHD, err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("tests that start sshd must run as root (sshd switches to the login user)")
	}
	// Privilege separation directory, normally made by the service unit.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatalf("create /run/sshd: %v", err)
	}
}

// Start starts an sshd on 127.0.0.1 and a free port, and waits until it
// answers. It is stopped (with every process it started) in t.Cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	RequireSSHD(t)
	if opts.Name == "" {
		opts.Name = "node"
	}
	// Not t.TempDir(): its parent is 0700, and sshd reads authorized_keys
	// as the login user, who must be able to reach it.
	dir, err := os.MkdirTemp("", "rotate-sshd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{Name: opts.Name, Host: "127.0.0.1", Dir: dir}

	hostKeyFile := filepath.Join(dir, "ssh_host_ed25519_key")
	s.HostKey = WriteKey(t, hostKeyFile)
	if opts.ClientKeyFile != "" {
		s.ClientKeyFile = opts.ClientKeyFile
		s.ClientKey = ReadKey(t, opts.ClientKeyFile)
	} else {
		s.ClientKeyFile = filepath.Join(dir, "id_ed25519")
		s.ClientKey = WriteKey(t, s.ClientKeyFile)
	}
	var ak bytes.Buffer
	ak.Write(ssh.MarshalAuthorizedKey(s.ClientKey.PublicKey()))
	for _, k := range opts.AuthorizedKeys {
		ak.Write(ssh.MarshalAuthorizedKey(k))
	}
	akFile := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(akFile, ak.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}

	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		s.Port = port
		// sshd takes the first value of a keyword: extra lines go first.
		cfg := append([]string{}, opts.ExtraConfig...)
		if !opts.UserHome {
			cfg = append(cfg, "SetEnv HOME="+home)
		}
		cfg = append(cfg,
			"Port "+strconv.Itoa(port),
			"ListenAddress 127.0.0.1",
			"HostKey "+hostKeyFile,
			"PidFile none",
			"UsePAM no",
			"StrictModes no",
			"AuthorizedKeysFile "+akFile,
			"PubkeyAuthentication yes",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"PermitRootLogin prohibit-password",
			"PrintMotd no",
			"PrintLastLog no",
			"MaxStartups 200",
			"MaxSessions 200",
			"LogLevel ERROR",
			"Subsystem sftp internal-sftp",
		)
		cfgFile := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfgFile, []byte(strings.Join(cfg, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := s.start(t, cfgFile, opts.Hosts); err != nil {
			lastErr = err
			continue
		}
		kh := filepath.Join(dir, "known_hosts")
		WriteKnownHosts(t, kh, s.Addr(), s.HostKey.PublicKey())
		s.KnownHosts = kh
		return s
	}
	t.Fatalf("start sshd %s: %v", s.Name, lastErr)
	return nil
}

func (s *Server) start(t testing.TB, cfgFile string, hosts map[string]string) error {
	s.logs = &syncBuffer{}
	cmd := exec.Command(SSHD, "-D", "-e", "-f", cfgFile)
	if len(hosts) > 0 {
		// unshare and sh exec in turn: the pid stays sshd's.
		etc, err := os.ReadFile("/etc/hosts")
		if err != nil {
			return err
		}
		names := make([]string, 0, len(hosts))
		for n := range hosts {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			etc = append(etc, []byte("\n"+hosts[n]+" "+n+"\n")...)
		}
		f := filepath.Join(filepath.Dir(cfgFile), "hosts")
		if err := os.WriteFile(f, etc, 0o644); err != nil {
			return err
		}
		cmd = exec.Command("unshare", "-m", "sh", "-c", `mount --bind "$1" /etc/hosts && exec "$2" -D -e -f "$3"`, "sh", f, SSHD, cfgFile)
	}
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", SSHD, err)
	}
	p := &proc{cmd: cmd, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	logs := s.logs
	// Registered before any client of the test, so clients close first.
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			if l := logs.String(); l != "" {
				t.Logf("sshd %s (port %d) log:\n%s", s.Name, s.Port, l)
			}
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.exited:
			p.exited <- err
			return fmt.Errorf("sshd exited (%v): %s", err, strings.TrimSpace(logs.String()))
		default:
		}
		if banner(s.Addr()) {
			s.proc = p
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stop()
	return fmt.Errorf("sshd did not answer on %s within 10s: %s", s.Addr(), logs.String())
}

// Stop kills sshd and every process below it now. Cleanup calls it;
// calling it earlier simulates a node going away.
func (s *Server) Stop() { s.proc.stop() }

// stop kills sshd and its descendants: per-connection children run in
// their own sessions, so a process group kill alone would miss them.
func (p *proc) stop() {
	p.once.Do(func() {
		pid := p.cmd.Process.Pid
		_ = syscall.Kill(pid, syscall.SIGSTOP) // no new children meanwhile
		for _, c := range descendants(pid) {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		select {
		case err := <-p.exited:
			p.exited <- err
		case <-time.After(5 * time.Second):
		}
	})
}

// Logs returns what sshd printed so far.
func (s *Server) Logs() string { return s.logs.String() }

// Addr returns host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

func banner(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	// Answer with our own version line so sshd does not log the probe as
	// a failed key exchange.
	_, _ = c.Write([]byte("SSH-2.0-rotate-probe\r\n"))
	return err == nil && strings.HasPrefix(line, "SSH-2.0-")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// descendants lists every process below pid, children first-found order.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], p)
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out = append(out, c)
			walk(c)
		}
	}
	walk(pid)
	return out
}

// WriteKey writes a new unencrypted ed25519 private key in OpenSSH format
// (mode 0600) with its .pub beside it, and returns its signer.
func WriteKey(t testing.TB, file string) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "rotate test key")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file+".pub", ssh.MarshalAuthorizedKey(s.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// ReadKey reads an unencrypted private key file.
func ReadKey(t testing.TB, file string) ssh.Signer {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	return s
}

// WriteKnownHosts writes a known_hosts file with one line for addr
// (host:port) and key.
func WriteKnownHosts(t testing.TB, file, addr string, key ssh.PublicKey) {
	t.Helper()
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, key) + "\n"
	if err := os.WriteFile(file, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
