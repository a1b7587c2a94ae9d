package steps

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/kubeca/rotate/nodes"
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
		if _, err := nodes.BackupFile(ctx, r, rt.Store, rt.BackupID, p.edit.path); err != nil {
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

// restorePaths puts back this step's backups of paths, in the given
// order (see revertOrder). Paths it never backed up were never changed by
// it and are left alone.
func restorePaths(ctx context.Context, rt *Runtime, r nodes.Runner, paths []string) (bool, error) {
	changed := false
	for i := range paths {
		b, ok, err := rt.Store.LoadBackup(ctx, r.Name(), paths[i])
		if err != nil {
			return changed, err
		}
		if !ok {
			continue
		}
		cur, err := nodes.Snapshot(ctx, r, paths[i])
		if err != nil {
			return changed, fmt.Errorf("inspect %s on %s: %w", paths[i], r.Name(), err)
		}
		if cur.Exists == b.Exists && cur.Digest == b.Digest && cur.IsSymlink == b.IsSymlink && cur.LinkTarget == b.LinkTarget && cur.Mode == b.Mode {
			continue
		}
		if err := nodes.Restore(ctx, r, b); err != nil {
			return changed, fmt.Errorf("restore %s on %s: %w", paths[i], r.Name(), err)
		}
		changed = true
	}
	return changed, nil
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
