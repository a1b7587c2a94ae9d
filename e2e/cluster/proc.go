package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// run runs a host command and returns its combined output; the error names
// the command and carries the output's tail.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(out, 2000))
	}
	return out, nil
}

func tail(b []byte, n int) string {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = append([]byte("..."), b[len(b)-n:]...)
	}
	return string(b)
}

// nsenterArgs is the prefix that runs a command inside a node's namespaces.
func (s *Spec) nsenterArgs(n Node) []string {
	return []string{
		"nsenter",
		"--net=" + filepath.Join("/run/netns", n.NetNS),
		"--mount=" + mntFile(s.Dir, n.Name),
		"--uts=" + utsFile(s.Dir, n.Name),
		"--",
	}
}

// procStart returns a process's start time (clock ticks since boot) or 0
// if the process does not exist or is a zombie.
func procStart(pid int) uint64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64) // field 22 overall
	return v
}

// alive reports whether the recorded process still runs (same PID and start
// time, not a zombie).
func (p proc) alive() bool {
	st := procStart(p.PID)
	return st != 0 && st == p.Start
}

func (p proc) signal(sig syscall.Signal) {
	if p.alive() {
		_ = syscall.Kill(p.PID, sig)
	}
}

// waitGone polls until cond is false or the deadline passes.
func waitGone(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return !cond()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// stopProcs sends SIGTERM to every live proc, waits up to grace for all of
// them to exit, then SIGKILLs the rest and waits again.
func stopProcs(ctx context.Context, ps []proc, grace time.Duration) error {
	anyAlive := func() bool {
		for _, p := range ps {
			if p.alive() {
				return true
			}
		}
		return false
	}
	if grace > 0 {
		for _, p := range ps {
			p.signal(syscall.SIGTERM)
		}
		if waitGone(ctx, grace, anyAlive) {
			return nil
		}
	}
	for _, p := range ps {
		p.signal(syscall.SIGKILL)
	}
	if !waitGone(context.Background(), 10*time.Second, anyAlive) {
		var left []string
		for _, p := range ps {
			if p.alive() {
				left = append(left, fmt.Sprintf("%s/%s pid %d", p.Node, p.Name, p.PID))
			}
		}
		return fmt.Errorf("processes still alive after SIGKILL: %s", strings.Join(left, ", "))
	}
	return nil
}

// nsInode returns the inode of a namespace file (e.g. /proc/PID/ns/net or
// a bind-mounted ns file).
func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// procsInNamespaces lists live processes that are in any of the given
// namespace inodes (net, mnt, uts), excluding the caller.
func procsInNamespaces(inodes map[string]uint64) []int {
	if len(inodes) == 0 {
		return nil
	}
	want := map[string]map[uint64]bool{}
	for key, ino := range inodes {
		kind, _, _ := strings.Cut(key, ":")
		if want[kind] == nil {
			want[kind] = map[uint64]bool{}
		}
		want[kind][ino] = true
	}
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || procStart(pid) == 0 {
			continue
		}
		for kind, set := range want {
			ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
			if err == nil && set[ino] {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// killNamespaces SIGKILLs every process in the given namespaces and waits
// for them to be gone.
func killNamespaces(inodes map[string]uint64) error {
	for range 5 {
		pids := procsInNamespaces(inodes)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		waitGone(context.Background(), 5*time.Second, func() bool {
			for _, pid := range pids {
				if procStart(pid) != 0 {
					return true
				}
			}
			return false
		})
	}
	if pids := procsInNamespaces(inodes); len(pids) > 0 {
		return fmt.Errorf("processes still in the cluster's namespaces: %v", pids)
	}
	return nil
}

// cgroup2Root finds a mounted cgroup v2 hierarchy ("" if none).
func cgroup2Root() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mountpoint ... - fstype source options
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		rf := strings.Fields(right)
		lf := strings.Fields(left)
		if len(rf) > 0 && rf[0] == "cgroup2" && len(lf) > 4 {
			return lf[4]
		}
	}
	return ""
}

// cgroupProcs lists the PIDs in a cgroup v2 dir and its children.
func cgroupProcs(dir string) []int {
	var out []int
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		raw, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(raw)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
		return nil
	})
	return out
}

// killCgroup SIGKILLs every process in a cgroup v2 subtree until it is
// empty. It does not use cgroup.kill: on this kernel (6.18) a cgroup that
// was killed through cgroup.kill kills every child later cloned into it with
// CLONE_INTO_CGROUP, which would break StartNode.
func killCgroup(dir string) error {
	if dir == "" {
		return nil
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for range 10 {
		pids := cgroupProcs(dir)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		waitGone(context.Background(), 3*time.Second, func() bool { return len(cgroupProcs(dir)) > 0 })
	}
	if pids := cgroupProcs(dir); len(pids) > 0 {
		return fmt.Errorf("cgroup %s still has processes %v", dir, pids)
	}
	return nil
}

// rss sums the resident memory (bytes) of the given processes.
func rss(pids []int) uint64 {
	var total uint64
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					kb, _ := strconv.ParseUint(f[0], 10, 64)
					total += kb * 1024
				}
			}
		}
	}
	return total
}
