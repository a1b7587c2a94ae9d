package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

const (
	stateFile   = "state.json"
	stateLock   = "state.lock"
	stateSchema = 1
)

// state is everything `down` needs, written to the cluster dir before each
// resource is created (intent first), so a half-failed `up` can be undone by
// a later process.
type state struct {
	Schema int  `json:"schema"`
	Spec   Spec `json:"spec"`

	// Resources, in creation order; teardown tolerates missing ones.
	NetNS       []string `json:"netns,omitempty"`       // names under /run/netns
	HostLinks   []string `json:"hostLinks,omitempty"`   // links in the root netns
	Mounts      []string `json:"mounts,omitempty"`      // host mount points (ns files, ns dir)
	Cgroups     []string `json:"cgroups,omitempty"`     // cgroup v2 dirs, parents first
	CreatedDirs []string `json:"createdDirs,omitempty"` // host mount-point dirs this harness created
	Registered  string   `json:"registered,omitempty"`  // host registry entry
	Procs       []proc   `json:"procs,omitempty"`       // daemons started by the harness
	// Namespace inodes by "net:<node>" / "mnt:<node>" / "uts:<node>": any
	// process found in one of them at teardown belongs to the cluster.
	NSInodes map[string]uint64 `json:"nsInodes,omitempty"`
	// Stopped nodes (kill-node) keep their namespaces but run nothing.
	Stopped []string `json:"stopped,omitempty"`
}

// proc is a recorded daemon: PID plus its start time (clock ticks since
// boot), so a recycled PID is never signalled.
type proc struct {
	Name  string `json:"name"` // sshd, supervisor, lb
	Node  string `json:"node"` // node name, or "lb"
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

func (s *state) addUnique(list *[]string, v string) {
	if !slices.Contains(*list, v) {
		*list = append(*list, v)
	}
}

func readState(dir string) (*state, error) {
	raw, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("read cluster state: %w", err)
	}
	var s state
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, stateFile), err)
	}
	if s.Schema != stateSchema {
		return nil, fmt.Errorf("cluster state schema %d, want %d", s.Schema, stateSchema)
	}
	return &s, nil
}

func writeState(dir string, s *state) error {
	s.Schema = stateSchema
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, stateFile), raw, 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// lockDir takes an exclusive lock on the cluster dir's state (one mutating
// command at a time); the returned func releases it.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, stateLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("cluster %s is busy (another e2e-cluster command holds %s)", dir, stateLock)
		}
		return nil, fmt.Errorf("lock state: %w", err)
	}
	return func() { f.Close() }, nil
}
