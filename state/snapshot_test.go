package state

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSnapshotWriteRead(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rotate.db")
	if _, _, err := ReadSnapshot(p); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("no snapshot: %v", err)
	}
	for _, data := range []string{"{\"a\": 1}\n", "{\"a\": 2}\n"} {
		if err := WriteSnapshot(p, []byte(data)); err != nil {
			t.Fatal(err)
		}
		got, at, err := ReadSnapshot(p)
		if err != nil || string(got) != data || time.Since(at) > time.Minute {
			t.Fatalf("ReadSnapshot = %q %v %v", got, at, err)
		}
	}
	if st, _ := os.Stat(SnapshotPath(p)); st.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot mode %04o", st.Mode().Perm())
	}
	if err := WriteSnapshot(p, []byte("-----BEGIN EC PRIVATE KEY-----")); err == nil {
		t.Fatal("wrote a private key")
	}
	if got, _, _ := ReadSnapshot(p); string(got) != "{\"a\": 2}\n" {
		t.Fatalf("a refused write changed the snapshot: %q", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("left %v, want only the snapshot", ents)
	}
}

// TestSnapshotReadRefuses: a snapshot someone else could have written is
// not shown.
func TestSnapshotReadRefuses(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rotate.db")
	if err := WriteSnapshot(p, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(SnapshotPath(p), 0o666)
	if _, _, err := ReadSnapshot(p); err == nil || !strings.Contains(err.Error(), "others may write it") {
		t.Errorf("mode 0666: %v", err)
	}
	os.Chmod(SnapshotPath(p), 0o600)
	if nobody, err := user.Lookup("nobody"); err == nil && os.Geteuid() == 0 {
		uid, _ := strconv.Atoi(nobody.Uid)
		os.Chown(SnapshotPath(p), uid, -1)
		if _, _, err := ReadSnapshot(p); err == nil || !strings.Contains(err.Error(), "owned by nobody") {
			t.Errorf("owned by nobody: %v", err)
		}
	}
	q := filepath.Join(dir, "other.db")
	os.Symlink(SnapshotPath(p), SnapshotPath(q))
	if _, _, err := ReadSnapshot(q); err == nil || errors.Is(err, ErrNoSnapshot) {
		t.Errorf("symlink: %v", err)
	}
}

// TestJournal: reset, append, read; a private key is never written and a
// missing journal is not created by an append.
func TestJournal(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rotate.db")
	if err := AppendJournal(p, []byte("{}\n")); err == nil {
		t.Fatal("append created a journal")
	}
	if _, _, err := ReadJournal(p); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("no journal: %v", err)
	}
	if err := ResetJournal(p, []byte("{\"seq\":1}\n")); err != nil {
		t.Fatal(err)
	}
	if err := AppendJournal(p, []byte("{\"seq\":2}\n")); err != nil {
		t.Fatal(err)
	}
	if err := AppendJournal(p, []byte("-----BEGIN RSA PRIVATE KEY-----\n")); err == nil {
		t.Fatal("appended a private key")
	}
	got, _, err := ReadJournal(p)
	if err != nil || string(got) != "{\"seq\":1}\n{\"seq\":2}\n" {
		t.Fatalf("ReadJournal = %q %v", got, err)
	}
	if st, _ := os.Stat(JournalPath(p)); st.Mode().Perm() != 0o600 {
		t.Fatalf("journal mode %04o", st.Mode().Perm())
	}
}
