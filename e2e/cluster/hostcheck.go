package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// RootSnapshot is what the host's root directory and a few system
// directories hold (names, types, symlink targets). Nodes share the
// host's root filesystem; the harness and everything it runs must change
// only the nodes' own directories. Tests take one before a cluster comes
// up and compare after it is gone (a kubelet garbage-collecting logs by
// a relative glob once removed the host's /bin).
type RootSnapshot map[string]string

// SnapshotHostRoot reads /, /etc/kubernetes's parent dirs and /var/lib.
// The mount points the harness itself created on the host (and removes
// when its last cluster goes down) are left out: a run killed before its
// Down leaves them to the next run, whose Down removes them.
func SnapshotHostRoot() (RootSnapshot, error) {
	out := RootSnapshot{}
	own := readLines(filepath.Join(registryDir, "created-dirs"))
	for _, dir := range []string{"/", "/usr", "/var", "/var/lib", "/etc/ssh"} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			if p == "/tmp" || strings.HasPrefix(p, "/var/lib/rotate-e2e") || p == "/var/cache" || slices.Contains(own, p) {
				continue
			}
			desc := e.Type().String()
			if e.Type()&os.ModeSymlink != 0 {
				t, _ := os.Readlink(p)
				desc += " -> " + t
			}
			out[p] = desc
		}
	}
	return out, nil
}

// Diff lists entries that were removed, added or changed since s.
func (s RootSnapshot) Diff(now RootSnapshot) []string {
	var d []string
	for p, v := range s {
		if w, ok := now[p]; !ok {
			d = append(d, "removed "+p+" ("+v+")")
		} else if w != v {
			d = append(d, fmt.Sprintf("changed %s: %s -> %s", p, v, w))
		}
	}
	for p, w := range now {
		if _, ok := s[p]; !ok {
			d = append(d, "added "+p+" ("+w+")")
		}
	}
	slices.Sort(d)
	return d
}
