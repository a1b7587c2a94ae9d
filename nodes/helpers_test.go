package nodes

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// startNode starts a real sshd and returns it with a Config that reaches
// it as root with the server's client key and known_hosts.
func startNode(t testing.TB, name string, opts sshdtest.Options) (*sshdtest.Server, Config) {
	t.Helper()
	opts.Name = name
	s := sshdtest.Start(t, opts)
	return s, Config{
		Name:           name,
		Address:        s.Host,
		Port:           s.Port,
		IdentityFile:   s.ClientKeyFile,
		KnownHostsFile: s.KnownHosts,
		DialTimeout:    5 * time.Second,
		CommandTimeout: 30 * time.Second,
		RetryBackoff:   50 * time.Millisecond,
	}
}

// dial dials and closes the client in t.Cleanup.
func dial(t testing.TB, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// proxy is a TCP relay in front of an sshd that a test can count
// connections on, refuse the first few, cut after a byte budget, cut at
// once, or turn into a black hole (bytes dropped, sockets left open).
type proxy struct {
	ln     net.Listener
	target string

	accepted    atomic.Int32
	refuseFirst atomic.Int32
	budget      atomic.Int64 // client->server bytes left before a cut; <0: no limit
	blackhole   atomic.Bool
	// stall: when the budget runs out, drop the client's further bytes
	// (the server waits for them) instead of cutting; server->client
	// bytes still flow.
	stall atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.budget.Store(-1)
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
	})
	go p.serve()
	return p
}

func (p *proxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// via returns cfg pointed at the proxy, keeping known_hosts (which lists
// the server's key under the server's own port) valid: known_hosts lines
// are per host:port, so the test rewrites them for the proxy's port.
func (p *proxy) via(t testing.TB, s *sshdtest.Server, cfg Config) Config {
	t.Helper()
	cfg.Port = p.port()
	kh := t.TempDir() + "/known_hosts"
	sshdtest.WriteKnownHosts(t, kh, net.JoinHostPort(s.Host, strconv.Itoa(p.port())), s.HostKey.PublicKey())
	cfg.KnownHostsFile = kh
	return cfg
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		n := p.accepted.Add(1)
		if n <= p.refuseFirst.Load() {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go p.pipe(s, c, true)
		go p.pipe(c, s, false)
	}
}

func (p *proxy) pipe(dst, src net.Conn, upstream bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.blackhole.Load() {
			if upstream && p.budget.Load() >= 0 {
				if p.budget.Add(-int64(n)) < 0 {
					if p.stall.Load() {
						continue
					}
					p.Cut()
					return
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
			return
		}
	}
}

// Cut closes every relayed connection at once.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

type ctxT = context.Context

func (p *proxy) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port())) }

// runUntilRedialed runs `true` on r after its connection was cut until a
// call succeeds (on a new connection), failing t on any error but
// ErrConnectionLost; it returns how many calls failed so.
func runUntilRedialed(t *testing.T, ctx context.Context, r Runner) int64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var lost int64
	for {
		_, err := r.Run(ctx, "true", nil)
		if err == nil {
			return lost
		}
		if !errors.Is(err, ErrConnectionLost) || time.Now().After(deadline) {
			t.Fatalf("after cut: %v", err)
		}
		lost++
	}
}

// serveTCP listens on 127.0.0.1 (closed in t.Cleanup), writes reply to
// each connection and closes it.
func serveTCP(t *testing.T, reply string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(reply))
			c.Close()
		}
	}()
	return ln
}

// proxiedNode starts a real sshd behind a proxy and returns the proxy and
// the runner a Pool hands out for it (the pool closed in t.Cleanup).
func proxiedNode(t *testing.T) (*proxy, Runner) {
	t.Helper()
	s, cfg := startNode(t, "n", sshdtest.Options{})
	p := newProxy(t, s.Addr())
	cfg = p.via(t, s, cfg)
	pool := NewPool([]Config{cfg})
	t.Cleanup(func() { pool.Close() })
	r, err := pool.Get(testCtx(t), "n")
	must(t, err)
	return p, r
}

// pooledNode is a Pool's runner for a real sshd node "n", and the pool's
// round trip counts.
func pooledNode(t *testing.T) (Runner, *RoundTrips) {
	t.Helper()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	pool := NewPool([]Config{cfg})
	t.Cleanup(func() { pool.Close() })
	r, err := pool.Get(testCtx(t), "n")
	must(t, err)
	return r, pool.RoundTrips()
}
