// Package cluster runs a kubeadm-style HA Kubernetes cluster on one Linux
// machine for rotate's end-to-end tests: every node is a network namespace
// on a shared bridge plus a persistent mount and UTS namespace in which the
// node's own directories appear at kubeadm's paths (/etc/kubernetes,
// /var/lib/kubelet, /var/lib/etcd). PKI, kubeconfigs and static pod
// manifests come from the real kubeadm; the real etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler run from those manifests under
// a per-node supervisor (the kubelet's static-pod role); a real OpenSSH sshd
// serves every node; a TCP load balancer fronts the apiservers.
//
// Everything the harness creates (namespaces, links, mounts, processes,
// cgroups) is recorded in <dir>/state.json before it is created, so Down
// removes all of it, also after a half-failed Up and from another process.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kubeca/rotate/e2e/cluster/supervisor"
)

// ErrInjected is returned by Up when Options.FailAfter stops it.
var ErrInjected = errors.New("injected failure")

// Cluster is a handle on a cluster directory.
type Cluster struct {
	st       *state
	progress io.Writer
	mu       sync.Mutex // guards st and the state file
	// KeepDir makes Down leave the cluster directory (logs, PKI) in place.
	KeepDir bool
}

// Spec returns the cluster description.
func (c *Cluster) Spec() Spec { return c.st.Spec }

// Dir returns the cluster directory.
func (c *Cluster) Dir() string { return c.st.Spec.Dir }

func (c *Cluster) save() error { return c.record(nil) }

// record applies fn to the state and writes the state file, under the
// state mutex (Up starts nodes in parallel).
func (c *Cluster) record(fn func(st *state)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fn != nil {
		fn(c.st)
	}
	return writeState(c.st.Spec.Dir, c.st)
}

func (c *Cluster) logf(format string, args ...any) {
	if c.progress != nil {
		fmt.Fprintf(c.progress, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}

// SetProgress sets the writer for progress lines (nil discards).
func (c *Cluster) SetProgress(w io.Writer) { c.progress = w }

// Load opens the cluster whose directory is dir.
func Load(dir string) (*Cluster, error) {
	st, err := readState(dir)
	if err != nil {
		return nil, err
	}
	if st.NSInodes == nil {
		st.NSInodes = map[string]uint64{}
	}
	return &Cluster{st: st}, nil
}

// Up creates and starts a cluster and waits until it is ready. On error the
// returned Cluster (if non-nil) holds whatever was created: call Down.
func Up(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.ControlPlanes == 0 {
		opts.ControlPlanes = DefaultControlPlanes
	}
	if opts.FailAfter != "" && !slices.Contains(Stages, opts.FailAfter) {
		return nil, fmt.Errorf("unknown stage %q (stages: %s)", opts.FailAfter, strings.Join(Stages, ", "))
	}
	spec, err := plan(opts)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("e2e cluster needs root (namespaces, mounts, links)")
	}
	if opts.ReplaceStale {
		if err := replaceStale(ctx, spec.Dir, opts.Progress); err != nil {
			return nil, err
		}
	}
	if err := checkDirFree(spec.Dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(spec.Dir, 0o755); err != nil {
		return nil, err
	}
	c := &Cluster{st: &state{Spec: spec, NSInodes: map[string]uint64{}}, progress: opts.Progress}
	if err := c.save(); err != nil {
		return nil, err
	}
	unlock, err := lockDir(spec.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	start := time.Now()
	stages := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"prepare", func(ctx context.Context) error { return c.prepare(ctx, opts) }},
		{"network", c.setupNetwork},
		{"namespaces", c.setupMountNamespaces},
		{"ssh", c.stageSSH},
		{"lb", c.startLB},
		{"pki", c.stagePKI},
		{"control-plane", c.stageControlPlane},
		{"bootstrap", c.stageBootstrap},
		{"workers", c.stageWorkers},
		{"ready", c.stageReady},
	}
	for _, st := range stages {
		t := time.Now()
		c.logf("[%s] ...", st.name)
		if err := st.fn(ctx); err != nil {
			return c, fmt.Errorf("up %s: stage %s: %w", spec.Name, st.name, err)
		}
		c.logf("[%s] done in %s", st.name, time.Since(t).Round(time.Millisecond))
		if opts.FailAfter == st.name {
			return c, fmt.Errorf("up %s: after stage %s: %w", spec.Name, st.name, ErrInjected)
		}
	}
	c.logf("cluster %s is up in %s", spec.Name, time.Since(start).Round(time.Millisecond))
	return c, nil
}

// replaceStale takes down the cluster recorded in dir, if any. Down takes
// the dir's lock without waiting, so a cluster that a live harness holds
// is reported busy, not torn down under it.
func replaceStale(ctx context.Context, dir string, progress io.Writer) error {
	if !fileExists(filepath.Join(dir, stateFile)) {
		return nil
	}
	old, err := Load(dir)
	if err != nil {
		return fmt.Errorf("%s holds a cluster an earlier run left behind, and it cannot be read: %w", dir, err)
	}
	old.SetProgress(progress)
	old.logf("[stale] %s holds cluster %s from an earlier run; taking it down first", dir, old.st.Spec.Name)
	if err := old.Down(ctx); err != nil {
		return fmt.Errorf("take down the cluster an earlier run left in %s: %w", dir, err)
	}
	return nil
}

// checkDirFree accepts a missing or empty dir, and the leftovers of a
// cluster taken down with KeepDir (removed); anything else is refused, so a
// new cluster never reuses old PKI.
func checkDirFree(dir string) error {
	if fileExists(filepath.Join(dir, stateFile)) {
		return fmt.Errorf("%s already holds a cluster: run down first", dir)
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(ents) == 0) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fileExists(filepath.Join(dir, stateFile+".down")) {
		return fmt.Errorf("%s is not empty and holds no cluster that was taken down: refusing to use it", dir)
	}
	return os.RemoveAll(dir)
}

// prepare locates binaries, creates the node dirs and the cgroup.
func (c *Cluster) prepare(ctx context.Context, opts Options) error {
	s := &c.st.Spec
	src := opts.SourceDir
	if src == "" && (opts.BinDir == "" || opts.HarnessBinDir == "") {
		var err error
		if src, err = findSourceDir(); err != nil {
			return err
		}
	}
	bin, err := locateK8sBinaries(ctx, opts.BinDir, src)
	if err != nil {
		return err
	}
	s.BinDir = bin
	if s.HarnessBin, err = c.harnessBinaries(ctx, opts, src); err != nil {
		return err
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "mountpoint", "/usr/sbin/sshd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (run e2e/scripts/ensure-deps.sh): %w", tool, err)
		}
	}
	if err := c.makeNodeDirs(); err != nil {
		return err
	}
	if root := cgroup2Root(); root != "" {
		cg := filepath.Join(root, "rotate-e2e-"+s.Name)
		s.CgroupRoot = cg
		if err := c.record(func(st *state) { st.addUnique(&st.Cgroups, cg) }); err != nil {
			return err
		}
		if err := os.MkdirAll(cg, 0o755); err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
	}
	if err := c.save(); err != nil {
		return err
	}
	return c.writeClusterJSON()
}

func (c *Cluster) stageSSH(ctx context.Context) error {
	if err := c.setupSSH(); err != nil {
		return err
	}
	for _, n := range c.st.Spec.Nodes {
		if err := c.startSSHD(ctx, n); err != nil {
			return err
		}
	}
	return c.writeInventory()
}

// cgroupFor returns (creating it) the cgroup dir for a node's processes.
func (c *Cluster) cgroupFor(node string) (string, error) {
	root := c.st.Spec.CgroupRoot
	if root == "" {
		return "", nil
	}
	cg := filepath.Join(root, node)
	if err := c.record(func(st *state) { st.addUnique(&st.Cgroups, cg) }); err != nil {
		return "", err
	}
	if err := os.MkdirAll(cg, 0o755); err != nil {
		return "", err
	}
	return cg, nil
}

// startDaemon starts argv in its own session (it survives the caller),
// output appended to logPath, inside the node's cgroup, and records it.
func (c *Cluster) startDaemon(name, node, logPath string, argv []string) error {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	fmt.Fprintf(lf, "=== %s e2e-cluster: starting %q\n", time.Now().Format(time.RFC3339Nano), argv)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cg, err := c.cgroupFor(node)
	if err != nil {
		return err
	}
	if cg != "" {
		fd, err := syscall.Open(cg, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open cgroup %s: %w", cg, err)
		}
		defer syscall.Close(fd)
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = fd
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s on %s: %w", name, node, err)
	}
	// Reap it if it dies while this process lives; a CLI exits and leaves
	// it to init.
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	p := proc{Name: name, Node: node, PID: cmd.Process.Pid}
	var exitErr error = errors.New("not visible in /proc")
	for range 50 {
		if p.Start = procStart(p.PID); p.Start != 0 {
			break
		}
		select {
		case exitErr = <-exited:
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := c.record(func(st *state) { st.Procs = append(st.Procs, p) }); err != nil {
		return err
	}
	if p.Start == 0 {
		return fmt.Errorf("%s on %s exited immediately (%v), see %s", name, node, exitErr, logPath)
	}
	return nil
}

// Exec runs cmd inside node's namespaces and returns its combined output.
func (c *Cluster) Exec(ctx context.Context, node string, cmd ...string) ([]byte, error) {
	n, err := c.st.Spec.Node(node)
	if err != nil {
		return nil, err
	}
	argv := append(c.st.Spec.nsenterArgs(n), cmd...)
	out, err := run(ctx, argv[0], argv[1:]...)
	if err != nil {
		return out, fmt.Errorf("on %s: %w", node, err)
	}
	return out, nil
}

// execEnv runs cmd inside node with PATH set to the node PATH.
func (c *Cluster) execEnv(ctx context.Context, n Node, cmd ...string) ([]byte, error) {
	return c.Exec(ctx, n.Name, append([]string{"env", "PATH=" + c.nodePath()}, cmd...)...)
}

// nodeProcs returns the recorded daemons of node.
func (c *Cluster) nodeProcs(node string) []proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []proc
	for _, p := range c.st.Procs {
		if p.Node == node {
			out = append(out, p)
		}
	}
	return out
}

// stopNode stops every process of a node: the recorded daemons (SIGTERM
// with grace, if grace > 0; the supervisor stops its components first), then
// everything left in the node's cgroup and namespaces is SIGKILLed.
func (c *Cluster) stopNode(ctx context.Context, node string, grace time.Duration) error {
	var errs []error
	if err := stopProcs(ctx, c.nodeProcs(node), grace); err != nil {
		errs = append(errs, err)
	}
	if c.st.Spec.CgroupRoot != "" {
		if err := killCgroup(filepath.Join(c.st.Spec.CgroupRoot, node)); err != nil {
			errs = append(errs, err)
		}
	}
	inodes := c.nodeInodes(node)
	if err := killNamespaces(inodes); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.record(func(st *state) {
		st.Procs = slices.DeleteFunc(st.Procs, func(p proc) bool { return p.Node == node })
	}))
	return errors.Join(errs...)
}

// nodeInodes returns the namespace inodes of a node ("lb" included).
func (c *Cluster) nodeInodes(node string) map[string]uint64 {
	netns := c.st.Spec.LBNS
	if n, err := c.st.Spec.Node(node); err == nil {
		netns = n.NetNS
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]uint64{}
	for _, k := range []string{"net:" + netns, "mnt:" + node, "uts:" + node} {
		if v, ok := c.st.NSInodes[k]; ok {
			out[k] = v
		}
	}
	return out
}

// Down stops every process and removes every namespace, link, mount and
// cgroup the cluster recorded, then (unless KeepDir) the cluster dir. It
// works on a half-created cluster and is safe to repeat.
func (c *Cluster) Down(ctx context.Context) error {
	unlock, err := lockDir(c.st.Spec.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	// First every component but etcd, cluster-wide, so the apiservers do
	// not hang on an etcd without quorum while they shut down.
	t0 := time.Now()
	c.stopAllButEtcd(ctx)
	c.logf("[down] components but etcd stopped (%s)", time.Since(t0).Round(time.Millisecond))
	// Nodes in parallel: graceful, the apiservers take a few seconds.
	var wg sync.WaitGroup
	var emu sync.Mutex
	nodes := []string{"lb"}
	for _, n := range c.st.Spec.Nodes {
		nodes = append(nodes, n.Name)
	}
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.stopNode(ctx, n, 25*time.Second); err != nil {
				emu.Lock()
				errs = append(errs, fmt.Errorf("stop %s: %w", n, err))
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	c.logf("[down] nodes stopped (%s)", time.Since(t0).Round(time.Millisecond))
	// Anything else still in the cluster's namespaces.
	if err := killNamespaces(c.st.NSInodes); err != nil {
		errs = append(errs, err)
	}
	for i := len(c.st.Cgroups) - 1; i >= 0; i-- {
		cg := c.st.Cgroups[i]
		if err := killCgroup(cg); err != nil {
			errs = append(errs, err)
		}
		if err := os.Remove(cg); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	if err := c.teardownMounts(); err != nil {
		errs = append(errs, err)
	}
	if err := c.teardownNetwork(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := c.unregister(); err != nil {
		errs = append(errs, err)
	}
	c.logf("[down] namespaces, links, mounts and cgroups removed (%s)", time.Since(t0).Round(time.Millisecond))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("down %s: %w", c.st.Spec.Name, err)
	}
	if c.KeepDir {
		_ = os.Rename(filepath.Join(c.st.Spec.Dir, stateFile), filepath.Join(c.st.Spec.Dir, stateFile+".down"))
		return nil
	}
	if err := os.RemoveAll(c.st.Spec.Dir); err != nil {
		return fmt.Errorf("down %s: remove dir: %w", c.st.Spec.Name, err)
	}
	return nil
}

// stopAllButEtcd asks every running supervisor to stop all pods but etcd
// (best effort: Down kills whatever is left anyway).
func (c *Cluster) stopAllButEtcd(ctx context.Context) {
	var wg sync.WaitGroup
	for _, n := range c.st.Spec.Nodes {
		if !c.nodeRunning(n.Name) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if _, err := supervisor.Call(cctx, n.SupervisorSocket(), supervisor.Request{Op: "stop", Except: []string{"etcd"}}); err != nil {
				c.logf("stop components on %s: %v", n.Name, err)
			}
		}()
	}
	wg.Wait()
}

// KillNode kills every process of node (SIGKILL, like a power cut; with
// graceful, SIGTERM first). Its namespaces and files stay; StartNode
// brings it back.
func (c *Cluster) KillNode(ctx context.Context, node string, graceful bool) error {
	if _, err := c.st.Spec.Node(node); err != nil {
		return err
	}
	unlock, err := lockDir(c.st.Spec.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	var grace time.Duration
	if graceful {
		grace = 25 * time.Second
	}
	if err := c.stopNode(ctx, node, grace); err != nil {
		return fmt.Errorf("kill node %s: %w", node, err)
	}
	return c.record(func(st *state) { st.addUnique(&st.Stopped, node) })
}

// StartNode starts a killed node's sshd and supervisor again and waits for
// its apiserver's /readyz (control-plane nodes) and sshd.
func (c *Cluster) StartNode(ctx context.Context, node string) error {
	n, err := c.st.Spec.Node(node)
	if err != nil {
		return err
	}
	unlock, err := lockDir(c.st.Spec.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	if len(c.nodeProcs(node)) > 0 && c.nodeRunning(node) {
		return fmt.Errorf("node %s is running", node)
	}
	// Clear anything left over (a half-killed node).
	if err := c.stopNode(ctx, node, 0); err != nil {
		return err
	}
	if err := c.startSSHD(ctx, n); err != nil {
		return err
	}
	if err := c.startSupervisor(n); err != nil {
		return err
	}
	if err := c.record(func(st *state) {
		st.Stopped = slices.DeleteFunc(st.Stopped, func(s string) bool { return s == node })
	}); err != nil {
		return err
	}
	if n.ControlPlane() {
		return waitFor(ctx, 3*time.Minute, "apiserver /readyz on "+node, func() error {
			return c.readyz(ctx, n.Address)
		})
	}
	return nil
}

// nodeRunning reports whether all recorded daemons of node are alive.
func (c *Cluster) nodeRunning(node string) bool {
	ps := c.nodeProcs(node)
	if len(ps) == 0 {
		return false
	}
	for _, p := range ps {
		if !p.alive() {
			return false
		}
	}
	return true
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// waitFor polls check every 500ms until it returns nil or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// SetNoticeDelay sets every running node supervisor's manifest notice
// delay (slow mode: a static pod is replaced only d after its manifest
// changed, and its old process keeps serving until then) and records it,
// so nodes started later get it too.
func (c *Cluster) SetNoticeDelay(ctx context.Context, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("notice delay %s: want 0 or more", d)
	}
	if err := c.record(func(st *state) { st.Spec.NoticeDelay = d }); err != nil {
		return err
	}
	var errs []error
	for _, n := range c.st.Spec.Nodes {
		if !c.nodeRunning(n.Name) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := supervisor.Call(cctx, n.SupervisorSocket(), supervisor.Request{Op: "set-notice-delay", NoticeDelay: d})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("set notice delay %s: %w", d, err)
	}
	c.logf("static pods now replaced %s after their manifest changes", d)
	return nil
}
