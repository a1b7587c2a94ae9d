package steps

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/internal/redact"
	"github.com/kubeca/rotate/internal/waits"
	"github.com/kubeca/rotate/nodes"
)

// pollInterval is how often gates re-evaluate their condition. Gates wait
// on a condition with the step's deadline, never for a fixed time.
const pollInterval = 500 * time.Millisecond

// waitFor polls cond until it reports done, the context ends, or cond
// fails permanently. The last "not yet" reason is part of a timeout error.
// It logs, at debug level, each new reason to wait and how long the wait
// took, with the step's attributes (rt.Log).
func (rt *Runtime) waitFor(ctx context.Context, what string, cond func(ctx context.Context) (done bool, why string, err error)) error {
	return waitLogged(ctx, rt.Log, what, cond)
}

func waitLogged(ctx context.Context, log *slog.Logger, what string, cond func(ctx context.Context) (done bool, why string, err error)) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	defer waits.Start(ctx, waits.Cluster)()
	var last string
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		done, why, err := cond(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if done {
			log.Debug("wait over", "for", what, "duration", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if why != last {
			log.Debug("waiting", "for", what, "why", redact.Text(why), "waited", time.Since(start).Round(time.Millisecond))
		}
		last = why
		select {
		case <-ctx.Done():
			if last != "" {
				return fmt.Errorf("%s: %w (last: %s)", what, ctx.Err(), last)
			}
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// Component is a control-plane static pod.
type Component struct {
	Name       string // container and process name
	Manifest   string // file name in the manifests dir
	HealthPort int    // local https healthz port; 0 = none
}

var (
	APIServer         = Component{Name: "kube-apiserver", Manifest: "kube-apiserver.yaml", HealthPort: 0}
	ControllerManager = Component{Name: "kube-controller-manager", Manifest: "kube-controller-manager.yaml", HealthPort: 10257}
	Scheduler         = Component{Name: "kube-scheduler", Manifest: "kube-scheduler.yaml", HealthPort: 10259}
)

// awaitChunk is the longest one node-side wait of a restart gate lasts
// before rotate looks again (and logs why it still waits).
const awaitChunk = 15 * time.Second

// componentUp waits on the node, at most awaitChunk and never past ctx's
// deadline, until the component's newest process started after its
// manifest was last written and, with a health port, its local healthz
// answers "ok" (nodes.AwaitProcess: one round trip), and says whether
// that is so now, or why not.
func componentUp(ctx context.Context, r nodes.Runner, c Component, manifestPath string) (bool, string, error) {
	within := awaitChunk
	if dl, ok := ctx.Deadline(); ok {
		within = min(within, time.Until(dl)-time.Second)
	}
	p, health, err := nodes.AwaitProcess(ctx, r, c.Name, manifestPath, c.HealthPort, within)
	if err != nil {
		return false, "", err
	}
	switch {
	case !p.Running:
		return false, c.Name + " is not running", nil
	case !p.StartedAfterWrite:
		return false, fmt.Sprintf("%s (pid %s) is older than its manifest", c.Name, p.PID), nil
	case c.HealthPort == 0:
		return true, "", nil
	case strings.HasPrefix(health, "curl exit"):
		return false, fmt.Sprintf("healthz on port %d: %s", c.HealthPort, health), nil
	case health != "ok":
		return false, fmt.Sprintf("healthz on port %d says %q", c.HealthPort, health), nil
	}
	return true, "", nil
}

// apiServerReady asks https://<endpoint>/readyz of one apiserver (see
// Config.APIServerEndpoint).
func (rt *Runtime) apiServerReady(ctx context.Context, endpoint string) (bool, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+endpoint+"/readyz", nil)
	if err != nil {
		return false, "", err
	}
	resp, err := rt.Trust.HTTPClient().Do(req)
	if err != nil {
		return false, err.Error(), nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Sprintf("readyz %d: %s", resp.StatusCode, firstLine(body)), nil
	}
	return true, "", nil
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

func joinHostPort(host string, port int) string {
	if port == 0 {
		port = 6443
	}
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}

// Gates are the restart gates of node steps: they return once a component
// restarted by a step runs from its current configuration and is healthy,
// so that the process that ran the previous configuration is gone.
// Runtime.Gates nil means the live gates below; tests substitute gates
// that record when each one passed.
type Gates interface {
	// Component waits until the static pod c on t has restarted from its
	// current manifest and is healthy.
	Component(ctx context.Context, rt *Runtime, t Target, c Component) error
	// Kubelet waits until the kubelet on node, restarted, is Ready and
	// renews its lease.
	Kubelet(ctx context.Context, rt *Runtime, node string) error
	// Etcd waits until the etcd member on t is healthy (serving a
	// certificate of the new etcd CA when servesNew) in a cluster of every
	// member preflight recorded, all healthy.
	Etcd(ctx context.Context, rt *Runtime, t Target, servesNew bool) error
}

// liveGates asks the node (process start time, local healthz) and the API
// (readyz, Node and Lease).
type liveGates struct{}

var _ Gates = liveGates{}

func (rt *Runtime) gates() Gates {
	if rt.Gates != nil {
		return rt.Gates
	}
	return liveGates{}
}

func (rt *Runtime) gateComponent(ctx context.Context, t Target, c Component) error {
	return rt.gates().Component(ctx, rt, t, c)
}

func (rt *Runtime) gateKubelet(ctx context.Context, node string) error {
	return rt.gates().Kubelet(ctx, rt, node)
}

// Component waits until the component on t has restarted from its
// current manifest and is healthy.
func (liveGates) Component(ctx context.Context, rt *Runtime, t Target, c Component) error {
	r, err := rt.node(ctx, t)
	if err != nil {
		return err
	}
	manifest := rt.Config.Paths.ManifestsDir + "/" + c.Manifest
	// Once a process newer than the manifest runs, every later newest
	// process is newer too (the manifest does not change during the
	// gate): the apiserver's readiness is then polled over HTTPS alone.
	restarted := false
	return rt.waitFor(ctx, fmt.Sprintf("%s on %s to restart and become healthy", c.Name, t.Node), func(ctx context.Context) (bool, string, error) {
		if !restarted {
			ok, why, err := componentUp(ctx, r, c, manifest)
			if err != nil || !ok {
				return ok, why, err
			}
			restarted = true
		}
		if c == APIServer {
			return rt.apiServerReady(ctx, rt.Config.APIServerEndpoint(t.Node))
		}
		return true, "", nil
	})
}

// Etcd asks etcd from t's node (etcdHealthy).
func (liveGates) Etcd(ctx context.Context, rt *Runtime, t Target, servesNew bool) error {
	return rt.etcdHealthy(ctx, t, servesNew)
}

// Kubelet waits until the node is Ready and its Lease was renewed by the
// kubelet running now, with its current credentials: renewed after the
// kubelet rotate last restarted there started (KubeletStarts, the node's
// clock, which the kubelet writes renewTime with), which a kubelet does
// as soon as it runs; without that record (a gate after a resume that
// found the restart done, or a kubelet in another network namespace than
// rotate's shell), renewed after the gate started, which takes up to a
// renewal interval (a quarter of nodeLeaseDurationSeconds: 10 s by
// default).
//
// The record serves every gate until the next restart: a step's revert
// passes the gate before its late restorations and again after them
// (RevertGate), and late restorations only remove or narrow files the
// restarted kubelet no longer reads (fileedit.PlanRestore), so the
// kubelet that renewed after its start is still the proof.
func (liveGates) Kubelet(ctx context.Context, rt *Runtime, node string) error {
	started, known := rt.KubeletStarts.last(node)
	var first *metav1.MicroTime
	return rt.waitFor(ctx, "kubelet on "+node+" to renew its lease and be Ready", func(ctx context.Context) (bool, string, error) {
		lease, err := rt.Kube.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, "lease: " + err.Error(), nil
		}
		renew := leaseRenew(lease)
		switch {
		case known:
			if !renew.After(started.Add(kubeletStartMargin)) {
				return false, "lease not renewed since the restarted kubelet started (" + started.Format(time.RFC3339Nano) + ", node clock)", nil
			}
		case first == nil:
			first = &renew
			return false, "waiting for the next lease renewal", nil
		case !renew.After(first.Time):
			return false, "lease not renewed since " + first.Format(time.RFC3339), nil
		}
		n, err := rt.Kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, "node: " + err.Error(), nil
		}
		if !nodeReady(n) {
			return false, "node is not Ready", nil
		}
		return true, "", nil
	})
}

// kubeletStartMargin is added to the restarted kubelet's start before a
// renewal counts as its own. The start is read to a clock tick (10 ms) and
// the node's time to /proc/uptime's 10 ms; a renewal by the previous
// kubelet is older than the new one's start (a restart stops it first),
// and a kubelet's first renewal comes after it loaded its configuration
// and reached an apiserver, hundreds of milliseconds at least.
const kubeletStartMargin = 50 * time.Millisecond

// KubeletStarts records, per node, when the kubelet rotate restarted last
// started (node clock), for the Kubelet gates that follow, in this
// process only: a resumed run has none and waits for a renewal. Every copy
// of a Runtime shares it; nil records nothing.
type KubeletStarts struct {
	mu sync.Mutex
	by map[string]time.Time
}

func NewKubeletStarts() *KubeletStarts { return &KubeletStarts{by: map[string]time.Time{}} }

func (k *KubeletStarts) record(node string, at time.Time, ok bool) {
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if ok {
		k.by[node] = at
	} else {
		delete(k.by, node)
	}
}

// last is node's record: when the kubelet rotate restarted last started.
func (k *KubeletStarts) last(node string) (time.Time, bool) {
	if k == nil {
		return time.Time{}, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	at, ok := k.by[node]
	return at, ok
}

func leaseRenew(l *coordinationv1.Lease) metav1.MicroTime {
	if l.Spec.RenewTime != nil {
		return *l.Spec.RenewTime
	}
	return metav1.MicroTime{}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// restartKubelet runs the inventory's restart command on the node and
// records when the kubelet running after it started (KubeletStarts), in
// the same round trip.
func (rt *Runtime) restartKubelet(ctx context.Context, r nodes.Runner, after ...nodes.FileOp) error {
	// The command returns once the kubelet is healthy again: a wait on
	// the node, not rotate's work. What r has queued goes with it, and
	// after once it succeeded: one round trip (nodes.RestartReport).
	defer waits.Start(ctx, waits.Restart)()
	started, ok, err := nodes.RestartReport(ctx, r, rt.Config.KubeletRestartCommand, "kubelet", after...)
	if err != nil {
		return fmt.Errorf("restart kubelet on %s (%s): %w", r.Name(), rt.Config.KubeletRestartCommand, err)
	}
	rt.KubeletStarts.record(r.Name(), started, ok)
	return nil
}
