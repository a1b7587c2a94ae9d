// Package lb is the TCP load balancer in front of the e2e cluster's
// apiservers (the controlPlaneEndpoint). Each new connection goes to the
// next backend in round-robin order that accepts TCP; a backend that refused
// is skipped for a short while. Bytes are copied as they are (TLS passes
// through), so clients see the apiservers' own certificates.
package lb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a load balancer.
type Config struct {
	Listen      string        // host:port
	Backends    []string      // host:port each
	DialTimeout time.Duration // per backend attempt
	DownFor     time.Duration // how long a refusing backend is skipped
}

// LB is a round-robin TCP load balancer.
type LB struct {
	cfg  Config
	log  *slog.Logger
	next atomic.Uint64

	mu   sync.Mutex
	down map[string]time.Time
}

// New returns a load balancer for cfg.
func New(cfg Config, log *slog.Logger) (*LB, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("no backends")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = time.Second
	}
	if cfg.DownFor == 0 {
		cfg.DownFor = 2 * time.Second
	}
	return &LB{cfg: cfg, log: log, down: map[string]time.Time{}}, nil
}

// Run serves until ctx is cancelled.
func (l *LB) Run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", l.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", l.cfg.Listen, err)
	}
	return l.Serve(ctx, ln)
}

// Serve accepts connections on ln until ctx is cancelled.
func (l *LB) Serve(ctx context.Context, ln net.Listener) error {
	l.log.Info("load balancer listening", "addr", ln.Addr().String(), "backends", l.cfg.Backends)
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.proxy(ctx, c)
		}()
	}
}

// pick returns backends in the order to try for one connection: round-robin
// start, backends recently seen down last.
func (l *LB) pick() []string {
	n := len(l.cfg.Backends)
	start := int(l.next.Add(1)-1) % n
	now := time.Now()
	var up, down []string
	l.mu.Lock()
	for i := range n {
		b := l.cfg.Backends[(start+i)%n]
		if until, ok := l.down[b]; ok && now.Before(until) {
			down = append(down, b)
		} else {
			up = append(up, b)
		}
	}
	l.mu.Unlock()
	return append(up, down...)
}

func (l *LB) markDown(b string) {
	l.mu.Lock()
	l.down[b] = time.Now().Add(l.cfg.DownFor)
	l.mu.Unlock()
}

func (l *LB) proxy(ctx context.Context, c net.Conn) {
	defer c.Close()
	var be net.Conn
	for _, b := range l.pick() {
		d := net.Dialer{Timeout: l.cfg.DialTimeout}
		conn, err := d.DialContext(ctx, "tcp", b)
		if err != nil {
			l.markDown(b)
			l.log.Debug("backend refused", "backend", b, "err", err)
			continue
		}
		be = conn
		break
	}
	if be == nil {
		l.log.Warn("no backend accepted the connection", "client", c.RemoteAddr().String())
		return
	}
	defer be.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(be, c)
	go pipe(c, be)
	select {
	case <-done:
		// One direction ended; give the other a moment to drain, then close.
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
}
