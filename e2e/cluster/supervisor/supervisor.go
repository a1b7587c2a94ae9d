// Package supervisor runs the processes of an e2e node that a container
// runtime would run on a real one. Static pods: it watches the manifests
// directory the way the kubelet's file source does (inotify, plus a full
// re-read every Resync), runs every container's command as a local process
// and, when a manifest's content changes (the kubelet's rule: content, not
// mtime), stops the old pod gracefully — SIGTERM, the process keeps
// serving while it shuts down, SIGKILL only after the pod's
// terminationGracePeriodSeconds (30 s when unset) — and only then starts
// the new one. A crashed container restarts with backoff. Services: the
// node's container runtime and kubelet run as managed services with a
// constant restart delay, like systemd units, and can be restarted through
// a unix socket (`systemctl restart kubelet`).
//
// A notice delay (NoticeDelay, changeable at run time) makes the
// supervisor act on a manifest change only that long after it saw it:
// "slow mode", a kubelet that is busy or resyncing. Whatever rotate does
// must be correct however long the old process keeps running.
//
// The supervisor runs inside the node's network, mount and UTS namespaces;
// everything it starts inherits them.
package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// KubeletService is the name of the restartable kubelet service.
const KubeletService = "kubelet"

// DefaultGracePeriod is a pod's terminationGracePeriodSeconds when its
// manifest sets none (the API default).
const DefaultGracePeriod = 30 * time.Second

// ServiceSpec is one managed service.
type ServiceSpec struct {
	Name string   `json:"name"`
	Argv []string `json:"argv"`
	// Dir is the working directory ("" is /). Give services that clean up
	// files by relative glob an empty directory of their own.
	Dir string `json:"dir,omitempty"`
}

// Config configures a supervisor.
type Config struct {
	// NodeName is used in log attributes only.
	NodeName string
	// ManifestDir is the static pod directory (/etc/kubernetes/manifests).
	ManifestDir string
	// LogDir receives one <component>.log file per container and service.
	LogDir string
	// Socket is the unix socket path for control requests.
	Socket string
	// Path is the PATH given to every child (binaries are resolved in it).
	Path string
	// Services run for the supervisor's lifetime, started in order
	// (typically the container runtime, then the kubelet).
	Services []ServiceSpec
	// GracePeriod overrides every pod's terminationGracePeriodSeconds when
	// set (tests); 0 uses the manifest's (DefaultGracePeriod when unset).
	GracePeriod time.Duration
	// ServiceStopTimeout is how long a service gets between SIGTERM and
	// SIGKILL (systemd's TimeoutStopSec).
	ServiceStopTimeout time.Duration
	// Resync is the period of the full re-read of the manifest directory
	// (the kubelet's fileCheckFrequency, 20 s). Changes are normally seen at
	// once through inotify.
	Resync time.Duration
	// NoticeDelay delays acting on a manifest change (see the package
	// comment); SetNoticeDelay changes it.
	NoticeDelay time.Duration
	// MaxBackoff caps the restart backoff of a crashing container.
	MaxBackoff time.Duration
	// ServiceRestartDelay is the services' constant restart delay.
	ServiceRestartDelay time.Duration
}

func (c *Config) defaults() {
	if c.ServiceStopTimeout == 0 {
		c.ServiceStopTimeout = 20 * time.Second
	}
	if c.Resync == 0 {
		c.Resync = 20 * time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 20 * time.Second
	}
	if c.ServiceRestartDelay == 0 {
		c.ServiceRestartDelay = time.Second
	}
}

// Supervisor runs static pods and services.
type Supervisor struct {
	cfg    Config
	log    *slog.Logger
	wake   chan struct{}
	synced chan chan struct{} // Sync requests, answered after a full sync

	mu          sync.Mutex
	noticeDelay time.Duration
	pods        map[string]*pod          // running, by pod name
	terminating map[string]chan struct{} // pods being stopped, closed when gone
	seen        map[string]pendingChange // manifest changes not yet acted on
	services    map[string]*runner       // by service name
	order       []string                 // service names in start order
	stopping    bool
}

type pod struct {
	name    string
	file    string
	hash    string
	grace   time.Duration
	runners []*runner
}

// pendingChange is a manifest change the supervisor has seen but not yet
// acted on (NoticeDelay).
type pendingChange struct {
	hash  string // "" for a removal
	since time.Time
}

// New returns a supervisor for cfg.
func New(cfg Config, log *slog.Logger) *Supervisor {
	cfg.defaults()
	return &Supervisor{
		cfg: cfg, log: log.With("node", cfg.NodeName), wake: make(chan struct{}, 1), synced: make(chan chan struct{}),
		noticeDelay: cfg.NoticeDelay,
		pods:        map[string]*pod{}, terminating: map[string]chan struct{}{},
		seen: map[string]pendingChange{}, services: map[string]*runner{},
	}
}

// Run supervises until ctx is cancelled, then stops every pod and service
// (pods but etcd first, then etcd and the services) and returns.
func (s *Supervisor) Run(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.LogDir, 0o755); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}
	ln, err := s.listen()
	if err != nil {
		return err
	}
	defer os.Remove(s.cfg.Socket)
	defer ln.Close()
	go s.serve(ctx, ln)

	s.mu.Lock()
	for _, sv := range s.cfg.Services {
		s.services[sv.Name] = s.newRunner(sv.Name, "service/"+sv.Name, sv.Argv, nil, sv.Dir, s.cfg.ServiceStopTimeout, s.cfg.ServiceRestartDelay)
		s.order = append(s.order, sv.Name)
	}
	s.mu.Unlock()

	stopWatch := s.watch(ctx)
	defer stopWatch()
	resync := time.NewTicker(s.cfg.Resync)
	defer resync.Stop()
	var reply chan struct{}
	for {
		next := s.sync()
		if reply != nil {
			close(reply)
			reply = nil
		}
		var timer <-chan time.Time
		if next > 0 {
			timer = time.After(next)
		}
		select {
		case <-ctx.Done():
			s.shutdown()
			return nil
		case <-s.wake:
		case <-resync.C:
		case <-timer:
		case reply = <-s.synced:
		}
	}
}

// Sync returns after the supervisor has read the manifest directory and
// acted on what it found (as far as the notice delay allows): everything
// written before the call has been seen.
func (s *Supervisor) Sync(ctx context.Context) error {
	reply := make(chan struct{})
	select {
	case s.synced <- reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-reply:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// poke makes the loop re-read the manifests now.
func (s *Supervisor) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Supervisor) listen() (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(s.cfg.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	_ = os.Remove(s.cfg.Socket)
	ln, err := net.Listen("unix", s.cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", s.cfg.Socket, err)
	}
	if err := os.Chmod(s.cfg.Socket, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", s.cfg.Socket, err)
	}
	return ln, nil
}

// shutdown stops everything: first every pod but etcd, then etcd and the
// services, so apiservers can still reach etcd while they shut down.
func (s *Supervisor) shutdown() {
	s.StopPods([]string{"etcd"})
	s.StopPods(nil)
}

// StopPods stops every pod except the named ones, and every service, and
// stops reconciling: nothing is started again until the supervisor
// restarts. Pods already terminating are waited for.
func (s *Supervisor) StopPods(except []string) {
	s.mu.Lock()
	s.stopping = true
	var all []*runner
	for name, p := range s.pods {
		if !slices.Contains(except, name) {
			all = append(all, p.runners...)
		}
	}
	for _, sv := range s.services {
		all = append(all, sv)
	}
	var waits []chan struct{}
	for _, ch := range s.terminating {
		waits = append(waits, ch)
	}
	s.mu.Unlock()
	s.log.Info("stopping components", "count", len(all), "except", except)
	stopAll(all)
	for _, ch := range waits {
		<-ch
	}
}

func stopAll(rs []*runner) {
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() { defer wg.Done(); r.stop() }()
	}
	wg.Wait()
}

// SetNoticeDelay changes the notice delay for changes seen from now on.
func (s *Supervisor) SetNoticeDelay(d time.Duration) {
	s.mu.Lock()
	s.noticeDelay = d
	s.mu.Unlock()
	s.log.Info("notice delay set", "delay", d)
	s.poke()
}

// sync reconciles the pods with the manifest directory: a pod whose
// manifest changed or disappeared (and whose change is older than the
// notice delay) is stopped gracefully in the background and, once gone,
// started from its new manifest. It returns how long until a pending change
// becomes due (0: none pending).
func (s *Supervisor) sync() time.Duration {
	desired, err := readManifests(s.cfg.ManifestDir, s.log)
	if err != nil {
		s.log.Warn("read manifests", "err", err)
		return 0
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return 0
	}
	var next time.Duration
	due := func(name, hash string) bool {
		pc, ok := s.seen[name]
		if !ok || pc.hash != hash {
			pc = pendingChange{hash: hash, since: now}
			s.seen[name] = pc
			if s.noticeDelay > 0 {
				s.log.Info("manifest change seen", "pod", name, "actAfter", s.noticeDelay)
			}
		}
		wait := s.noticeDelay - now.Sub(pc.since)
		if wait <= 0 {
			return true
		}
		if next == 0 || wait < next {
			next = wait
		}
		return false
	}
	// Pods whose manifest changed or disappeared: the kubelet kills the
	// old pod (gracefully) before it starts the new one.
	for name, cur := range s.pods {
		want, ok := desired[name]
		if ok && want.hash == cur.hash {
			delete(s.seen, name)
			continue
		}
		if !due(name, want.hash) {
			continue
		}
		if ok {
			s.log.Info("manifest changed, stopping the old pod", "pod", name, "file", want.file, "old", cur.hash[:12], "new", want.hash[:12], "grace", cur.grace)
		} else {
			s.log.Info("manifest removed, stopping pod", "pod", name, "grace", cur.grace)
		}
		delete(s.pods, name)
		done := make(chan struct{})
		s.terminating[name] = done
		go func() {
			stopAll(cur.runners)
			s.mu.Lock()
			delete(s.terminating, name)
			s.mu.Unlock()
			close(done)
			s.log.Info("pod stopped", "pod", name)
			s.poke()
		}()
	}
	for name, want := range desired {
		if _, ok := s.pods[name]; ok {
			continue
		}
		if _, ok := s.terminating[name]; ok {
			continue // started once the old pod is gone
		}
		if !due(name, want.hash) {
			continue
		}
		delete(s.seen, name)
		p := &pod{name: name, file: want.file, hash: want.hash, grace: want.grace}
		if s.cfg.GracePeriod > 0 {
			p.grace = s.cfg.GracePeriod
		}
		for _, c := range want.containers {
			argv := append(append([]string{}, c.Command...), c.Args...)
			if len(argv) == 0 {
				s.log.Warn("container has no command, skipped", "pod", name, "container", c.Name)
				continue
			}
			var env []string
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					env = append(env, e.Name+"="+e.Value)
				}
			}
			p.runners = append(p.runners, s.newRunner(c.Name, name+"/"+c.Name, argv, env, "", p.grace, 0))
		}
		s.log.Info("starting pod", "pod", name, "file", want.file, "hash", want.hash[:12])
		s.pods[name] = p
	}
	for name := range s.seen {
		if _, ok := desired[name]; !ok {
			if _, running := s.pods[name]; !running {
				delete(s.seen, name)
			}
		}
	}
	return next
}

type manifest struct {
	file       string
	hash       string
	grace      time.Duration
	containers []corev1.Container
}

// readManifests reads every non-hidden regular file in dir as a Pod, like the
// kubelet's file source. Two files defining the same pod name: the first in
// lexical order wins.
func readManifests(dir string, log *slog.Logger) (map[string]manifest, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]manifest{}, nil
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	out := map[string]manifest{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		raw, err := os.ReadFile(path)
		if err != nil {
			log.Warn("read manifest", "file", path, "err", err)
			continue
		}
		p, hash, err := parsePod(raw)
		if err != nil {
			log.Warn("invalid manifest ignored", "file", path, "err", err)
			continue
		}
		if _, dup := out[p.Name]; dup {
			log.Warn("duplicate pod name ignored", "file", path, "pod", p.Name)
			continue
		}
		grace := DefaultGracePeriod
		if g := p.Spec.TerminationGracePeriodSeconds; g != nil {
			grace = time.Duration(*g) * time.Second
		}
		out[p.Name] = manifest{file: path, hash: hash, grace: grace, containers: p.Spec.Containers}
	}
	return out, nil
}

// ParseManifest decodes a static pod manifest and returns the pod name, a
// hash of its content (of the decoded object, so formatting and comments do
// not count, every field does) and its containers.
func ParseManifest(raw []byte) (name, hash string, containers []corev1.Container, err error) {
	p, hash, err := parsePod(raw)
	if err != nil {
		return "", "", nil, err
	}
	return p.Name, hash, p.Spec.Containers, nil
}

func parsePod(raw []byte) (*corev1.Pod, string, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, "", err
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return nil, "", err
	}
	canonical, err := json.Marshal(generic) // map keys sorted
	if err != nil {
		return nil, "", err
	}
	var p corev1.Pod
	if err := json.Unmarshal(js, &p); err != nil {
		return nil, "", err
	}
	if p.Kind != "Pod" || p.Name == "" {
		return nil, "", fmt.Errorf("not a named Pod (kind %q, name %q)", p.Kind, p.Name)
	}
	if len(p.Spec.Containers) == 0 {
		return nil, "", fmt.Errorf("pod %s has no containers", p.Name)
	}
	sum := sha256.Sum256(canonical)
	return &p, hex.EncodeToString(sum[:]), nil
}

// ServiceStatus describes one supervised process.
type ServiceStatus struct {
	Name        string    `json:"name"`
	Pod         string    `json:"pod,omitempty"`
	Hash        string    `json:"hash,omitempty"`
	PID         int       `json:"pid"`
	Running     bool      `json:"running"`
	Terminating bool      `json:"terminating,omitempty"`
	Restarts    int       `json:"restarts"`
	Started     time.Time `json:"started,omitempty"`
	LastExit    string    `json:"lastExit,omitempty"`
}

// Status lists every supervised process; a pod being stopped shows as
// Terminating (its process may still run and serve).
func (s *Supervisor) Status() []ServiceStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ServiceStatus
	for _, p := range s.pods {
		for _, r := range p.runners {
			st := r.status()
			st.Pod = p.name
			st.Hash = p.hash
			out = append(out, st)
		}
	}
	for name := range s.terminating {
		out = append(out, ServiceStatus{Name: name, Pod: name, Terminating: true})
	}
	for _, name := range s.order {
		out = append(out, s.services[name].status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// RestartService stops the named service and starts a new process; it
// returns once the new process has been started (not once it is healthy).
func (s *Supervisor) RestartService(ctx context.Context, name string) (int, error) {
	s.mu.Lock()
	r := s.services[name]
	s.mu.Unlock()
	if r == nil {
		return 0, fmt.Errorf("no service %q on this node", name)
	}
	return r.restart(ctx)
}
