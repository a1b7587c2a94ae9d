package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Install makes a new state file at path from data, the bytes of a state
// file (a control-plane node's mirror of a run): they go to a temporary
// file next to path (0600, created afresh, fsynced), which is opened with
// all of Open's checks and handed to prepare (which may read, check and
// commit to it), closed, and only then linked to path. A file already at
// path is never replaced: that is an error wrapping fs.ErrExist. On any
// error nothing is left behind.
func Install(path string, data []byte, prepare func(*BoltStore) error) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("state file %s: %w; it is never replaced", path, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state file %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".recover-*")
	if err != nil {
		return fmt.Errorf("create state file %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create state file %s: %w", path, err)
	}
	s, err := Open(name, OpenOptions{})
	if err != nil {
		return err
	}
	err = prepare(s)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(name, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("state file %s appeared meanwhile: %w; it is never replaced", path, fs.ErrExist)
		}
		return fmt.Errorf("create state file %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
