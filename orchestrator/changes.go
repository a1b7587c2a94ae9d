package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// changeLog is what one attempt of a step (or of its revert) changed on the
// nodes: each file written, linked or removed, with the SHA-256 of what was
// written, never the content. The engine commits it as KindChange events
// with the attempt's outcome. rotate's own files on the nodes (backup
// copies, kubelet markers, the state mirror) are journaled otherwise and
// left out. A killed attempt's changes are not journaled: its backups are
// (state logs each with the backup), and the next attempt finds its work
// done.
type changeLog struct {
	own []string // path prefixes left out ("/var/lib/rotate/backups/")
	now func() time.Time

	mu     sync.Mutex
	events []state.Event
}

func newChangeLog(cfg *steps.Config, now func() time.Time) *changeLog {
	l := &changeLog{now: now}
	if cfg != nil && cfg.Paths.BackupDir != "" {
		for _, d := range rotateDirs(cfg.Paths.BackupDir) {
			l.own = append(l.own, d+"/")
		}
	}
	return l
}

// rotateDirs are rotate's own directories on a node: the backups, the
// kubelet markers and the state mirror, all beside one another.
func rotateDirs(backupDir string) []string {
	root := path.Dir(backupDir)
	return []string{backupDir, path.Join(root, "markers"), path.Join(root, "state")}
}

func (l *changeLog) add(node, p, sum, msg string) {
	for _, o := range l.own {
		if strings.HasPrefix(p, o) {
			return
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, state.Event{Time: l.now(), Level: "info", Kind: state.KindChange, Node: node, Path: p, SHA256: sum, Message: msg})
}

// stamped is the changes, each stamped with the step record it belongs to.
func (l *changeLog) stamped(r state.StepRecord) []state.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]state.Event, len(l.events))
	for i, e := range l.events {
		e.Phase, e.Step, e.Target, e.Attempt = r.Phase, r.Step, r.Target, r.Attempts
		out[i] = e
	}
	return out
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// recordingNodes hands out runners that record their changes in log.
type recordingNodes struct {
	inner steps.NodeSource
	log   *changeLog
}

func (n recordingNodes) Node(ctx context.Context, name string) (nodes.Runner, error) {
	r, err := n.inner.Node(ctx, name)
	if err != nil {
		return nil, err
	}
	return &recordingRunner{Runner: r, log: n.log}, nil
}

// recordingRunner records every successful change it passes on. It
// batches (nodes.Batcher) when the runner under it does, and writes exact
// files (Restore) when that one can.
type recordingRunner struct {
	nodes.Runner
	log *changeLog
}

func (r *recordingRunner) WriteFile(ctx context.Context, p string, data []byte, mode fs.FileMode) error {
	return r.ApplyFiles(ctx, []nodes.FileOp{{Kind: nodes.OpWrite, Path: p, Data: data, Mode: mode}})
}

func (r *recordingRunner) WriteFileExact(ctx context.Context, p string, data []byte, mode fs.FileMode, uid, gid int) error {
	return r.ApplyFiles(ctx, []nodes.FileOp{{Kind: nodes.OpWriteExact, Path: p, Data: data, Mode: mode, UID: uid, GID: gid}})
}

func (r *recordingRunner) Symlink(ctx context.Context, target, link string) error {
	return r.ApplyFiles(ctx, []nodes.FileOp{{Kind: nodes.OpSymlink, Path: link, Target: target}})
}

func (r *recordingRunner) Remove(ctx context.Context, p string) error {
	return r.ApplyFiles(ctx, []nodes.FileOp{{Kind: nodes.OpRemove, Path: p}})
}

func (r *recordingRunner) ReadFiles(ctx context.Context, paths []string) ([]nodes.FileState, error) {
	return nodes.ReadFiles(ctx, r.Runner, paths)
}

// ApplyFiles passes ops on and records those applied: all of them, or
// the ones before the failed one.
func (r *recordingRunner) ApplyFiles(ctx context.Context, ops []nodes.FileOp) error {
	err := nodes.ApplyFiles(ctx, r.Runner, ops)
	done := len(ops)
	if err != nil {
		done = 0
		var be *nodes.BatchError
		if errors.As(err, &be) {
			done = be.Done
		}
	}
	for _, op := range ops[:done] {
		r.record(op)
	}
	return err
}

// ApplyRunApply passes the batches and the command on (one round trip
// where the runner under it can) and records the operations applied.
func (r *recordingRunner) ApplyRunApply(ctx context.Context, before []nodes.FileOp, cmd string, after []nodes.FileOp) (nodes.Result, error) {
	res, err := nodes.ApplyRunApply(ctx, r.Runner, before, cmd, after)
	doneBefore, doneAfter := len(before), len(after)
	var se *nodes.StageError
	var be *nodes.BatchError
	switch {
	case err == nil:
	case errors.As(err, &se):
		doneAfter = 0
		if se.Ran && errors.As(se.Err, &be) {
			doneAfter = be.Done
		}
	case errors.As(err, &be):
		doneBefore, doneAfter = be.Done, 0
	default:
		doneBefore, doneAfter = 0, 0
	}
	for _, op := range before[:doneBefore] {
		r.record(op)
	}
	for _, op := range after[:doneAfter] {
		r.record(op)
	}
	return res, err
}

func (r *recordingRunner) record(op nodes.FileOp) {
	switch op.Kind {
	case nodes.OpWrite:
		msg := fmt.Sprintf("wrote %d bytes", len(op.Data))
		if op.Mode != 0 {
			msg += fmt.Sprintf(" (mode %04o)", uint32(op.Mode.Perm()))
		}
		r.log.add(r.Name(), op.Path, sha256Hex(op.Data), msg)
	case nodes.OpWriteExact:
		r.log.add(r.Name(), op.Path, sha256Hex(op.Data), fmt.Sprintf("restored %d bytes (mode %04o, owner %d:%d)", len(op.Data), uint32(op.Mode.Perm()), op.UID, op.GID))
	case nodes.OpSymlink:
		r.log.add(r.Name(), op.Path, "", "pointed symlink at "+op.Target)
	case nodes.OpSymlinkExact:
		r.log.add(r.Name(), op.Path, "", fmt.Sprintf("pointed symlink at %s (owner %d:%d)", op.Target, op.UID, op.GID))
	case nodes.OpRemove:
		r.log.add(r.Name(), op.Path, "", "removed")
	}
}
