// Package fileedit is the file-edit engine of node steps: a step lists
// the files it changes as Edits (pure functions from the current content
// to the wanted one), and the engine says whether they are in place
// (InPlace), applies them with a backup of each file before its first
// change (Apply), says what they would change (Describe, redacted), and
// decides in which order a revert may put the backups back without
// narrowing trust under a running component (PlanRestore).
package fileedit

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/kubeca/rotate/internal/redact"
	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
)

// Edit is one file a step changes: Fn maps the current content to the
// wanted content. Fn must be idempotent (Fn(Fn(x)) == Fn(x)) so a step's
// Check can ask "is the edit already in place?" by applying it to what is
// there.
type Edit struct {
	Path string
	Mode fs.FileMode // for a file that does not exist yet
	// Optional: a missing file is skipped instead of an error.
	Optional bool
	// Symlink, when set, makes Path a symbolic link to it (Fn unused).
	// Content-wise the link is tracked by its target path.
	Symlink string
	// Fn gets the current content (nil, false when missing) and returns
	// the wanted content; remove=true deletes the file.
	Fn func(cur []byte, exists bool) (want []byte, remove bool, err error)
}

// SetContent is an edit that makes the file hold exactly data.
func SetContent(path string, data []byte, mode fs.FileMode) Edit {
	return Edit{Path: path, Mode: mode, Fn: func([]byte, bool) ([]byte, bool, error) { return data, false, nil }}
}

// Remove is an edit that deletes the file.
func Remove(path string) Edit {
	return Edit{Path: path, Optional: true, Fn: func([]byte, bool) ([]byte, bool, error) { return nil, true, nil }}
}

// Symlink is an edit that repoints link at target.
func Symlink(link, target string) Edit {
	return Edit{Path: link, Symlink: target}
}

func readOptional(ctx context.Context, r nodes.Runner, path string) ([]byte, bool, error) {
	b, err := r.ReadFile(ctx, path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return b, true, nil
}

// editPlan is what an edit would do to a file right now.
type editPlan struct {
	edit         Edit
	cur, want    []byte
	exists       bool
	remove, noop bool
}

// mergeEdits composes edits of the same path (in order) into one, so that
// a manifest whose flags and restart annotation both change is computed
// and written once.
func mergeEdits(edits []Edit) []Edit {
	var out []Edit
	index := map[string]int{}
	for _, e := range edits {
		i, seen := index[e.Path]
		if !seen || e.Symlink != "" || out[i].Symlink != "" {
			index[e.Path] = len(out)
			out = append(out, e)
			continue
		}
		first, next := out[i], e
		out[i].Optional = first.Optional && next.Optional
		out[i].Fn = func(cur []byte, exists bool) ([]byte, bool, error) {
			mid, remove, err := first.Fn(cur, exists)
			if err != nil || remove {
				return mid, remove, err
			}
			return next.Fn(mid, true)
		}
	}
	return out
}

func planEdits(ctx context.Context, r nodes.Runner, edits []Edit) ([]editPlan, error) {
	edits = mergeEdits(edits)
	out := make([]editPlan, 0, len(edits))
	for _, e := range edits {
		if e.Symlink != "" {
			st, err := r.Stat(ctx, e.Path)
			if err != nil {
				return nil, fmt.Errorf("stat %s on %s: %w", e.Path, r.Name(), err)
			}
			out = append(out, editPlan{edit: e, exists: st.Exists, noop: st.IsSymlink && st.LinkTarget == e.Symlink})
			continue
		}
		cur, exists, err := readOptional(ctx, r, e.Path)
		if err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", e.Path, r.Name(), err)
		}
		if !exists && e.Optional {
			out = append(out, editPlan{edit: e, noop: true})
			continue
		}
		want, remove, err := e.Fn(cur, exists)
		if err != nil {
			return nil, fmt.Errorf("edit %s on %s: %w", e.Path, r.Name(), err)
		}
		p := editPlan{edit: e, cur: cur, want: want, exists: exists, remove: remove}
		p.noop = (remove && !exists) || (!remove && exists && bytes.Equal(cur, want))
		out = append(out, p)
	}
	return out, nil
}

// InPlace reports whether every edit is already applied.
func InPlace(ctx context.Context, r nodes.Runner, edits []Edit) (bool, error) {
	ps, err := planEdits(ctx, r, edits)
	if err != nil {
		return false, err
	}
	for _, p := range ps {
		if !p.noop {
			return false, nil
		}
	}
	return true, nil
}

// Backups is where Apply keeps each file's state from before its first
// change: Store, and on the node Dir/ID (see nodes.BackupFile).
type Backups struct {
	Store nodes.BackupStore
	Dir   string
	ID    string // scopes the backups, e.g. to one step on one target
}

// Apply backs up every file it is about to change (first copy wins,
// scoped to b.ID), then writes each atomically, in order. It returns
// whether anything changed. The backups all come first, so that on a
// batched runner they are read from what the step's read already holds:
// a write queued before a backup's read would make that read a round trip
// of its own (a write may change what a known symlink resolves to).
func Apply(ctx context.Context, r nodes.Runner, b Backups, edits []Edit) (bool, error) {
	ps, err := planEdits(ctx, r, edits)
	if err != nil {
		return false, err
	}
	var paths []string
	for _, p := range ps {
		if !p.noop && !slices.Contains(paths, p.edit.Path) {
			paths = append(paths, p.edit.Path)
		}
	}
	if _, err := nodes.BackupFiles(ctx, r, b.Store, b.Dir, b.ID, paths); err != nil {
		return false, err // names the path and the node
	}
	changed := false
	for _, p := range ps {
		if p.noop {
			continue
		}
		switch {
		case p.edit.Symlink != "":
			err = r.Symlink(ctx, p.edit.Symlink, p.edit.Path)
		case p.remove:
			err = r.Remove(ctx, p.edit.Path)
		default:
			mode := p.edit.Mode
			if p.exists {
				mode = 0 // keep the file's mode and owner
			}
			err = r.WriteFile(ctx, p.edit.Path, p.want, mode)
		}
		if err != nil {
			return changed, fmt.Errorf("write %s on %s: %w", p.edit.Path, r.Name(), err)
		}
		changed = true
	}
	return changed, nil
}

// RestoreStages is what a revert puts back, split around the restart
// gates of the components the step restarted. Each stage is in restore
// order.
type RestoreStages struct {
	Early, Late []nodes.Backup
}

// pendingRestore is one path whose backup differs from what is there.
type pendingRestore struct {
	b         nodes.Backup
	cur, want []byte // content now and once restored, read through links
}

// PlanRestore decides, from a step's backups of paths (in edit order)
// and the node's files, which restorations may happen while the
// components the step restarted can still be running with the step's
// configuration, and which must wait for their restart gates. The rule,
// decided by content (PEM) and never by file name, so that every step and
// every CA gets it:
//
// A restoration is late when it narrows trust in place:
//   - it removes the file (the backup says there was none);
//   - the file holds a CA certificate (IsCA) that the restored content
//     does not hold (ca.crt going from the new CA back to the old one),
//     or a public key that it does not hold (sa.pub going from the new
//     service-account key back to the old one);
//   - the file holds the private key of such a CA certificate (ca.key
//     with ca.crt), so that a signer never pairs a restored key with a
//     certificate it does not belong to.
//
// A component that reads such a file dynamically (kube-apiserver's
// --client-ca-file, the kubelet's clientCAFile) would reject, until it is
// restarted, every credential of the CA taken out; after the gates it runs
// from the restored manifests, which name other files.
//
// Every other restoration is early: config files and kubeconfigs (read
// only when a component starts), and leaf certificates and keys, whose
// swap narrows no trust; they go back before the manifests, so the
// process a restored manifest starts reads restored files — it may not
// reload a client certificate (the apiserver's kubelet-client one) later.
// Manifests go last among the early ones.
//
// The late ones go keys first: a key is recognised by the CA certificate
// still in its file, so a revert killed between the two and run again
// must find the key already restored. Otherwise, newest edit first.
//
// Manifests are the files under manifestsDir.
func PlanRestore(ctx context.Context, r nodes.Runner, store nodes.BackupStore, manifestsDir string, paths []string) (RestoreStages, error) {
	var ps []pendingRestore
	for i := len(paths) - 1; i >= 0; i-- {
		p, err := pendingRestoreOf(ctx, r, store, paths[i])
		if err != nil {
			return RestoreStages{}, err
		}
		if p != nil {
			ps = append(ps, *p)
		}
	}
	var lost []*x509.Certificate // CA certificates the restorations take out
	narrows := make([]bool, len(ps))
	for i, p := range ps {
		l := lostCAs(p.cur, p.want)
		lost = append(lost, l...)
		narrows[i] = !p.b.Exists || len(l) > 0 || len(pki.DroppedPublicKeys(p.cur, p.want)) > 0
	}
	var st RestoreStages
	var keys, manifests, rest []nodes.Backup
	for i, p := range ps {
		switch {
		case narrows[i]:
			rest = append(rest, p.b)
		case keyOfAny(p.cur, lost):
			keys = append(keys, p.b)
		case strings.HasPrefix(p.b.Path, manifestsDir+"/"):
			manifests = append(manifests, p.b)
		default:
			st.Early = append(st.Early, p.b)
		}
	}
	st.Early = append(st.Early, manifests...)
	st.Late = append(keys, rest...)
	return st, nil
}

// RestoreReads are the paths PlanRestore reads on node: paths, and where
// a backup of one is a symlink, the file it pointed at (what the
// restoration puts back in trust). A batched runner given them ahead
// (nodes.Batched.Prefetch) answers PlanRestore in that one round trip.
func RestoreReads(ctx context.Context, node string, store nodes.BackupStore, paths []string) ([]string, error) {
	out := slices.Clone(paths)
	for _, p := range paths {
		b, ok, err := store.LoadBackup(ctx, node, p)
		if err != nil {
			return nil, fmt.Errorf("load backup of %s on %s: %w", p, node, err)
		}
		if ok && b.IsSymlink {
			out = append(out, linkDest(p, b.LinkTarget))
		}
	}
	return out, nil
}

// linkDest is the path a symlink at p with target points at.
func linkDest(p, target string) string {
	if !path.IsAbs(target) {
		target = path.Join(path.Dir(p), target)
	}
	return target
}

// pendingRestoreOf is the restoration of p, or nil when this step never
// backed p up (it never changed it) or p is already as backed up.
func pendingRestoreOf(ctx context.Context, r nodes.Runner, store nodes.BackupStore, p string) (*pendingRestore, error) {
	b, ok, err := store.LoadBackup(ctx, r.Name(), p)
	if err != nil {
		return nil, fmt.Errorf("load backup of %s on %s: %w", p, r.Name(), err)
	}
	if !ok {
		return nil, nil
	}
	cur, err := nodes.Snapshot(ctx, r, p)
	if err != nil {
		return nil, fmt.Errorf("inspect %s on %s: %w", p, r.Name(), err)
	}
	if cur.Exists == b.Exists && cur.Digest == b.Digest && cur.IsSymlink == b.IsSymlink && cur.LinkTarget == b.LinkTarget && cur.Mode == b.Mode {
		return nil, nil
	}
	pr := &pendingRestore{b: b, cur: cur.Content, want: b.Content}
	if cur.IsSymlink {
		if pr.cur, _, err = readOptional(ctx, r, p); err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", p, r.Name(), err)
		}
	}
	if b.IsSymlink {
		target := linkDest(p, b.LinkTarget)
		if pr.want, _, err = readOptional(ctx, r, target); err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", target, r.Name(), err)
		}
	}
	return pr, nil
}

// lostCAs are the CA certificates in cur that want lacks.
func lostCAs(cur, want []byte) []*x509.Certificate {
	kept := map[string]bool{}
	certs, _ := pki.ScanPEM(want)
	for _, c := range certs {
		kept[pki.Fingerprint(c)] = true
	}
	var out []*x509.Certificate
	certs, _ = pki.ScanPEM(cur)
	for _, c := range certs {
		if c.IsCA && !kept[pki.Fingerprint(c)] {
			out = append(out, c)
		}
	}
	return out
}

// keyOfAny reports whether content holds the private key of one of cas.
func keyOfAny(content []byte, cas []*x509.Certificate) bool {
	_, keys := pki.ScanPEM(content)
	for _, k := range keys {
		for _, c := range cas {
			if pki.KeyMatches(c, k) {
				return true
			}
		}
	}
	return false
}

// prefetcher is a runner that reads many paths in one round trip ahead of
// their use (nodes.Batched).
type prefetcher interface {
	Prefetch(ctx context.Context, paths ...string) error
}

// Restore puts back each backup, in order. On a batched runner every path
// is read first in one round trip and the restorations are queued: a
// restoration's look at its path then never flushes the ones before it.
func Restore(ctx context.Context, r nodes.Runner, bs []nodes.Backup) error {
	if pf, ok := r.(prefetcher); ok && len(bs) > 0 {
		paths := make([]string, len(bs))
		for i, b := range bs {
			paths[i] = b.Path
		}
		if err := pf.Prefetch(ctx, paths...); err != nil {
			return err
		}
	}
	for _, b := range bs {
		if err := nodes.Restore(ctx, r, b); err != nil {
			return err
		}
	}
	return nil
}

// Paths are the files edits change, each once, in edit order.
func Paths(edits []Edit) []string {
	var out []string
	for _, e := range mergeEdits(edits) {
		out = append(out, e.Path)
	}
	return out
}

// Describe says what Apply would change, for `rotate plan --live`; a
// file's change is shown redacted (redact.Diff).
func Describe(ctx context.Context, r nodes.Runner, edits []Edit) ([]string, error) {
	ps, err := planEdits(ctx, r, edits)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ps {
		switch {
		case p.noop:
			out = append(out, "unchanged "+p.edit.Path)
		case p.edit.Symlink != "":
			out = append(out, "point symlink "+p.edit.Path+" at "+p.edit.Symlink)
		case p.remove:
			out = append(out, "remove "+p.edit.Path)
		case !p.exists:
			out = append(out, "create "+p.edit.Path)
		default:
			out = append(out, "update "+p.edit.Path+": "+redact.Diff(p.cur, p.want))
		}
	}
	return out, nil
}
