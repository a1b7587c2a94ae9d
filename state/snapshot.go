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
	if bytes.Contains(data, []byte("PRIVATE KEY")) {
		return errors.New("snapshot would contain a private key; not written")
	}
	dst := SnapshotPath(statePath)
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
		return fmt.Errorf("write snapshot %s: %w", dst, err)
	}
	return nil
}

// ReadSnapshot reads statePath's snapshot and when it was written. It
// refuses, like Open does the state file, a snapshot that is not a regular
// file, that group or others may write, or that is owned by another user
// than the caller or root; a missing one is ErrNoSnapshot.
func ReadSnapshot(statePath string) ([]byte, time.Time, error) {
	p := SnapshotPath(statePath)
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, time.Time{}, fmt.Errorf("%w: %s does not exist", ErrNoSnapshot, p)
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("snapshot %s: %w", p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("snapshot %s: %w", p, err)
	}
	switch {
	case !st.Mode().IsRegular():
		return nil, time.Time{}, fmt.Errorf("snapshot %s is not a regular file", p)
	case st.Mode().Perm()&0o022 != 0:
		return nil, time.Time{}, fmt.Errorf("snapshot %s has mode %04o: others may write it, so it is not shown", p, st.Mode().Perm())
	}
	if owner, me := ownerUID(st), os.Geteuid(); owner >= 0 && owner != me && owner != 0 {
		return nil, time.Time{}, fmt.Errorf("snapshot %s is owned by %s, not by %s or root, so it is not shown", p, userName(owner), userName(me))
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxSnapshot+1))
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("snapshot %s: %w", p, err)
	}
	if len(raw) > maxSnapshot {
		return nil, time.Time{}, fmt.Errorf("snapshot %s is larger than %d bytes", p, maxSnapshot)
	}
	return raw, st.ModTime(), nil
}
