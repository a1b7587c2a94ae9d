package state

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io/fs"
	"math/rand"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// validState writes a state file with a run, steps, a value, a backup and
// events, so it spans several pages, and returns its bytes.
func validState(t *testing.T) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rotate.db")
	s, err := Open(p, OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	run := Run{ID: "r1", Cluster: "lab", State: "distribute", Phase: "distribute", CreatedAt: time.Unix(1, 0)}
	var steps []StepRecord
	for i := range 40 {
		steps = append(steps, StepRecord{Key: "distribute/bundle@n" + strconv.Itoa(i), Phase: "distribute", Step: "bundle", Target: "n" + strconv.Itoa(i), Status: StepDone})
	}
	if err := s.Commit(ctx, Checkpoint{Run: &run, Steps: steps, Values: map[string][]byte{"k": []byte("v")}, Events: []Event{{Message: "x"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveBackupIfAbsent(ctx, Backup{Node: "n1", Path: "/etc/x", Content: make([]byte, 9000)}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	return fileBytes(t, p)
}

func fileBytes(t *testing.T, p string) []byte {
	t.Helper()
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// boltFile writes a bbolt file whose content fill makes, bypassing Open.
func boltFile(t *testing.T, fill func(tx *bolt.Tx) error) []byte {
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
	return fileBytes(t, p)
}

// rotateLayout fills tx like Open does, then lets edit change it.
func rotateLayout(edit func(tx *bolt.Tx) error) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMeta).Put(keySchema, []byte(strconv.Itoa(SchemaVersion))); err != nil {
			return err
		}
		return edit(tx)
	}
}

// breakMetaChecksum flips a byte of meta page id's txid, so its checksum
// no longer matches.
func breakMetaChecksum(raw []byte, id int) []byte {
	out := append([]byte(nil), raw...)
	ps := int(binary.NativeEndian.Uint32(raw[pageHeaderSize+8:]))
	out[id*ps+pageHeaderSize+48] ^= 0xff
	return out
}

// CorruptStateFiles is the table of damaged, foreign and crafted state
// files; cmd/rotate runs the real binary over the same table.
type CorruptStateFile struct {
	Name string
	// Make writes the file (or directory) at path.
	Make func(t *testing.T, path string)
	// Want is the sentinel error and a fragment of the message.
	Want     error
	Contains string
}

// CorruptStateFiles returns the table. Owner cases need root.
func CorruptStateFiles(t *testing.T) []CorruptStateFile {
	valid := validState(t)
	ps := int(binary.NativeEndian.Uint32(valid[pageHeaderSize+8:]))
	pgid := int(binary.NativeEndian.Uint64(valid[pageHeaderSize+40:]))
	write := func(b []byte, mode os.FileMode) func(t *testing.T, p string) {
		return func(t *testing.T, p string) {
			t.Helper()
			if err := os.WriteFile(p, b, mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, mode)
		}
	}
	random := make([]byte, len(valid))
	rand.New(rand.NewSource(1)).Read(random)
	cases := []CorruptStateFile{
		{"empty file", write(nil, 0o600), ErrCorrupt, "the file is empty"},
		{"zero-filled", write(make([]byte, len(valid)), 0o600), ErrCorrupt, "not a bbolt meta page"},
		{"random bytes", write(random, 0o600), ErrCorrupt, "not a bbolt meta page"},
		{"JSON file", write([]byte(`{"run":{"id":"r1","state":"held"}}`+strings.Repeat(" ", 3000)+"\n"), 0o600), ErrCorrupt, "meta page 0 is not a bbolt meta page"},
		{"short JSON file", write([]byte(`{"run":{"id":"r1","state":"held"}}`), 0o600), ErrCorrupt, "the file is 34 bytes, too short"},
		{"meta page 0 checksum broken", write(breakMetaChecksum(valid, 0), 0o600), ErrCorrupt, "meta page 0 fails its checksum"},
		{"meta page 1 checksum broken", write(breakMetaChecksum(valid, 1), 0o600), ErrCorrupt, "meta page 1 fails its checksum"},
		{"both meta checksums broken", write(breakMetaChecksum(breakMetaChecksum(valid, 0), 1), 0o600), ErrCorrupt, "fails its checksum"},
		{"directory", func(t *testing.T, p string) { os.Mkdir(p, 0o700) }, ErrCorrupt, "is a directory"},
		{"mode 0644", write(valid, 0o644), ErrPermissions, "chmod 600"},
		{"no meta bucket (a foreign bbolt file)", write(boltFile(t, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }), 0o600), ErrCorrupt, "has no meta bucket"},
		{"missing steps bucket", write(boltFile(t, rotateLayout(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketSteps) })), 0o600), ErrCorrupt, `has no "steps" bucket`},
		{"steps is a value, not a bucket", write(boltFile(t, rotateLayout(func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket(bucketSteps); err != nil {
				return err
			}
			// A key in the root bucket that is not a bucket: tx.Bucket returns nil for it.
			return tx.Bucket(bucketMeta).Put(bucketSteps, []byte("x"))
		})), 0o600), ErrCorrupt, `has no "steps" bucket`},
		{"garbage run record", write(boltFile(t, rotateLayout(func(tx *bolt.Tx) error { return tx.Bucket(bucketRun).Put(keyRun, []byte("{not json")) })), 0o600), ErrCorrupt, `run record "run" does not decode`},
		{"run record of the wrong type", write(boltFile(t, rotateLayout(func(tx *bolt.Tx) error { return tx.Bucket(bucketRun).Put(keyRun, []byte(`{"state": 7}`)) })), 0o600), ErrCorrupt, "does not decode"},
		{"garbage step record", write(boltFile(t, rotateLayout(func(tx *bolt.Tx) error { return tx.Bucket(bucketSteps).Put([]byte("a/b@c"), []byte("\x00\x01")) })), 0o600), ErrCorrupt, `steps record "a/b@c" does not decode`},
		{"nested bucket among steps", write(boltFile(t, rotateLayout(func(tx *bolt.Tx) error { _, err := tx.Bucket(bucketSteps).CreateBucket([]byte("x")); return err })), 0o600), ErrCorrupt, `nested bucket "x"`},
		{"unknown schema", write(boltFile(t, rotateLayout(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte("99")) })), 0o600), ErrSchema, `"99"`},
	}
	// Every data page but the root and the freelist overwritten: the meta
	// pages are intact, so only reading the buckets can find it.
	garbled := append([]byte(nil), valid...)
	keep := map[int]bool{}
	for _, m := range []int{0, ps} {
		keep[int(binary.NativeEndian.Uint64(valid[m+pageHeaderSize+16:]))] = true // root
		keep[int(binary.NativeEndian.Uint64(valid[m+pageHeaderSize+32:]))] = true // freelist
	}
	for id := 2; id < pgid; id++ {
		if !keep[id] {
			copy(garbled[id*ps:(id+1)*ps], random)
		}
	}
	cases = append(cases, CorruptStateFile{"data pages overwritten", write(garbled, 0o600), ErrCorrupt, "bbolt cannot make sense of it"})
	for _, n := range []int{100, ps, ps + 100, 2 * ps, 3 * ps, pgid*ps - 1} {
		cases = append(cases, CorruptStateFile{"truncated at " + strconv.Itoa(n), write(valid[:n], 0o600), ErrCorrupt, "truncated?"})
	}
	if nobody, err := user.Lookup("nobody"); err == nil && os.Geteuid() == 0 {
		uid, _ := strconv.Atoi(nobody.Uid)
		cases = append(cases, CorruptStateFile{"owned by nobody", func(t *testing.T, p string) {
			write(valid, 0o600)(t, p)
			if err := os.Chown(p, uid, -1); err != nil {
				t.Fatal(err)
			}
		}, ErrOwner, "owned by nobody (uid " + nobody.Uid + "), but rotate runs as root (uid 0)"})
	}
	return cases
}

func digest(t *testing.T, p string) [32]byte {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.IsDir() {
		return sha256.Sum256([]byte("dir " + st.Mode().String()))
	}
	return sha256.Sum256(append(fileBytes(t, p), st.Mode().String()...))
}

// TestOpenRefusesCorruptFiles: every damaged, foreign or crafted file is
// refused by Open, read-only or not, with the sentinel and a message naming
// the file and the problem; no panic; the file is left byte for byte as it
// was.
func TestOpenRefusesCorruptFiles(t *testing.T) {
	for _, tc := range CorruptStateFiles(t) {
		t.Run(tc.Name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "rotate.db")
			tc.Make(t, p)
			before := digest(t, p)
			for _, opts := range []OpenOptions{{}, {ReadOnly: true}, {Create: true}} {
				s, err := Open(p, opts)
				if err == nil {
					s.Close()
					t.Fatalf("Open(%+v) succeeded", opts)
				}
				if !errors.Is(err, tc.Want) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.Contains) {
					t.Errorf("Open(%+v) = %v\nwant %v naming %s and saying %q", opts, err, tc.Want, p, tc.Contains)
				}
			}
			if digest(t, p) != before {
				t.Fatal("Open changed the file")
			}
		})
	}
}

// TestOpenMissingFile: only Create makes a file; without it a missing
// file is fs.ErrNotExist and nothing is created.
func TestOpenMissingFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rotate.db")
	for _, opts := range []OpenOptions{{}, {ReadOnly: true}, {ReadOnly: true, Create: true}} {
		if _, err := Open(p, opts); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), p) {
			t.Errorf("Open(%+v) = %v, want ErrNotExist naming the file", opts, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("Open without Create left %v", ents)
	}
	s, err := Open(p, OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("Open with Create left %v, want only the state file", ents)
	}
}

// TestGuardTurnsPanicsIntoErrCorrupt: whatever bbolt panics with while
// reading becomes ErrCorrupt naming the file.
func TestGuardTurnsPanicsIntoErrCorrupt(t *testing.T) {
	err := guard("/x/rotate.db", "read", func() error { panic("page 7 already freed") })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "/x/rotate.db") || !strings.Contains(err.Error(), "page 7 already freed") {
		t.Fatalf("guard = %v", err)
	}
}
