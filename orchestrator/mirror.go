package orchestrator

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/steps"
)

// The state mirror: a run must survive the machine rotate runs on. The
// state file (with the new CA keys) would otherwise live only there, and a
// machine lost mid-rotation would strand the cluster between CAs. So every
// control-plane node keeps a copy of it, root-only:
//
//	<dir of paths.backupDir>/state/<cluster>.db   (0600, in a 0700 directory)
//
// (/var/lib/rotate/state/<cluster>.db by default, beside the backups and the
// kubelet markers), a consistent bbolt snapshot, gzipped (a fifth of the
// bytes to send and write; decodeCopy also reads the raw copies of older
// versions), written atomically
// (as nodes.Runner.WriteFile: temporary file, SHA-256 check, fsync, rename).
// `rotate resume|rollback --recover-from NODE` rebuilds the state file from
// it (recover.go).
//
// When the copies are written. A checkpoint happens per step per target
// (about 150 a run) and the file holds every backup (megabytes), so it is
// not copied to every node after every checkpoint. Instead:
//
//   - synchronously, on every control-plane node, before anything of
//     every phase after the first changes (the first one, preflight, only
//     reads the cluster and makes the new CAs: so the copies hold the new
//     CAs before any node file changes, and a recovered run never mints
//     other CAs) — except a phase whose steps all only look or wait
//     (steps.Looker: publication, verify), which changes nothing for a
//     copy to guard; the copy is written while the phase's first step looks
//     (the wait for a live leader, Check), and every Apply and Gate of the
//     phase waits for it (Engine.runPhase),
//     and before a rollback reverts anything; a failure fails the run there,
//     before anything changes;
//   - synchronously before the change a backup guards, when the backup has
//     no copy on a node (API objects: the node copies of file backups are
//     written before the change by nodes.BackupFile) and no copy written
//     since holds it: the backups of a phase's first step are taken before
//     the phase's copy (steps.EarlyBackup, Engine.earlyBackups), which then
//     carries them;
//   - best effort at the hold, after a failure (of a run or a rollback)
//     and at the end;
//   - in between, in the background: each checkpoint and backup wakes one
//     uploader per node, which uploads the latest snapshot when it is idle,
//     at most once per mirrorInterval (60 s): a change within the interval
//     after a node's last upload waits for its end and is then written
//     with every later change in one upload (at most one upload in flight
//     per node, never an older snapshot after a newer one); its failures
//     are logged and shown by `rotate status` and never block or fail the
//     run.
//
// The synchronous copies are never delayed or skipped: a Sync uploads to
// every node whose copy is older than the latest snapshot, whatever the
// interval. Each upload is one round trip (nodes.ApplyFiles: the directory
// made, and made 0700, and the copy written), and so is a node's tombstone
// at the end.
//
// Why a copy that lags the run is safe: it is never older than the start
// of the phase in progress (the synchronous copy at the phase's start), or,
// in a phase that only looks, than the start of the last phase before it
// that changed anything (whose every step the copy then either records or
// recovery marks started, see below; the looking phase has nothing to
// revert and resumes by looking again), so what it lacks is work of that
// phase only — however long the background copies lag, which is why
// coalescing them changes nothing below — and
//
//   - every step is idempotent: resumed from the copy, a step done after it
//     was taken runs again and its Check finds the work done;
//   - the backups such steps took are on the nodes (nodes.BackupFile writes
//     the node copy before the change) and recovery takes them back into
//     the state, or in the copy (API objects, see above), so a step retried
//     never records the changed file as its "before";
//   - recovery marks every step of the phase in progress that the copy has
//     no record of as started, so a rollback reverts it too (reverting what
//     never ran changes nothing);
//   - a rollback writes the copies before it reverts anything, so a copy
//     never says "done" of a step that was reverted, except during that
//     rollback, whose reverts are idempotent too.
//
// A run that completes or is rolled back writes a tombstone beside each
// copy (<cluster>.db.finished: run id, state, time; no secrets) and removes
// the copy, so a later --recover-from cannot resurrect it; recovery refuses
// a run that any control-plane node's tombstone names.

// MirrorPath is where a control-plane node keeps the mirror of the state
// of a run on cluster with the given paths.backupDir.
func MirrorPath(backupDir, cluster string) string {
	return path.Join(path.Dir(backupDir), "state", mirrorName(cluster)+".db")
}

// compressed gzips snap's snapshots (the copies' form, decodeCopy's
// input). The fastest level: the state is mostly PEM, keys and page
// padding, 2 MB of it gzip to about 0.36 MB in a few milliseconds.
func compressed(snap func(ctx context.Context) ([]byte, error)) func(ctx context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		data, err := snap(ctx)
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		zw, err := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		if err != nil {
			return nil, err
		}
		if _, err := zw.Write(data); err != nil {
			return nil, err
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		return b.Bytes(), nil
	}
}

// maxCopySize bounds a copy's state file once gunzipped.
const maxCopySize = 1 << 30

// decodeCopy is the state file a copy holds: gunzipped, or as it is when
// it is not gzip (a raw bbolt file, as rotate wrote its copies before they
// were compressed: a bbolt file starts with a zero page id, never gzip's
// magic).
func decodeCopy(data []byte) ([]byte, error) {
	if len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
		return data, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("the copy is not a gzipped state file: %w", err)
	}
	out, err := io.ReadAll(io.LimitReader(zr, maxCopySize+1))
	if err != nil {
		return nil, fmt.Errorf("the copy is not a gzipped state file: %w", err)
	}
	if len(out) > maxCopySize {
		return nil, fmt.Errorf("the copy unpacks to more than %d bytes", maxCopySize)
	}
	return out, nil
}

// mirrorInterval is the least time between two background uploads of the
// state to one node. Each upload is the whole state file (2-4 MB for 2 to
// 30 workers, a fifth of it gzipped) to every control-plane node, from
// what may be a laptop on a slow link, and a round trip to each; a copy at
// most this old (and never older than its phase's start) costs a recovery
// at most this much work done again, which is mostly Checks finding it
// done. The phase-start copies come every few seconds to a minute, so at
// 60 s only the longest phases (servers, narrow-trust on a big cluster)
// get background copies at all (at 30 s a 2-worker rotation made four).
const mirrorInterval = 60 * time.Second

// mirrorTripLabel counts the copies' round trips apart from the steps'
// (nodes.CountAs), also when a step's backup makes one.
const mirrorTripLabel = "state copies"

// tombstonePath is the mirror's tombstone.
func tombstonePath(mirror string) string { return mirror + ".finished" }

// mirrorName makes a cluster name a file name: everything but
// [A-Za-z0-9._-] replaced, no leading dot.
func mirrorName(cluster string) string {
	b := []byte(cluster)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || b[0] == '.' {
		b = append([]byte("_"), b...)
	}
	return string(b)
}

// MirrorNodeStatus is one node's copy as `rotate status` shows it.
type MirrorNodeStatus struct {
	Node string `json:"node"`
	Path string `json:"path"`
	// WrittenAt is when the last copy was written (zero: none yet by this
	// process); Error is the last upload's failure, if it failed.
	WrittenAt time.Time `json:"writtenAt,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// mirror keeps the copies of one state file on the control-plane nodes.
type mirror struct {
	src     steps.NodeSource
	path    string
	snap    func(ctx context.Context) ([]byte, error)
	log     *slog.Logger
	backoff time.Duration // after a failed background upload
	// interval is the least time between two uploads to one node in the
	// background (Sync never waits for it); set before the first mark.
	interval time.Duration
	nodes    []*mirrorNode

	ctx    context.Context // of the background uploaders
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	gen      uint64 // bumped by every change to the state (mark)
	active   bool   // background uploads on: a synchronous copy was asked for
	finished bool   // the copies are gone: nothing uploads any more
	// apiGen is the generation of the latest backup without a node copy:
	// every node's copy must hold it before the change it guards.
	apiGen uint64

	snapMu    sync.Mutex // one snapshot at a time, shared by the uploaders
	snapGen   uint64
	snapBytes []byte
}

type mirrorNode struct {
	name string
	kick chan struct{}
	up   sync.Mutex // held during an upload

	// under up
	last time.Time // when the last upload to the node started

	// under mirror.mu
	gen     uint64 // generation of the last copy written
	at      time.Time
	err     string
	failing bool
}

// newMirror starts one background uploader per node; Close stops them.
// snap returns a consistent snapshot of the state file.
func newMirror(src steps.NodeSource, controlPlane []string, mirrorPath string, snap func(ctx context.Context) ([]byte, error), log *slog.Logger) *mirror {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &mirror{src: src, path: mirrorPath, snap: snap, log: log.With("mirror", mirrorPath), backoff: 5 * time.Second, interval: mirrorInterval}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	for _, n := range controlPlane {
		mn := &mirrorNode{name: n, kick: make(chan struct{}, 1)}
		m.nodes = append(m.nodes, mn)
		m.wg.Add(1)
		go m.uploader(mn)
	}
	return m
}

// Close stops the background uploads (one in flight is cancelled: the
// node keeps its previous copy whole) and waits for them.
func (m *mirror) Close() {
	m.cancel()
	m.wg.Wait()
}

// mark records that the state changed; once copies are being kept, each
// node's uploader is woken. It never blocks.
func (m *mirror) mark() {
	m.mu.Lock()
	m.gen++
	wake := m.active && !m.finished
	m.mu.Unlock()
	if wake {
		for _, n := range m.nodes {
			select {
			case n.kick <- struct{}{}:
			default: // already woken: it will upload the latest
			}
		}
	}
}

func (m *mirror) uploader(n *mirrorNode) {
	defer m.wg.Done()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-n.kick:
		}
		if !m.await(n) {
			return
		}
		select {
		case <-n.kick: // the upload below writes that change too
		default:
		}
		err := m.upload(m.ctx, n)
		if err != nil && m.ctx.Err() == nil {
			// Do not hammer a node that is down: the next checkpoint
			// after the pause wakes the uploader again.
			select {
			case <-m.ctx.Done():
				return
			case <-time.After(m.backoff):
			}
		}
	}
}

// await waits until the interval since n's last upload has passed, a
// last upload made meanwhile (a Sync's) counting from its own time; false:
// the uploads are stopped.
func (m *mirror) await(n *mirrorNode) bool {
	for {
		n.up.Lock()
		wait := m.interval - time.Since(n.last)
		n.up.Unlock()
		if wait <= 0 {
			return true
		}
		select {
		case <-m.ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// snapshot is the latest snapshot and the generation it holds at least.
func (m *mirror) snapshot(ctx context.Context) (uint64, []byte, error) {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	m.mu.Lock()
	gen := m.gen
	m.mu.Unlock()
	if m.snapBytes != nil && m.snapGen == gen {
		return gen, m.snapBytes, nil
	}
	data, err := m.snap(ctx)
	if err != nil {
		return 0, nil, err
	}
	m.snapGen, m.snapBytes = gen, data
	return gen, data, nil
}

// upload writes the latest snapshot to n unless n has it already.
func (m *mirror) upload(ctx context.Context, n *mirrorNode) error {
	n.up.Lock()
	defer n.up.Unlock()
	m.mu.Lock()
	done := m.finished
	m.mu.Unlock()
	if done {
		return nil
	}
	gen, data, err := m.snapshot(ctx)
	if err != nil {
		return m.uploaded(n, 0, 0, err)
	}
	m.mu.Lock()
	have := n.gen >= gen && !n.at.IsZero()
	m.mu.Unlock()
	if have {
		return nil
	}
	start := time.Now()
	n.last = start
	err = m.write(ctx, n, data)
	return m.uploaded(n, gen, time.Since(start), err)
}

// write writes data to n's copy, its directory made (and made 0700) in
// the same round trip; n.up is held.
func (m *mirror) write(ctx context.Context, n *mirrorNode, data []byte) error {
	ctx = nodes.CountAs(ctx, mirrorTripLabel)
	r, err := m.src.Node(ctx, n.name)
	if err != nil {
		return err
	}
	return nodes.ApplyFiles(ctx, r, []nodes.FileOp{
		m.mkdirOp(),
		{Kind: nodes.OpWrite, Path: m.path, Data: data, Mode: 0o600},
	})
}

// mkdirOp makes the copies' directory, 0700, in a batch that writes into
// it: every batch makes sure of it, at the cost of a mkdir on the node
// rather than a round trip (it may have been removed since the last one).
func (m *mirror) mkdirOp() nodes.FileOp {
	return nodes.FileOp{Kind: nodes.OpMkdirPrivate, Path: path.Dir(m.path)}
}

// uploaded records an upload's outcome; a failure is logged when it starts
// and when it ends, so that a node that is down does not flood stderr.
func (m *mirror) uploaded(n *mirrorNode, gen uint64, took time.Duration, err error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		n.err = err.Error()
		if !n.failing {
			m.log.Warn("cannot copy the state to the node; the run goes on, its copy there lags", "node", n.name, "err", err)
		}
		n.failing = true
		return err
	}
	if n.failing {
		m.log.Warn("the state is copied to the node again", "node", n.name)
	}
	n.gen, n.at, n.err, n.failing = gen, time.Now(), "", false
	m.log.Debug("state copied", "node", n.name, "generation", gen, "bytes", len(m.snapBytes), "duration", took.Round(time.Millisecond))
	return nil
}

// Sync writes the latest state to every control-plane node and returns
// once all have it, or the failures naming each node. From the first call
// on, checkpoints are copied in the background too.
func (m *mirror) Sync(ctx context.Context) error {
	m.mu.Lock()
	if m.finished {
		m.mu.Unlock()
		return nil
	}
	m.active = true
	m.mu.Unlock()
	start := time.Now()
	err := eachNode(ctx, m.names(), func(ctx context.Context, name string) error {
		return m.upload(ctx, m.node(name))
	})
	if err != nil {
		return fmt.Errorf("%w: copy the state to %s: %w", errSyncFailed, m.path, err)
	}
	m.log.Info("state copied to every control-plane node", "nodes", len(m.nodes), "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// Active reports whether copies are being kept.
func (m *mirror) Active() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.active && !m.finished
}

// backupSaved is called after a backup was stored (saved) or found stored
// (!saved). A backup without a copy on a node must be on every node before
// the change it guards: it is synced now unless every node's copy holds it
// already (a copy written since it was saved: the phase's, after
// Engine.earlyBackups), and again on the retry of a step whose sync
// failed. Under withCopyToFollow the sync is left to the caller.
func (m *mirror) backupSaved(ctx context.Context, saved, nodeCopy bool) error {
	if saved {
		m.mark()
	}
	if nodeCopy || !m.Active() {
		return nil
	}
	m.mu.Lock()
	if saved {
		m.apiGen = m.gen
	}
	held := m.apiGen == 0 || m.copiedThroughLocked() >= m.apiGen
	m.mu.Unlock()
	if held || copyToFollow(ctx) {
		return nil
	}
	if err := m.Sync(ctx); err != nil {
		return fmt.Errorf("a backup must reach the control-plane nodes before the change it guards: %w", err)
	}
	return nil
}

// copiedThroughLocked is the generation every node's copy holds at least
// (0: a node has none yet).
func (m *mirror) copiedThroughLocked() uint64 {
	var least uint64
	for i, n := range m.nodes {
		g := n.gen
		if n.at.IsZero() {
			g = 0
		}
		if i == 0 || g < least {
			least = g
		}
	}
	return least
}

// followKey marks a context whose API backups the caller copies itself.
type followKey struct{}

// withCopyToFollow is ctx for backups that a synchronous copy the caller
// makes next carries to the nodes (Engine.earlyBackups).
func withCopyToFollow(ctx context.Context) context.Context {
	return context.WithValue(ctx, followKey{}, true)
}

func copyToFollow(ctx context.Context) bool { return ctx.Value(followKey{}) != nil }

// Finish ends the copies of a run that completed or was rolled back: no
// more uploads, then on each node a tombstone naming the run and the copy
// removed. It returns the nodes where that failed.
func (m *mirror) Finish(ctx context.Context, run state.Run) error {
	m.mu.Lock()
	m.finished = true
	m.mu.Unlock()
	tomb := fmt.Sprintf("# rotate: the run below has ended; its state copy was removed\nrun=%s\ncluster=%s\nstate=%s\nfinished=%s\n",
		run.ID, run.Cluster, run.State, run.FinishedAt.UTC().Format(time.RFC3339))
	err := eachNode(nodes.CountAs(ctx, mirrorTripLabel), m.names(), func(ctx context.Context, name string) error {
		n := m.node(name)
		n.up.Lock() // wait for an upload in flight
		defer n.up.Unlock()
		r, err := m.src.Node(ctx, name)
		if err != nil {
			return err
		}
		// One round trip: the tombstone first, so that a failure between
		// the two leaves the copy with its tombstone, which recovery
		// refuses.
		return nodes.ApplyFiles(ctx, r, []nodes.FileOp{
			m.mkdirOp(),
			{Kind: nodes.OpWrite, Path: tombstonePath(m.path), Data: []byte(tomb), Mode: 0o600},
			{Kind: nodes.OpRemove, Path: m.path},
		})
	})
	if err != nil {
		return fmt.Errorf("remove the state copies %s: %w", m.path, err)
	}
	m.log.Info("state copies removed", "nodes", len(m.nodes))
	return nil
}

// Status is each node's copy as this process knows it.
func (m *mirror) Status() []MirrorNodeStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]MirrorNodeStatus, 0, len(m.nodes))
	for _, n := range m.nodes {
		out = append(out, MirrorNodeStatus{Node: n.name, Path: m.path, WrittenAt: n.at, Error: n.err})
	}
	return out
}

// activeStatus is Status once copies are being kept, else nil (a run
// still in preflight has none).
func (m *mirror) activeStatus() []MirrorNodeStatus {
	if !m.Active() {
		return nil
	}
	return m.Status()
}

func (m *mirror) names() []string {
	out := make([]string, len(m.nodes))
	for i, n := range m.nodes {
		out[i] = n.name
	}
	return out
}

func (m *mirror) node(name string) *mirrorNode {
	for _, n := range m.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// tombstoneNames reports whether a tombstone's text names run id.
func tombstoneNames(raw []byte, id string) bool {
	for _, l := range strings.Split(string(raw), "\n") {
		if l == "run="+id {
			return true
		}
	}
	return false
}

// Mirror is what the engine asks of the state's copies (see mirror.go's
// opening comment for when).
type Mirror interface {
	// Sync returns once every control-plane node has the latest state.
	Sync(ctx context.Context) error
	// Finish removes the copies of a run that ended, leaving tombstones.
	Finish(ctx context.Context, run state.Run) error
	// Active reports whether copies are being kept (Sync was asked for).
	Active() bool
}

// errSyncFailed is wrapped by a run's failure to copy its state.
var errSyncFailed = errors.New("state not copied to every control-plane node")

var _ Mirror = (*mirror)(nil)

// mirrorStore is the Store of a session that keeps copies: every
// checkpoint and saved backup marks the state changed, and a backup
// without a node copy (nodeCopies says which nodes have them: the
// inventory's) reaches every copy before it returns.
type mirrorStore struct {
	state.Store
	m          *mirror
	nodeCopies map[string]bool
}

func withMirror(s state.Store, m *mirror, nodeNames []string) mirrorStore {
	ms := mirrorStore{Store: s, m: m, nodeCopies: map[string]bool{}}
	for _, n := range nodeNames {
		ms.nodeCopies[n] = true
	}
	return ms
}

func (s mirrorStore) Commit(ctx context.Context, cp state.Checkpoint) error {
	if err := s.Store.Commit(ctx, cp); err != nil {
		return err
	}
	s.m.mark()
	return nil
}

func (s mirrorStore) SaveBackupIfAbsent(ctx context.Context, b state.Backup) (bool, error) {
	saved, err := s.Store.SaveBackupIfAbsent(ctx, b)
	if err != nil {
		return saved, err
	}
	return saved, s.m.backupSaved(ctx, saved, s.nodeCopies[b.Node])
}

// eachNode runs fn for every name in parallel and joins the errors, each
// naming its node.
func eachNode(ctx context.Context, names []string, fn func(ctx context.Context, name string) error) error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, name); err != nil {
				errs[i] = fmt.Errorf("node %s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
