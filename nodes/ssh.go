package nodes

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Client is an SSH connection to one node. It implements Runner and
// ExactWriter and is safe for concurrent use (each call runs on its own
// session channel of the shared connection, one round trip: exec.go).
type Client struct {
	cfg  Config
	log  *slog.Logger // debug: every operation, with node, op and duration
	conn *ssh.Client
	jump *ssh.Client   // the jump host's connection conn runs through, if any
	done chan struct{} // closed when the connection is gone
	once sync.Once
	// trips counts the round trips to the node (roundtrips.go); nil:
	// not counted.
	trips *RoundTrips
	// spares is the session channel opened ahead of the next operation
	// (exec.go).
	spares spares
}

var _ Runner = (*Client)(nil)
var _ ExactWriter = (*Client)(nil)
var _ Batcher = (*Client)(nil)

// Dial connects to the node, verifying its host key, retrying transient
// network errors (refused, reset, unreachable, timeout) up to cfg.Retries
// times with exponential backoff. Host key and authentication failures
// return at once.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	return dialLogged(ctx, cfg, nil, nil)
}

// dialLogged is Dial, logging each attempt, retry and the connection to log (nil:
// no logs), counting each attempt and then the client's round trips in
// trips (nil: not counted). Nothing logged holds key material.
func dialLogged(ctx context.Context, cfg Config, log *slog.Logger, trips *RoundTrips) (*Client, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node", cfg.Name)
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hk, err := newHostKeys(cfg)
	if err != nil {
		return nil, err
	}
	backoff := cfg.RetryBackoff
	for attempt := 0; ; attempt++ {
		start := time.Now()
		trips.Dial(cfg.Name)
		c, err := dialOnce(ctx, cfg, hk)
		if err == nil {
			c.log, c.trips = log, trips
			log.Info("connected", "addr", cfg.addr(), "user", cfg.User, "attempt", attempt+1, "duration", time.Since(start).Round(time.Millisecond))
			return c, nil
		}
		if ctx.Err() != nil || !transient(err) || attempt >= cfg.Retries {
			if transient(err) && attempt > 0 {
				return nil, fmt.Errorf("%w (after %d attempts)", err, attempt+1)
			}
			return nil, err
		}
		log.Info("connect failed, retrying", "addr", cfg.addr(), "attempt", attempt+1, "retry_in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("connect to node %s: %w (last error: %v)", cfg.Name, ctx.Err(), err)
		case <-t.C:
		}
		backoff *= 2
		if backoff > 30*time.Second {
			backoff = 30 * time.Second
		}
	}
}

func (c Config) addr() string { return net.JoinHostPort(c.Address, strconv.Itoa(c.Port)) }

// transient reports whether a dial error is a network hiccup worth
// retrying. Anything else (host key, authentication, configuration) is
// final.
func transient(err error) bool {
	if errors.Is(err, ErrHostKey) || errors.Is(err, context.Canceled) {
		return false
	}
	var ae *authError
	if errors.As(err, &ae) {
		return false
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && (dnsErr.IsTemporary || dnsErr.IsTimeout) {
		return true
	}
	return false
}

// authError marks authentication failures, which are never retried.
type authError struct{ err error }

func (e *authError) Error() string { return e.err.Error() }
func (e *authError) Unwrap() error { return e.err }

// jumpHandshakes is how many logins to one jump host run at once. Every
// node behind it has its own connection to it, and OpenSSH's sshd drops
// unauthenticated connections beyond MaxStartups (default 10:30:100,
// dropping from the 11th), so a wide fan-out must not open them all at
// once. Nodes reached directly each have their own sshd: no limit.
const jumpHandshakes = 8

var jumpSlots = struct {
	sync.Mutex
	by map[string]chan struct{}
}{by: map[string]chan struct{}{}}

// jumpSlot waits for a login slot at the jump host addr; release frees it.
func jumpSlot(ctx context.Context, addr string) (release func(), err error) {
	jumpSlots.Lock()
	ch, ok := jumpSlots.by[addr]
	if !ok {
		ch = make(chan struct{}, jumpHandshakes)
		jumpSlots.by[addr] = ch
	}
	jumpSlots.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func dialOnce(ctx context.Context, cfg Config, hk *hostKeys) (*Client, error) {
	jc := cfg.jump()
	if jc != nil {
		release, err := jumpSlot(ctx, jc.addr())
		if err != nil {
			return nil, fmt.Errorf("connect to node %s through %s: %w", cfg.Name, jc.label(), err)
		}
		defer release()
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	var jump *ssh.Client
	var raw net.Conn
	if jc != nil {
		var err error
		if jump, err = handshake(ctx, dctx, *jc, hk, nil); err != nil {
			return nil, err
		}
		if raw, err = jump.DialContext(dctx, "tcp", cfg.addr()); err != nil {
			jump.Close()
			return nil, fmt.Errorf("connect to node %s (%s) through %s: %w", cfg.Name, cfg.addr(), jc.label(), err)
		}
	}
	conn, err := handshake(ctx, dctx, cfg, hk, raw)
	if err != nil {
		if jump != nil {
			jump.Close()
		}
		return nil, err
	}
	c := &Client{cfg: cfg, conn: conn, jump: jump, done: make(chan struct{})}
	go func() {
		_ = c.conn.Wait()
		if c.jump != nil {
			c.jump.Close()
		}
		c.markDone()
	}()
	if cfg.KeepAlive > 0 {
		go c.keepAlive(cfg.KeepAlive)
	}
	return c, nil
}

// handshake logs in to the host cfg names over raw (nil: a TCP connection
// it dials), verifying its host key, within dctx.
func handshake(ctx, dctx context.Context, cfg Config, hk *hostKeys, raw net.Conn) (*ssh.Client, error) {
	if raw == nil {
		var d net.Dialer
		var err error
		if raw, err = d.DialContext(dctx, "tcp", cfg.addr()); err != nil {
			return nil, fmt.Errorf("connect to %s (%s): %w", cfg.label(), cfg.addr(), err)
		}
	}
	// The handshake honours the same deadline and ctx. A channel through
	// a jump host has no deadlines: it is closed instead.
	deadline, _ := dctx.Deadline()
	_ = raw.SetDeadline(deadline)
	stop := context.AfterFunc(dctx, func() {
		if raw.SetDeadline(time.Unix(1, 0)) != nil {
			raw.Close()
		}
	})
	defer stop()

	auth, closeAgent, err := authMethods(cfg)
	if err != nil {
		raw.Close()
		return nil, err
	}
	defer closeAgent()

	var hkErr error
	sshCfg := &ssh.ClientConfig{
		User: cfg.User,
		Auth: auth,
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			hkErr = hk.check(cfg, hostname, remote, key)
			return hkErr
		},
		HostKeyAlgorithms: hk.algorithms(cfg.addr(), raw.RemoteAddr()),
	}
	conn, chans, reqs, err := ssh.NewClientConn(raw, cfg.addr(), sshCfg)
	if err != nil {
		raw.Close()
		if hkErr != nil {
			return nil, hkErr
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to %s (%s): %w", cfg.label(), cfg.addr(), ctx.Err())
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, &authError{fmt.Errorf("authenticate as %s to %s (%s): %w", cfg.User, cfg.label(), cfg.addr(), err)}
		}
		if dctx.Err() != nil {
			return nil, fmt.Errorf("ssh handshake with %s (%s): timed out after %s: %w", cfg.label(), cfg.addr(), cfg.DialTimeout, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("ssh handshake with %s (%s): %w", cfg.label(), cfg.addr(), err)
	}
	_ = raw.SetDeadline(time.Time{})
	return ssh.NewClient(conn, chans, reqs), nil
}

func (c *Client) markDone() { c.once.Do(func() { close(c.done) }) }

// keepAlive sends keepalive@openssh.com every interval and closes the
// connection when a reply does not arrive within two intervals.
func (c *Client) keepAlive(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		replied := make(chan error, 1)
		go func() {
			_, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil)
			replied <- err
		}()
		timer := time.NewTimer(2 * interval)
		select {
		case err := <-replied:
			timer.Stop()
			if err != nil {
				c.conn.Close()
				return
			}
		case <-timer.C:
			c.conn.Close()
			return
		case <-c.done:
			timer.Stop()
			return
		}
	}
}

// Alive reports whether the connection is still up (as far as known).
func (c *Client) Alive() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// Name returns the node's name.
func (c *Client) Name() string { return c.cfg.Name }

// Config returns the effective configuration (defaults applied).
func (c *Client) Config() Config { return c.cfg }

// Close closes the connection.
func (c *Client) Close() error {
	c.closeSpare()
	err := c.conn.Close()
	if c.jump != nil {
		c.jump.Close()
	}
	c.markDone()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func authMethods(cfg Config) ([]ssh.AuthMethod, func(), error) {
	var signers []func() ([]ssh.Signer, error)
	closeAgent := func() {}
	if cfg.UseAgent {
		ac, err := net.Dial("unix", cfg.AgentSocket)
		if err != nil {
			return nil, nil, &authError{fmt.Errorf("%s: connect to ssh agent %s: %w", cfg.label(), cfg.AgentSocket, err)}
		}
		closeAgent = func() { ac.Close() }
		signers = append(signers, agent.NewClient(ac).Signers)
	}
	if cfg.IdentityFile != "" {
		pem, err := os.ReadFile(cfg.IdentityFile)
		if err != nil {
			closeAgent()
			return nil, nil, &authError{fmt.Errorf("%s: read identity file: %w", cfg.label(), err)}
		}
		s, err := ssh.ParsePrivateKey(pem)
		if err != nil {
			closeAgent()
			var pm *ssh.PassphraseMissingError
			if errors.As(err, &pm) {
				return nil, nil, &authError{fmt.Errorf("%s: identity file %s is passphrase-protected; load it into ssh-agent and use the agent", cfg.label(), cfg.IdentityFile)}
			}
			// The parse error never echoes key material.
			return nil, nil, &authError{fmt.Errorf("%s: parse identity file %s: %w", cfg.label(), cfg.IdentityFile, err)}
		}
		signers = append(signers, func() ([]ssh.Signer, error) { return []ssh.Signer{s}, nil })
	}
	all := func() ([]ssh.Signer, error) {
		var out []ssh.Signer
		for _, f := range signers {
			s, err := f()
			if err != nil {
				return nil, err
			}
			out = append(out, s...)
		}
		return out, nil
	}
	return []ssh.AuthMethod{ssh.PublicKeysCallback(all)}, closeAgent, nil
}

// hostKeys verifies host keys against known_hosts (or nothing, in
// insecure mode).
type hostKeys struct {
	file     string
	insecure bool
	cb       ssh.HostKeyCallback
}

func newHostKeys(cfg Config) (*hostKeys, error) {
	if cfg.InsecureIgnoreHostKey {
		return &hostKeys{insecure: true}, nil
	}
	if _, err := os.Stat(cfg.KnownHostsFile); err != nil {
		return nil, fmt.Errorf("node %s: known_hosts file: %w: %w", cfg.Name, err, ErrHostKey)
	}
	cb, err := knownhosts.New(cfg.KnownHostsFile)
	if err != nil {
		return nil, fmt.Errorf("node %s: load known_hosts %s: %w: %w", cfg.Name, cfg.KnownHostsFile, err, ErrHostKey)
	}
	return &hostKeys{file: cfg.KnownHostsFile, cb: cb}, nil
}

var (
	probeKeyOnce sync.Once
	probeKey     ssh.PublicKey
)

// algorithms returns the host key algorithms known_hosts has keys of for
// this host, so the server is asked for a key type we can verify (without
// it a server preferring another algorithm would look like a mismatch).
// nil means the library's defaults (unknown host or insecure mode).
func (h *hostKeys) algorithms(hostport string, remote net.Addr) []string {
	if h.insecure {
		return nil
	}
	probeKeyOnce.Do(func() {
		pub, _, _ := ed25519.GenerateKey(nil)
		probeKey, _ = ssh.NewPublicKey(pub)
	})
	var ke *knownhosts.KeyError
	if err := h.cb(hostport, remote, probeKey); !errors.As(err, &ke) || len(ke.Want) == 0 {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	add := func(a ...string) {
		for _, x := range a {
			if !seen[x] {
				seen[x] = true
				algos = append(algos, x)
			}
		}
	}
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return algos
}

func (h *hostKeys) check(cfg Config, hostname string, remote net.Addr, key ssh.PublicKey) error {
	if h.insecure {
		return nil
	}
	err := h.cb(hostname, remote, key)
	if err == nil {
		return nil
	}
	fp := key.Type() + " " + ssh.FingerprintSHA256(key)
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case errors.As(err, &re):
		return fmt.Errorf("host key of %s (%s) is revoked in %s:%d: %s; refusing to connect: %w",
			cfg.label(), cfg.addr(), re.Revoked.Filename, re.Revoked.Line, fp, ErrHostKey)
	case errors.As(err, &ke) && len(ke.Want) == 0:
		return fmt.Errorf("unknown host key for %s (%s): %s; verify it out of band and add it to known_hosts %s (line: %s): %w",
			cfg.label(), cfg.addr(), fp, h.file, knownhosts.Line([]string{knownhosts.Normalize(cfg.addr())}, key), ErrHostKey)
	case errors.As(err, &ke):
		var want []string
		for _, w := range ke.Want {
			want = append(want, fmt.Sprintf("%s %s (%s:%d)", w.Key.Type(), ssh.FingerprintSHA256(w.Key), w.Filename, w.Line))
		}
		return fmt.Errorf("host key mismatch for %s (%s): server presented %s, known_hosts has %s — possible man-in-the-middle; refusing to connect: %w",
			cfg.label(), cfg.addr(), fp, strings.Join(want, ", "), ErrHostKey)
	default:
		return fmt.Errorf("verify host key of %s (%s) %s: %w: %w", cfg.label(), cfg.addr(), fp, err, ErrHostKey)
	}
}

// Run runs cmd with /bin/sh -c on the node (see Runner).
func (c *Client) Run(ctx context.Context, cmd string, stdin []byte) (Result, error) {
	return c.run(ctx, "run command", shCommand(cmd), stdin)
}

// pidMarker starts the first stderr line of every command: the remote
// process id, so a cancelled command can be killed from a second session.
// (sshd ignores SSH "signal" requests for root logins, which run without
// privilege separation.)
const pidMarker = "rotate-pid:"

// remoteCommand wraps an `sh -c ...` command line with the remote-side
// timeout (timedCommand) and the login part (loginCommand): the command a
// fresh session channel runs.
//
// Input never travels inside the command line: sshd runs the command as
// the login shell's argument, which any user of the node may read in
// /proc while that shell starts, and inputs hold private keys and
// kubeconfigs. It goes on the channel (exec.go).
func (c *Client) remoteCommand(inner string, timeout time.Duration) string {
	return c.loginCommand(timedCommand(inner, timeout))
}

// loginCommand is what the login shell runs: it prints the pid marker and
// execs cmd, through sudo when becoming root. The exec keeps the reported
// pid the one to signal: timeout itself, or sudo, which relays TERM to it.
func (c *Client) loginCommand(cmd string) string {
	var b strings.Builder
	b.WriteString("printf '" + pidMarker + "%s\\n' \"$$\" >&2; exec ")
	if c.cfg.become() {
		b.WriteString("sudo -n -- ")
	}
	b.WriteString(cmd)
	return b.String()
}

// timedCommand wraps inner with coreutils timeout, which signals the
// whole process group, so even a command whose connection is gone dies.
func timedCommand(inner string, timeout time.Duration) string {
	if timeout <= 0 {
		return inner
	}
	// A little later than the client gives up, so the client's error is
	// the one reported; KILL 5s after TERM for commands that ignore it.
	return fmt.Sprintf("timeout -k 5 %.3f %s", (timeout + 2*time.Second).Seconds(), inner)
}

// kill sends TERM to a remote command started by run, from a new session.
func (c *Client) kill(ctx context.Context, pid int) {
	if pid <= 1 {
		return
	}
	c.trips.Trip(ctx, c.cfg.Name)
	s, err := c.conn.NewSession()
	if err != nil {
		return
	}
	defer s.Close()
	cmd := "exec kill -TERM " + strconv.Itoa(pid)
	if c.cfg.become() {
		cmd = "exec sudo -n -- kill -TERM " + strconv.Itoa(pid)
	}
	done := make(chan struct{})
	go func() {
		_ = s.Run(cmd)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

// stderrSniffer takes the pid marker line off stderr, and on a warm
// channel (exec.go) the run marker line after it. They are normally the
// first lines, but sshd, a login shell or sudo may print something first
// (e.g. "Could not chdir to home directory"), so the leading lines are
// searched.
type stderrSniffer struct {
	mu      sync.Mutex
	head    []byte
	off     int // head[:off] holds no marker
	done    bool
	pid     int
	wantRun bool // a run marker follows the pid marker
	ran     bool
	rest    *capBuffer
}

const sniffLimit = 8 << 10

func (w *stderrSniffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	if w.done {
		_, _ = w.rest.Write(p)
		return n, nil
	}
	w.head = append(w.head, p...)
	for {
		i := bytes.IndexByte(w.head[w.off:], '\n')
		if i < 0 {
			break
		}
		line := w.head[w.off : w.off+i]
		switch {
		case w.pid == 0 && bytes.HasPrefix(line, []byte(pidMarker)):
			w.pid, _ = strconv.Atoi(string(line[len(pidMarker):]))
		case w.pid != 0 && w.wantRun && string(line) == runMarker:
			w.ran = true
		default:
			w.off += i + 1
			continue
		}
		w.head = append(w.head[:w.off], w.head[w.off+i+1:]...)
		if w.pid != 0 && (!w.wantRun || w.ran) {
			w.flush()
			return n, nil
		}
	}
	if len(w.head) > sniffLimit {
		w.flush()
	}
	return n, nil
}

// flush gives up looking for markers; w.mu is held.
func (w *stderrSniffer) flush() {
	_, _ = w.rest.Write(w.head)
	w.head, w.off, w.done = nil, 0, true
}

func (w *stderrSniffer) remotePid() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pid
}

// started reports whether the command was started: its pid marker came
// (its run marker too on a warm channel).
func (w *stderrSniffer) started() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pid > 0 && (!w.wantRun || w.ran)
}

// expect starts over for a channel: warm or not.
func (w *stderrSniffer) expect(warm bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.head, w.off, w.done, w.pid, w.ran, w.wantRun = nil, 0, false, 0, false, warm
	w.rest.Reset()
}

func (w *stderrSniffer) bytes() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.flush()
	}
	return w.rest.Bytes()
}

const maxStderr = 1 << 20

func (c *Client) run(ctx context.Context, op, inner string, stdin []byte) (Result, error) {
	start := time.Now()
	res, err := c.runOnce(ctx, op, inner, stdin)
	if c.log != nil && c.log.Enabled(ctx, slog.LevelDebug) {
		attrs := []any{"op", op, "duration", time.Since(start).Round(time.Millisecond)}
		if len(stdin) > 0 {
			attrs = append(attrs, "stdin_bytes", len(stdin))
		}
		if err != nil {
			attrs = append(attrs, "err", err)
		}
		c.log.Debug("node operation", attrs...)
	}
	return res, err
}

func (c *Client) runOnce(ctx context.Context, op, inner string, stdin []byte) (Result, error) {
	timeout := c.cfg.CommandTimeout
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); timeout < 0 || d < timeout {
			timeout = d
		}
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	var cancel context.CancelFunc
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()

	type outcome struct {
		res Result
		x   exited
		err error
	}
	var (
		mu sync.Mutex
		sc ssh.Channel
	)
	stderr := &stderrSniffer{rest: &capBuffer{max: maxStderr}}
	ch := make(chan outcome, 1)
	c.trips.Trip(ctx, c.cfg.Name)
	go func() {
		var stdout bytes.Buffer
		x, err := c.exec(timedCommand(inner, timeout), stdin, &stdout, stderr,
			func(s ssh.Channel) { mu.Lock(); sc = s; mu.Unlock() })
		ch <- outcome{res: Result{Stdout: stdout.Bytes(), Stderr: stderr.bytes()}, x: x, err: err}
	}()

	var out outcome
	select {
	case out = <-ch:
	case <-ctx.Done():
		// TERM reaches timeout(1) (through sudo, which relays it), which
		// kills the command's whole process group. Should the kill not get
		// through, timeout(1) ends the command on its own shortly after.
		c.kill(ctx, stderr.remotePid())
		mu.Lock()
		if sc != nil {
			sc.Close()
		}
		mu.Unlock()
		// What the command printed before it was stopped (ApplyFiles
		// counts the operations it completed from it).
		var partial Result
		select {
		case o := <-ch:
			partial = o.res
		case <-time.After(2 * time.Second):
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return partial, fmt.Errorf("%s on %s: timed out after %s: %w", op, c.cfg.Name, timeout.Round(time.Millisecond), context.DeadlineExceeded)
		}
		return partial, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, ctx.Err())
	}
	res, x, err := out.res, out.x, out.err
	switch {
	case err == nil && x.status == 0:
		return res, nil
	case err == nil && (x.status > 0 || x.signal != ""):
		res.ExitStatus = x.status
		if be := c.becomeError(op, res); be != nil {
			return res, be
		}
		xe := &ExitError{Node: c.cfg.Name, Op: op, Result: res}
		if x.signal != "" {
			xe.Signal = x.signal
			xe.Result.ExitStatus = -1
			res.ExitStatus = -1
		}
		return res, xe
	case err == nil, connectionBroken(err), !c.Alive():
		// No exit status: the channel or the connection went away under
		// the command. Make sure the connection counts as gone, so Pool
		// re-dials.
		c.conn.Close()
		c.markDone()
		return res, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, ErrConnectionLost)
	default:
		return res, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
}

// connectionBroken reports errors that mean the SSH connection itself is
// gone (as opposed to the server refusing one channel or command).
func connectionBroken(err error) bool {
	var oe *net.OpError
	var ce *ssh.OpenChannelError
	if errors.As(err, &ce) {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.As(err, &oe)
}

// becomeError recognises sudo's own refusals (they come before the command
// runs, exit status 1, "sudo: " prefix).
func (c *Client) becomeError(op string, res Result) error {
	if !c.cfg.become() {
		return nil
	}
	msg := string(res.Stderr)
	if res.ExitStatus == 127 && strings.Contains(msg, "sudo") && strings.Contains(msg, "not found") {
		return fmt.Errorf("%s on %s: sudo is not installed on the node: %w", op, c.cfg.Name, ErrBecome)
	}
	if res.ExitStatus != 1 || !strings.Contains(msg, "sudo: ") {
		return nil
	}
	for _, s := range []string{"a password is required", "a terminal is required", "password is required"} {
		if strings.Contains(msg, s) {
			return fmt.Errorf("%s on %s: sudo wants a password for user %s; become needs passwordless sudo (NOPASSWD) for this user: %w", op, c.cfg.Name, c.cfg.User, ErrBecome)
		}
	}
	for _, s := range []string{"is not in the sudoers file", "is not allowed to execute", "may not run sudo"} {
		if strings.Contains(msg, s) {
			return fmt.Errorf("%s on %s: user %s may not use sudo: %s: %w", op, c.cfg.Name, c.cfg.User, firstLines(res.Stderr, 1, 200), ErrBecome)
		}
	}
	return nil
}

// capBuffer keeps the first max bytes written to it and discards the rest.
type capBuffer struct {
	bytes.Buffer
	max int
}

func (b *capBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		if len(p) > room {
			b.Buffer.Write(p[:room])
		} else {
			b.Buffer.Write(p)
		}
	}
	return len(p), nil
}
