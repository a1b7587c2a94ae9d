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
// has. Call it before the first change to path in a run.
func BackupFile(ctx context.Context, r Runner, store BackupStore, dir, runID, p string) (Backup, error) {
	node := r.Name()
	if !runIDRe.MatchString(runID) {
		return Backup{}, fmt.Errorf("back up %s on %s: invalid run id %q", p, node, runID)
	}
	if err := checkPath(dir); err != nil {
		return Backup{}, fmt.Errorf("back up %s on %s: backup directory: %w", p, node, err)
	}
	if err := checkPath(p); err != nil {
		return Backup{}, fmt.Errorf("back up %s on %s: %w", p, node, err)
	}
	if b, ok, err := store.LoadBackup(ctx, node, p); err != nil {
		return Backup{}, fmt.Errorf("back up %s on %s: load stored backup: %w", p, node, err)
	} else if ok {
		return b, ensureNodeCopy(ctx, r, dir, b)
	}

	b, err := Snapshot(ctx, r, p)
	if err != nil {
		return Backup{}, fmt.Errorf("back up %s on %s: %w", p, node, err)
	}
	b.RunID = runID
	b.TakenAt = time.Now().UTC()
	saved, err := store.SaveBackupIfAbsent(ctx, b)
	if err != nil {
		return Backup{}, fmt.Errorf("back up %s on %s: save to state: %w", p, node, err)
	}
	if !saved { // lost a race: the first copy wins
		first, ok, err := store.LoadBackup(ctx, node, p)
		if err != nil || !ok {
			return Backup{}, fmt.Errorf("back up %s on %s: reload stored backup: %v", p, node, errors.Join(err, errors.New("not found")))
		}
		b = first
	}
	return b, ensureNodeCopy(ctx, r, dir, b)
}

// Snapshot reads the current state of path (content, mode, owner, link
// target or absence) without storing it. RunID and TakenAt are left empty.
func Snapshot(ctx context.Context, r Runner, p string) (Backup, error) {
	fi, err := r.Stat(ctx, p)
	if err != nil {
		return Backup{}, err
	}
	b := Backup{Node: r.Name(), Path: p, Exists: fi.Exists}
	switch {
	case !fi.Exists:
	case fi.IsSymlink:
		b.IsSymlink, b.LinkTarget = true, fi.LinkTarget
	case fi.IsRegular:
		content, err := r.ReadFile(ctx, p)
		if err != nil {
			return Backup{}, err
		}
		b.Content = content
		// Re-stat: a change between stat and read would make a
		// mismatched backup.
		fi2, err := r.Stat(ctx, p)
		if err != nil {
			return Backup{}, err
		}
		if fi2.Size != int64(len(content)) || fi2.Mode != fi.Mode || fi2.UID != fi.UID || fi2.GID != fi.GID || !fi2.IsRegular {
			return Backup{}, fmt.Errorf("%s changed while it was being backed up; retry", p)
		}
	default:
		return Backup{}, fmt.Errorf("%s is not a regular file or symlink", p)
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

func ensureNodeCopy(ctx context.Context, r Runner, dir string, b Backup) error {
	if !runIDRe.MatchString(b.RunID) {
		return fmt.Errorf("back up %s on %s: stored backup has invalid run id %q", b.Path, b.Node, b.RunID)
	}
	content, meta := NodeBackupPaths(dir, b)
	fi, err := r.Stat(ctx, meta)
	if err != nil {
		return fmt.Errorf("back up %s on %s: %w", b.Path, b.Node, err)
	}
	if fi.Exists {
		return nil
	}
	runDir := path.Join(dir, b.RunID)
	if _, err := r.Run(ctx, shCommand(mkdirPrivateScript, runDir, dir), nil); err != nil {
		return fmt.Errorf("back up %s on %s: create %s: %w", b.Path, b.Node, runDir, err)
	}
	if b.Exists && !b.IsSymlink {
		if err := r.WriteFile(ctx, content, b.Content, 0o600); err != nil {
			return fmt.Errorf("back up %s on %s: %w", b.Path, b.Node, err)
		}
	}
	// The metadata file goes last: its presence means the copy is complete.
	if err := r.WriteFile(ctx, meta, b.metadata(), 0o600); err != nil {
		return fmt.Errorf("back up %s on %s: %w", b.Path, b.Node, err)
	}
	return nil
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
		if err := r.Symlink(ctx, b.LinkTarget, b.Path); err != nil {
			return fmt.Errorf("restore %s on %s: %w", b.Path, node, err)
		}
		owner := fmt.Sprintf("%d:%d", b.UID, b.GID)
		if _, err := r.Run(ctx, shCommand(chownLinkScript, b.Path, owner), nil); err != nil {
			return fmt.Errorf("restore %s on %s: owner of link: %w", b.Path, node, err)
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
