package nodes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
)

// ErrPoolClosed is returned by Pool.Get after Close.
var ErrPoolClosed = errors.New("node pool is closed")

// Pool keeps one SSH connection per node, dialed on first use, shared by
// every step, and re-dialed when it dropped. It is safe for concurrent use;
// different nodes dial in parallel, one node never twice at once.
type Pool struct {
	mu     sync.Mutex
	cfgs   map[string]Config
	bad    map[string]error // configuration errors found by NewPool
	nodes  map[string]*poolNode
	closed bool
	dial   func(context.Context, Config) (*Client, error)
	log    *slog.Logger
	trips  *RoundTrips
}

type poolNode struct {
	mu sync.Mutex // held while dialing
	c  *Client
}

// NewPool returns a pool for the given nodes. Nothing is dialed yet.
// Invalid or duplicate configurations are reported by Get for that name.
func NewPool(cfgs []Config) *Pool {
	p := &Pool{cfgs: map[string]Config{}, bad: map[string]error{}, nodes: map[string]*poolNode{}, trips: NewRoundTrips()}
	p.dial = func(ctx context.Context, c Config) (*Client, error) { return dialLogged(ctx, c, p.logger(), p.trips) }
	for _, c := range cfgs {
		if _, dup := p.cfgs[c.Name]; dup {
			p.bad[c.Name] = fmt.Errorf("node %s is listed more than once", c.Name)
		}
		p.cfgs[c.Name] = c
		p.nodes[c.Name] = &poolNode{}
	}
	return p
}

// SetLogger makes the pool log connections, retries and re-dials (info)
// and every node operation (debug) to l. Call it before the first Get.
func (p *Pool) SetLogger(l *slog.Logger) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = l
}

// RoundTrips is the pool's count of round trips and dials to each node
// (roundtrips.go), across re-dials.
func (p *Pool) RoundTrips() *RoundTrips { return p.trips }

func (p *Pool) logger() *slog.Logger {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log
}

// Get returns a Runner for the named node, connecting now if there is no
// live connection (so host key and authentication errors surface here).
// The returned Runner is valid for the pool's lifetime: each call uses the
// node's current connection and re-dials one that dropped. A call that was
// running when the connection dropped fails (ErrConnectionLost) and is not
// retried.
func (p *Pool) Get(ctx context.Context, name string) (Runner, error) {
	if _, err := p.client(ctx, name); err != nil {
		return nil, err
	}
	return &poolRunner{p: p, name: name}, nil
}

// Names returns the configured node names (unordered).
func (p *Pool) Names() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.cfgs))
	for n := range p.cfgs {
		out = append(out, n)
	}
	return out
}

func (p *Pool) client(ctx context.Context, name string) (*Client, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("node %s: %w", name, ErrPoolClosed)
	}
	cfg, ok := p.cfgs[name]
	n := p.nodes[name]
	bad := p.bad[name]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("node %s: not in the inventory", name)
	}
	if bad != nil {
		return nil, bad
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.c != nil && n.c.Alive() {
		return n.c, nil
	}
	if n.c != nil {
		if l := p.logger(); l != nil {
			l.Info("connection lost, dialing again", "node", name)
		}
		n.c.Close()
		n.c = nil
	}
	c, err := p.dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, fmt.Errorf("node %s: %w", name, ErrPoolClosed)
	}
	n.c = c
	return c, nil
}

// Close closes every connection. Get fails afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	nodes := p.nodes
	p.mu.Unlock()
	var errs []error
	for _, n := range nodes {
		n.mu.Lock()
		if n.c != nil {
			if err := n.c.Close(); err != nil {
				errs = append(errs, err)
			}
			n.c = nil
		}
		n.mu.Unlock()
	}
	return errors.Join(errs...)
}

// poolRunner is the Runner Pool.Get hands out.
type poolRunner struct {
	p    *Pool
	name string
}

var _ Runner = (*poolRunner)(nil)
var _ ExactWriter = (*poolRunner)(nil)
var _ Batcher = (*poolRunner)(nil)
var _ RunBatcher = (*poolRunner)(nil)

func (r *poolRunner) Name() string { return r.name }

func (r *poolRunner) Run(ctx context.Context, cmd string, stdin []byte) (Result, error) {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return Result{}, err
	}
	return c.Run(ctx, cmd, stdin)
}

func (r *poolRunner) ReadFile(ctx context.Context, path string) ([]byte, error) {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return nil, err
	}
	return c.ReadFile(ctx, path)
}

func (r *poolRunner) Stat(ctx context.Context, path string) (FileInfo, error) {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return FileInfo{}, err
	}
	return c.Stat(ctx, path)
}

func (r *poolRunner) WriteFile(ctx context.Context, path string, data []byte, mode fs.FileMode) error {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return err
	}
	return c.WriteFile(ctx, path, data, mode)
}

func (r *poolRunner) WriteFileExact(ctx context.Context, path string, data []byte, mode fs.FileMode, uid, gid int) error {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return err
	}
	return c.WriteFileExact(ctx, path, data, mode, uid, gid)
}

func (r *poolRunner) Symlink(ctx context.Context, target, link string) error {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return err
	}
	return c.Symlink(ctx, target, link)
}

func (r *poolRunner) Remove(ctx context.Context, path string) error {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return err
	}
	return c.Remove(ctx, path)
}

// ReadFiles is one session on the node's current connection, re-dialed
// first if it dropped, like every other call.
func (r *poolRunner) ReadFiles(ctx context.Context, paths []string) ([]FileState, error) {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return nil, err
	}
	return c.ReadFiles(ctx, paths)
}

// ApplyFiles is one session on the node's current connection, re-dialed
// first if it dropped; a batch cut by a dropped connection is not retried
// (its *BatchError says how far it got).
func (r *poolRunner) ApplyFiles(ctx context.Context, ops []FileOp) error {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return err
	}
	return c.ApplyFiles(ctx, ops)
}

// ApplyRunApply is one session on the node's current connection, re-dialed
// first if it dropped; never retried (the command may have run).
func (r *poolRunner) ApplyRunApply(ctx context.Context, before []FileOp, cmd string, after []FileOp) (Result, error) {
	c, err := r.p.client(ctx, r.name)
	if err != nil {
		return Result{}, err
	}
	return c.ApplyRunApply(ctx, before, cmd, after)
}
