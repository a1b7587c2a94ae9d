package state

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Key bytes that no formatting of a CAMaterial may show.
var (
	testOldKey = []byte("-----BEGIN EC PRIVATE KEY-----\nb2xkLWtleS1ieXRlcw==\n-----END EC PRIVATE KEY-----\n")
	testNewKey = []byte("-----BEGIN EC PRIVATE KEY-----\nbmV3LWtleS1ieXRlcw==\n-----END EC PRIVATE KEY-----\n")
)

// showsBytes reports whether out holds b in one of the forms fmt or
// encoding/json print a byte slice in: as text, as %v's decimal list, as
// %#v's Go syntax, in hex, or in base64.
func showsBytes(out string, b []byte) (form string, ok bool) {
	for _, f := range []struct{ name, s string }{
		{"text", string(b)},
		{"decimal", strings.Trim(fmt.Sprint(b), "[]")},
		{"Go syntax", strings.TrimPrefix(fmt.Sprintf("%#v", b), "[]byte")},
		{"hex", fmt.Sprintf("%x", b)},
		{"base64", base64.StdEncoding.EncodeToString(b)},
	} {
		if strings.Contains(out, f.s) {
			return f.name, true
		}
	}
	return "", false
}

// suite runs the same assertions against every Store implementation.
func suite(t *testing.T, open func(t *testing.T) Store) {
	ctx := context.Background()
	t.Run("no run", func(t *testing.T) {
		s := open(t)
		if _, err := s.Run(ctx); !errors.Is(err, ErrNoRun) {
			t.Fatalf("Run on empty store: got %v, want ErrNoRun", err)
		}
	})
	t.Run("checkpoint lands together", func(t *testing.T) {
		s := open(t)
		run := Run{ID: "r1", Cluster: "c", State: "distribute", CreatedAt: time.Unix(1, 0).UTC()}
		cp := Checkpoint{
			Run:    &run,
			Steps:  []StepRecord{{Key: "distribute/bundle@cp1", Phase: "distribute", Step: "bundle", Target: "cp1", Status: StepDone, Attempts: 1, DoneSeq: 1}},
			Values: map[string][]byte{"out/x": []byte("v1")},
			Events: []Event{{Message: "a"}, {Message: "b"}},
			CAs:    []CAMaterial{{Name: "cluster", NewCert: []byte("C"), OldKey: testOldKey, NewKey: testNewKey}},
		}
		if err := s.Commit(ctx, cp); err != nil {
			t.Fatal(err)
		}
		got, err := s.Run(ctx)
		if err != nil || got.ID != "r1" || got.State != "distribute" || !got.CreatedAt.Equal(run.CreatedAt) {
			t.Fatalf("Run = %+v, %v", got, err)
		}
		st, ok, err := s.Step(ctx, "distribute/bundle@cp1")
		if err != nil || !ok || st.Status != StepDone || st.Attempts != 1 {
			t.Fatalf("Step = %+v %v %v", st, ok, err)
		}
		v, ok, _ := s.Value(ctx, "out/x")
		if !ok || string(v) != "v1" {
			t.Fatalf("Value = %q %v", v, ok)
		}
		v[0] = 'X' // callers must not alias stored bytes
		v2, _, _ := s.Value(ctx, "out/x")
		if string(v2) != "v1" {
			t.Fatalf("stored value was aliased: %q", v2)
		}
		ca, ok, _ := s.CA(ctx, "cluster")
		if !ok || !bytes.Equal(ca.NewKey, testNewKey) || !bytes.Equal(ca.OldKey, testOldKey) {
			t.Fatalf("CA = %v %v", ca, ok)
		}
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			out := fmt.Sprintf(verb, ca)
			for _, key := range [][]byte{ca.OldKey, ca.NewKey} {
				if form, ok := showsBytes(out, key); ok {
					t.Errorf("CAMaterial formatted with %s shows a key (%s): %s", verb, form, out)
				}
			}
		}
		evs, _ := s.Events(ctx)
		if len(evs) != 2 || evs[0].Seq != 1 || evs[1].Seq != 2 || evs[1].Message != "b" {
			t.Fatalf("Events = %+v", evs)
		}
		// Delete a value, append more events: the log only grows.
		if err := s.Commit(ctx, Checkpoint{Values: map[string][]byte{"out/x": nil}, Events: []Event{{Message: "c"}}}); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := s.Value(ctx, "out/x"); ok {
			t.Fatal("value not deleted")
		}
		evs, _ = s.Events(ctx)
		if len(evs) != 3 || evs[2].Seq != 3 {
			t.Fatalf("Events after append = %+v", evs)
		}
		if c, err := s.Counts(ctx); err != nil || c != (Counts{Events: 3}) {
			t.Fatalf("Counts = %+v, %v", c, err)
		}
	})
	t.Run("invalid checkpoint writes nothing", func(t *testing.T) {
		s := open(t)
		err := s.Commit(ctx, Checkpoint{Run: &Run{ID: "r"}, Steps: []StepRecord{{Key: ""}}, Values: map[string][]byte{"k": []byte("v")}})
		if err == nil {
			t.Fatal("want error for step without key")
		}
		if _, err := s.Run(ctx); !errors.Is(err, ErrNoRun) {
			t.Fatalf("run written by failed checkpoint: %v", err)
		}
		if _, ok, _ := s.Value(ctx, "k"); ok {
			t.Fatal("value written by failed checkpoint")
		}
	})
	t.Run("backups keep the first copy", func(t *testing.T) {
		s := open(t)
		b := Backup{Node: "cp1", Path: "/etc/kubernetes/pki/ca.crt", Exists: true, Content: []byte("old"), Mode: 0o644, Digest: "d1", TakenAt: time.Unix(10, 0)}
		saved, err := s.SaveBackupIfAbsent(ctx, b)
		if err != nil || !saved {
			t.Fatalf("first save: %v %v", saved, err)
		}
		b2 := b
		b2.Content = []byte("new")
		saved, err = s.SaveBackupIfAbsent(ctx, b2)
		if err != nil || saved {
			t.Fatalf("second save: %v %v", saved, err)
		}
		got, ok, _ := s.Backup(ctx, "", "cp1", "/etc/kubernetes/pki/ca.crt")
		if !ok || string(got.Content) != "old" || got.Mode != 0o644 {
			t.Fatalf("Backup = %+v", got)
		}
		if _, ok, _ := s.Backup(ctx, "", "cp2", "/etc/kubernetes/pki/ca.crt"); ok {
			t.Fatal("backup found for other node")
		}
		missing := Backup{Node: "cp1", Path: "/etc/kubernetes/pki/ca-new.key", Exists: false, TakenAt: time.Unix(11, 0)}
		if _, err := s.SaveBackupIfAbsent(ctx, missing); err != nil {
			t.Fatal(err)
		}
		all, _ := s.Backups(ctx)
		if len(all) != 2 || all[1].Exists {
			t.Fatalf("Backups = %+v", all)
		}
		// Each saved backup is logged in its transaction; the refused
		// second copy is not.
		if c, err := s.Counts(ctx); err != nil || c != (Counts{Backups: 2, Events: 2}) {
			t.Fatalf("Counts = %+v, %v", c, err)
		}
	})
	t.Run("backups are logged with fingerprints, never content", func(t *testing.T) {
		s := open(t)
		b := Backup{Scope: "distribute/ca-files@cp1", Node: "cp1", Path: "/etc/kubernetes/pki/ca.key", Exists: true,
			Content: []byte("-----BEGIN EC PRIVATE KEY-----"), Digest: "d1", TakenAt: time.Unix(10, 0).UTC()}
		if _, err := s.SaveBackupIfAbsent(ctx, b); err != nil {
			t.Fatal(err)
		}
		gone := Backup{Scope: "narrow-trust/ca@cp1", Node: "cp1", Path: "/etc/kubernetes/pki/ca-new.crt", TakenAt: time.Unix(11, 0).UTC()}
		if _, err := s.SaveBackupIfAbsent(ctx, gone); err != nil {
			t.Fatal(err)
		}
		evs, err := s.Events(ctx)
		if err != nil || len(evs) != 2 {
			t.Fatalf("Events = %+v %v", evs, err)
		}
		want := Event{Seq: 1, Time: b.TakenAt, Level: "info", Kind: KindBackup, Phase: "distribute", Step: "ca-files", Target: "cp1",
			Node: "cp1", Path: b.Path, SHA256: "d1", Message: "backed up 30 bytes"}
		if evs[0] != want {
			t.Fatalf("backup event = %+v, want %+v", evs[0], want)
		}
		if evs[1].SHA256 != "" || evs[1].Message != "recorded that it did not exist" || evs[1].Phase != "narrow-trust" {
			t.Fatalf("event of a missing file = %+v", evs[1])
		}
	})
	t.Run("events after a sequence number", func(t *testing.T) {
		s := open(t)
		for _, m := range []string{"a", "b", "c"} {
			if err := s.Commit(ctx, Checkpoint{Events: []Event{{Message: m}}}); err != nil {
				t.Fatal(err)
			}
		}
		for seq, want := range map[uint64]string{0: "abc", 1: "bc", 2: "c", 3: "", 9: ""} {
			evs, err := s.EventsAfter(ctx, seq)
			got := ""
			for _, e := range evs {
				got += e.Message
			}
			if err != nil || got != want {
				t.Errorf("EventsAfter(%d) = %q %v, want %q", seq, got, err, want)
			}
		}
	})
	t.Run("steps listed", func(t *testing.T) {
		s := open(t)
		for _, k := range []string{"b@x", "a@x", "c@x"} {
			if err := s.Commit(ctx, Checkpoint{Steps: []StepRecord{{Key: k, Status: StepPending}}}); err != nil {
				t.Fatal(err)
			}
		}
		all, err := s.Steps(ctx)
		if err != nil || len(all) != 3 || all[0].Key != "a@x" {
			t.Fatalf("Steps = %+v %v", all, err)
		}
	})
}

func TestMemStore(t *testing.T) {
	suite(t, func(t *testing.T) Store { return NewMemStore() })
}

func TestBoltStore(t *testing.T) {
	suite(t, func(t *testing.T) Store {
		s, err := Open(filepath.Join(t.TempDir(), "rotate.db"), OpenOptions{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBoltFileMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "rotate.db")
	s, err := Open(p, OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %04o, want 0600", st.Mode().Perm())
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		os.Chmod(p, mode)
		_, err := Open(p, OpenOptions{})
		if !errors.Is(err, ErrPermissions) || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o: got %v, want ErrPermissions with advice", mode, err)
		}
	}
}

func TestBoltPersistsAcrossOpen(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "rotate.db")
	s, err := Open(p, OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, Checkpoint{Run: &Run{ID: "r9", State: "held"}, Values: map[string][]byte{"k": []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(p, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Run(ctx)
	if err != nil || r.ID != "r9" || r.State != "held" {
		t.Fatalf("reopened run = %+v %v", r, err)
	}
}

func TestBoltRefusesUnknownSchema(t *testing.T) {
	p := filepath.Join(t.TempDir(), "rotate.db")
	s, err := Open(p, OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *boltTx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte("99")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = Open(p, OpenOptions{})
	if !errors.Is(err, ErrSchema) || !strings.Contains(err.Error(), `"99"`) {
		t.Fatalf("got %v, want ErrSchema naming version 99", err)
	}
	// A file that is not a rotate state file at all.
	junk := filepath.Join(t.TempDir(), "junk.db")
	os.WriteFile(junk, bytes.Repeat([]byte("x"), 8192), 0o600)
	if _, err := Open(junk, OpenOptions{}); err == nil {
		t.Fatal("opening junk succeeded")
	}
}

// TestBoltSecondProcessBusy holds the lock in a child process (a real second
// process, as the CLI sees it) and checks Open fails fast with ErrBusy.
func TestBoltSecondProcessBusy(t *testing.T) {
	if os.Getenv("ROTATE_STATE_HOLD") != "" {
		s, err := Open(os.Getenv("ROTATE_STATE_HOLD"), OpenOptions{Create: true})
		if err != nil {
			os.Exit(7)
		}
		defer s.Close()
		os.Stdout.WriteString("locked\n")
		buf := make([]byte, 1)
		os.Stdin.Read(buf) // hold until the parent closes stdin
		return
	}
	p := filepath.Join(t.TempDir(), "rotate.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestBoltSecondProcessBusy$")
	cmd.Env = append(os.Environ(), "ROTATE_STATE_HOLD="+p)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	buf := make([]byte, 64)
	n, _ := stdout.Read(buf)
	if !strings.Contains(string(buf[:n]), "locked") {
		t.Fatalf("child did not lock: %q", buf[:n])
	}
	start := time.Now()
	_, err := Open(p, OpenOptions{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), p) {
		t.Fatalf("got %v, want ErrBusy naming the file", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("busy detection took %s", d)
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

// TestFileShrunkUnderOpenStore: a state file truncated while open (the
// mapping now runs past its end, so reads fault with SIGBUS) gives
// ErrCorrupt, not a crash.
func TestFileShrunkUnderOpenStore(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "rotate.db")
	s, err := Open(p, OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 50 {
		if err := s.Commit(ctx, Checkpoint{Values: map[string][]byte{strconv.Itoa(i): bytes.Repeat([]byte("v"), 3000)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Truncate(p, 8192); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.Value(ctx, "49")
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), p) {
		t.Fatalf("Value on a shrunk file = %v, want ErrCorrupt naming it", err)
	}
}

// TestBoltSnapshotInstalls: a snapshot taken while the store is open (and
// written to afterwards) is a complete state file of that moment: Install
// opens it with every check, and it holds what was committed before.
func TestBoltSnapshotInstalls(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "rotate.db"), OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Commit(ctx, Checkpoint{Run: &Run{ID: "r1", Cluster: "lab", State: "distribute"}, CAs: []CAMaterial{{Name: "cluster", NewKey: []byte("K")}}}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, Checkpoint{Run: &Run{ID: "r1", Cluster: "lab", State: "servers"}}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "recovered.db")
	err = Install(p, snap, func(r *BoltStore) error {
		run, err := r.Run(ctx)
		if err != nil || run.State != "distribute" {
			return fmt.Errorf("installed run = %+v %v", run, err)
		}
		if ca, ok, _ := r.CA(ctx, "cluster"); !ok || string(ca.NewKey) != "K" {
			return fmt.Errorf("installed CA = %v %v", ca, ok)
		}
		return r.Commit(ctx, Checkpoint{Events: []Event{{Message: "recovered"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("installed file: %v %v", st, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("left %v, want the two state files", ents)
	}
	// Never over an existing file, and nothing left behind on failure.
	before, _ := os.ReadFile(p)
	if err := Install(p, snap, func(*BoltStore) error { return nil }); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Install over a file = %v, want ErrExist", err)
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Fatal("Install changed an existing file")
	}
	q := filepath.Join(dir, "refused.db")
	if err := Install(q, snap, func(*BoltStore) error { return errors.New("cluster does not match") }); err == nil || !strings.Contains(err.Error(), "cluster does not match") {
		t.Fatalf("Install with a refusing prepare = %v", err)
	}
	if err := Install(q, []byte("not a state file at all, just some bytes"), func(*BoltStore) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Install of junk = %v, want ErrCorrupt", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("failed installs left %v", ents)
	}
}
