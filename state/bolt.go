package state

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	bucketMeta    = []byte("meta")
	bucketRun     = []byte("run")
	bucketSteps   = []byte("steps")
	bucketValues  = []byte("values")
	bucketBackups = []byte("backups")
	bucketCAs     = []byte("cas")
	bucketEvents  = []byte("events")
	allBuckets    = [][]byte{bucketMeta, bucketRun, bucketSteps, bucketValues, bucketBackups, bucketCAs, bucketEvents}

	keySchema = []byte("schema")
	keyRun    = []byte("run")
)

// BoltStore is the Store on disk: one bbolt file, 0600, single writer.
type BoltStore struct {
	db   *bolt.DB
	path string
}

var _ Store = (*BoltStore)(nil)

// OpenOptions tune Open.
type OpenOptions struct {
	// LockTimeout bounds the wait for another process's lock (default 1s).
	LockTimeout time.Duration
	// ReadOnly opens for reading (status); it still takes a shared lock.
	ReadOnly bool
	// Create makes a new state file when none exists (only `rotate start`
	// does); otherwise a missing file is an error wrapping fs.ErrNotExist.
	Create bool
}

// Open opens the state file at path, creating it when opts.Create is set
// and it does not exist. It refuses, with an error naming the file and what
// to do, and without changing the file:
//   - a file readable by group or others (ErrPermissions: it holds CA keys),
//     or owned by another user than the caller or root (ErrOwner);
//   - anything that is not an intact rotate state file (ErrCorrupt): not a
//     regular file, empty, truncated, overwritten, with damaged bbolt pages
//     or missing buckets or undecodable records; checked before bbolt maps
//     the file, and any panic of bbolt on crafted pages is turned into
//     ErrCorrupt;
//   - a file written by an incompatible rotate (ErrSchema).
//
// A file locked by another process fails with ErrBusy after the lock
// timeout.
func Open(path string, opts OpenOptions) (*BoltStore, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) && opts.Create && !opts.ReadOnly {
		if err := create(path); err != nil {
			return nil, err
		}
		st, err = os.Stat(path)
	}
	if errors.Is(err, fs.ErrNotExist) && !opts.Create {
		return nil, fmt.Errorf("state file %s: %w; only `rotate start` creates one (is --state right?)", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	switch {
	case st.IsDir():
		return nil, fmt.Errorf("%w: %s is a directory; --state names the state file itself (for example %s)", ErrCorrupt, path, filepath.Join(path, "rotate.db"))
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("%w: %s is not a regular file (%s); --state names the state file itself", ErrCorrupt, path, st.Mode().Type())
	}
	if err := checkOwner(path, st); err != nil {
		return nil, err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; it holds CA private keys and must be readable by its owner only (chmod 600 %s)", ErrPermissions, path, perm, path)
	}
	if err := checkFile(path, opts.LockTimeout); err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("%w (it is owned by %s: run rotate as that user)", err, userName(ownerUID(st)))
		}
		return nil, err
	}
	var db *bolt.DB
	err = guard(path, "open", func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly})
		return err
	})
	if err != nil {
		switch {
		case errors.Is(err, bolterrors.ErrTimeout):
			return nil, busy(path, opts.LockTimeout)
		case errors.Is(err, ErrCorrupt):
			return nil, err
		case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrChecksum):
			return nil, Corrupt(path, "it is not a valid bbolt file ("+err.Error()+")")
		}
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	s := &BoltStore{db: db, path: path}
	if err := s.check(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// create makes a new, complete state file at path: the buckets and schema
// are written to a temporary file next to it, which is then linked into
// place. A file at path therefore always has its buckets, and one that
// appears meanwhile (another `rotate start`) is left to win.
func create(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return fmt.Errorf("create state file %s: %w", path, err)
	}
	name := tmp.Name()
	tmp.Close()
	defer os.Remove(name)
	db, err := bolt.Open(name, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("create state file %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, []byte(strconv.Itoa(SchemaVersion)))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create state file %s: %w", path, err)
	}
	if err := os.Link(name, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create state file %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync() // make the new name durable; the content already is
		d.Close()
	}
	return nil
}

// check reads the whole layout once: schema, every bucket, the run and every
// step record. It only reads, so a damaged or crafted file stays as it was.
func (s *BoltStore) check() error {
	return s.view(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			return Corrupt(s.path, "it has no meta bucket, so it is not a rotate state file")
		}
		v := m.Get(keySchema)
		got, err := strconv.Atoi(string(v))
		if err != nil || got != SchemaVersion {
			return fmt.Errorf("%w: %s has schema %q, this rotate reads %d", ErrSchema, s.path, v, SchemaVersion)
		}
		for _, name := range allBuckets {
			if _, err := s.bucket(tx, name); err != nil {
				return err
			}
		}
		var r Run
		if _, err := s.getJSON(tx, bucketRun, keyRun, &r); err != nil {
			return err
		}
		_, err = s.steps(tx)
		return err
	})
}

// guard runs fn and turns a panic into ErrCorrupt naming the file. bbolt
// panics on pages it cannot make sense of; SetPanicOnFault turns a fault on
// the mapping (a file that shrank under it) into a panic too.
func guard(path, what string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = Corrupt(path, fmt.Sprintf("bbolt cannot make sense of it (%s: %v)", what, r))
		}
	}()
	return fn()
}

// view is db.View under guard.
func (s *BoltStore) view(fn func(tx *bolt.Tx) error) error {
	return guard(s.path, "read", func() error { return s.db.View(fn) })
}

// update is db.Update under guard.
func (s *BoltStore) update(fn func(tx *bolt.Tx) error) error {
	return guard(s.path, "write", func() error { return s.db.Update(fn) })
}

// bucket is tx.Bucket, failing with ErrCorrupt when it is missing.
func (s *BoltStore) bucket(tx *bolt.Tx, name []byte) (*bolt.Bucket, error) {
	if b := tx.Bucket(name); b != nil {
		return b, nil
	}
	return nil, Corrupt(s.path, fmt.Sprintf("it has no %q bucket", name))
}

// Path is the file's path.
func (s *BoltStore) Path() string { return s.path }

// Close releases the lock.
func (s *BoltStore) Close() error { return s.db.Close() }

// getJSON decodes bucket[key] into v; a record that does not decode is
// ErrCorrupt.
func (s *BoltStore) getJSON(tx *bolt.Tx, bucket, key []byte, v any) (bool, error) {
	b, err := s.bucket(tx, bucket)
	if err != nil {
		return false, err
	}
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	// json.Unmarshal copies; nothing escapes the transaction.
	if err := json.Unmarshal(raw, v); err != nil {
		return true, s.undecodable(bucket, key, err)
	}
	return true, nil
}

func (s *BoltStore) undecodable(bucket, key []byte, err error) error {
	return Corrupt(s.path, fmt.Sprintf("its %s record %q does not decode (%v)", bucket, key, err))
}

// each decodes every record of bucket with fn.
func (s *BoltStore) each(tx *bolt.Tx, bucket []byte, fn func(k, v []byte) error) error {
	b, err := s.bucket(tx, bucket)
	if err != nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			return Corrupt(s.path, fmt.Sprintf("it holds a nested bucket %q inside %q", k, bucket))
		}
		if err := fn(k, v); err != nil {
			return s.undecodable(bucket, k, err)
		}
		return nil
	})
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

func (s *BoltStore) Run(ctx context.Context) (Run, error) {
	var r Run
	err := s.view(func(tx *bolt.Tx) error {
		ok, err := s.getJSON(tx, bucketRun, keyRun, &r)
		if err == nil && !ok {
			return ErrNoRun
		}
		return err
	})
	return r, err
}

func (s *BoltStore) Commit(ctx context.Context, cp Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		bs := map[string]*bolt.Bucket{}
		for _, name := range allBuckets {
			b, err := s.bucket(tx, name)
			if err != nil {
				return err
			}
			bs[string(name)] = b
		}
		if cp.Run != nil {
			if err := putJSON(bs[string(bucketRun)], keyRun, cp.Run); err != nil {
				return err
			}
		}
		for _, st := range cp.Steps {
			if st.Key == "" {
				return errors.New("checkpoint: step record without key")
			}
			if err := putJSON(bs[string(bucketSteps)], []byte(st.Key), st); err != nil {
				return err
			}
		}
		for k, v := range cp.Values {
			var err error
			if v == nil {
				err = bs[string(bucketValues)].Delete([]byte(k))
			} else {
				err = bs[string(bucketValues)].Put([]byte(k), bytes.Clone(v))
			}
			if err != nil {
				return err
			}
		}
		for _, ca := range cp.CAs {
			if err := putJSON(bs[string(bucketCAs)], []byte(ca.Name), ca); err != nil {
				return err
			}
		}
		return appendEvents(bs[string(bucketEvents)], cp.Events)
	})
}

func appendEvents(ev *bolt.Bucket, events []Event) error {
	for _, e := range events {
		seq, err := ev.NextSequence()
		if err != nil {
			return err
		}
		e.Seq = seq
		if err := putJSON(ev, seqKey(seq), e); err != nil {
			return err
		}
	}
	return nil
}

func seqKey(n uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, n)
	return k
}

func (s *BoltStore) Step(ctx context.Context, key string) (StepRecord, bool, error) {
	var r StepRecord
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		ok, err = s.getJSON(tx, bucketSteps, []byte(key), &r)
		return err
	})
	return r, ok, err
}

func (s *BoltStore) Steps(ctx context.Context) ([]StepRecord, error) {
	var out []StepRecord
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = s.steps(tx)
		return err
	})
	return out, err
}

func (s *BoltStore) steps(tx *bolt.Tx) ([]StepRecord, error) {
	var out []StepRecord
	err := s.each(tx, bucketSteps, func(k, v []byte) error {
		var r StepRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

func (s *BoltStore) Value(ctx context.Context, key string) ([]byte, bool, error) {
	var out []byte
	err := s.view(func(tx *bolt.Tx) error {
		b, err := s.bucket(tx, bucketValues)
		if err != nil {
			return err
		}
		if v := b.Get([]byte(key)); v != nil {
			out = bytes.Clone(v) // bbolt memory is only valid inside the tx
		}
		return nil
	})
	return out, out != nil, err
}

func backupKey(scope, node, path string) []byte {
	return []byte(scope + "\x00" + node + "\x00" + path)
}

func (s *BoltStore) SaveBackupIfAbsent(ctx context.Context, b Backup) (bool, error) {
	saved := false
	err := s.update(func(tx *bolt.Tx) error {
		bk, err := s.bucket(tx, bucketBackups)
		if err != nil {
			return err
		}
		k := backupKey(b.Scope, b.Node, b.Path)
		if bk.Get(k) != nil {
			return nil // the first copy is the one that matters
		}
		saved = true
		if err := putJSON(bk, k, b); err != nil {
			return err
		}
		ev, err := s.bucket(tx, bucketEvents)
		if err != nil {
			return err
		}
		return appendEvents(ev, []Event{backupEvent(b)})
	})
	return saved, err
}

func (s *BoltStore) Backup(ctx context.Context, scope, node, path string) (Backup, bool, error) {
	var b Backup
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		ok, err = s.getJSON(tx, bucketBackups, backupKey(scope, node, path), &b)
		return err
	})
	return b, ok, err
}

func (s *BoltStore) Backups(ctx context.Context) ([]Backup, error) {
	var out []Backup
	err := s.view(func(tx *bolt.Tx) error {
		return s.each(tx, bucketBackups, func(k, v []byte) error {
			var b Backup
			if err := json.Unmarshal(v, &b); err != nil {
				return err
			}
			out = append(out, b)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].TakenAt.Before(out[j].TakenAt) })
	return out, err
}

func (s *BoltStore) PutCA(ctx context.Context, ca CAMaterial) error {
	return s.Commit(ctx, Checkpoint{CAs: []CAMaterial{ca}})
}

func (s *BoltStore) CA(ctx context.Context, name string) (CAMaterial, bool, error) {
	var c CAMaterial
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		ok, err = s.getJSON(tx, bucketCAs, []byte(name), &c)
		return err
	})
	return c, ok, err
}

func (s *BoltStore) Events(ctx context.Context) ([]Event, error) {
	var out []Event
	err := s.view(func(tx *bolt.Tx) error {
		return s.each(tx, bucketEvents, func(k, v []byte) error {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

func (s *BoltStore) EventsAfter(ctx context.Context, seq uint64) ([]Event, error) {
	var out []Event
	err := s.view(func(tx *bolt.Tx) error {
		b, err := s.bucket(tx, bucketEvents)
		if err != nil {
			return err
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(seq + 1)); k != nil; k, v = c.Next() {
			var e Event
			if v == nil {
				return Corrupt(s.path, fmt.Sprintf("it holds a nested bucket %q inside %q", k, bucketEvents))
			}
			if err := json.Unmarshal(v, &e); err != nil {
				return s.undecodable(bucketEvents, k, err)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// Snapshot is a consistent copy of the whole state file, taken in one read
// transaction (bbolt's Tx.WriteTo) while checkpoints go on: what a node's
// mirror of the state holds. It holds CA keys: handle it like the file.
func (s *BoltStore) Snapshot(ctx context.Context) ([]byte, error) {
	var buf bytes.Buffer
	err := s.view(func(tx *bolt.Tx) error {
		buf.Grow(int(tx.Size()))
		_, err := tx.WriteTo(&buf)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot state file %s: %w", s.path, err)
	}
	return buf.Bytes(), nil
}

func (s *BoltStore) Counts(ctx context.Context) (Counts, error) {
	var c Counts
	err := s.view(func(tx *bolt.Tx) error {
		if err := s.each(tx, bucketBackups, func(k, v []byte) error { c.Backups++; return nil }); err != nil {
			return err
		}
		return s.each(tx, bucketEvents, func(k, v []byte) error { c.Events++; return nil })
	})
	return c, err
}

// boltTx lets tests in this package reach the raw transaction type.
type boltTx = bolt.Tx
