package state_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubeca/rotate/state"
	"github.com/kubeca/rotate/state/statetest"
)

// TestOpenRefusesCorruptFiles: every damaged, foreign or crafted file is
// refused by Open, read-only or not, with the sentinel and a message naming
// the file and the problem; no panic; the file is left byte for byte as it
// was.
func TestOpenRefusesCorruptFiles(t *testing.T) {
	for _, tc := range statetest.Corrupt(t) {
		t.Run(tc.Name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "rotate.db")
			tc.Make(t, p)
			before := statetest.Digest(t, p)
			for _, opts := range []state.OpenOptions{{}, {ReadOnly: true}, {Create: true}} {
				s, err := state.Open(p, opts)
				if err == nil {
					s.Close()
					t.Fatalf("Open(%+v) succeeded", opts)
				}
				if !errors.Is(err, tc.Want) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.Says) {
					t.Errorf("Open(%+v) = %v\nwant %v naming %s and saying %q", opts, err, tc.Want, p, tc.Says)
				}
			}
			if statetest.Digest(t, p) != before {
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
	for _, opts := range []state.OpenOptions{{}, {ReadOnly: true}, {ReadOnly: true, Create: true}} {
		if _, err := state.Open(p, opts); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), p) {
			t.Errorf("Open(%+v) = %v, want ErrNotExist naming the file", opts, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("Open without Create left %v", ents)
	}
	s, err := state.Open(p, state.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("Open with Create left %v, want only the state file", ents)
	}
}

// TestOpenAcceptsWhatBboltRecovers: a torn meta page, or an older meta page
// whose pages later transactions reused (what any SIGKILL leaves), opens
// like bbolt opens it, with the run it holds.
func TestOpenAcceptsWhatBboltRecovers(t *testing.T) {
	for name, raw := range statetest.Recoverable(t) {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "rotate.db")
			statetest.Write(raw, 0o600)(t, p)
			for _, opts := range []state.OpenOptions{{}, {ReadOnly: true}} {
				s, err := state.Open(p, opts)
				if err != nil {
					t.Fatalf("Open(%+v): %v", opts, err)
				}
				s.Close()
			}
		})
	}
}
