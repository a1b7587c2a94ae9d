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

// snapshotStore is a running session's Store: Commit, then rewrite the
// snapshot and append the new events to the journal (see journal.go); a
// saved backup's event goes to the journal too. A snapshot or journal that
// cannot be written is logged once and never fails the checkpoint.
type snapshotStore struct {
	state.Store
	statePath string
	plan      *plans.Plan
	log       *slog.Logger
	// mirrorStatus, when set, adds the state copies' status to the report.
	mirrorStatus func() []MirrorNodeStatus

	mu            sync.Mutex
	warned        bool
	journalWarned bool
	journalSeq    uint64 // last event in the journal; 0: not written yet
	journalOK     bool   // the journal was rewritten by this process
}

func withSnapshot(s state.Store, statePath string, plan *plans.Plan, log *slog.Logger) *snapshotStore {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &snapshotStore{Store: s, statePath: statePath, plan: plan, log: log}
}

func (s *snapshotStore) Commit(ctx context.Context, cp state.Checkpoint) error {
	if err := s.Store.Commit(ctx, cp); err != nil {
		return err
	}
	s.snapshot(context.WithoutCancel(ctx))
	s.journal(context.WithoutCancel(ctx))
	return nil
}

func (s *snapshotStore) SaveBackupIfAbsent(ctx context.Context, b state.Backup) (bool, error) {
	saved, err := s.Store.SaveBackupIfAbsent(ctx, b)
	if saved {
		s.journal(context.WithoutCancel(ctx))
	}
	return saved, err
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
