package orchestrator

import (
	"context"
	"io/fs"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// storeAdapter gives steps their view of the state store, translating the
// state package's records to the types steps and nodes define, so neither
// of them imports state.
type storeAdapter struct {
	s     state.Store
	scope string // the step key whose backups these are
}

var _ steps.Store = storeAdapter{}

func (a storeAdapter) Value(ctx context.Context, key string) ([]byte, bool, error) {
	return a.s.Value(ctx, key)
}

func (a storeAdapter) CA(ctx context.Context, name string) (steps.CAPair, bool, error) {
	c, ok, err := a.s.CA(ctx, name)
	return steps.CAPair{Name: c.Name, OldCert: c.OldCert, OldKey: c.OldKey, NewCert: c.NewCert, NewKey: c.NewKey}, ok, err
}

func (a storeAdapter) SaveBackupIfAbsent(ctx context.Context, b nodes.Backup) (bool, error) {
	return a.s.SaveBackupIfAbsent(ctx, state.Backup{
		Scope: a.scope,
		RunID: b.RunID, Node: b.Node, Path: b.Path, Exists: b.Exists, Content: b.Content,
		Mode: uint32(b.Mode), UID: b.UID, GID: b.GID, Owner: b.Owner, Group: b.Group,
		IsSymlink: b.IsSymlink, LinkTarget: b.LinkTarget, Digest: b.Digest, TakenAt: b.TakenAt,
	})
}

func (a storeAdapter) LoadBackup(ctx context.Context, node, path string) (nodes.Backup, bool, error) {
	b, ok, err := a.s.Backup(ctx, a.scope, node, path)
	return nodes.Backup{
		RunID: b.RunID, Node: b.Node, Path: b.Path, Exists: b.Exists, Content: b.Content,
		Mode: fs.FileMode(b.Mode), UID: b.UID, GID: b.GID, Owner: b.Owner, Group: b.Group,
		IsSymlink: b.IsSymlink, LinkTarget: b.LinkTarget, Digest: b.Digest, TakenAt: b.TakenAt,
	}, ok, err
}

func caMaterial(c steps.CAPair) state.CAMaterial {
	return state.CAMaterial{Name: c.Name, OldCert: c.OldCert, OldKey: c.OldKey, NewCert: c.NewCert, NewKey: c.NewKey}
}
