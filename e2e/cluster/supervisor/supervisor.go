// Package supervisor plays the kubelet's static-pod role on an e2e node: it
// watches the manifests directory, runs every container's command as a local
// process, restarts a component when its manifest content changes (the
// kubelet's rule: content, not mtime) or when it exits (with backoff), and it
// runs the node agent (e2e-kubelet) as a managed service that can be
// restarted through a unix socket, like `systemctl restart kubelet`.
//
// The supervisor itself runs inside the node's network, mount and UTS
// namespaces; everything it starts inherits them.
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

// KubeletService is the name of the managed node-agent service.
const KubeletService = "kubelet"

// Config configures a supervisor.
type Config struct {
	// NodeName is used in log attributes only.
	NodeName string
	// ManifestDir is the static pod directory (/etc/kubernetes/manifests).
	ManifestDir string
	// LogDir receives one <component>.log file per service.
	LogDir string
	// Socket is the unix socket path for control requests.
	Socket string
	// Path is the PATH given to every child (binaries are resolved in it).
	Path string
	// Kubelet is the node agent's argv; empty means no agent.
	Kubelet []string
	// StopTimeout is how long a component gets between SIGTERM and SIGKILL.
	StopTimeout time.Duration
	// PollInterval is how often the manifest directory is read.
	PollInterval time.Duration
	// MaxBackoff caps the restart backoff of a crashing component.
	MaxBackoff time.Duration
	// KubeletRestartDelay is the node agent's constant restart delay.
	KubeletRestartDelay time.Duration
}

func (c *Config) defaults() {
	if c.StopTimeout == 0 {
		c.StopTimeout = 20 * time.Second
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 20 * time.Second
	}
	if c.KubeletRestartDelay == 0 {
		c.KubeletRestartDelay = time.Second
	}
}

// Supervisor runs static pods and the node agent.
type Supervisor struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	pods     map[string]*pod // by pod name
	kubelet  *runner
	stopping bool
}

type pod struct {
	name    string
	file    string
	hash    string
	runners []*runner
}

// New returns a supervisor for cfg.
func New(cfg Config, log *slog.Logger) *Supervisor {
	cfg.defaults()
	return &Supervisor{cfg: cfg, log: log.With("node", cfg.NodeName), pods: map[string]*pod{}}
}

// Run supervises until ctx is cancelled, then stops every component (in
// parallel, SIGTERM then SIGKILL after StopTimeout) and returns.
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

	if len(s.cfg.Kubelet) > 0 {
		s.mu.Lock()
		s.kubelet = s.newRunner(KubeletService, KubeletService, s.cfg.Kubelet, nil, s.cfg.KubeletRestartDelay)
		s.mu.Unlock()
	}

	tick := time.NewTicker(s.cfg.PollInterval)
	defer tick.Stop()
	for {
		s.sync()
		select {
		case <-ctx.Done():
			s.shutdown()
			return nil
		case <-tick.C:
		}
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

// shutdown stops everything: first every pod but etcd (and the node agent),
// then etcd, so apiservers can still reach etcd while they shut down.
func (s *Supervisor) shutdown() {
	s.StopPods([]string{"etcd"})
	s.StopPods(nil)
}

// StopPods stops every pod (and the node agent) except the named pods and
// stops reconciling: nothing is started again until the supervisor restarts.
func (s *Supervisor) StopPods(except []string) {
	s.mu.Lock()
	s.stopping = true
	var all []*runner
	for name, p := range s.pods {
		if !slices.Contains(except, name) {
			all = append(all, p.runners...)
		}
	}
	if s.kubelet != nil {
		all = append(all, s.kubelet)
	}
	s.mu.Unlock()
	s.log.Info("stopping components", "count", len(all), "except", except)
	stopAll(all)
}

func stopAll(rs []*runner) {
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() { defer wg.Done(); r.stop() }()
	}
	wg.Wait()
}

// sync reconciles the running pods with the manifest directory.
func (s *Supervisor) sync() {
	desired, err := readManifests(s.cfg.ManifestDir, s.log)
	if err != nil {
		s.log.Warn("read manifests", "err", err)
		return
	}
	// Pods whose manifest changed or disappeared: the kubelet kills the
	// old pod before it starts the new one.
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	var old []*pod
	for name, cur := range s.pods {
		want, ok := desired[name]
		if ok && want.hash == cur.hash {
			continue
		}
		if ok {
			s.log.Info("manifest changed, restarting pod", "pod", name, "file", want.file, "old", cur.hash[:12], "new", want.hash[:12])
		} else {
			s.log.Info("manifest removed, stopping pod", "pod", name)
		}
		old = append(old, cur)
		delete(s.pods, name)
	}
	s.mu.Unlock()
	for _, p := range old {
		stopAll(p.runners)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return
	}
	for name, want := range desired {
		if _, ok := s.pods[name]; ok {
			continue
		}
		p := &pod{name: name, file: want.file, hash: want.hash}
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
			p.runners = append(p.runners, s.newRunner(c.Name, name+"/"+c.Name, argv, env, 0))
		}
		s.log.Info("starting pod", "pod", name, "file", want.file, "hash", want.hash[:12])
		s.pods[name] = p
	}
}

type manifest struct {
	file       string
	hash       string
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
		name, hash, containers, err := ParseManifest(raw)
		if err != nil {
			log.Warn("invalid manifest ignored", "file", path, "err", err)
			continue
		}
		if _, dup := out[name]; dup {
			log.Warn("duplicate pod name ignored", "file", path, "pod", name)
			continue
		}
		out[name] = manifest{file: path, hash: hash, containers: containers}
	}
	return out, nil
}

// ParseManifest decodes a static pod manifest and returns the pod name, a
// hash of its content (of the decoded object, so formatting and comments do
// not count, every field does) and its containers.
func ParseManifest(raw []byte) (name, hash string, containers []corev1.Container, err error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return "", "", nil, err
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return "", "", nil, err
	}
	canonical, err := json.Marshal(generic) // map keys sorted
	if err != nil {
		return "", "", nil, err
	}
	var p corev1.Pod
	if err := json.Unmarshal(js, &p); err != nil {
		return "", "", nil, err
	}
	if p.Kind != "Pod" || p.Name == "" {
		return "", "", nil, fmt.Errorf("not a named Pod (kind %q, name %q)", p.Kind, p.Name)
	}
	if len(p.Spec.Containers) == 0 {
		return "", "", nil, fmt.Errorf("pod %s has no containers", p.Name)
	}
	sum := sha256.Sum256(canonical)
	return p.Name, hex.EncodeToString(sum[:]), p.Spec.Containers, nil
}

// ServiceStatus describes one supervised process.
type ServiceStatus struct {
	Name     string    `json:"name"`
	Pod      string    `json:"pod,omitempty"`
	Hash     string    `json:"hash,omitempty"`
	PID      int       `json:"pid"`
	Running  bool      `json:"running"`
	Restarts int       `json:"restarts"`
	Started  time.Time `json:"started,omitempty"`
	LastExit string    `json:"lastExit,omitempty"`
}

// Status lists every supervised process.
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
	if s.kubelet != nil {
		out = append(out, s.kubelet.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// RestartKubelet stops the node agent and starts a new one; it returns once
// the new process has been started (not once it is healthy).
func (s *Supervisor) RestartKubelet(ctx context.Context) (int, error) {
	s.mu.Lock()
	r := s.kubelet
	s.mu.Unlock()
	if r == nil {
		return 0, errors.New("no node agent configured on this node")
	}
	return r.restart(ctx)
}
