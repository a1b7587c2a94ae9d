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
}

// Open opens or creates the state file at path. A file readable by group or
// others is refused (it holds CA keys); a file locked by another process
// fails with ErrBusy after the lock timeout; an unknown schema with ErrSchema.
func Open(path string, opts OpenOptions) (*BoltStore, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	st, err := os.Stat(path)
	switch {
	case err == nil:
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("state file %s is not a regular file", path)
		}
		if perm := st.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("%w: %s has mode %04o; it holds CA private keys and must be readable by its owner only (chmod 600 %s)", ErrPermissions, path, perm, path)
		}
	case errors.Is(err, fs.ErrNotExist):
		if opts.ReadOnly {
			return nil, fmt.Errorf("state file %s: %w", path, fs.ErrNotExist)
		}
	default:
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s is locked (waited %s); is another `rotate` running on it?", ErrBusy, path, opts.LockTimeout)
		}
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	s := &BoltStore{db: db, path: path}
	if err := s.init(opts.ReadOnly); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *BoltStore) init(readOnly bool) error {
	check := func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			return fmt.Errorf("%w: %s has no meta bucket (not a rotate state file?)", ErrSchema, s.path)
		}
		v := m.Get(keySchema)
		got, err := strconv.Atoi(string(v))
		if err != nil || got != SchemaVersion {
			return fmt.Errorf("%w: %s has schema %q, this rotate reads %d", ErrSchema, s.path, v, SchemaVersion)
		}
		return nil
	}
	if readOnly {
		return s.db.View(check)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			for _, b := range allBuckets {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bucketMeta).Put(keySchema, []byte(strconv.Itoa(SchemaVersion))); err != nil {
				return err
			}
		}
		return check(tx)
	})
}

// Path is the file's path.
func (s *BoltStore) Path() string { return s.path }

// Close releases the lock.
func (s *BoltStore) Close() error { return s.db.Close() }

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	// json.Unmarshal copies; nothing escapes the transaction.
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode %q: %w", key, err)
	}
	return true, nil
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
	err := s.db.View(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx.Bucket(bucketRun), keyRun, &r)
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
	return s.db.Update(func(tx *bolt.Tx) error {
		if cp.Run != nil {
			if err := putJSON(tx.Bucket(bucketRun), keyRun, cp.Run); err != nil {
				return err
			}
		}
		steps := tx.Bucket(bucketSteps)
		for _, st := range cp.Steps {
			if st.Key == "" {
				return errors.New("checkpoint: step record without key")
			}
			if err := putJSON(steps, []byte(st.Key), st); err != nil {
				return err
			}
		}
		vals := tx.Bucket(bucketValues)
		for k, v := range cp.Values {
			var err error
			if v == nil {
				err = vals.Delete([]byte(k))
			} else {
				err = vals.Put([]byte(k), bytes.Clone(v))
			}
			if err != nil {
				return err
			}
		}
		cas := tx.Bucket(bucketCAs)
		for _, ca := range cp.CAs {
			if err := putJSON(cas, []byte(ca.Name), ca); err != nil {
				return err
			}
		}
		ev := tx.Bucket(bucketEvents)
		for _, e := range cp.Events {
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
	})
}

func seqKey(n uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, n)
	return k
}

func (s *BoltStore) Step(ctx context.Context, key string) (StepRecord, bool, error) {
	var r StepRecord
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketSteps), []byte(key), &r)
		return err
	})
	return r, ok, err
}

func (s *BoltStore) Steps(ctx context.Context) ([]StepRecord, error) {
	var out []StepRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSteps).ForEach(func(k, v []byte) error {
			var r StepRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode step %s: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

func (s *BoltStore) Value(ctx context.Context, key string) ([]byte, bool, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketValues).Get([]byte(key)); v != nil {
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
	err := s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBackups)
		k := backupKey(b.Scope, b.Node, b.Path)
		if bk.Get(k) != nil {
			return nil // the first copy is the one that matters
		}
		saved = true
		return putJSON(bk, k, b)
	})
	return saved, err
}

func (s *BoltStore) Backup(ctx context.Context, scope, node, path string) (Backup, bool, error) {
	var b Backup
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketBackups), backupKey(scope, node, path), &b)
		return err
	})
	return b, ok, err
}

func (s *BoltStore) Backups(ctx context.Context) ([]Backup, error) {
	var out []Backup
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBackups).ForEach(func(k, v []byte) error {
			var b Backup
			if err := json.Unmarshal(v, &b); err != nil {
				return fmt.Errorf("decode backup %q: %w", k, err)
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
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		ok, err = getJSON(tx.Bucket(bucketCAs), []byte(name), &c)
		return err
	})
	return c, ok, err
}

func (s *BoltStore) Events(ctx context.Context) ([]Event, error) {
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode event %x: %w", k, err)
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

// boltTx lets tests in this package reach the raw transaction type.
type boltTx = bolt.Tx
