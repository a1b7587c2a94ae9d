package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// runner keeps one process running until stopped: it restarts the process
// when it exits (exponential backoff, reset after a healthy run) and on
// request.
type runner struct {
	name    string // service (log file) name
	argv    []string
	env     []string
	logPath string
	path    string
	stopTO  time.Duration
	maxBack time.Duration
	// fixedDelay, if set, replaces the exponential backoff (a systemd
	// unit's Restart=always + RestartSec, as the kubelet's unit has).
	fixedDelay time.Duration
	dir        string // working directory ("" is /)
	log        *slog.Logger

	stopOnce  sync.Once
	stopCh    chan struct{}
	restartCh chan chan restartResult
	done      chan struct{}

	mu       sync.Mutex
	pid      int
	running  bool
	restarts int
	started  time.Time
	lastExit string
}

type restartResult struct {
	pid int
	err error
}

// newRunner starts keeping argv running in dir ("" is /). stopTO is the
// time between SIGTERM and SIGKILL when it is stopped (a pod's grace
// period, a service's stop timeout); fixedDelay, if set, is its constant
// restart delay.
func (s *Supervisor) newRunner(name, id string, argv, env []string, dir string, stopTO, fixedDelay time.Duration) *runner {
	r := &runner{
		dir:        dir,
		name:       name,
		argv:       argv,
		env:        env,
		logPath:    filepath.Join(s.cfg.LogDir, name+".log"),
		path:       s.cfg.Path,
		stopTO:     stopTO,
		maxBack:    s.cfg.MaxBackoff,
		fixedDelay: fixedDelay,
		log:        s.log.With("service", id),
		stopCh:     make(chan struct{}),
		restartCh:  make(chan chan restartResult),
		done:       make(chan struct{}),
	}
	go r.loop()
	return r
}

// stop terminates the process (SIGTERM, then SIGKILL after the stop timeout)
// and waits until it has exited.
func (r *runner) stop() {
	r.stopOnce.Do(func() { close(r.stopCh) })
	<-r.done
}

func (r *runner) restart(ctx context.Context) (int, error) {
	reply := make(chan restartResult, 1)
	select {
	case r.restartCh <- reply:
	case <-r.done:
		return 0, errors.New("service is stopped")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case res := <-reply:
		return res.pid, res.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (r *runner) status() ServiceStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return ServiceStatus{Name: r.name, PID: r.pid, Running: r.running, Restarts: r.restarts, Started: r.started, LastExit: r.lastExit}
}

func (r *runner) next(backoff time.Duration) time.Duration {
	if r.fixedDelay > 0 {
		return r.fixedDelay
	}
	return min(backoff*2, r.maxBack)
}

func (r *runner) loop() {
	defer close(r.done)
	backoff := time.Second
	var pending chan restartResult // a restart request waiting for the new process
	for first := true; ; first = false {
		if !first {
			r.mu.Lock()
			r.restarts++
			r.mu.Unlock()
		}
		cmd, exited, err := r.start()
		if err != nil {
			r.log.Error("start failed", "err", err)
			if pending != nil {
				pending <- restartResult{err: err}
				pending = nil
			}
			if !r.sleep(backoff, &pending) {
				return
			}
			backoff = r.next(backoff)
			continue
		}
		started := time.Now()
		if pending != nil {
			pending <- restartResult{pid: cmd.Process.Pid}
			pending = nil
		}
		select {
		case err := <-exited:
			r.exited(err)
			if time.Since(started) > 30*time.Second {
				backoff = time.Second
			}
			r.log.Warn("process exited, restarting", "err", errString(err), "backoff", backoff)
			if !r.sleep(backoff, &pending) {
				return
			}
			backoff = r.next(backoff)
		case <-r.stopCh:
			r.terminate(cmd, exited)
			return
		case reply := <-r.restartCh:
			r.log.Info("restart requested")
			r.terminate(cmd, exited)
			pending = reply
			backoff = time.Second
		}
	}
}

// sleep waits d; it returns false if the runner was stopped meanwhile. A
// restart request cuts the wait short.
func (r *runner) sleep(d time.Duration, pending *chan restartResult) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.stopCh:
		if *pending != nil {
			*pending <- restartResult{err: errors.New("service stopped")}
		}
		return false
	case reply := <-r.restartCh:
		if *pending != nil {
			*pending <- restartResult{err: errors.New("superseded by another restart")}
		}
		*pending = reply
		return true
	}
}

func (r *runner) start() (*exec.Cmd, <-chan error, error) {
	lf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("open log: %w", err)
	}
	defer lf.Close()
	bin := r.argv[0]
	if !filepath.IsAbs(bin) {
		bin, err = lookPath(bin, r.path)
		if err != nil {
			fmt.Fprintf(lf, "=== %s supervisor: %v\n", time.Now().Format(time.RFC3339Nano), err)
			return nil, nil, err
		}
	}
	cmd := exec.Command(bin, r.argv[1:]...)
	cmd.Args[0] = r.argv[0]
	cmd.Dir = "/"
	if r.dir != "" {
		if err := os.MkdirAll(r.dir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("working dir: %w", err)
		}
		cmd.Dir = r.dir
	}
	cmd.Env = append([]string{"PATH=" + r.path, "HOME=/root"}, r.env...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	// Own process group, so a stop reaches the component's children too;
	// killed with the supervisor if the supervisor dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(lf, "=== %s supervisor: starting %q\n", time.Now().Format(time.RFC3339Nano), r.argv)
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", r.argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	r.mu.Lock()
	r.pid = cmd.Process.Pid
	r.running = true
	r.started = time.Now()
	r.mu.Unlock()
	r.log.Info("started", "pid", cmd.Process.Pid)
	return cmd, exited, nil
}

func (r *runner) exited(err error) {
	r.mu.Lock()
	r.running = false
	r.lastExit = errString(err)
	r.mu.Unlock()
	if lf, e := os.OpenFile(r.logPath, os.O_WRONLY|os.O_APPEND, 0o644); e == nil {
		fmt.Fprintf(lf, "=== %s supervisor: exited: %s\n", time.Now().Format(time.RFC3339Nano), errString(err))
		lf.Close()
	}
}

func (r *runner) terminate(cmd *exec.Cmd, exited <-chan error) {
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(r.stopTO)
	defer t.Stop()
	var err error
	select {
	case err = <-exited:
	case <-t.C:
		r.log.Warn("did not exit after SIGTERM, killing", "timeout", r.stopTO)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-exited
	}
	// Leftovers of the process group (if any) do not survive their leader.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	r.exited(err)
	r.log.Info("stopped", "pid", pgid, "exit", errString(err))
}

func errString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func lookPath(name, path string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH %s", name, path)
}
