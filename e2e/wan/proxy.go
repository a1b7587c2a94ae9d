// Package wan emulates a wide-area network between an operator and the
// e2e cluster's nodes: a userspace TCP proxy that delays every chunk of
// data by a fixed one-way latency in each direction, listening inside an
// "operator" network namespace on copies of the nodes' own addresses, so a
// program run in that namespace reaches the nodes at their real addresses
// (inventory, known_hosts and TLS SANs stay valid) through the delay.
//
// The kernel here has no netem qdisc and there is no iptables; this is the
// emulation that needs neither.
//
// What a connection through the proxy costs, with one-way delay d (round
// trip 2d), as on a real link of that latency:
//   - setup: the server sees the connection 3d after the client's
//     connect (SYN, SYN-ACK, ACK); the client's connect itself returns at
//     once (the kernel of the operator namespace completes it), so data the
//     client sends before 2d is held until 2d, then delayed d;
//   - data: every chunk read on one side is written to the other d after
//     it was read, in order; chunks are not serialized by the delay (a
//     stream of chunks arrives d later, at its own pace).
//
// A refused or failed dial to the real address resets the client's
// connection (the client sees a reset instead of "connection refused").
package wan

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards TCP connections with an added one-way delay in each
// direction. The zero value is not usable: see New.
type Proxy struct {
	delay time.Duration
	done  chan struct{}

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup

	accepted atomic.Int64
	failed   atomic.Int64
}

// New returns a proxy that delays each direction by oneWay.
func New(oneWay time.Duration) *Proxy {
	return &Proxy{delay: oneWay, done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
}

// Delay is the proxy's one-way delay.
func (p *Proxy) Delay() time.Duration { return p.delay }

// Stats are the connections accepted so far and those whose dial to the
// real address failed.
func (p *Proxy) Stats() (accepted, failed int64) { return p.accepted.Load(), p.failed.Load() }

// Listen listens on addr in the network namespace at nsPath ("" for the
// process's own) and forwards every connection to target, dialled from
// the process's own namespace. It returns the listener's address.
func (p *Proxy) Listen(nsPath, addr, target string) (net.Addr, error) {
	l, err := ListenIn(nsPath, addr)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.Close()
		return nil, errors.New("proxy closed")
	}
	p.listeners = append(p.listeners, l)
	p.wg.Add(1)
	p.mu.Unlock()
	go p.serve(l, target)
	return l.Addr(), nil
}

// Close stops every listener and connection and waits for them.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.done)
		for _, l := range p.listeners {
			l.Close()
		}
		for c := range p.conns {
			c.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// track adds c to the open connections (false: the proxy is closed).
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Proxy) serve(l net.Listener, target string) {
	defer p.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			return
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			p.handle(c, target)
		}()
	}
}

// wait returns once t has come (true) or the proxy closed (false).
func (p *Proxy) wait(t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-p.done:
		return false
	}
}

func (p *Proxy) handle(client net.Conn, target string) {
	accepted := time.Now()
	var once sync.Once
	var server net.Conn
	var smu sync.Mutex
	abort := func() {
		once.Do(func() {
			client.Close()
			smu.Lock()
			if server != nil {
				server.Close()
			}
			smu.Unlock()
		})
	}
	defer abort()
	// Client → server: read from now on (the client's connect already
	// returned); nothing can have left the client before 2d, and the
	// server sees it d later. The writer starts once the dial is done.
	c2s := make(chan chunk, 1024)
	go readChunks(client, c2s, p.delay, accepted.Add(2*p.delay))
	defer drain(c2s)
	if !p.wait(accepted.Add(3 * p.delay)) {
		return
	}
	s, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		p.failed.Add(1)
		if tc, ok := client.(*net.TCPConn); ok {
			tc.SetLinger(0) // reset, the nearest to "refused"
		}
		return
	}
	smu.Lock()
	server = s
	smu.Unlock()
	if !p.track(s) {
		s.Close()
		return
	}
	defer p.untrack(s)
	s2c := make(chan chunk, 1024)
	go readChunks(s, s2c, p.delay, time.Time{})
	defer drain(s2c)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.writeChunks(s, c2s, abort) }()
	go func() { defer wg.Done(); p.writeChunks(client, s2c, abort) }()
	wg.Wait()
}

// drain discards what is left in ch in the background, so its reader
// (stopped by the aborted connection) never blocks on a full channel.
func drain(ch <-chan chunk) {
	go func() {
		for range ch {
		}
	}()
}

// chunk is data read at one end, due at the other at due; a chunk with
// end set is the reader's EOF (err nil) or failure.
type chunk struct {
	data []byte
	due  time.Time
	end  bool
	err  error
}

// readChunks reads src until it fails and sends every chunk with its due
// time: when it was read (not before floor), plus delay.
func readChunks(src net.Conn, out chan<- chunk, delay time.Duration, floor time.Time) {
	defer close(out)
	buf := make([]byte, 64<<10)
	due := func() time.Time {
		t := time.Now()
		if t.Before(floor) {
			t = floor
		}
		return t.Add(delay)
	}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			out <- chunk{data: append([]byte(nil), buf[:n]...), due: due()}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			out <- chunk{end: true, err: err, due: due()}
			return
		}
	}
}

// writeChunks writes each chunk to dst when it is due. The reader's EOF
// half-closes dst; a failure on either side aborts the connection.
func (p *Proxy) writeChunks(dst net.Conn, in <-chan chunk, abort func()) {
	for c := range in {
		if !p.wait(c.due) {
			abort()
			return
		}
		if c.end {
			if c.err != nil {
				abort()
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			continue
		}
		if _, err := dst.Write(c.data); err != nil {
			abort()
			return
		}
	}
}
