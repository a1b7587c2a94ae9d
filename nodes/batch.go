package nodes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
)

// Batches: many file operations in one round trip. A step reads every
// file it needs in one ReadFiles (its check and apply share it) and writes
// every backup copy and new file in one ApplyFiles, instead of one SSH
// session per operation (see RoundTrips): on a WAN link or a busy node a
// session costs tens of milliseconds, and a step used to make dozens.

// FileState is one path as ReadFiles found it.
type FileState struct {
	// Info describes the path with lstat semantics (a symlink is
	// described, not followed); Info.Exists is false for a missing path.
	Info FileInfo
	// Content is what ReadFile would return: the file's content, following
	// symlinks. HasContent says whether there was any to read (false for a
	// missing path, a dangling symlink, a directory or anything else that is
	// not, or does not resolve to, a regular file).
	Content    []byte
	HasContent bool
	// Err is this path's own failure (permission denied, a file that changed
	// while it was read, ...), nil when it was read as described. A missing
	// path is not an error.
	Err error
}

// FileOpKind says what a FileOp does.
type FileOpKind int

const (
	// OpWrite replaces Path atomically with Data, as Runner.WriteFile does
	// (Mode 0 keeps an existing file's mode and owner; a symlink at Path is
	// refused).
	OpWrite FileOpKind = iota + 1
	// OpWriteExact replaces whatever non-directory is at Path with a regular
	// file of exactly Data, Mode and UID:GID, as ExactWriter does.
	OpWriteExact
	// OpSymlink makes Path a symlink to Target, atomically.
	OpSymlink
	// OpRemove deletes Path (not a directory); a missing path is fine.
	OpRemove
	// OpMkdirPrivate creates Path and missing parents as EnsurePrivateDir
	// does: Path (and each of Dirs, which must be Path's ancestors) made
	// 0700, and Path must end up a directory, not a symlink to one.
	OpMkdirPrivate
	// OpSymlinkExact is OpSymlink, the link then owned by UID:GID (the
	// link itself, as chown -h): a symlink restored exactly as backed up.
	OpSymlinkExact
)

// FileOp is one operation of an ApplyFiles batch.
type FileOp struct {
	Kind     FileOpKind
	Path     string
	Data     []byte      // OpWrite, OpWriteExact
	Mode     fs.FileMode // OpWrite (0: keep/default), OpWriteExact
	UID, GID int         // OpWriteExact, OpSymlinkExact
	Target   string      // OpSymlink, OpSymlinkExact
	Dirs     []string    // OpMkdirPrivate: further directories made 0700
}

func (op FileOp) String() string {
	switch op.Kind {
	case OpWrite, OpWriteExact:
		return "write " + op.Path
	case OpSymlink, OpSymlinkExact:
		return "symlink " + op.Path
	case OpRemove:
		return "remove " + op.Path
	case OpMkdirPrivate:
		return "create " + op.Path
	}
	return fmt.Sprintf("op %d on %s", op.Kind, op.Path)
}

// BatchError reports the first operation of an ApplyFiles batch that
// failed. The operations before it (Done of them) were applied, each
// completely; it and those after it were not applied, except that when
// the connection dropped (errors.Is(err, ErrConnectionLost)) or ctx ended
// mid-batch the failed one may or may not have been — each is atomic,
// never partial. In that case the node's report of its progress may have
// been lost with the connection too, so Index is where the report ended:
// the node holds a prefix of the batch at least Done long, possibly longer.
//
// A batch with an operation that cannot be sent at all (a path that is not
// absolute and clean, an empty link target, Dirs that are not Path's
// ancestors) is refused before anything is applied: Index names that
// operation and Done is 0.
type BatchError struct {
	Node  string
	Index int // of the failed operation
	Op    FileOp
	Done  int
	Err   error
}

func (e *BatchError) Error() string {
	return fmt.Sprintf("%s on %s (operation %d of the batch; the %d before it applied): %v", e.Op, e.Node, e.Index+1, e.Done, e.Err)
}

func (e *BatchError) Unwrap() error { return e.Err }

// Batcher is implemented by runners that carry out many file operations
// in one round trip. *Client, Pool's runners and *MemRunner implement it;
// ReadFiles and ApplyFiles below fall back to one operation at a time for
// a Runner that does not.
type Batcher interface {
	// ReadFiles describes and reads every path, in one round trip. The
	// result has one FileState per path, in order. The error is for the
	// batch as a whole (connection, invalid path); per-path failures are in
	// FileState.Err.
	ReadFiles(ctx context.Context, paths []string) ([]FileState, error)
	// ApplyFiles carries out ops in order, in one round trip. Each
	// operation is atomic (a write is a temporary file, fsynced, renamed);
	// a failure stops the batch there and is a *BatchError.
	ApplyFiles(ctx context.Context, ops []FileOp) error
}

// ReadFiles reads paths on r in one round trip when r is a Batcher, else
// one Stat and, for what resolves to a regular file, one ReadFile and a
// second Stat (the check that it did not change meanwhile) each.
func ReadFiles(ctx context.Context, r Runner, paths []string) ([]FileState, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	if b, ok := r.(Batcher); ok {
		return b.ReadFiles(ctx, paths)
	}
	out := make([]FileState, len(paths))
	for i, p := range paths {
		if err := checkPath(p); err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", p, r.Name(), err)
		}
		out[i] = readOne(ctx, r, p)
	}
	return out, nil
}

func readOne(ctx context.Context, r Runner, p string) FileState {
	fi, err := r.Stat(ctx, p)
	if err != nil {
		return FileState{Info: FileInfo{Path: p}, Err: err}
	}
	st := FileState{Info: fi}
	if !fi.Exists || fi.IsDir || !(fi.IsRegular || fi.IsSymlink) {
		return st
	}
	content, err := r.ReadFile(ctx, p)
	switch {
	case errors.Is(err, ErrNotExist): // dangling symlink
		return st
	case err != nil:
		st.Err = err
		return st
	}
	// Re-stat: a change between stat and read would pair the wrong
	// content with the description.
	fi2, err := r.Stat(ctx, p)
	switch {
	case err != nil:
		st.Err = err
	case fi2.Size != fi.Size || fi2.Mode != fi.Mode || fi2.UID != fi.UID || fi2.GID != fi.GID ||
		fi2.IsRegular != fi.IsRegular || fi2.LinkTarget != fi.LinkTarget ||
		(fi.IsRegular && int64(len(content)) != fi.Size):
		st.Err = fmt.Errorf("read %s on %s: %w", p, r.Name(), errChanged)
	default:
		st.Content, st.HasContent = content, true
	}
	return st
}

// ApplyFiles carries out ops on r in order: in one round trip when r is a
// Batcher, else one operation at a time. Either way a failure is a
// *BatchError naming the operation.
func ApplyFiles(ctx context.Context, r Runner, ops []FileOp) error {
	if len(ops) == 0 {
		return nil
	}
	if b, ok := r.(Batcher); ok {
		return b.ApplyFiles(ctx, ops)
	}
	if err := validateOps(r.Name(), ops); err != nil {
		return err
	}
	for i, op := range ops {
		if err := applyOne(ctx, r, op); err != nil {
			return &BatchError{Node: r.Name(), Index: i, Op: op, Done: i, Err: err}
		}
	}
	return nil
}

func applyOne(ctx context.Context, r Runner, op FileOp) error {
	switch op.Kind {
	case OpWrite:
		return r.WriteFile(ctx, op.Path, op.Data, op.Mode)
	case OpWriteExact:
		ew, ok := r.(ExactWriter)
		if !ok {
			return fmt.Errorf("runner for %s cannot write exact files", r.Name())
		}
		return ew.WriteFileExact(ctx, op.Path, op.Data, op.Mode, op.UID, op.GID)
	case OpSymlink:
		return r.Symlink(ctx, op.Target, op.Path)
	case OpSymlinkExact:
		if err := r.Symlink(ctx, op.Target, op.Path); err != nil {
			return err
		}
		_, err := r.Run(ctx, shCommand(chownLinkScript, op.Path, fmt.Sprintf("%d:%d", op.UID, op.GID)), nil)
		return err
	case OpRemove:
		return r.Remove(ctx, op.Path)
	case OpMkdirPrivate:
		return ensurePrivateDir(ctx, r, op.Path, op.Dirs...)
	}
	return fmt.Errorf("unknown file operation %d", op.Kind)
}

// RunBatcher is implemented by runners that run a command between two
// batches of file operations in one round trip (*Client, Pool's runners,
// *MemRunner): a step that writes files, restarts a component that reads
// them and then records the restart pays one round trip, not three.
type RunBatcher interface {
	// ApplyRunApply applies before as ApplyFiles does (every operation
	// synced), then, when all of it applied, runs cmd as Run does (stdin
	// empty), then, when cmd exited 0, applies after. A failure in before
	// is a *BatchError, as ApplyFiles's; once all of before applied, a
	// failure is a *StageError: cmd's (as Run's), or after's (a
	// *BatchError indexed within after).
	ApplyRunApply(ctx context.Context, before []FileOp, cmd string, after []FileOp) (Result, error)
}

// ApplyRunApply applies before, runs cmd and applies after on r (see
// RunBatcher): in one round trip when r is a RunBatcher, else as
// ApplyFiles, Run and ApplyFiles.
func ApplyRunApply(ctx context.Context, r Runner, before []FileOp, cmd string, after []FileOp) (Result, error) {
	if b, ok := r.(RunBatcher); ok {
		return b.ApplyRunApply(ctx, before, cmd, after)
	}
	return applyRunApplyEach(ctx, r, before, cmd, after)
}

// StageError is an ApplyRunApply failure once its first batch was
// applied in full: the command's (Ran false: it failed, or did not finish),
// or, after it succeeded, the second batch's (Ran true).
type StageError struct {
	Ran bool
	Err error
}

func (e *StageError) Error() string {
	if e.Ran {
		return "after the command succeeded: " + e.Err.Error()
	}
	return e.Err.Error()
}

func (e *StageError) Unwrap() error { return e.Err }

// applyRunApplyEach is ApplyRunApply in up to three round trips.
func applyRunApplyEach(ctx context.Context, r Runner, before []FileOp, cmd string, after []FileOp) (Result, error) {
	if err := ApplyFiles(ctx, r, before); err != nil {
		return Result{}, err
	}
	res, err := r.Run(ctx, cmd, nil)
	if err != nil {
		return res, &StageError{Err: err}
	}
	if err := ApplyFiles(ctx, r, after); err != nil {
		return res, &StageError{Ran: true, Err: err}
	}
	return res, nil
}
