package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Each node has a persistent mount namespace and UTS namespace, kept alive
// by bind-mounting their ns files into <dir>/ns (itself a private bind mount,
// as unshare(1) requires). Inside, the node's host dirs are bind-mounted at
// kubeadm's paths, /run is a fresh tmpfs (own /run/sshd, no view of the
// host's /run/netns), and the hostname is the node name.

// registryDir is the host-wide list of live clusters and of the mount-point
// dirs the harness had to create on the host (for example /etc/kubernetes):
// the last cluster to go down removes those dirs.
const registryDir = "/run/rotate-e2e"

// registryLock serializes changes to the host registry and the host-level
// things it tracks (mount-point dirs, the operator user) between
// processes: the harness's tests and the rotation suite bring clusters up
// and down at the same time.
const registryLock = "/run/rotate-e2e.lock"

// withRegistryLock runs fn holding the host-wide registry lock.
func withRegistryLock(fn func() error) error {
	f, err := os.OpenFile(registryLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", registryLock, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing releases it too
	return fn()
}

func (c *Cluster) nsDir() string { return filepath.Join(c.st.Spec.Dir, "ns") }

func (c *Cluster) setupMountNamespaces(ctx context.Context) error {
	s := &c.st.Spec
	if err := c.ensureMountPoints(); err != nil {
		return err
	}
	nsdir := c.nsDir()
	if err := os.MkdirAll(nsdir, 0o700); err != nil {
		return err
	}
	if err := c.record(func(st *state) { st.addUnique(&st.Mounts, nsdir) }); err != nil {
		return err
	}
	if !isMountPoint(nsdir) {
		if err := syscall.Mount(nsdir, nsdir, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", nsdir, err)
		}
	}
	if err := syscall.Mount("", nsdir, "", syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", nsdir, err)
	}
	for _, n := range s.Nodes {
		if err := c.setupNodeNamespaces(ctx, n); err != nil {
			return fmt.Errorf("namespaces of %s: %w", n.Name, err)
		}
	}
	return nil
}

func (c *Cluster) setupNodeNamespaces(ctx context.Context, n Node) error {
	mnt, uts := mntFile(c.st.Spec.Dir, n.Name), utsFile(c.st.Spec.Dir, n.Name)
	for _, f := range []string{mnt, uts} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return err
		}
		if err := c.record(func(st *state) { st.addUnique(&st.Mounts, f) }); err != nil {
			return err
		}
	}
	if err := c.save(); err != nil {
		return err
	}
	var sb strings.Builder
	sb.WriteString("set -e\n")
	// Drop this namespace's copies of other namespaces' ns files, so every
	// namespace dies as soon as its own file is unmounted.
	fmt.Fprintf(&sb, "umount -l %q\n", c.nsDir())
	sb.WriteString("if mountpoint -q /run/netns; then umount -l /run/netns; fi\n")
	fmt.Fprintf(&sb, "mount -t tmpfs -o mode=0755,size=64m rotate-e2e-%s /run\n", n.Name)
	sb.WriteString("mkdir -p /run/sshd /run/rotate-e2e /run/lock\nchmod 0755 /run/sshd\n")
	fmt.Fprintf(&sb, "mount --bind %q /run/rotate-e2e\n", n.RunDir())
	for _, m := range n.nodeMounts() {
		fmt.Fprintf(&sb, "mount --bind %q %q\n", m[0], m[1])
	}
	fmt.Fprintf(&sb, "hostname %q\n", n.Name)
	// A real node resolves its own name (sudo looks it up on every call;
	// without an entry each sudo waits on DNS and warns "unable to resolve
	// host").
	hosts, err := nodeHosts(n)
	if err != nil {
		return err
	}
	fmt.Fprintf(&sb, "mount --bind %q /etc/hosts\n", hosts)
	if _, err := run(ctx, "unshare", "--mount="+mnt, "--uts="+uts, "--propagation", "private", "--", "/bin/sh", "-c", sb.String()); err != nil {
		return err
	}
	for kind, f := range map[string]string{"mnt": mnt, "uts": uts} {
		ino, err := nsInode(f)
		if err != nil {
			return err
		}
		if err := c.record(func(st *state) { st.NSInodes[kind+":"+n.Name] = ino }); err != nil {
			return err
		}
	}
	return nil
}

// nodeHosts writes the node's /etc/hosts: the host's, and the node's own
// name at its address.
func nodeHosts(n Node) (string, error) {
	base, err := os.ReadFile("/etc/hosts")
	if err != nil && !os.IsNotExist(err) {
		return "", err
	}
	if len(base) > 0 && base[len(base)-1] != '\n' {
		base = append(base, '\n')
	}
	p := filepath.Join(n.Dir, "etc-hosts")
	content := append(base, fmt.Sprintf("%s\t%s\n", n.Address, n.Name)...)
	return p, os.WriteFile(p, content, 0o644)
}

// makeNodeDirs creates the host dirs of every node and its own user
// database.
func (c *Cluster) makeNodeDirs() error {
	for _, n := range c.st.Spec.Nodes {
		dirs := []string{n.RunDir(), n.SSHDir(), filepath.Join(n.EtcKubernetes(), "manifests"), filepath.Join(n.Dir, "etc")}
		for _, m := range n.nodeMounts() {
			dirs = append(dirs, m[0])
		}
		for _, d := range dirs {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		for d, mode := range map[string]os.FileMode{
			n.VarLibEtcd(): 0o700, n.RootHome(): 0o700, filepath.Join(n.Dir, "tmp"): 0o1777,
		} {
			if err := os.Chmod(d, mode); err != nil {
				return err
			}
		}
		if err := writeNodeSudoers(n); err != nil {
			return fmt.Errorf("sudoers of %s: %w", n.Name, err)
		}
	}
	return nil
}

// writeNodeSudoers gives the node its sudoers entry for OperatorUser
// (passwordless, as `become` needs); /etc/sudoers.d is the node's own.
func writeNodeSudoers(n Node) error {
	sudoers := filepath.Join(n.Dir, "etc-sudoers.d")
	if err := os.Chmod(sudoers, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(sudoers, "rotate-e2e"), []byte(OperatorUser+" ALL=(ALL) NOPASSWD: ALL\n"), 0o440)
}

// ensureOperatorUser creates OperatorUser on the host if it is missing
// (password "*": none, but not locked, so sshd accepts its key without
// PAM; no home on the host: /home is each node's own) and records that
// the harness created it, so the last cluster's Down removes it.
func ensureOperatorUser() (uid, gid int, err error) {
	err = withRegistryLock(func() error {
		uid, gid, err = ensureOperatorUserLocked()
		return err
	})
	return uid, gid, err
}

func ensureOperatorUserLocked() (uid, gid int, err error) {
	if _, err := user.Lookup(OperatorUser); err != nil {
		created := readLines(filepath.Join(registryDir, "created-users"))
		if !slices.Contains(created, OperatorUser) {
			created = append(created, OperatorUser)
		}
		if err := os.MkdirAll(registryDir, 0o755); err != nil {
			return 0, 0, err
		}
		if err := writeFileAtomic(filepath.Join(registryDir, "created-users"), []byte(strings.Join(created, "\n")+"\n"), 0o644); err != nil {
			return 0, 0, err
		}
		if out, err := exec.Command("useradd", "-M", "-d", "/home/"+OperatorUser, "-s", "/bin/bash", "-p", "*", OperatorUser).CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("useradd %s: %v: %s", OperatorUser, err, out)
		}
	}
	u, err := user.Lookup(OperatorUser)
	if err != nil {
		return 0, 0, err
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, err
	}
	gid, err = strconv.Atoi(u.Gid)
	return uid, gid, err
}

// ensureMountPoints creates missing host dirs the node mounts need, and
// registers the cluster in the host registry.
func (c *Cluster) ensureMountPoints() error {
	return withRegistryLock(c.ensureMountPointsLocked)
}

func (c *Cluster) ensureMountPointsLocked() error {
	if err := os.MkdirAll(filepath.Join(registryDir, "clusters"), 0o755); err != nil {
		return err
	}
	entry := filepath.Join(registryDir, "clusters", c.st.Spec.Name)
	if err := c.record(func(st *state) { st.Registered = entry }); err != nil {
		return err
	}
	if err := os.WriteFile(entry, []byte(c.st.Spec.Dir+"\n"), 0o644); err != nil {
		return err
	}
	created := readLines(filepath.Join(registryDir, "created-dirs"))
	for _, m := range c.st.Spec.Nodes[0].nodeMounts() {
		target := m[1]
		if _, err := os.Stat(target); err == nil {
			continue
		}
		// Record before creating; parents that did not exist are recorded
		// too (removed deepest first).
		var missing []string
		for p := target; p != "/"; p = filepath.Dir(p) {
			if _, err := os.Stat(p); err == nil {
				break
			}
			missing = append(missing, p)
		}
		for _, p := range missing {
			if !slices.Contains(created, p) {
				created = append(created, p)
			}
		}
		if err := writeFileAtomic(filepath.Join(registryDir, "created-dirs"), []byte(strings.Join(created, "\n")+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// unregister removes this cluster from the host registry; the last cluster
// out removes the mount-point dirs the harness created (if empty).
func (c *Cluster) unregister() error {
	return withRegistryLock(c.unregisterLocked)
}

func (c *Cluster) unregisterLocked() error {
	if c.st.Registered == "" {
		return nil
	}
	if err := os.Remove(c.st.Registered); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	left, _ := os.ReadDir(filepath.Join(registryDir, "clusters"))
	if len(left) > 0 {
		return nil
	}
	created := readLines(filepath.Join(registryDir, "created-dirs"))
	// Deepest first.
	slices.SortFunc(created, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var errs []string
	for _, d := range created {
		err := os.Remove(d)
		switch {
		case err == nil, errors.Is(err, os.ErrNotExist):
		case errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EEXIST):
			// Something outside the harness wrote into the mount point
			// on the host: not ours to delete; leave it and say so.
			c.logf("leaving %s on the host: it is no longer empty", d)
		default:
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove created dirs: %s", strings.Join(errs, "; "))
	}
	for _, u := range readLines(filepath.Join(registryDir, "created-users")) {
		if out, err := exec.Command("userdel", u).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Sprintf("userdel %s: %v: %s", u, err, out))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove created users: %s", strings.Join(errs, "; "))
	}
	_ = os.Remove(filepath.Join(registryDir, "created-users"))
	_ = os.Remove(filepath.Join(registryDir, "created-dirs"))
	_ = os.Remove(filepath.Join(registryDir, "clusters"))
	_ = os.Remove(registryDir)
	return nil
}

func readLines(path string) []string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(raw), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// teardownMounts unmounts the recorded host mounts, deepest first.
func (c *Cluster) teardownMounts() error {
	var errs []string
	for i := len(c.st.Mounts) - 1; i >= 0; i-- {
		m := c.st.Mounts[i]
		for isMountPoint(m) {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Sprintf("umount %s: %v", m, err))
				break
			}
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// isMountPoint reports whether path is a mount point in the caller's mount
// namespace.
func isMountPoint(path string) bool {
	for _, m := range mountPoints() {
		if m == path {
			return true
		}
	}
	return false
}

// mountPoints lists the mount points of the caller's mount namespace.
func mountPoints() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
