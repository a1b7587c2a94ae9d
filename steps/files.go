package steps

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
)

// fileEdit is one file a step changes: fn maps the current content to the
// wanted content. fn must be idempotent (fn(fn(x)) == fn(x)) so Check can
// ask "is the edit already in place?" by applying it to what is there.
type fileEdit struct {
	path string
	mode fs.FileMode // for a file that does not exist yet
	// optional: a missing file is skipped instead of an error
	optional bool
	// symlink, when set, makes path a symbolic link to it (fn unused).
	symlink string
	// fn gets the current content (nil, false when missing) and returns the
	// wanted content; remove=true deletes the file.
	fn func(cur []byte, exists bool) (want []byte, remove bool, err error)
}

// setContent is an edit that makes the file hold exactly data.
func setContent(path string, data []byte, mode fs.FileMode) fileEdit {
	return fileEdit{path: path, mode: mode, fn: func([]byte, bool) ([]byte, bool, error) { return data, false, nil }}
}

// removeFile is an edit that deletes the file.
func removeFile(path string) fileEdit {
	return fileEdit{path: path, optional: true, fn: func([]byte, bool) ([]byte, bool, error) { return nil, true, nil }}
}

func (rt *Runtime) node(ctx context.Context, t Target) (nodes.Runner, error) {
	if t.Node == "" {
		return nil, errors.New("step needs a node target")
	}
	r, err := rt.Nodes.Node(ctx, t.Node)
	if err != nil {
		return nil, fmt.Errorf("connect to node %s: %w", t.Node, err)
	}
	return r, nil
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
	edit         fileEdit
	cur, want    []byte
	exists       bool
	remove, noop bool
}

// mergeEdits composes edits of the same path (in order) into one, so that
// a manifest whose flags and restart annotation both change is computed
// and written once.
func mergeEdits(edits []fileEdit) []fileEdit {
	var out []fileEdit
	index := map[string]int{}
	for _, e := range edits {
		i, seen := index[e.path]
		if !seen || e.symlink != "" || out[i].symlink != "" {
			index[e.path] = len(out)
			out = append(out, e)
			continue
		}
		first, next := out[i], e
		out[i].optional = first.optional && next.optional
		out[i].fn = func(cur []byte, exists bool) ([]byte, bool, error) {
			mid, remove, err := first.fn(cur, exists)
			if err != nil || remove {
				return mid, remove, err
			}
			return next.fn(mid, true)
		}
	}
	return out
}

func planEdits(ctx context.Context, r nodes.Runner, edits []fileEdit) ([]editPlan, error) {
	edits = mergeEdits(edits)
	out := make([]editPlan, 0, len(edits))
	for _, e := range edits {
		if e.symlink != "" {
			st, err := r.Stat(ctx, e.path)
			if err != nil {
				return nil, fmt.Errorf("stat %s on %s: %w", e.path, r.Name(), err)
			}
			out = append(out, editPlan{edit: e, exists: st.Exists, noop: st.IsSymlink && st.LinkTarget == e.symlink})
			continue
		}
		cur, exists, err := readOptional(ctx, r, e.path)
		if err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", e.path, r.Name(), err)
		}
		if !exists && e.optional {
			out = append(out, editPlan{edit: e, noop: true})
			continue
		}
		want, remove, err := e.fn(cur, exists)
		if err != nil {
			return nil, fmt.Errorf("edit %s on %s: %w", e.path, r.Name(), err)
		}
		p := editPlan{edit: e, cur: cur, want: want, exists: exists, remove: remove}
		p.noop = (remove && !exists) || (!remove && exists && bytes.Equal(cur, want))
		out = append(out, p)
	}
	return out, nil
}

// editsInPlace reports whether every edit is already applied.
func editsInPlace(ctx context.Context, r nodes.Runner, edits []fileEdit) (bool, error) {
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

// applyEdits backs up each file (first copy wins, scoped to this step) and
// then writes it atomically, in order. It returns whether anything changed.
func applyEdits(ctx context.Context, rt *Runtime, r nodes.Runner, edits []fileEdit) (bool, error) {
	ps, err := planEdits(ctx, r, edits)
	if err != nil {
		return false, err
	}
	changed := false
	for _, p := range ps {
		if p.noop {
			continue
		}
		if _, err := nodes.BackupFile(ctx, r, rt.Store, rt.Config.Paths.BackupDir, rt.BackupID, p.edit.path); err != nil {
			return changed, fmt.Errorf("back up %s on %s: %w", p.edit.path, r.Name(), err)
		}
		switch {
		case p.edit.symlink != "":
			err = r.Symlink(ctx, p.edit.symlink, p.edit.path)
		case p.remove:
			err = r.Remove(ctx, p.edit.path)
		default:
			mode := p.edit.mode
			if p.exists {
				mode = 0 // keep the file's mode and owner
			}
			err = r.WriteFile(ctx, p.edit.path, p.want, mode)
		}
		if err != nil {
			return changed, fmt.Errorf("write %s on %s: %w", p.edit.path, r.Name(), err)
		}
		changed = true
	}
	return changed, nil
}

// restoreStages is what a revert puts back, split around the restart
// gates (see NodeEdit.Revert). Each stage is in restore order.
type restoreStages struct {
	early, late []nodes.Backup
}

// pendingRestore is one path whose backup differs from what is there.
type pendingRestore struct {
	b         nodes.Backup
	cur, want []byte // content now and once restored, read through links
}

// planRestore decides, from this step's backups of paths (in edit order)
// and the node's files, which restorations may happen while the
// components the step restarted can still be running with the step's
// configuration, and which must wait for their restart gates. The rule,
// decided by content (PEM) and never by file name, so that every step and
// every CA gets it:
//
// A restoration is late when it narrows trust in place:
//   - it removes the file (the backup says there was none);
//   - the file holds a CA certificate (IsCA) that the restored content
//     does not hold (ca.crt going from the new CA back to the old one);
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
func planRestore(ctx context.Context, rt *Runtime, r nodes.Runner, paths []string) (restoreStages, error) {
	var ps []pendingRestore
	for i := len(paths) - 1; i >= 0; i-- {
		p, err := pendingRestoreOf(ctx, rt, r, paths[i])
		if err != nil {
			return restoreStages{}, err
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
		narrows[i] = !p.b.Exists || len(l) > 0
	}
	var st restoreStages
	var keys, manifests, rest []nodes.Backup
	for i, p := range ps {
		switch {
		case narrows[i]:
			rest = append(rest, p.b)
		case keyOfAny(p.cur, lost):
			keys = append(keys, p.b)
		case strings.HasPrefix(p.b.Path, rt.Config.Paths.ManifestsDir+"/"):
			manifests = append(manifests, p.b)
		default:
			st.early = append(st.early, p.b)
		}
	}
	st.early = append(st.early, manifests...)
	st.late = append(keys, rest...)
	return st, nil
}

// pendingRestoreOf is the restoration of p, or nil when this step never
// backed p up (it never changed it) or p is already as backed up.
func pendingRestoreOf(ctx context.Context, rt *Runtime, r nodes.Runner, p string) (*pendingRestore, error) {
	b, ok, err := rt.Store.LoadBackup(ctx, r.Name(), p)
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
		target := b.LinkTarget
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(p), target)
		}
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

// restoreBackups puts back each backup, in order.
func restoreBackups(ctx context.Context, r nodes.Runner, bs []nodes.Backup) error {
	for _, b := range bs {
		if err := nodes.Restore(ctx, r, b); err != nil {
			return err
		}
	}
	return nil
}

func editPaths(edits []fileEdit) []string {
	var out []string
	for _, e := range mergeEdits(edits) {
		out = append(out, e.path)
	}
	return out
}

// describeEdits says what applyEdits would change, for `rotate plan`.
func describeEdits(ctx context.Context, r nodes.Runner, edits []fileEdit) ([]string, error) {
	ps, err := planEdits(ctx, r, edits)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ps {
		switch {
		case p.noop:
			out = append(out, "unchanged "+p.edit.path)
		case p.edit.symlink != "":
			out = append(out, "point symlink "+p.edit.path+" at "+p.edit.symlink)
		case p.remove:
			out = append(out, "remove "+p.edit.path)
		case !p.exists:
			out = append(out, "create "+p.edit.path)
		default:
			out = append(out, "update "+p.edit.path+": "+summarizeDiff(p.cur, p.want))
		}
	}
	return out, nil
}
