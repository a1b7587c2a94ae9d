package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/kubeca/rotate/internal/redact"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
)

// `rotate status` during a run: the running process holds the state file's
// lock for the whole run, so another process cannot read the file. Instead
// the running process rewrites a snapshot next to it after every checkpoint
// (state.WriteSnapshot: <state>.status.json, 0600, atomic) holding exactly
// what `rotate status -o json` would print, and status shows that snapshot
// when the lock is held. The run never waits for a reader: the snapshot is
// written by the run itself, and readers never touch the state file's lock
// beyond a failed non-blocking attempt.

// snapshotStore is a running session's Store: Commit, then have the
// snapshot rewritten and the new events appended to the journal (see
// journal.go); a saved backup's event goes to the journal too. A snapshot
// or journal that cannot be written is logged once and never fails the
// checkpoint.
//
// The side files are written after the checkpoint, not inside it: a
// snapshot is the whole status report (every step record read, encoded,
// written and fsynced: 6 ms for a run of 33 nodes on an idle machine, far
// more on a busy one), and the engine checkpoints under one lock, so when
// 33 targets of a step finished together each waited for 32 snapshots
// (0.5 s per target in cleanup; seconds of every wide step). A write is
// started right away when the last one is at least snapshotInterval old,
// else when it will be; commits in between are covered by that one write,
// which reads the store when it starts. Flush writes both files now; Stop,
// which the session calls before it closes the store, ends the background
// writes and writes both files a last time.
type snapshotStore struct {
	state.Store
	statePath string
	plan      *plans.Plan
	log       *slog.Logger
	// mirrorStatus, when set, adds the state copies' status to the report.
	mirrorStatus func() []MirrorNodeStatus
	// interval is the least time between two background writes.
	interval time.Duration

	mu            sync.Mutex // held while writing either file
	warned        bool
	journalWarned bool
	journalSeq    uint64 // last event in the journal; 0: not written yet
	journalOK     bool   // the journal was rewritten by this process

	pmu      sync.Mutex
	pending  *time.Timer // a write is scheduled and has not started
	last     time.Time   // when the last write started
	closed   bool
	inflight sync.WaitGroup // background writes started
	// wrote, when set (tests), is called after every write.
	wrote func()
}

// snapshotInterval bounds how often a running session rewrites its
// snapshot: `rotate status` from another terminal is at most this far
// behind the state file.
const snapshotInterval = 250 * time.Millisecond

func withSnapshot(s state.Store, statePath string, plan *plans.Plan, log *slog.Logger) *snapshotStore {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &snapshotStore{Store: s, statePath: statePath, plan: plan, log: log, interval: snapshotInterval}
}

func (s *snapshotStore) Commit(ctx context.Context, cp state.Checkpoint) error {
	if err := s.Store.Commit(ctx, cp); err != nil {
		return err
	}
	s.schedule()
	return nil
}

func (s *snapshotStore) SaveBackupIfAbsent(ctx context.Context, b state.Backup) (bool, error) {
	saved, err := s.Store.SaveBackupIfAbsent(ctx, b)
	if saved {
		s.schedule()
	}
	return saved, err
}

// schedule makes sure a write starts after this call: the pending one,
// or a new one right away or once the last is interval old.
func (s *snapshotStore) schedule() {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.pending != nil || s.closed {
		return
	}
	wait := max(s.interval-time.Since(s.last), 0)
	var t *time.Timer
	t = time.AfterFunc(wait, func() {
		s.pmu.Lock()
		if s.pending != t || s.closed {
			s.pmu.Unlock()
			return
		}
		s.pending = nil // a commit from here on schedules another write
		s.last = time.Now()
		s.inflight.Add(1)
		s.pmu.Unlock()
		defer s.inflight.Done()
		s.write(context.Background())
	})
	s.pending = t
}

// write brings the journal and the snapshot up to the store.
func (s *snapshotStore) write(ctx context.Context) {
	s.journal(ctx)
	s.snapshot(ctx)
	if s.wrote != nil {
		s.wrote()
	}
}

// Flush writes the journal and the snapshot now, with whatever the store
// holds: what any write pending would have written, so it is dropped.
func (s *snapshotStore) Flush(ctx context.Context) {
	if !s.takeOver(false) {
		s.write(context.WithoutCancel(ctx))
	}
}

// Stop stops the background writes, waits for one in flight and then
// writes both files a last time: the store under it is about to close.
func (s *snapshotStore) Stop(ctx context.Context) {
	already := s.takeOver(true)
	s.inflight.Wait()
	if !already {
		s.write(context.WithoutCancel(ctx))
	}
}

// takeOver drops the pending write, for the caller's own, and closes
// the background writes if stop; it reports whether they were closed
// already (then nothing is to be written).
func (s *snapshotStore) takeOver(stop bool) (closed bool) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.pending != nil {
		s.pending.Stop()
		s.pending = nil
	}
	closed = s.closed
	s.closed = s.closed || stop
	s.last = time.Now()
	return closed
}

// journal brings the journal file up to the store: rewritten whole the
// first time, then the events since the last call appended.
func (s *snapshotStore) journal(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var evs []state.Event
	var err error
	if s.journalOK {
		evs, err = s.Store.EventsAfter(ctx, s.journalSeq)
	} else {
		evs, err = s.Store.Events(ctx)
	}
	var lines []byte
	if err == nil {
		lines, err = journalLines(evs)
	}
	if err == nil {
		switch {
		case !s.journalOK:
			err = state.ResetJournal(s.statePath, lines)
		case len(lines) > 0:
			err = state.AppendJournal(s.statePath, lines)
		}
	}
	if err != nil {
		// Rewrite it whole next time: an append may have been cut short.
		s.journalOK = false
		if !s.journalWarned {
			s.journalWarned = true
			s.log.Warn("cannot write the event journal; `rotate events` shows this run's events only once it stops",
				"journal", state.JournalPath(s.statePath), "err", err)
		}
		return
	}
	s.journalOK = true
	if len(evs) > 0 {
		s.journalSeq = evs[len(evs)-1].Seq
	}
}

func (s *snapshotStore) snapshot(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rep, err := report(ctx, s.Store, s.plan)
	if errors.Is(err, state.ErrNoRun) {
		return // start records the inventory before the run
	}
	if err == nil && s.mirrorStatus != nil {
		rep.Mirror = s.mirrorStatus()
		for i := range rep.Mirror {
			rep.Mirror[i].Error = redact.Text(rep.Mirror[i].Error)
		}
	}
	var raw []byte
	if err == nil {
		raw, err = ReportJSON(rep)
	}
	if err == nil {
		err = state.WriteSnapshot(s.statePath, raw)
	}
	if err != nil && !s.warned {
		s.warned = true
		s.log.Warn("cannot write the status snapshot; `rotate status` shows this run's progress only once it stops",
			"snapshot", state.SnapshotPath(s.statePath), "err", err)
	}
}

// StatusView is what `rotate status` shows: the report read from the state
// file or, while another rotate holds it, that process's latest snapshot.
type StatusView struct {
	Report *StatusReport
	// JSON is Report as `rotate status -o json` prints it.
	JSON []byte
	// Snapshot is the snapshot file shown ("" when the state file was
	// read), written at SnapshotTime.
	Snapshot     string
	SnapshotTime time.Time
}

// ShowStatus is Status, falling back to the running process's snapshot
// when the state file is locked. Without a usable snapshot the error is
// still state.ErrBusy.
func ShowStatus(ctx context.Context, statePath string) (*StatusView, error) {
	rep, err := Status(ctx, statePath)
	if err == nil {
		raw, err := ReportJSON(rep)
		if err != nil {
			return nil, err
		}
		return &StatusView{Report: rep, JSON: raw}, nil
	}
	if !errors.Is(err, state.ErrBusy) {
		return nil, err
	}
	raw, at, serr := state.ReadSnapshot(statePath)
	if serr == nil {
		rep = &StatusReport{}
		if jerr := json.Unmarshal(raw, rep); jerr != nil {
			serr = fmt.Errorf("snapshot %s does not decode: %v", state.SnapshotPath(statePath), jerr)
		}
	}
	if serr != nil {
		return nil, fmt.Errorf("%w; no snapshot to show instead (%v)", err, serr)
	}
	return &StatusView{Report: rep, JSON: raw, Snapshot: state.SnapshotPath(statePath), SnapshotTime: at}, nil
}
