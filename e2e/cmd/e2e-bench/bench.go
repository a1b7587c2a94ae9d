package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/kubeca/rotate/e2e/cluster"
	"github.com/kubeca/rotate/e2e/verify"
	"github.com/kubeca/rotate/e2e/wan"
	"github.com/kubeca/rotate/pki"
)

// initialWorkers is how many workers the cluster starts with; the rest of
// the largest N are spares joined as the bench grows the cluster.
const initialWorkers = 2

// batchPercent is the inventory's rollout.workerBatchPercent.
const batchPercent = 25

func logf(format string, args ...any) {
	fmt.Printf("bench %s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

type prefixWriter struct{ prefix string }

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		fmt.Println(p.prefix + l)
	}
	return len(b), nil
}

func bench(ctx context.Context, o options) (err error) {
	start := time.Now()
	maxN := o.workers[len(o.workers)-1]
	initial := min(initialWorkers, o.workers[0])
	logf("rotate %s; workers %v; network modes %s; work dir %s", o.rotateBin, o.workers, modeNames(o.modes), o.workDir)
	// Every node here shares the host's inotify instance limit, which a
	// node of a real cluster has to itself: 30 kubelets exhaust the default
	// 128 ("inotify_init: too many open files", the kubelet exits).
	if restore, err := raiseInotifyInstances(16 * (maxN + 3)); err != nil {
		return err
	} else if restore != nil {
		defer restore()
	}
	logf("bringing up cluster %s (%s): 3 control-plane nodes, %d workers, %d spares", o.name, o.subnet, initial, maxN-initial)
	c, err := cluster.Up(ctx, cluster.Options{
		Name: o.name, Subnet: o.subnet, ControlPlanes: 3, Workers: initial, SpareWorkers: maxN - initial,
		BinDir: o.k8sBin, HarnessBinDir: o.harnessBin, Progress: prefixWriter{"    cluster: "}, ReplaceStale: true,
	})
	if c != nil {
		defer func() {
			logf("tearing cluster %s down", o.name)
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if derr := c.Down(dctx); derr != nil {
				err = errors.Join(err, fmt.Errorf("cluster down: %w", derr))
			}
		}()
	}
	if err != nil {
		return fmt.Errorf("cluster up: %w", err)
	}
	logf("cluster up in %s", time.Since(start).Round(time.Second))
	nsName := "re2e-" + o.name + "-wan"
	if hasWAN(o.modes) {
		if err := wan.CreateNamespace(ctx, nsName, nodeAddresses(c.Spec())); err != nil {
			return fmt.Errorf("operator namespace: %w", err)
		}
		defer func() {
			if derr := wan.DeleteNamespace(context.Background(), nsName); derr != nil {
				err = errors.Join(err, derr)
			}
		}()
		logf("operator network namespace %s: every node address and the load balancer's on lo, served by the delay proxy", nsName)
	}
	rep := report{Started: start, RotateBin: o.rotateBin, BatchPercent: batchPercent}
	save := func() {
		rep.computeRatios()
		if werr := rep.write(o.out); werr != nil {
			logf("write %s: %v", o.out, werr)
		}
	}
	for _, n := range o.workers {
		if err := grow(ctx, c, n, o.joinParallel); err != nil {
			return err
		}
		inv, workers, err := writeInventory(c, o.workDir, n, o.roots)
		if err != nil {
			return err
		}
		for _, m := range o.modes {
			res, err := runOnce(ctx, o, c, nsName, m, n, inv, workers)
			rep.Runs = append(rep.Runs, res)
			save()
			if err != nil {
				return fmt.Errorf("N=%d %s: %w", n, m.Name, err)
			}
			logf("N=%d %s: rotation %s, rollback %s, in gates %s, waits %s, restarts %s, rotate's own %s", n, m.Name,
				secs(res.RotationSeconds), secs(res.RollbackSeconds), secs(res.GateSeconds), secs(res.WaitSeconds), secs(res.RestartSeconds), secs(res.OwnSeconds))
		}
	}
	rep.Finished = time.Now()
	save()
	fmt.Println()
	fmt.Print(rep.table())
	logf("results in %s; rotate's logs and state files in %s; whole bench %s", o.out, o.workDir, time.Since(start).Round(time.Second))
	return nil
}

func hasWAN(ms []mode) bool {
	for _, m := range ms {
		if !m.Direct {
			return true
		}
	}
	return false
}

func modeNames(ms []mode) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name)
	}
	return strings.Join(s, ",")
}

// nodeAddresses are every node's address (spares too) and the load
// balancer's.
func nodeAddresses(s cluster.Spec) []string {
	out := []string{s.LBAddress}
	for _, n := range s.Nodes {
		out = append(out, n.Address)
	}
	return out
}

// forwards are the addresses rotate dials and the proxy serves: every
// node's sshd, every apiserver and the load balancer, and every kubelet
// (rotate reaches kubelets through the apiservers today; served in case a
// build dials them).
func forwards(s cluster.Spec) []string {
	out := []string{fmt.Sprintf("%s:%d", s.LBAddress, cluster.APIServerPort)}
	for _, n := range s.Nodes {
		out = append(out, fmt.Sprintf("%s:%d", n.Address, n.Port()), fmt.Sprintf("%s:10250", n.Address))
		if n.ControlPlane() {
			out = append(out, fmt.Sprintf("%s:%d", n.Address, cluster.APIServerPort))
		}
	}
	return out
}

// grow joins spares until the cluster has n workers, joinParallel at a
// time.
func grow(ctx context.Context, c *cluster.Cluster, n, joinParallel int) error {
	spares := c.Spares()
	total := 0
	for _, nd := range c.Spec().Nodes {
		if !nd.ControlPlane() {
			total++
		}
	}
	need := n - (total - len(spares))
	if need <= 0 {
		return nil
	}
	if need > len(spares) {
		return fmt.Errorf("%d workers wanted, only %d spares left", n, len(spares))
	}
	t0 := time.Now()
	logf("joining %d spare workers (%d at a time) to reach %d workers", need, joinParallel, n)
	sem := make(chan struct{}, joinParallel)
	var wg sync.WaitGroup
	errs := make([]error, need)
	for i, name := range spares[:need] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			t := time.Now()
			if err := c.JoinNode(ctx, name); err != nil {
				errs[i] = fmt.Errorf("join %s: %w", name, err)
				return
			}
			logf("  %s joined and Ready (%s)", name, time.Since(t).Round(100*time.Millisecond))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	logf("cluster has %d workers (joins took %s)", n, time.Since(t0).Round(time.Second))
	return nil
}

// writeInventory writes the harness's inventory (the joined workers, no
// spares) with rollout.workerBatchPercent instead of workerBatchSize and
// returns its path and the workers' names.
func writeInventory(c *cluster.Cluster, dir string, n int, roots []string) (string, []string, error) {
	raw, err := c.Inventory()
	if err != nil {
		return "", nil, err
	}
	raw, err = withBatchPercent(raw, batchPercent)
	if err != nil {
		return "", nil, err
	}
	if raw, err = cluster.WithRoots(raw, roots); err != nil {
		return "", nil, err
	}
	var inv struct {
		Nodes struct {
			Workers []struct {
				Name string `yaml:"name"`
			} `yaml:"workers"`
		} `yaml:"nodes"`
	}
	if err := yaml.Unmarshal(raw, &inv); err != nil {
		return "", nil, err
	}
	var workers []string
	for _, w := range inv.Nodes.Workers {
		workers = append(workers, w.Name)
	}
	if len(workers) != n {
		return "", nil, fmt.Errorf("inventory lists %d workers, want %d", len(workers), n)
	}
	p := filepath.Join(dir, fmt.Sprintf("inventory-%dw.yaml", n))
	return p, workers, os.WriteFile(p, raw, 0o644)
}

// withBatchPercent replaces rollout.workerBatchSize by
// rollout.workerBatchPercent: pct (rotate accepts only one of them).
func withBatchPercent(raw []byte, pct int) ([]byte, error) {
	return cluster.EditInventory(raw, func(top *yaml.Node) error {
		rollout := mapValue(top, "rollout")
		if rollout == nil || rollout.Kind != yaml.MappingNode {
			return errors.New("inventory has no rollout mapping")
		}
		var kept []*yaml.Node
		for i := 0; i+1 < len(rollout.Content); i += 2 {
			if k := rollout.Content[i].Value; k == "workerBatchSize" || k == "workerBatchPercent" {
				continue
			}
			kept = append(kept, rollout.Content[i], rollout.Content[i+1])
		}
		rollout.Content = append([]*yaml.Node{
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: "workerBatchPercent"},
			{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(pct)},
		}, kept...)
		return nil
	})
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// runOnce rotates and rolls back once in mode m with n workers.
// The result is named: the proxy's counters are read into it when the
// proxy closes.
func runOnce(ctx context.Context, o options, c *cluster.Cluster, nsName string, m mode, n int, inv string, workers []string) (res result, err error) {
	res = result{Mode: m, Workers: n}
	dir := filepath.Join(o.workDir, fmt.Sprintf("%dw-%s", n, m.Name))
	if err := os.RemoveAll(dir); err != nil {
		return res, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}
	statePath := filepath.Join(dir, "rotate.db")
	var prefix []string
	if !m.Direct {
		p := wan.New(m.RTT / 2)
		defer func() {
			p.Close()
			res.ProxyConnections, res.ProxyFailedDials = p.Stats()
		}()
		for _, a := range forwards(c.Spec()) {
			if _, err := p.Listen(wan.NetNSPath(nsName), a, a); err != nil {
				return res, fmt.Errorf("delay proxy on %s: %w", a, err)
			}
		}
		if err := checkDelay(c.Spec(), nsName, m.RTT); err != nil {
			return res, err
		}
		prefix = []string{"nsenter", "--net=" + wan.NetNSPath(nsName), "--"}
	}
	tag := fmt.Sprintf("N=%d %s", n, m.Name)
	rot := func(args ...string) (wall, cpu time.Duration, err error) {
		argv := append(append(append([]string(nil), prefix...), o.rotateBin), args...)
		if o.verbose {
			argv = append(argv, "--verbose")
		}
		return runLogged(ctx, dir, filepath.Join(dir, args[0]+".log"), fmt.Sprintf("    [%s %s] ", tag, args[0]), o.quiet, argv)
	}
	if _, err := settle(ctx, c); err != nil {
		return res, fmt.Errorf("cluster not settled before the run: %w", err)
	}
	logf("%s: rotate start --no-hold (%s)", tag, inv)
	b0, t0, cerr := cpuTicks()
	wall, cpu, startErr := rot("start", "--inventory", inv, "--state", statePath, "--no-hold")
	if b1, t1, err := cpuTicks(); cerr == nil && err == nil {
		res.HostCPUBusy = hostBusy(b0, t0, b1, t1)
	}
	res.RotateCPUSeconds = round3(cpu.Seconds())
	res.RotationSeconds = wall.Seconds()
	after, serr := status(ctx, o.rotateBin, statePath)
	if serr != nil {
		logf("%s: rotate status after start: %v", tag, serr)
	} else {
		res.fromRotation(after, wall, workers)
	}
	if startErr != nil {
		res.Error = startErr.Error()
		logf("%s: rotate start failed (%v); rolling back so the cluster is left on its old CA", tag, startErr)
	}
	logf("%s: rotate rollback", tag)
	rbWall, _, rbErr := rot("rollback", "--state", statePath)
	res.RollbackSeconds = rbWall.Seconds()
	if rb, err := status(ctx, o.rotateBin, statePath); err == nil && serr == nil {
		res.fromRollback(after, rb, workers)
	}
	if rbErr == nil {
		took, err := settle(ctx, c)
		if err != nil {
			rbErr = fmt.Errorf("after the rollback: %w", err)
		}
		res.SettleSeconds = round3(took.Seconds())
		logf("%s: cluster settled on its old CA %s after the rollback", tag, took.Round(100*time.Millisecond))
	}
	if err := errors.Join(startErr, rbErr); err != nil {
		if res.Error == "" {
			res.Error = err.Error()
		}
		return res, fmt.Errorf("%w (logs in %s)", err, dir)
	}
	return res, nil
}

// settle waits until the cluster is where a run starts from: every
// namespace's kube-root-ca.crt is cp1's ca.crt (the controller-managers
// republish it asynchronously after a rollback; rotate's preflight refuses
// a cluster whose nodes disagree with it) and every Node is Ready. It
// returns how long that took.
func settle(ctx context.Context, c *cluster.Cluster) (time.Duration, error) {
	t0 := time.Now()
	info := c.Info()
	ca, err := verify.ReadCA(info.Nodes[0], "ca")
	if err != nil {
		return 0, err
	}
	kc, err := c.Client()
	if err != nil {
		return 0, err
	}
	caPEM := pki.EncodeCertsPEM(ca.Cert)
	err = verify.Eventually(ctx, 3*time.Minute, func(ctx context.Context) error {
		if err := verify.RootCAIs(ctx, kc, caPEM); err != nil {
			return err
		}
		return verify.NodesReady(ctx, kc)
	})
	return time.Since(t0), err
}

// checkDelay proves the proxy delays before each run: cp1's SSH banner,
// read from the operator namespace, arrives at least one round trip after
// connect (the proxy emulates two: the TCP handshake, then the banner).
func checkDelay(s cluster.Spec, nsName string, rtt time.Duration) error {
	cp1 := s.ControlPlaneNodes()[0]
	addr := fmt.Sprintf("%s:%d", cp1.Address, cp1.Port())
	t0 := time.Now()
	conn, err := wan.DialIn(wan.NetNSPath(nsName), addr)
	if err != nil {
		return fmt.Errorf("dial %s from %s: %w", addr, nsName, err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("SSH banner of %s through the delay proxy: %w", addr, err)
	}
	got := time.Since(t0)
	logf("delay check: SSH banner of cp1 (%q) %s after connect through the proxy (round trip %s; want ≥ %s)",
		strings.TrimSpace(line), got.Round(time.Millisecond), rtt, rtt)
	if got < rtt {
		return fmt.Errorf("SSH banner through the delay proxy after %s, want at least %s: the delay does not work", got, rtt)
	}
	return nil
}

// runLogged runs argv in dir, its output to logPath and (unless quiet)
// to stdout with prefix, and returns its wall time and the CPU time
// (user+system) it used.
func runLogged(ctx context.Context, dir, logPath, prefix string, quiet bool, argv []string) (wall, cpu time.Duration, err error) {
	// 0600 as rotate's own state files: rotate never logs a secret, but
	// these are the operator's run logs all the same.
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, 0, err
	}
	defer lf.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(lf, sc.Text())
			if !quiet {
				fmt.Println(prefix + sc.Text())
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err = cmd.Wait()
	wall = time.Since(t0)
	if ps := cmd.ProcessState; ps != nil {
		cpu = ps.UserTime() + ps.SystemTime()
	}
	pw.Close()
	<-done
	if err != nil {
		return wall, cpu, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return wall, cpu, nil
}

// cpuTicks is the host's busy and total CPU time (/proc/stat's cpu line,
// in clock ticks; idle and iowait are not busy).
func cpuTicks() (busy, total uint64, err error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

// hostBusy is the fraction of the host's CPU time that was busy between
// two cpuTicks samples.
func hostBusy(b0, t0, b1, t1 uint64) float64 {
	if t1 <= t0 {
		return 0
	}
	return round3(float64(b1-b0) / float64(t1-t0))
}

// status runs `rotate status -o json` (in the host namespace: not timed).
func status(ctx context.Context, rotateBin, statePath string) (*statusReport, error) {
	cmd := exec.CommandContext(ctx, rotateBin, "status", "--state", statePath, "-o", "json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("rotate status: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return parseStatus(out)
}

const inotifyInstances = "/proc/sys/fs/inotify/max_user_instances"

// raiseInotifyInstances raises the host's fs.inotify.max_user_instances to
// at least want for the bench, and returns what puts the old value back
// (nil when nothing changed).
func raiseInotifyInstances(want int) (func(), error) {
	raw, err := os.ReadFile(inotifyInstances)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", inotifyInstances, err)
	}
	old := strings.TrimSpace(string(raw))
	cur, err := strconv.Atoi(old)
	if err != nil {
		return nil, fmt.Errorf("%s: %q: %w", inotifyInstances, old, err)
	}
	if cur >= want {
		return nil, nil
	}
	if err := os.WriteFile(inotifyInstances, []byte(strconv.Itoa(want)), 0o644); err != nil {
		return nil, fmt.Errorf("raise %s to %d: %w", inotifyInstances, want, err)
	}
	logf("fs.inotify.max_user_instances raised from %d to %d for the bench (restored at the end)", cur, want)
	return func() {
		if err := os.WriteFile(inotifyInstances, []byte(old), 0o644); err != nil {
			logf("restore %s to %s: %v", inotifyInstances, old, err)
		}
	}, nil
}
