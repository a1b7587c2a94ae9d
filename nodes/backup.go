package nodes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"time"
)

// Backup is the state of one path on one node before a run first changed
// it. Content is empty unless the path was a regular file.
type Backup struct {
	RunID, Node, Path string
	// Exists is false when there was nothing at Path: restoring removes it.
	Exists       bool
	Content      []byte
	Mode         fs.FileMode
	UID, GID     int
	Owner, Group string
	IsSymlink    bool
	LinkTarget   string
	// Digest is the hex SHA-256 of Content.
	Digest  string
	TakenAt time.Time
}

// BackupStore persists backups. The state package implements it (through
// an adapter); MemBackupStore is an in-memory one for tests.
type BackupStore interface {
	// SaveBackupIfAbsent stores b unless a backup of (b.Node, b.Path) is
	// already stored; saved reports whether b was stored.
	SaveBackupIfAbsent(ctx context.Context, b Backup) (saved bool, err error)
	// LoadBackup returns the backup of (node, path), if any.
	LoadBackup(ctx context.Context, node, path string) (Backup, bool, error)
}

var runIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// BackupFile saves the current state of path on r's node, unless a backup
// of it is already stored, in which case the stored (first) copy wins and is
// returned. The state store is written first, then a copy on the node under
// dir/<runID>/ (see NodeBackupPaths; dir is the inventory's
// paths.backupDir, absolute), so the store always has every backup the node
// has. Call it before the first change to path in a run. It is BackupFiles
// of one path: one round trip to read, one to write the node copy.
func BackupFile(ctx context.Context, r Runner, store BackupStore, dir, runID, p string) (Backup, error) {
	bs, err := BackupFiles(ctx, r, store, dir, runID, []string{p})
	if err != nil {
		return Backup{}, err
	}
	return bs[0], nil
}

// BackupFiles is BackupFile for many paths at once, with the same rules
// for each (the first stored copy wins; the store is written before the
// node copy), in two round trips: one ReadFiles for every path not yet
// backed up and every node copy's metadata file, one ApplyFiles for the
// node copies that are missing. The result is one Backup per path, in
// order. A failure names the path it is about; backups stored before it
// stay stored, and a retry completes the node copies.
func BackupFiles(ctx context.Context, r Runner, store BackupStore, dir, runID string, paths []string) ([]Backup, error) {
	node := r.Name()
	fail := func(p string, format string, a ...any) ([]Backup, error) {
		return nil, fmt.Errorf("back up %s on %s: "+format, append([]any{p, node}, a...)...)
	}
	if len(paths) == 0 {
		return nil, nil
	}
	if !runIDRe.MatchString(runID) {
		return fail(paths[0], "invalid run id %q", runID)
	}
	if err := checkPath(dir); err != nil {
		return fail(paths[0], "backup directory: %w", err)
	}
	for _, p := range paths {
		if err := checkPath(p); err != nil {
			return fail(p, "%w", err)
		}
	}
	out := make([]Backup, len(paths))
	stored := make([]bool, len(paths))
	for i, p := range paths {
		b, ok, err := store.LoadBackup(ctx, node, p)
		if err != nil {
			return fail(p, "load stored backup: %w", err)
		}
		if ok && !runIDRe.MatchString(b.RunID) {
			return fail(p, "stored backup has invalid run id %q", b.RunID)
		}
		out[i], stored[i] = b, ok
	}

	// One read: what is not backed up yet, and every node copy's metadata.
	var read []string
	for i, p := range paths {
		if !stored[i] {
			read = append(read, p)
		}
		_, meta := NodeBackupPaths(dir, Backup{RunID: runID, Path: p})
		if stored[i] {
			_, meta = NodeBackupPaths(dir, out[i])
		}
		read = append(read, meta)
	}
	states, err := ReadFiles(ctx, r, read)
	if err != nil {
		return fail(paths[0], "%w", err)
	}
	found := map[string]FileState{}
	for i, st := range states {
		found[read[i]] = st
	}

	for i, p := range paths {
		if stored[i] {
			continue
		}
		b, err := snapshotOf(node, found[p])
		if err != nil {
			return fail(p, "%w", err)
		}
		b.RunID = runID
		b.TakenAt = time.Now().UTC()
		saved, err := store.SaveBackupIfAbsent(ctx, b)
		if err != nil {
			return fail(p, "save to state: %w", err)
		}
		if !saved { // lost a race: the first copy wins
			first, ok, err := store.LoadBackup(ctx, node, p)
			if err != nil || !ok || !runIDRe.MatchString(first.RunID) {
				return fail(p, "reload stored backup: %v", errors.Join(err, errors.New("not found or invalid")))
			}
			b = first
		}
		out[i] = b
	}
	if err := ensureNodeCopies(ctx, r, dir, out, found); err != nil {
		return nil, err
	}
	return out, nil
}

// Snapshot reads the current state of path (content, mode, owner, link
// target or absence) without storing it, in one ReadFiles (stat, read and
// re-stat). RunID and TakenAt are left empty.
func Snapshot(ctx context.Context, r Runner, p string) (Backup, error) {
	if b, ok := r.(*Batched); ok {
		// A symlink is backed up as its own description, which a Batched
		// still knows after writes elsewhere (no read, no flush).
		if st, ok := b.linkInfo(p); ok {
			return snapshotOf(r.Name(), st)
		}
	}
	states, err := ReadFiles(ctx, r, []string{p})
	if err != nil {
		return Backup{}, err
	}
	return snapshotOf(r.Name(), states[0])
}

// snapshotOf turns what ReadFiles found at a path into a Backup.
func snapshotOf(node string, st FileState) (Backup, error) {
	fi := st.Info
	if errors.Is(st.Err, errChanged) {
		return Backup{}, fmt.Errorf("%s changed while it was being backed up; retry", fi.Path)
	}
	if st.Err != nil {
		return Backup{}, st.Err
	}
	b := Backup{Node: node, Path: fi.Path, Exists: fi.Exists}
	switch {
	case !fi.Exists:
	case fi.IsSymlink:
		b.IsSymlink, b.LinkTarget = true, fi.LinkTarget
	case fi.IsRegular:
		if !st.HasContent { // removed between stat and read
			return Backup{}, fmt.Errorf("%s changed while it was being backed up; retry", fi.Path)
		}
		b.Content = st.Content
	default:
		return Backup{}, fmt.Errorf("%s is not a regular file or symlink", fi.Path)
	}
	if fi.Exists {
		b.Mode, b.UID, b.GID, b.Owner, b.Group = fi.Mode, fi.UID, fi.GID, fi.Owner, fi.Group
	}
	sum := sha256.Sum256(b.Content)
	b.Digest = hex.EncodeToString(sum[:])
	return b, nil
}

// NodeBackupPaths returns where BackupFile keeps b's copy on the node,
// under the backup directory dir: the content file (regular files only) and
// the metadata file, dir/<runID>/<name>[.meta]. The name is the
// path-escaped original path, e.g. %2Fetc%2Fkubernetes%2Fpki%2Fca.crt.
func NodeBackupPaths(dir string, b Backup) (content, meta string) {
	base := path.Join(dir, b.RunID, url.PathEscape(b.Path))
	return base, base + ".meta"
}

// ensureNodeCopies writes the node copy of each of bs whose metadata file
// is not there (found: what ReadFiles said of the metadata paths; any not
// in it are read now), in one ApplyFiles: the run directory (0700, as is
// dir), the content, then the metadata, whose presence means the copy is
// complete.
func ensureNodeCopies(ctx context.Context, r Runner, dir string, bs []Backup, found map[string]FileState) error {
	var unread []string
	for _, b := range bs {
		if _, meta := NodeBackupPaths(dir, b); !hasKey(found, meta) {
			unread = append(unread, meta)
		}
	}
	if len(unread) > 0 { // a stored copy from another run won a race
		states, err := ReadFiles(ctx, r, unread)
		if err != nil {
			return fmt.Errorf("back up %s on %s: %w", bs[0].Path, r.Name(), err)
		}
		for i, st := range states {
			found[unread[i]] = st
		}
	}
	var ops []FileOp
	var owners []string // the backed-up path each op is for
	planned := map[string]bool{}
	add := func(b Backup, op FileOp) {
		ops, owners = append(ops, op), append(owners, b.Path)
		planned[op.Path] = true
	}
	for _, b := range bs {
		content, meta := NodeBackupPaths(dir, b)
		st := found[meta]
		if st.Err != nil {
			return fmt.Errorf("back up %s on %s: %w", b.Path, r.Name(), st.Err)
		}
		if st.Info.Exists || planned[meta] {
			continue
		}
		if runDir := path.Join(dir, b.RunID); !planned[runDir] {
			add(b, FileOp{Kind: OpMkdirPrivate, Path: runDir, Dirs: []string{dir}})
		}
		if b.Exists && !b.IsSymlink {
			add(b, FileOp{Kind: OpWrite, Path: content, Data: b.Content, Mode: 0o600})
		}
		add(b, FileOp{Kind: OpWrite, Path: meta, Data: b.metadata(), Mode: 0o600})
	}
	if err := ApplyFiles(ctx, r, ops); err != nil {
		var be *BatchError
		if errors.As(err, &be) && be.Index < len(owners) {
			return fmt.Errorf("back up %s on %s: %w", owners[be.Index], r.Name(), err)
		}
		return fmt.Errorf("back up on %s: %w", r.Name(), err)
	}
	return nil
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

// metadata is the human-readable description stored next to a node copy,
// enough to restore by hand. It never contains the content.
func (b Backup) metadata() []byte {
	var w bytes.Buffer
	kind := "file"
	switch {
	case !b.Exists:
		kind = "missing"
	case b.IsSymlink:
		kind = "symlink"
	}
	fmt.Fprintf(&w, "# rotate backup; restore with `rotate rollback`, or by hand from this description\n")
	fmt.Fprintf(&w, "path=%s\nrun=%s\nnode=%s\ntype=%s\n", strconv.Quote(b.Path), b.RunID, b.Node, kind)
	if b.Exists {
		fmt.Fprintf(&w, "mode=%s\nuid=%d\ngid=%d\nowner=%s\ngroup=%s\n", octalMode(b.Mode), b.UID, b.GID, b.Owner, b.Group)
	}
	if b.IsSymlink {
		fmt.Fprintf(&w, "link_target=%s\n", strconv.Quote(b.LinkTarget))
	}
	fmt.Fprintf(&w, "size=%d\nsha256=%s\ntaken_at=%s\n", len(b.Content), b.Digest, b.TakenAt.Format(time.RFC3339))
	return w.Bytes()
}

// Restore puts path back exactly as b recorded it: content, mode and owner
// of a regular file, a symlink's target, or no file at all. A path already
// in that state is left untouched (so a restore never needlessly changes a
// static pod manifest and restarts its pod).
func Restore(ctx context.Context, r Runner, b Backup) error {
	node := r.Name()
	if b.Node != "" && b.Node != node {
		return fmt.Errorf("restore %s on %s: backup belongs to node %s", b.Path, node, b.Node)
	}
	if err := checkPath(b.Path); err != nil {
		return fmt.Errorf("restore %s on %s: %w", b.Path, node, err)
	}
	if b.Exists && !b.IsSymlink {
		sum := sha256.Sum256(b.Content)
		if hex.EncodeToString(sum[:]) != b.Digest {
			return fmt.Errorf("restore %s on %s: backup content does not match its digest %s; refusing", b.Path, node, b.Digest)
		}
	}
	cur, err := Snapshot(ctx, r, b.Path)
	if err != nil && !errors.Is(err, ErrNotExist) {
		// A directory or special file where a backup says file/none: do
		// not guess.
		return fmt.Errorf("restore %s on %s: %w", b.Path, node, err)
	}
	if err == nil && b.sameState(cur) {
		return nil
	}
	switch {
	case !b.Exists:
		if err := r.Remove(ctx, b.Path); err != nil {
			return fmt.Errorf("restore %s on %s: %w", b.Path, node, err)
		}
	case b.IsSymlink:
		// The link and its owner in one operation: on a batched runner,
		// queued with the step's other writes (no command of its own,
		// which would make it forget what it read).
		op := FileOp{Kind: OpSymlinkExact, Path: b.Path, Target: b.LinkTarget, UID: b.UID, GID: b.GID}
		if err := ApplyFiles(ctx, r, []FileOp{op}); err != nil {
			return fmt.Errorf("restore %s on %s: %w", b.Path, node, err)
		}
	default:
		if err := writeExact(ctx, r, b.Path, b.Content, b.Mode, b.UID, b.GID); err != nil {
			return fmt.Errorf("restore %s on %s: %w", b.Path, node, err)
		}
	}
	return nil
}

// sameState reports whether cur (a Snapshot) already is what b describes.
func (b Backup) sameState(cur Backup) bool {
	if b.Exists != cur.Exists {
		return false
	}
	if !b.Exists {
		return true
	}
	if b.IsSymlink != cur.IsSymlink || b.UID != cur.UID || b.GID != cur.GID {
		return false
	}
	if b.IsSymlink {
		return b.LinkTarget == cur.LinkTarget
	}
	return b.Mode == cur.Mode && b.Digest == cur.Digest
}

// writeExact uses the runner's ExactWriter when it has one; otherwise it
// falls back to remove-if-symlink, WriteFile and chown (not atomic as to
// ownership).
func writeExact(ctx context.Context, r Runner, p string, data []byte, mode fs.FileMode, uid, gid int) error {
	if ew, ok := r.(ExactWriter); ok {
		return ew.WriteFileExact(ctx, p, data, mode, uid, gid)
	}
	fi, err := r.Stat(ctx, p)
	if err != nil {
		return err
	}
	if fi.IsSymlink {
		if err := r.Remove(ctx, p); err != nil {
			return err
		}
	}
	if err := r.WriteFile(ctx, p, data, mode&permBits); err != nil {
		return err
	}
	_, err = r.Run(ctx, "chown "+strconv.Itoa(uid)+":"+strconv.Itoa(gid)+" -- "+shellQuote(p)+" && chmod "+octalMode(mode)+" -- "+shellQuote(p), nil)
	return err
}
