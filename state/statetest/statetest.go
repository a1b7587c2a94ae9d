// Package statetest makes damaged, foreign and crafted state files, so that
// every layer that opens one (state, orchestrator, the rotate binary) is
// tested against the same table.
package statetest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"hash/fnv"
	"math/rand"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kubeca/rotate/state"
)

// Offsets in a bbolt file (go.etcd.io/bbolt internal/common page.go,
// meta.go): a meta record follows a 16-byte page header.
const (
	pageHeader = 16
	offPSize   = pageHeader + 8
	offRoot    = pageHeader + 16
	offFree    = pageHeader + 32
	offPgid    = pageHeader + 40
	offTxid    = pageHeader + 48
	metaRecord = 56 // magic .. txid; the checksum follows
)

// Case is one unusable state file.
type Case struct {
	Name string
	// Make writes the file (or directory) at path.
	Make func(t *testing.T, path string)
	// Want is the sentinel Open fails with; Says a fragment of its message.
	Want error
	Says string
}

// Valid writes a state file with a run, steps, a value, a backup and an
// event, spanning several pages, and returns its bytes.
func Valid(t *testing.T) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rotate.db")
	s, err := state.Open(p, state.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	run := state.Run{ID: "r1", Cluster: "lab", State: "distribute", Phase: "distribute", CreatedAt: time.Unix(1, 0)}
	var steps []state.StepRecord
	for i := range 40 {
		n := "n" + strconv.Itoa(i)
		steps = append(steps, state.StepRecord{Key: "distribute/bundle@" + n, Phase: "distribute", Step: "bundle", Target: n, Status: state.StepDone})
	}
	if err := s.Commit(ctx, state.Checkpoint{Run: &run, Steps: steps, Values: map[string][]byte{"k": []byte("v")}, Events: []state.Event{{Message: "x"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveBackupIfAbsent(ctx, state.Backup{Node: "n1", Path: "/etc/x", Content: make([]byte, 9000)}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	return FileBytes(t, p)
}

// FileBytes reads p or fails the test.
func FileBytes(t *testing.T, p string) []byte {
	t.Helper()
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// Digest is a hash of p's bytes and mode (of a directory: its mode), to
// check that nothing changed it.
func Digest(t *testing.T, p string) [32]byte {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.IsDir() {
		return sha256.Sum256([]byte("dir " + st.Mode().String()))
	}
	return sha256.Sum256(append(FileBytes(t, p), st.Mode().String()...))
}

// Bolt writes a bbolt file whose content fill makes, bypassing state.Open.
func Bolt(t *testing.T, fill func(tx *bolt.Tx) error) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "crafted.db")
	db, err := bolt.Open(p, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fill); err != nil {
		t.Fatal(err)
	}
	db.Close()
	return FileBytes(t, p)
}

// Buckets of a state file (state/bolt.go), for crafting.
var (
	bucketMeta  = []byte("meta")
	bucketRun   = []byte("run")
	bucketSteps = []byte("steps")
	allBuckets  = [][]byte{bucketMeta, bucketRun, bucketSteps, []byte("values"), []byte("backups"), []byte("cas"), []byte("events")}
)

// Layout fills tx as state.Open creates a file, then lets edit change it.
func Layout(edit func(tx *bolt.Tx) error) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMeta).Put([]byte("schema"), []byte(strconv.Itoa(state.SchemaVersion))); err != nil {
			return err
		}
		return edit(tx)
	}
}

func breakMetaChecksum(raw []byte, id int) []byte {
	out := append([]byte(nil), raw...)
	ps := int(binary.NativeEndian.Uint32(raw[offPSize:]))
	out[id*ps+offTxid] ^= 0xff // the checksum covers the txid
	return out
}

// Recoverable are state files bbolt reads and rotate must resume: one meta
// page torn (its checksum broken), or the older meta page pointing at a
// freelist page a later transaction reused — what a SIGKILL of rotate
// leaves behind.
func Recoverable(t *testing.T) map[string][]byte {
	t.Helper()
	valid := Valid(t)
	ps := int(binary.NativeEndian.Uint32(valid[offPSize:]))
	older := 0
	if binary.NativeEndian.Uint64(valid[offTxid:]) > binary.NativeEndian.Uint64(valid[ps+offTxid:]) {
		older = 1
	}
	reused := append([]byte(nil), valid...)
	root := binary.NativeEndian.Uint64(valid[(1-older)*ps+offRoot:])
	binary.NativeEndian.PutUint64(reused[older*ps+offFree:], root) // a leaf or branch page now
	fixMetaChecksum(reused, older, ps)
	return map[string][]byte{
		"meta page 0 torn":                  breakMetaChecksum(valid, 0),
		"meta page 1 torn":                  breakMetaChecksum(valid, 1),
		"older meta's freelist page reused": reused,
	}
}

// fixMetaChecksum recomputes meta page id's checksum (FNV-64a of the meta
// record before it).
func fixMetaChecksum(raw []byte, id, ps int) {
	m := raw[id*ps+pageHeader:]
	h := fnv.New64a()
	h.Write(m[:metaRecord])
	binary.NativeEndian.PutUint64(m[metaRecord:], h.Sum64())
}

// Write makes a Case.Make that writes b with mode.
func Write(b []byte, mode os.FileMode) func(t *testing.T, p string) {
	return func(t *testing.T, p string) {
		t.Helper()
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// Corrupt is the table: empty, truncated at several offsets, zero-filled,
// random, meta checksums broken, data pages overwritten, JSON, a directory,
// mode 0644, owned by nobody (as root only), no or missing buckets, and
// undecodable records.
func Corrupt(t *testing.T) []Case {
	t.Helper()
	valid := Valid(t)
	ps := int(binary.NativeEndian.Uint32(valid[offPSize:]))
	pgid := int(binary.NativeEndian.Uint64(valid[offPgid:]))
	random := make([]byte, len(valid))
	rand.New(rand.NewSource(1)).Read(random)
	// Every data page but either meta's root and freelist overwritten: the
	// meta pages are intact, so only reading the buckets finds it.
	garbled := append([]byte(nil), valid...)
	keep := map[int]bool{}
	for _, m := range []int{0, ps} {
		keep[int(binary.NativeEndian.Uint64(valid[m+offRoot:]))] = true
		keep[int(binary.NativeEndian.Uint64(valid[m+offFree:]))] = true
	}
	for id := 2; id < pgid; id++ {
		if !keep[id] {
			copy(garbled[id*ps:(id+1)*ps], random)
		}
	}
	crafted := func(edit func(tx *bolt.Tx) error) func(t *testing.T, p string) {
		return Write(Bolt(t, Layout(edit)), 0o600)
	}
	json := []byte(`{"run":{"id":"r1","state":"held"}}`)
	cases := []Case{
		{"empty file", Write(nil, 0o600), state.ErrCorrupt, "the file is empty"},
		{"zero-filled", Write(make([]byte, len(valid)), 0o600), state.ErrCorrupt, "not a bbolt meta page"},
		{"random bytes", Write(random, 0o600), state.ErrCorrupt, "not a bbolt meta page"},
		{"JSON file", Write(append(json, strings.Repeat(" ", 3000)+"\n"...), 0o600), state.ErrCorrupt, "meta page 0 is not a bbolt meta page"},
		{"short JSON file", Write(json, 0o600), state.ErrCorrupt, "the file is 34 bytes, too short"},
		{"both meta checksums broken", Write(breakMetaChecksum(breakMetaChecksum(valid, 0), 1), 0o600), state.ErrCorrupt, "fails its checksum"},
		{"data pages overwritten", Write(garbled, 0o600), state.ErrCorrupt, "bbolt cannot make sense of it"},
		{"directory", func(t *testing.T, p string) { os.Mkdir(p, 0o700) }, state.ErrCorrupt, "is a directory"},
		{"mode 0644", Write(valid, 0o644), state.ErrPermissions, "chmod 600"},
		{"no meta bucket (a foreign bbolt file)", Write(Bolt(t, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }), 0o600), state.ErrCorrupt, "has no meta bucket"},
		{"missing steps bucket", crafted(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketSteps) }), state.ErrCorrupt, `has no "steps" bucket`},
		{"steps is a value, not a bucket", crafted(func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(bucketSteps); err != nil {
				return err
			}
			// A plain key where the bucket was: tx.Bucket returns nil for it.
			return tx.Bucket(bucketMeta).Put(bucketSteps, []byte("x"))
		}), state.ErrCorrupt, `has no "steps" bucket`},
		{"garbage run record", crafted(func(tx *bolt.Tx) error { return tx.Bucket(bucketRun).Put([]byte("run"), []byte("{not json")) }), state.ErrCorrupt, `run record "run" does not decode`},
		{"run record of the wrong type", crafted(func(tx *bolt.Tx) error { return tx.Bucket(bucketRun).Put([]byte("run"), []byte(`{"state": 7}`)) }), state.ErrCorrupt, "does not decode"},
		{"garbage step record", crafted(func(tx *bolt.Tx) error { return tx.Bucket(bucketSteps).Put([]byte("a/b@c"), []byte("\x00\x01")) }), state.ErrCorrupt, `steps record "a/b@c" does not decode`},
		{"nested bucket among steps", crafted(func(tx *bolt.Tx) error { _, err := tx.Bucket(bucketSteps).CreateBucket([]byte("x")); return err }), state.ErrCorrupt, `nested bucket "x"`},
		{"unknown schema", crafted(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put([]byte("schema"), []byte("99")) }), state.ErrSchema, `"99"`},
	}
	for _, n := range []int{100, ps, ps + 100, 2 * ps, 3 * ps, pgid*ps - 1} {
		cases = append(cases, Case{"truncated at " + strconv.Itoa(n), Write(valid[:n], 0o600), state.ErrCorrupt, "truncated?"})
	}
	if nobody, err := user.Lookup("nobody"); err == nil && os.Geteuid() == 0 {
		uid, _ := strconv.Atoi(nobody.Uid)
		cases = append(cases, Case{"owned by nobody", func(t *testing.T, p string) {
			Write(valid, 0o600)(t, p)
			if err := os.Chown(p, uid, -1); err != nil {
				t.Fatal(err)
			}
		}, state.ErrOwner, "owned by nobody (uid " + nobody.Uid + "), but rotate runs as root (uid 0)"})
	}
	return cases
}
