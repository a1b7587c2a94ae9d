package state

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// The snapshot is a read-only view of a state file that the process holding
// the file's lock keeps next to it, so `rotate status` can show a run's
// progress from another terminal without waiting for the lock (and without
// ever making the run wait). The state package only moves its bytes; what
// it holds is the orchestrator's status report, never key material.

// maxSnapshot bounds what ReadSnapshot reads.
const maxSnapshot = 16 << 20

// ErrNoSnapshot: there is no snapshot next to the state file.
var ErrNoSnapshot = errors.New("no status snapshot")

// SnapshotPath is where the snapshot of the state file at statePath lives.
func SnapshotPath(statePath string) string { return statePath + ".status.json" }

// WriteSnapshot replaces statePath's snapshot with data, atomically: a
// temporary file next to it (0600, created afresh), fsynced, renamed over
// the old snapshot, so a reader sees the old or the new one, never a part.
// Data that contains a PEM private key is refused: a snapshot is read by
// whoever watches the run.
func WriteSnapshot(statePath string, data []byte) error {
	return replaceSide(SnapshotPath(statePath), "snapshot", data)
}

// replaceSide atomically replaces the side file dst (a snapshot or the
// journal) with data, refusing data with a PEM private key in it.
func replaceSide(dst, what string, data []byte) error {
	if bytes.Contains(data, []byte("PRIVATE KEY")) {
		return errors.New(what + " would contain a private key; not written")
	}
	tmp := dst + ".tmp" // one writer: the process holding the state file's lock
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s %s: %w", what, dst, err)
	}
	return nil
}

// ReadSnapshot reads statePath's snapshot and when it was written. It
// refuses, like Open does the state file, a snapshot that is not a regular
// file, that group or others may write, or that is owned by another user
// than the caller or root; a missing one is ErrNoSnapshot.
func ReadSnapshot(statePath string) ([]byte, time.Time, error) {
	return readSide(SnapshotPath(statePath), "snapshot", maxSnapshot)
}

// readSide reads the side file p (a snapshot or the journal), with
// ReadSnapshot's checks.
func readSide(p, what string, max int) ([]byte, time.Time, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, time.Time{}, fmt.Errorf("%w: %s does not exist", ErrNoSnapshot, p)
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%s %s: %w", what, p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%s %s: %w", what, p, err)
	}
	switch {
	case !st.Mode().IsRegular():
		return nil, time.Time{}, fmt.Errorf("%s %s is not a regular file", what, p)
	case st.Mode().Perm()&0o022 != 0:
		return nil, time.Time{}, fmt.Errorf("%s %s has mode %04o: others may write it, so it is not shown", what, p, st.Mode().Perm())
	}
	if owner, me := ownerUID(st), os.Geteuid(); owner >= 0 && owner != me && owner != 0 {
		return nil, time.Time{}, fmt.Errorf("%s %s is owned by %s, not by %s or root, so it is not shown", what, p, userName(owner), userName(me))
	}
	raw, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%s %s: %w", what, p, err)
	}
	if len(raw) > max {
		return nil, time.Time{}, fmt.Errorf("%s %s is larger than %d bytes", what, p, max)
	}
	return raw, st.ModTime(), nil
}

// The journal is the event log of a running process, next to the state file
// like the snapshot and for the same reason: `rotate events` reads it while
// the run holds the state file's lock. The process rewrites it whole from
// the store when it starts and then appends each checkpoint's events, one
// JSON object per line; a reader ignores a last line still being written.

// maxJournal bounds what ReadJournal reads.
const maxJournal = 64 << 20

// JournalPath is where the journal of the state file at statePath lives.
func JournalPath(statePath string) string { return statePath + ".events.jsonl" }

// ResetJournal replaces statePath's journal with data, atomically.
func ResetJournal(statePath string, data []byte) error {
	return replaceSide(JournalPath(statePath), "journal", data)
}

// AppendJournal appends data (whole lines) to statePath's journal in one
// write. The journal must exist (ResetJournal makes it): a missing one, or
// one that is a symlink, is an error.
func AppendJournal(statePath string, data []byte) error {
	p := JournalPath(statePath)
	if bytes.Contains(data, []byte("PRIVATE KEY")) {
		return errors.New("journal would contain a private key; not written")
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("append to journal %s: %w", p, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("append to journal %s: %w", p, err)
	}
	return nil
}

// ReadJournal reads statePath's journal and when it was last written, with
// ReadSnapshot's checks; a missing one is ErrNoSnapshot.
func ReadJournal(statePath string) ([]byte, time.Time, error) {
	return readSide(JournalPath(statePath), "journal", maxJournal)
}
