package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sort"
	"sync"
)

// MemStore is the Store in memory, for unit tests and `rotate plan`. It
// stores JSON copies so callers can never alias its contents, exactly like
// BoltStore.
type MemStore struct {
	mu      sync.Mutex
	run     []byte
	steps   map[string][]byte
	values  map[string][]byte
	backups map[string][]byte
	cas     map[string][]byte
	events  [][]byte
	closed  bool
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{
		steps:   map[string][]byte{},
		values:  map[string][]byte{},
		backups: map[string][]byte{},
		cas:     map[string][]byte{},
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain structs are stored
	}
	return b
}

func (m *MemStore) Run(ctx context.Context) (Run, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var r Run
	if m.run == nil {
		return r, ErrNoRun
	}
	return r, json.Unmarshal(m.run, &r)
}

func (m *MemStore) Commit(ctx context.Context, cp Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, st := range cp.Steps {
		if st.Key == "" {
			return errors.New("checkpoint: step record without key")
		}
	}
	if cp.Run != nil {
		m.run = mustJSON(cp.Run)
	}
	for _, st := range cp.Steps {
		m.steps[st.Key] = mustJSON(st)
	}
	for k, v := range cp.Values {
		if v == nil {
			delete(m.values, k)
		} else {
			m.values[k] = bytes.Clone(v)
		}
	}
	for _, ca := range cp.CAs {
		m.cas[ca.Name] = mustJSON(ca)
	}
	m.appendEvents(cp.Events)
	return nil
}

func (m *MemStore) appendEvents(events []Event) {
	for _, e := range events {
		e.Seq = uint64(len(m.events) + 1)
		m.events = append(m.events, mustJSON(e))
	}
}

func (m *MemStore) Step(ctx context.Context, key string) (StepRecord, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var r StepRecord
	raw, ok := m.steps[key]
	if !ok {
		return r, false, nil
	}
	return r, true, json.Unmarshal(raw, &r)
}

func (m *MemStore) Steps(ctx context.Context) ([]StepRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.steps))
	for k := range m.steps {
		keys = append(keys, k)
	}
	sort.Strings(keys) // bbolt iterates in key order
	out := make([]StepRecord, 0, len(keys))
	for _, k := range keys {
		var r StepRecord
		if err := json.Unmarshal(m.steps[k], &r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (m *MemStore) Value(ctx context.Context, key string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.values[key]
	return bytes.Clone(v), ok, nil
}

func (m *MemStore) SaveBackupIfAbsent(ctx context.Context, b Backup) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := string(backupKey(b.Scope, b.Node, b.Path))
	if _, ok := m.backups[k]; ok {
		return false, nil
	}
	m.backups[k] = mustJSON(b)
	m.appendEvents([]Event{backupEvent(b)})
	return true, nil
}

func (m *MemStore) Backup(ctx context.Context, scope, node, path string) (Backup, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b Backup
	raw, ok := m.backups[string(backupKey(scope, node, path))]
	if !ok {
		return b, false, nil
	}
	return b, true, json.Unmarshal(raw, &b)
}

func (m *MemStore) Backups(ctx context.Context) ([]Backup, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Backup, 0, len(m.backups))
	for _, raw := range m.backups {
		var b Backup
		if err := json.Unmarshal(raw, &b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TakenAt.Before(out[j].TakenAt) })
	return out, nil
}

func (m *MemStore) PutCA(ctx context.Context, ca CAMaterial) error {
	return m.Commit(ctx, Checkpoint{CAs: []CAMaterial{ca}})
}

func (m *MemStore) CA(ctx context.Context, name string) (CAMaterial, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var c CAMaterial
	raw, ok := m.cas[name]
	if !ok {
		return c, false, nil
	}
	return c, true, json.Unmarshal(raw, &c)
}

func (m *MemStore) Events(ctx context.Context) ([]Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Event, 0, len(m.events))
	for _, raw := range m.events {
		var e Event
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func (m *MemStore) EventsAfter(ctx context.Context, seq uint64) ([]Event, error) {
	all, err := m.Events(ctx)
	if err != nil || seq >= uint64(len(all)) {
		return nil, err
	}
	return all[seq:], nil
}

func (m *MemStore) Counts(ctx context.Context) (Counts, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Counts{Backups: len(m.backups), Events: len(m.events)}, nil
}

func (m *MemStore) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
