// Package state is rotate's durable memory: the run record, one record per
// step and target, backups of every file the run touches, the old and new CA
// material, values steps produce, and an append-only event log.
//
// Every write that matters for resuming is a Checkpoint, applied in one
// transaction: a step's status and everything it produced land together or
// not at all (the "consistent index" idea of etcd and Vault's raft FSM).
package state

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kubeca/rotate/internal/waits"
)

// SchemaVersion is the layout version written to the meta bucket. Opening a
// file with any other version is refused rather than guessed at.
const SchemaVersion = 1

var (
	// ErrBusy: another rotate process holds the state file.
	ErrBusy = errors.New("state file is in use by another rotate process")
	// ErrSchema: the file was written by an incompatible rotate.
	ErrSchema = errors.New("unsupported state schema version")
	// ErrPermissions: the file is readable by group or others.
	ErrPermissions = errors.New("state file permissions are too open")
	// ErrOwner: the file belongs to another user than the one running
	// rotate (or root).
	ErrOwner = errors.New("state file is owned by another user")
	// ErrCorrupt: the file is not an intact rotate state file (empty,
	// truncated, overwritten, damaged, or holding records this rotate
	// cannot have written). Nothing is written to such a file.
	ErrCorrupt = errors.New("state file is damaged or not a rotate state file")
	// ErrNoRun: the file holds no run yet.
	ErrNoRun = errors.New("no run recorded in the state file")
)

// StepStatus is where one step stands for one target.
type StepStatus string

const (
	StepPending  StepStatus = "pending"
	StepStarted  StepStatus = "started"
	StepDone     StepStatus = "done"
	StepFailed   StepStatus = "failed"
	StepReverted StepStatus = "reverted"
)

// Run is the single run a state file records.
type Run struct {
	ID              string    `json:"id"`
	Cluster         string    `json:"cluster"`
	InventoryPath   string    `json:"inventoryPath"`
	InventoryDigest string    `json:"inventoryDigest"`
	PlanVersion     int       `json:"planVersion"`
	State           string    `json:"state"`           // FSM state
	Phase           string    `json:"phase,omitempty"` // phase in progress or last failed
	Hold            bool      `json:"hold"`
	LastError       string    `json:"lastError,omitempty"`
	CreatedAt       time.Time `json:"createdAt"`
	UpdatedAt       time.Time `json:"updatedAt"`
	FinishedAt      time.Time `json:"finishedAt,omitempty"`
}

// StepRecord is the progress of one step on one target ("cluster" or a
// node name). Key is "phase/step@target".
type StepRecord struct {
	Key        string     `json:"key"`
	Phase      string     `json:"phase"`
	Step       string     `json:"step"`
	Target     string     `json:"target"`
	Status     StepStatus `json:"status"`
	Attempts   int        `json:"attempts"`
	Skipped    bool       `json:"skipped,omitempty"` // check found it already done
	Error      string     `json:"error,omitempty"`
	StartedAt  time.Time  `json:"startedAt,omitempty"`
	FinishedAt time.Time  `json:"finishedAt,omitempty"`
	DoneSeq    uint64     `json:"doneSeq,omitempty"` // order of completion, for rollback
	// Time spent in apply (rotate's own work, including node I/O) and in
	// the health gate (waiting for components) on the last attempt.
	ApplyTime time.Duration `json:"applyTime,omitempty"`
	GateTime  time.Duration `json:"gateTime,omitempty"`
	// Waits are the spans inside apply spent waiting on the cluster (a
	// rollout, a CSR signed, a restarted kubelet healthy), merged, at most
	// waits.MaxSpans.
	Waits      []waits.Span `json:"waits,omitempty"`
	RevertedAt time.Time    `json:"revertedAt,omitempty"`
}

// Backup is a file (or API object) as it was before a step first changed
// it. Scope is the step and target that took it ("phase/step@target"), so
// each step's revert restores exactly its own "before", and the earliest
// backup of a path is the file as it was before the run.
type Backup struct {
	Scope      string    `json:"scope"`
	RunID      string    `json:"runID"`
	Node       string    `json:"node"`
	Path       string    `json:"path"`
	Exists     bool      `json:"exists"`
	Content    []byte    `json:"content,omitempty"`
	Mode       uint32    `json:"mode"`
	UID        int       `json:"uid"`
	GID        int       `json:"gid"`
	Owner      string    `json:"owner,omitempty"`
	Group      string    `json:"group,omitempty"`
	IsSymlink  bool      `json:"isSymlink,omitempty"`
	LinkTarget string    `json:"linkTarget,omitempty"`
	Digest     string    `json:"digest"`
	TakenAt    time.Time `json:"takenAt"`
}

// CAMaterial is one CA before and after rotation. Keys are PEM; they never
// leave the state file except to be written to the nodes that hold them.
type CAMaterial struct {
	Name    string `json:"name"` // "cluster" or "front-proxy"
	OldCert []byte `json:"oldCert"`
	OldKey  []byte `json:"oldKey,omitempty"`
	NewCert []byte `json:"newCert"`
	NewKey  []byte `json:"newKey"`
}

// String never prints key material.
func (c CAMaterial) String() string { return "CAMaterial(" + c.Name + ")" }

// GoString keeps %#v from dumping keys.
func (c CAMaterial) GoString() string { return c.String() }

// Event is one line of the append-only log: `rotate events` prints it.
// Node, Path and SHA256 say what a change or backup touched; SHA256 is the
// fingerprint of the content written or backed up, never the content.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Kind    string    `json:"kind,omitempty"` // see the Kind constants; "" in files of an older rotate
	Phase   string    `json:"phase,omitempty"`
	Step    string    `json:"step,omitempty"`
	Target  string    `json:"target,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	Node    string    `json:"node,omitempty"`
	Path    string    `json:"path,omitempty"`
	SHA256  string    `json:"sha256,omitempty"`
	Message string    `json:"message"`
}

// Event kinds.
const (
	KindRun     = "run"     // a run started, resumed, was recovered
	KindState   = "state"   // an FSM transition (phases, hold, failure, rollback)
	KindStep    = "step"    // a step on a target started, finished or failed
	KindChange  = "change"  // a file a step wrote, linked or removed on a node
	KindBackup  = "backup"  // the "before" of a file or API object, saved
	KindRevert  = "revert"  // a step reverted by rollback
	KindMirror  = "mirror"  // the state's copies on the control-plane nodes
	KindRecover = "recover" // the state rebuilt from a node's copy
)

// backupEvent is the log line of a saved backup.
func backupEvent(b Backup) Event {
	e := Event{Time: b.TakenAt, Level: "info", Kind: KindBackup, Node: b.Node, Path: b.Path}
	e.Phase, e.Step, e.Target = splitScope(b.Scope)
	switch {
	case !b.Exists:
		e.Message = "recorded that it did not exist"
	case b.IsSymlink:
		e.Message = "backed up symlink to " + b.LinkTarget
	default:
		e.SHA256 = b.Digest
		e.Message = fmt.Sprintf("backed up %d bytes", len(b.Content))
	}
	return e
}

// splitScope splits a step key "phase/step@target".
func splitScope(scope string) (phase, step, target string) {
	phase, rest, ok := strings.Cut(scope, "/")
	if !ok {
		return "", "", ""
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		return phase, rest[:i], rest[i+1:]
	}
	return phase, rest, ""
}

// Checkpoint is everything one transition writes, atomically.
type Checkpoint struct {
	Run    *Run              // nil: unchanged
	Steps  []StepRecord      // upserted by Key
	Values map[string][]byte // upserted; a nil value deletes
	Events []Event           // appended; Seq is assigned
	CAs    []CAMaterial      // upserted by Name
}

// Store is rotate's state. BoltStore and MemStore implement it and pass the
// same test suite.
type Store interface {
	Run(ctx context.Context) (Run, error)
	Commit(ctx context.Context, cp Checkpoint) error

	Step(ctx context.Context, key string) (StepRecord, bool, error)
	Steps(ctx context.Context) ([]StepRecord, error)
	Value(ctx context.Context, key string) ([]byte, bool, error)

	// SaveBackupIfAbsent stores b unless a backup of (scope, node, path)
	// is stored, and logs a KindBackup event with it, in one transaction.
	SaveBackupIfAbsent(ctx context.Context, b Backup) (bool, error)
	Backup(ctx context.Context, scope, node, path string) (Backup, bool, error)
	Backups(ctx context.Context) ([]Backup, error)

	PutCA(ctx context.Context, ca CAMaterial) error
	CA(ctx context.Context, name string) (CAMaterial, bool, error)

	Events(ctx context.Context) ([]Event, error)
	// EventsAfter is the events with a sequence number above seq, in order.
	EventsAfter(ctx context.Context, seq uint64) ([]Event, error)
	// Counts counts backups and events without decoding them (status
	// runs after every checkpoint).
	Counts(ctx context.Context) (Counts, error)
	Close() error
}

// Counts are the sizes of the store's growing parts.
type Counts struct {
	Backups, Events int
}
