package nodes

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
)

// Reading back the node copies BackupFile keeps: after the state file is
// lost, a node's copies are the record of every backup taken on it, each
// written before the change it guards (see BackupFile), so a state rebuilt
// from an older copy of the state file can take them back.

// EnsurePrivateDir creates dir (and missing parents) on r's node, checks
// that it is a directory, not a symlink to one, and makes it 0700: one
// round trip.
func EnsurePrivateDir(ctx context.Context, r Runner, dir string) error {
	return ensurePrivateDir(ctx, r, dir)
}

// ensurePrivateDir is EnsurePrivateDir that also makes each of more (dir's
// ancestors) 0700.
func ensurePrivateDir(ctx context.Context, r Runner, dir string, more ...string) error {
	for _, d := range append([]string{dir}, more...) {
		if err := checkPath(d); err != nil {
			return fmt.Errorf("create %s on %s: %w", dir, r.Name(), err)
		}
	}
	if _, err := r.Run(ctx, shCommand(mkdirPrivateScript, append([]string{dir}, more...)...), nil); err != nil {
		return fmt.Errorf("create %s on %s: %w", dir, r.Name(), err)
	}
	return nil
}

// listCopiesScript prints "ID<TAB>NAME" for every complete copy (one with
// its metadata file) under $1/ID/ for each further argument ID.
const listCopiesScript = `export LC_ALL=C
dir=$1; shift
for id in "$@"; do
  for f in "$dir/$id"/*.meta; do
    [ -f "$f" ] && printf '%s\t%s\n' "$id" "${f##*/}"
  done
done
exit 0`

// BackupCopies lists the complete node copies under dir/<id>/ for each of
// ids (backup ids, see BackupFile), as the original paths by id.
func BackupCopies(ctx context.Context, r Runner, dir string, ids []string) (map[string][]string, error) {
	if err := checkPath(dir); err != nil {
		return nil, fmt.Errorf("list backup copies on %s: %w", r.Name(), err)
	}
	for _, id := range ids {
		if !runIDRe.MatchString(id) {
			return nil, fmt.Errorf("list backup copies on %s: invalid backup id %q", r.Name(), id)
		}
	}
	res, err := r.Run(ctx, shCommand(listCopiesScript, append([]string{dir}, ids...)...), nil)
	if err != nil {
		return nil, fmt.Errorf("list backup copies in %s on %s: %w", dir, r.Name(), err)
	}
	out := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(res.Stdout))
	for sc.Scan() {
		id, name, ok := strings.Cut(sc.Text(), "\t")
		if !ok {
			continue
		}
		p, err := url.PathUnescape(strings.TrimSuffix(name, ".meta"))
		if err != nil || checkPath(p) != nil {
			continue // not a copy BackupFile made
		}
		out[id] = append(out[id], p)
	}
	return out, nil
}

// ReadBackupCopy reads the node copy of path p under dir/<id>/: its
// metadata and, for a regular file, its content, checked against the
// recorded size and SHA-256.
func ReadBackupCopy(ctx context.Context, r Runner, dir, id, p string) (Backup, error) {
	content, metaPath := NodeBackupPaths(dir, Backup{RunID: id, Path: p})
	fail := func(err error) (Backup, error) {
		return Backup{}, fmt.Errorf("read backup copy %s on %s: %w", metaPath, r.Name(), err)
	}
	raw, err := r.ReadFile(ctx, metaPath)
	if err != nil {
		return fail(err)
	}
	b, size, err := parseMetadata(raw)
	if err != nil {
		return fail(err)
	}
	if b.Path != p || b.RunID != id || (b.Node != "" && b.Node != r.Name()) {
		return fail(fmt.Errorf("it describes %s of %s on %s", b.Path, b.RunID, b.Node))
	}
	b.Node = r.Name()
	if b.Exists && !b.IsSymlink {
		if b.Content, err = r.ReadFile(ctx, content); err != nil {
			return fail(err)
		}
	}
	sum := sha256.Sum256(b.Content)
	if int64(len(b.Content)) != size || hex.EncodeToString(sum[:]) != b.Digest {
		return fail(fmt.Errorf("the copy %s does not match its size and digest", path.Base(content)))
	}
	return b, nil
}

// parseMetadata reads what Backup.metadata wrote.
func parseMetadata(raw []byte) (Backup, int64, error) {
	var b Backup
	var size int64 = -1
	kv := map[string]string{}
	for _, l := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			kv[k] = v
		}
	}
	var err error
	unquote := func(k string) string {
		s, e := strconv.Unquote(kv[k])
		if e != nil && err == nil {
			err = fmt.Errorf("metadata %s: %v", k, e)
		}
		return s
	}
	num := func(k string, base int) int64 {
		n, e := strconv.ParseInt(kv[k], base, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("metadata %s: %v", k, e)
		}
		return n
	}
	b.Path, b.RunID, b.Node, b.Digest = unquote("path"), kv["run"], kv["node"], kv["sha256"]
	size = num("size", 10)
	switch kv["type"] {
	case "missing":
	case "symlink":
		b.Exists, b.IsSymlink, b.LinkTarget = true, true, unquote("link_target")
	case "file":
		b.Exists = true
	default:
		return b, size, fmt.Errorf("metadata type %q", kv["type"])
	}
	if b.Exists {
		b.Mode = modeFromUnix(uint32(num("mode", 8)))
		b.UID, b.GID = int(num("uid", 10)), int(num("gid", 10))
		b.Owner, b.Group = kv["owner"], kv["group"]
	}
	t, e := time.Parse(time.RFC3339, kv["taken_at"])
	if e != nil && err == nil {
		err = fmt.Errorf("metadata taken_at: %v", e)
	}
	b.TakenAt = t
	return b, size, err
}
