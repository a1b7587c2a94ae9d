package nodes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
)

// MemRunner is an in-memory Runner for unit tests of code that acts on
// nodes. It models regular files and symlinks (with mode and owner) under
// the same contract as *Client; directories are implicit (every parent
// exists) unless added with MkdirAll, and Stat reports a path that is a
// parent of a stored path as a directory. Run calls RunFunc when set,
// otherwise it succeeds with an empty Result; every command is recorded.
// Fail injects errors. It is safe for concurrent use.
type MemRunner struct {
	// RunFunc, when set, answers Run. It is called without the lock held
	// and may call the MemRunner's other methods.
	RunFunc func(ctx context.Context, cmd string, stdin []byte) (Result, error)
	// Fail, when set, is consulted before every operation: op is one of
	// "run", "read", "stat", "write", "symlink", "remove", "mkdir" and path
	// the path (for "run", the command). A non-nil error is returned as is;
	// in a batch it is that path's FileState.Err (ReadFiles, op "read") or
	// the *BatchError's Err (ApplyFiles, op "write", "symlink", "remove"
	// or "mkdir"), and "read-batch"/"apply-batch" with the first path is
	// consulted first for the batch as a whole.
	Fail func(op, path string) error
	// Trips, when set, counts one round trip per operation and one per
	// batch, as *Client counts its sessions (nothing for a path refused
	// before it would leave the machine).
	Trips *RoundTrips

	name  string
	mu    sync.Mutex
	files map[string]*memFile
	dirs  map[string]bool
	cmds  []string
	ops   []string
}

type memFile struct {
	data         []byte
	mode         fs.FileMode
	uid, gid     int
	owner, group string
	link         string // non-empty for a symlink
}

var _ Runner = (*MemRunner)(nil)
var _ ExactWriter = (*MemRunner)(nil)
var _ Batcher = (*MemRunner)(nil)
var _ RunBatcher = (*MemRunner)(nil)

// NewMemRunner returns an empty in-memory node.
func NewMemRunner(name string) *MemRunner {
	return &MemRunner{name: name, files: map[string]*memFile{}, dirs: map[string]bool{}}
}

// Name returns the node name.
func (m *MemRunner) Name() string { return m.name }

// SetFile stores a regular file owned by root (test setup; not recorded).
func (m *MemRunner) SetFile(p string, data []byte, mode fs.FileMode) {
	m.SetFileOwner(p, data, mode, 0, 0, "root", "root")
}

// SetFileOwner stores a regular file with the given owner (test setup).
func (m *MemRunner) SetFileOwner(p string, data []byte, mode fs.FileMode, uid, gid int, owner, group string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files[p] = &memFile{data: append([]byte(nil), data...), mode: mode & permBits, uid: uid, gid: gid, owner: owner, group: group}
}

// SetSymlink stores a symlink owned by root (test setup).
func (m *MemRunner) SetSymlink(target, link string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files[link] = &memFile{link: target, mode: 0o777, owner: "root", group: "root"}
}

// MkdirAll records an explicit directory (test setup).
func (m *MemRunner) MkdirAll(p string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for ; p != "/" && p != "."; p = path.Dir(p) {
		m.dirs[p] = true
	}
}

// File returns the stored content of p (not following symlinks) and
// whether p is a regular file.
func (m *MemRunner) File(p string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[p]
	if !ok || f.link != "" {
		return nil, false
	}
	return append([]byte(nil), f.data...), true
}

// Clone returns a node with a copy of m's files, links and directories
// (test setup, e.g. to go back to a saved state); recorded operations,
// RunFunc and Fail are not copied.
func (m *MemRunner) Clone() *MemRunner {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := NewMemRunner(m.name)
	for p, f := range m.files {
		cf := *f
		cf.data = append([]byte(nil), f.data...)
		c.files[p] = &cf
	}
	for d := range m.dirs {
		c.dirs[d] = true
	}
	return c
}

// Resolve returns the content of p following symlinks, as ReadFile does,
// and whether there is one; unlike ReadFile it is not recorded and Fail is
// not consulted (test inspection).
func (m *MemRunner) Resolve(p string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, f, err := m.resolveLocked(p)
	if err != nil || f == nil {
		return nil, false
	}
	return append([]byte(nil), f.data...), true
}

// Link returns the target of the symlink at p and whether p is one (test
// inspection; not recorded).
func (m *MemRunner) Link(p string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[p]
	if !ok || f.link == "" {
		return "", false
	}
	return f.link, true
}

// Paths returns every stored file and symlink path, sorted.
func (m *MemRunner) Paths() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.files))
	for p := range m.files {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Commands returns the commands passed to Run, in order.
func (m *MemRunner) Commands() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.cmds...)
}

// Ops returns every operation as "op path" (for Run, "run CMD"), in order.
// A batch is "read-batch N" or "apply-batch N" followed by its N
// operations ("read P", "write P", "mkdir P", ...).
func (m *MemRunner) Ops() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.ops...)
}

func (m *MemRunner) begin(ctx context.Context, op, p string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s on %s: %w", op, p, m.name, err)
	}
	m.mu.Lock()
	m.ops = append(m.ops, op+" "+p)
	if op == "run" {
		m.cmds = append(m.cmds, p)
	}
	m.mu.Unlock()
	var pathErr error
	if op != "run" {
		pathErr = checkPath(p)
	}
	if pathErr == nil {
		m.trip(ctx)
	}
	if m.Fail != nil {
		if err := m.Fail(op, p); err != nil {
			return err
		}
	}
	if pathErr != nil {
		return fmt.Errorf("%s %s on %s: %w", op, p, m.name, pathErr)
	}
	return nil
}

// Run records cmd and answers with RunFunc, or an empty success.
func (m *MemRunner) Run(ctx context.Context, cmd string, stdin []byte) (Result, error) {
	if inner, ok := restartCommandOf(cmd); ok {
		// RestartReport: run (and record) the restart command itself; a
		// fake node has no process whose start it could report.
		res, err := m.Run(ctx, inner, stdin)
		if err == nil {
			res.Stdout = append(res.Stdout, "none\n"...)
		}
		return res, err
	}
	if err := m.begin(ctx, "run", cmd); err != nil {
		return Result{}, err
	}
	if m.RunFunc != nil {
		return m.RunFunc(ctx, cmd, stdin)
	}
	return Result{}, nil
}

// isDirLocked reports whether p is an explicit or implicit directory.
func (m *MemRunner) isDirLocked(p string) bool {
	if m.dirs[p] {
		return true
	}
	prefix := p + "/"
	for q := range m.files {
		if strings.HasPrefix(q, prefix) {
			return true
		}
	}
	return false
}

// resolveLocked follows symlinks from p (at most 40, like Linux).
func (m *MemRunner) resolveLocked(p string) (string, *memFile, error) {
	for i := 0; i < 40; i++ {
		f, ok := m.files[p]
		if !ok {
			return p, nil, nil
		}
		if f.link == "" {
			return p, f, nil
		}
		t := f.link
		if !path.IsAbs(t) {
			t = path.Join(path.Dir(p), t)
		}
		p = path.Clean(t)
	}
	return p, nil, errors.New("too many levels of symbolic links")
}

// ReadFile returns the content, following symlinks.
func (m *MemRunner) ReadFile(ctx context.Context, p string) ([]byte, error) {
	if err := m.begin(ctx, "read", p); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.readLocked(p)
}

func (m *MemRunner) readLocked(p string) ([]byte, error) {
	rp, f, err := m.resolveLocked(p)
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", p, m.name, err)
	}
	if f == nil {
		if m.isDirLocked(rp) {
			return nil, fmt.Errorf("read %s on %s: is a directory", p, m.name)
		}
		return nil, fmt.Errorf("read %s on %s: %w", p, m.name, ErrNotExist)
	}
	return append([]byte(nil), f.data...), nil
}

// Stat describes p with lstat semantics.
func (m *MemRunner) Stat(ctx context.Context, p string) (FileInfo, error) {
	if err := m.begin(ctx, "stat", p); err != nil {
		return FileInfo{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.statLocked(p), nil
}

func (m *MemRunner) statLocked(p string) FileInfo {
	fi := FileInfo{Path: p}
	f, ok := m.files[p]
	switch {
	case ok:
		fi.Exists = true
		fi.Mode, fi.UID, fi.GID, fi.Owner, fi.Group = f.mode, f.uid, f.gid, f.owner, f.group
		if f.link != "" {
			fi.IsSymlink, fi.LinkTarget, fi.Size = true, f.link, int64(len(f.link))
		} else {
			fi.IsRegular, fi.Size = true, int64(len(f.data))
		}
	case m.isDirLocked(p):
		fi.Exists, fi.IsDir, fi.Mode, fi.Owner, fi.Group = true, true, 0o755, "root", "root"
	}
	return fi
}

// WriteFile stores data with the same rules as Client.WriteFile.
func (m *MemRunner) WriteFile(ctx context.Context, p string, data []byte, mode fs.FileMode) error {
	if err := m.begin(ctx, "write", p); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writeLocked(p, data, mode)
}

func (m *MemRunner) writeLocked(p string, data []byte, mode fs.FileMode) error {
	if m.isDirLocked(p) {
		return fmt.Errorf("write %s on %s: exists and is not a regular file", p, m.name)
	}
	f, ok := m.files[p]
	if ok && f.link != "" {
		return fmt.Errorf("write %s on %s: refusing to write through symlink", p, m.name)
	}
	nf := &memFile{data: append([]byte(nil), data...), mode: 0o600, owner: "root", group: "root"}
	if ok {
		nf.mode, nf.uid, nf.gid, nf.owner, nf.group = f.mode, f.uid, f.gid, f.owner, f.group
	}
	if mode != 0 {
		nf.mode = mode & permBits
	}
	m.files[p] = nf
	return nil
}

// WriteFileExact stores exactly data, mode and owner, replacing a symlink.
func (m *MemRunner) WriteFileExact(ctx context.Context, p string, data []byte, mode fs.FileMode, uid, gid int) error {
	if err := m.begin(ctx, "write", p); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writeExactLocked(p, data, mode, uid, gid)
}

func (m *MemRunner) writeExactLocked(p string, data []byte, mode fs.FileMode, uid, gid int) error {
	if m.isDirLocked(p) {
		return fmt.Errorf("write %s on %s: exists and is not a regular file", p, m.name)
	}
	owner, group := m.namesLocked(uid, gid)
	m.files[p] = &memFile{data: append([]byte(nil), data...), mode: mode & permBits, uid: uid, gid: gid, owner: owner, group: group}
	return nil
}

// namesLocked are the user and group names of uid and gid: root for 0,
// else a name the node already shows for them, else UNKNOWN.
func (m *MemRunner) namesLocked(uid, gid int) (owner, group string) {
	owner, group = "UNKNOWN", "UNKNOWN"
	if uid == 0 {
		owner = "root"
	}
	if gid == 0 {
		group = "root"
	}
	for _, f := range m.files { // reuse names the node already knows
		if f.uid == uid && uid != 0 {
			owner = f.owner
		}
		if f.gid == gid && gid != 0 {
			group = f.group
		}
	}
	return owner, group
}

// Symlink points link at target, replacing any non-directory.
func (m *MemRunner) Symlink(ctx context.Context, target, link string) error {
	if err := m.begin(ctx, "symlink", link); err != nil {
		return err
	}
	if target == "" {
		return fmt.Errorf("symlink %s on %s: empty target", link, m.name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.symlinkLocked(target, link)
}

func (m *MemRunner) symlinkLocked(target, link string) error {
	if m.isDirLocked(link) {
		return fmt.Errorf("symlink %s on %s: is a directory", link, m.name)
	}
	m.files[link] = &memFile{link: target, mode: 0o777, owner: "root", group: "root"}
	return nil
}

// Remove deletes a file or symlink; missing is fine.
func (m *MemRunner) Remove(ctx context.Context, p string) error {
	if err := m.begin(ctx, "remove", p); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.removeLocked(p)
}

func (m *MemRunner) removeLocked(p string) error {
	if _, ok := m.files[p]; !ok && m.isDirLocked(p) {
		return fmt.Errorf("remove %s on %s: is a directory", p, m.name)
	}
	delete(m.files, p)
	return nil
}

// MemBackupStore is an in-memory BackupStore for tests.
type MemBackupStore struct {
	mu sync.Mutex
	m  map[[2]string]Backup
}

var _ BackupStore = (*MemBackupStore)(nil)

// NewMemBackupStore returns an empty store.
func NewMemBackupStore() *MemBackupStore { return &MemBackupStore{m: map[[2]string]Backup{}} }

// SaveBackupIfAbsent stores b unless (b.Node, b.Path) is stored.
func (s *MemBackupStore) SaveBackupIfAbsent(ctx context.Context, b Backup) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{b.Node, b.Path}
	if _, ok := s.m[k]; ok {
		return false, nil
	}
	b.Content = append([]byte(nil), b.Content...)
	s.m[k] = b
	return true, nil
}

// LoadBackup returns the stored backup of (node, path).
func (s *MemBackupStore) LoadBackup(ctx context.Context, node, p string) (Backup, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[[2]string{node, p}]
	b.Content = append([]byte(nil), b.Content...)
	return b, ok, nil
}

// All returns every stored backup, sorted by node and path.
func (s *MemBackupStore) All() []Backup {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Backup, 0, len(s.m))
	for _, b := range s.m {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Path < out[j].Path
	})
	return out
}

// beginBatch checks ctx and records the batch and its items.
func (m *MemRunner) beginBatch(ctx context.Context, kind string, items []string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s on %s: %w", kind, m.name, err)
	}
	m.mu.Lock()
	m.ops = append(m.ops, fmt.Sprintf("%s %d", kind, len(items)))
	m.ops = append(m.ops, items...)
	m.mu.Unlock()
	return nil
}

// ReadFiles reads every path under one lock (nothing changes meanwhile),
// one round trip.
func (m *MemRunner) ReadFiles(ctx context.Context, paths []string) ([]FileState, error) {
	items := make([]string, len(paths))
	for i, p := range paths {
		items[i] = "read " + p
	}
	if err := m.beginBatch(ctx, "read-batch", items); err != nil {
		return nil, err
	}
	for _, p := range paths {
		if err := checkPath(p); err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", p, m.name, err)
		}
	}
	m.trip(ctx)
	if err := m.fail("read-batch", paths); err != nil {
		return nil, err
	}
	out := make([]FileState, len(paths))
	for i, p := range paths {
		if m.Fail != nil {
			if err := m.Fail("read", p); err != nil {
				out[i] = FileState{Info: FileInfo{Path: p}, Err: err}
				continue
			}
		}
		m.mu.Lock()
		st := FileState{Info: m.statLocked(p)}
		if fi := st.Info; fi.IsRegular || fi.IsSymlink {
			// Missing, dangling or a directory at the end: no content.
			if _, f, err := m.resolveLocked(p); err != nil {
				st.Err = fmt.Errorf("read %s on %s: %w", p, m.name, err)
			} else if f != nil {
				st.Content, st.HasContent = append([]byte(nil), f.data...), true
			}
		}
		m.mu.Unlock()
		out[i] = st
	}
	return out, nil
}

// fail consults Fail for a whole batch, with its first path.
func (m *MemRunner) fail(kind string, paths []string) error {
	if m.Fail == nil || len(paths) == 0 {
		return nil
	}
	return m.Fail(kind, paths[0])
}

// memOpNames are the Fail/Ops names of batch operations.
var memOpNames = map[FileOpKind]string{OpWrite: "write", OpWriteExact: "write", OpSymlink: "symlink", OpSymlinkExact: "symlink", OpRemove: "remove", OpMkdirPrivate: "mkdir"}

// ApplyFiles carries out ops in order with the same rules as the single
// operations, one round trip; the first failure is a *BatchError.
func (m *MemRunner) ApplyFiles(ctx context.Context, ops []FileOp) error {
	items := make([]string, len(ops))
	paths := make([]string, len(ops))
	for i, op := range ops {
		items[i], paths[i] = memOpNames[op.Kind]+" "+op.Path, op.Path
	}
	if err := m.beginBatch(ctx, "apply-batch", items); err != nil {
		return err
	}
	if err := validateOps(m.name, ops); err != nil {
		return err
	}
	m.trip(ctx)
	if err := m.fail("apply-batch", paths); err != nil {
		return &BatchError{Node: m.name, Index: 0, Op: ops[0], Err: err}
	}
	for i, op := range ops {
		if err := m.applyOne(op); err != nil {
			return &BatchError{Node: m.name, Index: i, Op: op, Done: i, Err: err}
		}
	}
	return nil
}

func (m *MemRunner) applyOne(op FileOp) error {
	if m.Fail != nil {
		if err := m.Fail(memOpNames[op.Kind], op.Path); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch op.Kind {
	case OpWrite:
		return m.writeLocked(op.Path, op.Data, op.Mode)
	case OpWriteExact:
		return m.writeExactLocked(op.Path, op.Data, op.Mode, op.UID, op.GID)
	case OpSymlink:
		return m.symlinkLocked(op.Target, op.Path)
	case OpSymlinkExact:
		if err := m.symlinkLocked(op.Target, op.Path); err != nil {
			return err
		}
		f := m.files[op.Path]
		f.uid, f.gid = op.UID, op.GID
		f.owner, f.group = m.namesLocked(op.UID, op.GID)
		return nil
	case OpRemove:
		return m.removeLocked(op.Path)
	}
	// OpMkdirPrivate: nothing stored at the path or above it may be a file
	// or a symlink.
	for p := op.Path; p != "/"; p = path.Dir(p) {
		if _, ok := m.files[p]; ok {
			return fmt.Errorf("create %s on %s: %s is not a directory (a symlink?)", op.Path, m.name, p)
		}
	}
	for p := op.Path; p != "/" && p != "."; p = path.Dir(p) {
		m.dirs[p] = true
	}
	return nil
}

// oneTripKey marks the context of the parts of an ApplyRunApply, which
// count one round trip together.
type oneTripKey struct{}

// trip counts a round trip, unless ctx is a part of one counted already.
func (m *MemRunner) trip(ctx context.Context) {
	if ctx.Value(oneTripKey{}) == nil {
		m.Trips.Trip(ctx, m.name)
	}
}

// ApplyRunApply is ApplyFiles, Run and ApplyFiles, one round trip (see
// RunBatcher).
func (m *MemRunner) ApplyRunApply(ctx context.Context, before []FileOp, cmd string, after []FileOp) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("apply, run, apply on %s: %w", m.name, err)
	}
	m.trip(ctx)
	return applyRunApplyEach(context.WithValue(ctx, oneTripKey{}, true), m, before, cmd, after)
}
