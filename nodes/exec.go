package nodes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"golang.org/x/crypto/ssh"
)

// One operation, one round trip.
//
// ssh.Session costs three round trips per command: the session channel's
// open, the exec request (Start waits for its reply before it sends any
// input), then the input and the command's output. Over a 50 ms link that
// is 150 ms for an operation whose work on the node takes a few
// milliseconds, and a rotation makes hundreds of them one after another.
// Sending the exec request without waiting for its reply saves one; the
// input would still wait for the other, as sshd opens a session channel's
// window for input only once its command runs. (Carrying the input inside
// the command instead would save that round trip but put private keys in
// the login shell's argument list, which other users of the node can
// read.)
//
// So each Client keeps spareChannels session channels warm ahead of need
// (spares): opened, and already running a small fixed command, the stub
// (stubScript), as root when becoming root. An operation takes a spare
// and sends the stub, as plain input, the length of its command line, the
// command line (timedCommand's: no secret, it is in the process list once
// it runs anyway), then its input, and reads the output and the exit
// status: one round trip, with or without input. The stub reads exactly
// the command line, prints the run marker on stderr and execs it, so the
// command reads its input from where the stub stopped. A new spare is
// warmed in the background while the command runs.
//
// Whether the command ran is known from the run marker: a spare whose
// stub ended without it (its channel was closed while it waited, sudo
// refused it, the stub could not start) never ran the command, and the
// operation is sent once more on a freshly opened channel, as a plain
// exec (whose failure, such as sudo's refusal, is then reported as
// usual). Every command, warm or not, prints its pid marker first
// (loginCommand): on a warm channel it is the stub's, which execs the
// command, so it is the command's pid too.
//
// What this costs: spareChannels idle shells per connection on each node
// (under sudo when becoming root: sudo then logs the stub, not each
// command), and one dd per operation to read the command line. An exec
// sshd refuses without closing the channel (it cannot fork) is not
// answered, as no reply is asked for; the command's timeout ends that
// wait.

// stubScript is the warm channel's command (see above): "LEN\n", then LEN
// bytes of a command line, on stdin.
const stubScript = `IFS= read -r n || exit 70
case $n in ''|*[!0-9]*) exit 70 ;; esac
c=$(dd bs="$n" count=1 iflag=fullblock status=none) || exit 70
printf '` + runMarker + `\n' >&2
eval "exec $c"`

// runMarker is the stderr line the stub prints once it has the command
// line, right before it runs it.
const runMarker = "rotate-run"

// warmInput is what an operation sends a warm channel: its command line
// framed for the stub, then its input.
func warmInput(cmd string, stdin []byte) []byte {
	head := strconv.Itoa(len(cmd)) + "\n" + cmd
	out := make([]byte, 0, len(head)+len(stdin))
	return append(append(out, head...), stdin...)
}

// session is a session channel and its requests.
type session struct {
	ch   ssh.Channel
	reqs <-chan *ssh.Request
}

// spareChannels is how many warm spares a Client keeps. A spare is warm
// two round trips after it is asked for (the channel's open, then sshd
// opening its window once the stub runs), and a step's operations follow
// one another about one round trip apart (a read, then the writes it
// decided), so with one spare every second operation would find it still
// warming; with two, the one taken was warmed while the one before ran.
const spareChannels = 2

// spares holds the warm, unused session channels of a Client.
type spares struct {
	mu      sync.Mutex
	warm    []*session
	opening int
	closed  bool
}

// take returns a warm spare, or nil when there is none; either way the
// spares are made up again in the background.
func (c *Client) take() *session {
	c.spares.mu.Lock()
	var s *session
	if len(c.spares.warm) > 0 {
		s = c.spares.warm[0]
		c.spares.warm = append(c.spares.warm[:0], c.spares.warm[1:]...)
	}
	c.spares.mu.Unlock()
	c.refill()
	return s
}

func (c *Client) open() (*session, error) {
	ch, reqs, err := c.conn.OpenChannel("session", nil)
	if err != nil {
		return nil, err
	}
	return &session{ch: ch, reqs: reqs}, nil
}

// warm opens a session channel running the stub.
func (c *Client) warm() (*session, error) {
	s, err := c.open()
	if err != nil {
		return nil, err
	}
	cmd := c.loginCommand(shCommand(stubScript))
	if _, err := s.ch.SendRequest("exec", false, ssh.Marshal(struct{ Command string }{cmd})); err != nil {
		s.ch.Close()
		return nil, err
	}
	return s, nil
}

// refill warms spares in the background up to spareChannels. A failure is
// not reported: the next operation opens its own channel and reports its
// failure.
func (c *Client) refill() {
	c.spares.mu.Lock()
	defer c.spares.mu.Unlock()
	for !c.spares.closed && len(c.spares.warm)+c.spares.opening < spareChannels {
		c.spares.opening++
		go func() {
			s, err := c.warm()
			c.spares.mu.Lock()
			defer c.spares.mu.Unlock()
			c.spares.opening--
			if err != nil {
				return
			}
			if c.spares.closed {
				s.ch.Close()
				return
			}
			c.spares.warm = append(c.spares.warm, s)
		}()
	}
}

// closeSpare closes the spares and warms no more (Client.Close).
func (c *Client) closeSpare() {
	c.spares.mu.Lock()
	defer c.spares.mu.Unlock()
	c.spares.closed = true
	for _, s := range c.spares.warm {
		s.ch.Close()
	}
	c.spares.warm = nil
}

// exited is how a command ended: its exit status, or -1 and the signal
// that ended it; -1 and "" when the server sent neither.
type exited struct {
	status int
	signal string
}

// exec runs cmd (timedCommand's) on the warm spare, or on a fresh
// session channel when there is none or its stub did not run cmd (see the
// top of this file), writing its output to stdout and stderr. started is
// called with each channel before anything is sent on it, so that a
// caller giving up can close it.
func (c *Client) exec(cmd string, stdin []byte, stdout *bytes.Buffer, stderr *stderrSniffer, started func(ssh.Channel)) (exited, error) {
	if s := c.take(); s != nil {
		started(s.ch)
		stderr.expect(true)
		x, err := runOn(s, "", warmInput(cmd, stdin), stdout, stderr)
		if stderr.started() {
			return x, err
		}
		stdout.Reset()
	}
	stderr.expect(false)
	s, err := c.open()
	if err != nil {
		return exited{}, err
	}
	started(s.ch)
	return runOn(s, c.loginCommand(cmd), stdin, stdout, stderr)
}

// runOn sends the exec request (unless cmd is "": a warm channel's stub
// runs already) and then the input, without waiting in between, and reads
// the output and the exit status until the server closes the channel.
func runOn(s *session, cmd string, stdin []byte, stdout, stderr io.Writer) (exited, error) {
	defer s.ch.Close()
	if cmd != "" {
		if _, err := s.ch.SendRequest("exec", false, ssh.Marshal(struct{ Command string }{cmd})); err != nil {
			return exited{status: -1}, err
		}
	}
	// Behind the request (the channel keeps the order). A write failure
	// shows in the exit status, as with ssh.Session, so it is not an error
	// of its own; the input may be larger than the channel's window, so it
	// is written while the output is read.
	go func() {
		if len(stdin) > 0 {
			_, _ = s.ch.Write(stdin)
		}
		_ = s.ch.CloseWrite()
	}()
	var wg sync.WaitGroup
	var outErr, errErr error
	wg.Add(2)
	go func() { defer wg.Done(); _, outErr = io.Copy(stdout, s.ch) }()
	go func() { defer wg.Done(); _, errErr = io.Copy(stderr, s.ch.Stderr()) }()
	x, reqErr := exitOf(s.reqs) // until the channel is closed
	wg.Wait()
	return x, errors.Join(reqErr, outErr, errErr)
}

// exitOf reads a session's requests until the channel closes: the exit
// status or signal; anything else wanting a reply is refused (keepalives,
// as OpenSSH does).
func exitOf(reqs <-chan *ssh.Request) (exited, error) {
	x := exited{status: -1}
	var err error
	for r := range reqs {
		switch r.Type {
		case "exit-status":
			if len(r.Payload) < 4 {
				err = fmt.Errorf("malformed exit-status (%d bytes)", len(r.Payload))
				continue
			}
			x.status = int(binary.BigEndian.Uint32(r.Payload))
		case "exit-signal":
			var sig struct {
				Signal     string
				CoreDumped bool
				Error      string
				Lang       string
			}
			if e := ssh.Unmarshal(r.Payload, &sig); e != nil {
				err = fmt.Errorf("malformed exit-signal: %w", e)
				continue
			}
			x.signal = sig.Signal
		default:
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
	}
	return x, err
}
