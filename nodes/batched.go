package nodes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
)

// Batched is a Runner over another for the length of one step attempt: it
// reads every path Prefetch is given in one round trip and answers ReadFile
// and Stat from that, and it queues writes, links, removals and directory
// creations until Flush sends them in one ApplyFiles round trip. A step that
// used to make a session per operation makes three: read, write, restart.
//
// It keeps the order a step sees unchanged:
//
//   - a read of a path it does not know flushes the queue first, then reads
//     (so a read never sees the node from before a queued write);
//   - Run flushes first (a command may rely on the files written before it)
//     and forgets everything read (a command may change any file);
//     ApplyRunApply sends the queue with the command, in one round trip;
//   - a queued write updates what it knows of that path, so a read after it
//     sees the new content; what it knows under that path (a directory
//     replaced by a link, say) is forgotten; and of every other symlink it
//     knows it keeps only the link's own description (its target, owner),
//     which a change elsewhere cannot alter: what the link resolves to may
//     be the written path, so a read through it reads the node again.
//
// A queued operation's failure is returned by Flush (or by the Run or read
// that flushed), as a *BatchError naming it. A Batched is for one step on
// one node at a time; call Flush before the step returns.
type Batched struct {
	r Runner

	mu    sync.Mutex
	known map[string]FileState
	// linkOnly are the symlinks in known whose content (what they resolve
	// to) may have changed since it was read: only their Info holds.
	linkOnly map[string]bool
	queue    []FileOp
}

// NewBatched returns a Batched over r that knows nothing yet.
func NewBatched(r Runner) *Batched {
	return &Batched{r: r, known: map[string]FileState{}, linkOnly: map[string]bool{}}
}

// Name is the node's name.
func (b *Batched) Name() string { return b.r.Name() }

// Prefetch reads every path not known yet, in one round trip (after
// flushing what is queued). A path that could not be read is left unknown:
// its own read or stat reports why. A symlink whose own description is
// known counts as known (a read through it reads it again).
func (b *Batched) Prefetch(ctx context.Context, paths ...string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.prefetchLocked(ctx, paths)
}

func (b *Batched) prefetchLocked(ctx context.Context, paths []string) error {
	var todo []string
	for _, p := range paths {
		if _, ok := b.known[p]; ok || slices.Contains(todo, p) {
			continue
		}
		if err := checkPath(p); err != nil {
			return fmt.Errorf("read %s on %s: %w", p, b.r.Name(), err)
		}
		todo = append(todo, p)
	}
	if len(todo) == 0 {
		return nil
	}
	if err := b.flushLocked(ctx); err != nil {
		return err
	}
	states, err := ReadFiles(ctx, b.r, todo)
	if err != nil {
		return err
	}
	for i, st := range states {
		if st.Err == nil {
			b.known[todo[i]] = st
		}
	}
	return nil
}

// forgetStaleLocked forgets the symlinks among paths whose content is
// not known any more, so that a read of them reads the node again.
func (b *Batched) forgetStaleLocked(paths ...string) {
	for _, p := range paths {
		if b.linkOnly[p] {
			b.forgetLocked(p)
		}
	}
}

// forgetLocked forgets everything known of p.
func (b *Batched) forgetLocked(p string) {
	delete(b.known, p)
	delete(b.linkOnly, p)
}

// linkInfo is what is known of p when p is a symlink (its own
// description, enough for a Snapshot: see Snapshot), without reading.
func (b *Batched) linkInfo(p string) (FileState, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.known[p]
	if !ok || !st.Info.IsSymlink {
		return FileState{}, false
	}
	return FileState{Info: st.Info}, true
}

// lookup is what is known of p, reading it if need be; ok is false when it
// could not be read in a batch (the caller asks the node directly).
func (b *Batched) lookup(ctx context.Context, p string) (FileState, bool, error) {
	if err := b.prefetchLocked(ctx, []string{p}); err != nil {
		return FileState{}, false, err
	}
	st, ok := b.known[p]
	return st, ok, nil
}

// ReadFile returns p's content (see Runner).
func (b *Batched) ReadFile(ctx context.Context, p string) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forgetStaleLocked(p)
	st, ok, err := b.lookup(ctx, p)
	if err != nil {
		return nil, err
	}
	if !ok {
		return b.r.ReadFile(ctx, p)
	}
	switch {
	case st.HasContent:
		return bytes.Clone(st.Content), nil
	case !st.Info.Exists || st.Info.IsSymlink:
		return nil, fmt.Errorf("read %s on %s: %w", p, b.r.Name(), ErrNotExist)
	default:
		return nil, fmt.Errorf("read %s on %s: not a regular file", p, b.r.Name())
	}
}

// Stat describes p (see Runner).
func (b *Batched) Stat(ctx context.Context, p string) (FileInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok, err := b.lookup(ctx, p) // a symlink's own description holds
	if err != nil {
		return FileInfo{}, err
	}
	if !ok {
		return b.r.Stat(ctx, p)
	}
	return st.Info, nil
}

// ReadFiles reads paths, from what is known where it can (see Batcher).
func (b *Batched) ReadFiles(ctx context.Context, paths []string) ([]FileState, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forgetStaleLocked(paths...)
	if err := b.prefetchLocked(ctx, paths); err != nil {
		return nil, err
	}
	out := make([]FileState, len(paths))
	var again []int
	for i, p := range paths {
		if st, ok := b.known[p]; ok {
			st.Content = bytes.Clone(st.Content)
			out[i] = st
		} else {
			again = append(again, i)
		}
	}
	for _, i := range again { // failed in the batch: its own error
		out[i] = readOne(ctx, b.r, paths[i])
	}
	return out, nil
}

// Run flushes the queue, then runs cmd (see Runner); what was read is
// forgotten.
func (b *Batched) Run(ctx context.Context, cmd string, stdin []byte) (Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.flushLocked(ctx); err != nil {
		return Result{}, err
	}
	clear(b.known)
	clear(b.linkOnly)
	return b.r.Run(ctx, cmd, stdin)
}

// runLooking is Run for a command that changes nothing on the node (a
// listing): the queue is sent first, as for Run, but what was read holds.
func (b *Batched) runLooking(ctx context.Context, cmd string) (Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.flushLocked(ctx); err != nil {
		return Result{}, err
	}
	return b.r.Run(ctx, cmd, nil)
}

// ApplyRunApply sends what is queued and before, runs cmd and applies
// after, in one round trip when the runner under it can (see RunBatcher);
// what was read is forgotten, as by Run.
func (b *Batched) ApplyRunApply(ctx context.Context, before []FileOp, cmd string, after []FileOp) (Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, op := range before {
		if err := b.refuse(op); err != nil {
			return Result{}, err
		}
	}
	ops := append(b.queue, before...)
	b.queue = nil
	clear(b.known)
	clear(b.linkOnly)
	return ApplyRunApply(ctx, b.r, ops, cmd, after)
}

// WriteFile queues the write of p (see Runner).
func (b *Batched) WriteFile(ctx context.Context, p string, data []byte, mode fs.FileMode) error {
	return b.ApplyFiles(ctx, []FileOp{{Kind: OpWrite, Path: p, Data: data, Mode: mode}})
}

// WriteFileExact queues the exact write of p (see ExactWriter).
func (b *Batched) WriteFileExact(ctx context.Context, p string, data []byte, mode fs.FileMode, uid, gid int) error {
	return b.ApplyFiles(ctx, []FileOp{{Kind: OpWriteExact, Path: p, Data: data, Mode: mode, UID: uid, GID: gid}})
}

// Symlink queues pointing link at target (see Runner).
func (b *Batched) Symlink(ctx context.Context, target, link string) error {
	return b.ApplyFiles(ctx, []FileOp{{Kind: OpSymlink, Path: link, Target: target}})
}

// Remove queues the removal of p (see Runner).
func (b *Batched) Remove(ctx context.Context, p string) error {
	return b.ApplyFiles(ctx, []FileOp{{Kind: OpRemove, Path: p}})
}

// ApplyFiles queues ops (see Batcher); Flush sends them. What is known
// already to make an operation fail (a write through a symlink, removing a
// directory) fails it now, before anything is queued.
func (b *Batched) ApplyFiles(ctx context.Context, ops []FileOp) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, op := range ops {
		if err := b.refuse(op); err != nil {
			return err
		}
	}
	for _, op := range ops {
		op.Data = bytes.Clone(op.Data)
		op.Dirs = slices.Clone(op.Dirs)
		b.queue = append(b.queue, op)
		b.noteLocked(op)
	}
	return nil
}

// refuse fails op when what is known of its path makes it fail on the
// node, with the message the node would give.
func (b *Batched) refuse(op FileOp) error {
	if err := checkPath(op.Path); err != nil {
		return fmt.Errorf("%s on %s: %w", op, b.r.Name(), err)
	}
	st, ok := b.known[op.Path]
	if !ok {
		return nil
	}
	fi := st.Info
	switch {
	case op.Kind == OpWrite && fi.IsSymlink:
		return fmt.Errorf("%s on %s: refusing to write through symlink %s; repoint it or write its target", op, b.r.Name(), op.Path)
	case (op.Kind == OpWrite || op.Kind == OpWriteExact || op.Kind == OpSymlink || op.Kind == OpSymlinkExact || op.Kind == OpRemove) && fi.IsDir:
		return fmt.Errorf("%s on %s: %s is a directory", op, b.r.Name(), op.Path)
	}
	return nil
}

// noteLocked updates what is known after op is queued.
func (b *Batched) noteLocked(op FileOp) {
	for p, st := range b.known {
		switch {
		case strings.HasPrefix(p, op.Path+"/"): // under a path replaced
			b.forgetLocked(p)
		case st.Info.IsSymlink && p != op.Path: // may resolve to op.Path
			st.Content, st.HasContent = nil, false
			b.known[p] = st
			b.linkOnly[p] = true
		}
	}
	prev, known := b.known[op.Path]
	b.forgetLocked(op.Path)
	switch op.Kind {
	case OpWrite:
		// An existing regular file keeps its owner (and its mode when
		// Mode is 0); a new file's owner is the node's to say.
		if known && prev.Info.IsRegular {
			st := prev
			st.Content, st.HasContent = bytes.Clone(op.Data), true
			st.Info.Size = int64(len(op.Data))
			if op.Mode != 0 {
				st.Info.Mode = op.Mode & permBits
			}
			b.known[op.Path] = st
		}
	case OpRemove:
		b.known[op.Path] = FileState{Info: FileInfo{Path: op.Path}}
	case OpMkdirPrivate:
		for p := range b.known { // a directory made where a path was known
			if p == op.Path || slices.Contains(op.Dirs, p) {
				b.forgetLocked(p)
			}
		}
	}
}

// Flush sends what is queued in one round trip. After a failure nothing
// read before is trusted.
func (b *Batched) Flush(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked(ctx)
}

func (b *Batched) flushLocked(ctx context.Context) error {
	if len(b.queue) == 0 {
		return nil
	}
	ops := b.queue
	b.queue = nil
	err := ApplyFiles(ctx, b.r, ops)
	if err != nil {
		clear(b.known)
		clear(b.linkOnly)
		var be *BatchError
		if !errors.As(err, &be) {
			err = &BatchError{Node: b.r.Name(), Op: ops[0], Err: err}
		}
	}
	return err
}

// Pending is the number of operations queued.
func (b *Batched) Pending() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

var (
	_ Runner      = (*Batched)(nil)
	_ Batcher     = (*Batched)(nil)
	_ ExactWriter = (*Batched)(nil)
	_ RunBatcher  = (*Batched)(nil)
)
