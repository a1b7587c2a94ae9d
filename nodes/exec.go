package nodes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
//
// So each Client keeps one session channel open ahead of need (a spare):
// an operation takes it, and a new spare is opened in the background while
// the command runs. The exec request is sent without asking for a reply.
// What remains is one round trip for an operation without input (reads,
// commands): the request out, the output and the exit status back. Input
// (writes) costs one more: sshd opens a session channel's window for input
// only once its command runs. It is sent right behind the request and
// flows as soon as the window opens. (Carrying it inside the command
// instead would save that round trip but put private keys in the login
// shell's argument list, which other users of the node can read.)
//
// Whether the command ran is known from its first output: every command
// prints its pid marker first (remoteCommand). A spare that was closed
// while it waited (OpenSSH 9.2 closes no idle session channel, not even
// with ChannelTimeout, but another server may) ends with neither that
// marker nor an exit status: the command never ran, and the operation is
// sent once more on a freshly opened channel. An exec sshd refuses without
// closing the channel (it cannot fork) is not answered at all, as no
// reply was asked for; the command's timeout ends that wait.

// session is a session channel and its requests.
type session struct {
	ch   ssh.Channel
	reqs <-chan *ssh.Request
}

// spares holds at most one open, unused session channel of a Client.
type spares struct {
	mu      sync.Mutex
	spare   *session
	opening bool
	closed  bool
}

// take returns the spare channel if there is one (fresh: false), else opens
// one (fresh: true); either way a new spare is opened in the background.
func (c *Client) take() (s *session, fresh bool, err error) {
	c.spares.mu.Lock()
	s, c.spares.spare = c.spares.spare, nil
	c.spares.mu.Unlock()
	defer c.refill()
	if s != nil {
		return s, false, nil
	}
	s, err = c.open()
	return s, true, err
}

func (c *Client) open() (*session, error) {
	ch, reqs, err := c.conn.OpenChannel("session", nil)
	if err != nil {
		return nil, err
	}
	return &session{ch: ch, reqs: reqs}, nil
}

// refill opens a spare in the background unless one is there or being
// opened. A failure is not reported: the next operation opens its own
// channel and reports its failure.
func (c *Client) refill() {
	c.spares.mu.Lock()
	if c.spares.spare != nil || c.spares.opening || c.spares.closed {
		c.spares.mu.Unlock()
		return
	}
	c.spares.opening = true
	c.spares.mu.Unlock()
	go func() {
		s, err := c.open()
		c.spares.mu.Lock()
		defer c.spares.mu.Unlock()
		c.spares.opening = false
		if err != nil {
			return
		}
		if c.spares.spare != nil || c.spares.closed {
			s.ch.Close()
			return
		}
		c.spares.spare = s
	}()
}

// closeSpare closes the spare and opens no more (Client.Close).
func (c *Client) closeSpare() {
	c.spares.mu.Lock()
	defer c.spares.mu.Unlock()
	c.spares.closed = true
	if c.spares.spare != nil {
		c.spares.spare.ch.Close()
		c.spares.spare = nil
	}
}

// exited is how a command ended: its exit status, or -1 and the signal
// that ended it; -1 and "" when the server sent neither.
type exited struct {
	status int
	signal string
}

// exec runs cmd on a session channel (see the top of this file), writing
// its output to stdout and stderr. started is called with each channel
// before anything is sent on it, so that a caller giving up can close it;
// ran reports whether the command printed its pid marker.
func (c *Client) exec(cmd string, stdin []byte, stdout, stderr io.Writer, started func(ssh.Channel), ran func() bool) (exited, error) {
	s, fresh, err := c.take()
	if err != nil {
		return exited{}, err
	}
	started(s.ch)
	x, err := runOn(s, cmd, stdin, stdout, stderr)
	if !fresh && x.status < 0 && x.signal == "" && !ran() {
		if s, err = c.open(); err != nil {
			return exited{}, err
		}
		started(s.ch)
		x, err = runOn(s, cmd, stdin, stdout, stderr)
	}
	return x, err
}

// runOn sends the exec request and then the input, without waiting in
// between, and reads the output and the exit status until the server
// closes the channel.
func runOn(s *session, cmd string, stdin []byte, stdout, stderr io.Writer) (exited, error) {
	defer s.ch.Close()
	if _, err := s.ch.SendRequest("exec", false, ssh.Marshal(struct{ Command string }{cmd})); err != nil {
		return exited{status: -1}, err
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
