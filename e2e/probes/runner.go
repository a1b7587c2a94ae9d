// Package probes watches a cluster during a CA rotation and records every
// failed request with its cause. Independent clients call the API every
// second with every kind of credential, read exactly as their real holder
// reads it:
//
//   - admin: each control-plane node's admin.conf (re-read when it
//     changes), against every apiserver and the load balancer;
//   - node: each node's kubelet.conf and kubelet-client-current.pem
//     (re-read when they change, as a restarted kubelet would), GET of its
//     own Node; and node-proxy: the apiserver's kubelet client certificate
//     against each real kubelet's clientCAFile
//     (/api/v1/nodes/NAME/proxy/healthz and /pods);
//   - in-cluster: a pod's view: the CA from ConfigMap kube-root-ca.crt and
//     a pod-bound service-account token, loaded once per pod of Deployment
//     rotate-probe/prober and reloaded only when that pod is replaced;
//   - aggregated: the front-proxy path to an aggregated API server run by
//     the probe itself, which authenticates the front proxy against
//     extension-apiserver-authentication like k8s.io/apiserver;
//   - leader-lease and component-logs: the KCM's and scheduler's leader
//     Leases and every kubelet's node Lease keep being renewed, and the
//     KCM's, scheduler's and kubelets' logs show no x509 or Unauthorized
//     lines;
//   - webhook: the apiserver's calls to an admission webhook whose
//     serving certificate the cluster CA issued through the CSR API;
//   - storage: a value written and read back through the apiservers
//     every second (storage.go): etcd keeps quorum.
//
// A report is clean when no request failed with an x509 error, 401 or
// 403. Connection failures while a component restarts are counted as
// "refused" and allowed.
//
// Restart windows: a restarted kube-apiserver accepts connections before
// its RBAC and token caches are loaded and then answers 403 (even to
// /readyz) or 401 for a few seconds. After a connection failure a probe
// of a single apiserver waits for its /readyz, and answers from an
// apiserver that an unauthenticated health check saw not ready moments
// ago (through the LB: any apiserver) count as refused, with a note in the
// failure record. Both excuses end startupGrace (90s) after the server
// went away, so a server that comes back broken is reported. x509
// failures are never excused.
package probes

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubeca/rotate/e2e/clusterinfo"
)

// Options tune a probe run. Zero values take the defaults.
type Options struct {
	// Interval between two requests of one probe target (default 1s).
	Interval time.Duration
	// RequestTimeout bounds each request (default 5s).
	RequestTimeout time.Duration
	// APIServerPort is each apiserver's port on its node (default 6443).
	APIServerPort int
	// Namespace holds the probe's resources (default rotate-probe).
	Namespace string
	// ComponentLogs are globs of component log files. Default:
	// kube-controller-manager.log and kube-scheduler.log in every
	// control-plane node's logDir, kubelet.log in every node's.
	ComponentLogs []string
	// AggregatorAddress is the aggregated API server's listen address
	// (default HostAddress:0, a free port).
	AggregatorAddress string
	// LeaseSlack is added to a leader Lease's duration before a renewal
	// gap counts as a failure (default 10s).
	LeaseSlack time.Duration
	// SetupTimeout bounds the setup (default 3m).
	SetupTimeout time.Duration
	// SkipSetup assumes `e2e-probe setup` ran: namespace, service account,
	// RBAC and the prober Deployment exist.
	SkipSetup bool
	// KeepAPIService leaves the APIService registered after Stop. By
	// default Stop removes it, because an APIService whose server is gone
	// turns Unavailable and fails rotate's preflight.
	KeepAPIService bool
	// Probes selects probes by name (default all).
	Probes []string
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

func (o *Options) setDefaults(c *clusterinfo.Cluster) {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 5 * time.Second
	}
	if o.APIServerPort == 0 {
		o.APIServerPort = 6443
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.LeaseSlack <= 0 {
		o.LeaseSlack = 10 * time.Second
	}
	if o.SetupTimeout <= 0 {
		o.SetupTimeout = 3 * time.Minute
	}
	if o.AggregatorAddress == "" {
		o.AggregatorAddress = net.JoinHostPort(c.HostAddress, "0")
	}
	if len(o.ComponentLogs) == 0 {
		for _, n := range c.Nodes {
			if n.LogDir == "" {
				continue
			}
			if n.Role == clusterinfo.RoleControlPlane {
				o.ComponentLogs = append(o.ComponentLogs,
					n.LogDir+"/kube-controller-manager.log", n.LogDir+"/kube-scheduler.log")
			}
			// The real kubelet: its own requests (node status, lease,
			// CSRs) and the apiserver's requests it authenticates.
			o.ComponentLogs = append(o.ComponentLogs, n.LogDir+"/kubelet.log")
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// AllProbes lists the probe names.
var AllProbes = []string{ProbeAdmin, ProbeNode, ProbeNodeProxy, ProbeInCluster, ProbeAggregated, ProbeWebhook, ProbeLease, ProbeLogs, ProbeStorage}

func (o *Options) enabled(name string) bool {
	return len(o.Probes) == 0 || slices.Contains(o.Probes, name)
}

// Runner is a running probe set.
type Runner struct {
	cluster *clusterinfo.Cluster
	opts    Options
	log     *slog.Logger
	rec     *recorder
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	endpoints []endpoint // every apiserver, then the LB
	admins    []*credSource
	primary   *credSource // the first control-plane node's admin.conf
	health    *apiserverHealth
	agg       *aggServer
	webhook   *webhookServer

	kubeMu  sync.Mutex
	kube    kubernetes.Interface // primary admin through the LB, for kubeGen
	kubeGen int

	stopOnce sync.Once
	report   Report
}

// endpoint is an API endpoint the probes call.
type endpoint struct {
	name   string // node name, or "lb"
	base   string // https://host:port
	direct bool   // a single apiserver (not the LB)
}

// Start runs the probe setup (unless opts.SkipSetup), starts the
// aggregated API server and registers it, and starts every probe. The
// probes run until Stop or until ctx ends.
func Start(ctx context.Context, clusterJSON string, opts Options) (*Runner, error) {
	c, err := clusterinfo.Load(clusterJSON)
	if err != nil {
		return nil, err
	}
	return StartCluster(ctx, c, opts)
}

// StartCluster is Start with a loaded cluster description.
func StartCluster(ctx context.Context, c *clusterinfo.Cluster, opts Options) (*Runner, error) {
	opts.setDefaults(c)
	for _, p := range opts.Probes {
		if !slices.Contains(AllProbes, p) {
			return nil, fmt.Errorf("unknown probe %q (known: %v)", p, AllProbes)
		}
	}
	r := &Runner{cluster: c, opts: opts, log: opts.Logger, rec: newRecorder(c.Name, time.Now())}
	for _, n := range c.ControlPlanes() {
		r.endpoints = append(r.endpoints, endpoint{
			name: n.Name, base: "https://" + net.JoinHostPort(n.Address, strconv.Itoa(opts.APIServerPort)), direct: true,
		})
	}
	r.endpoints = append(r.endpoints, endpoint{name: "lb", base: c.APIServerEndpoint})

	for _, n := range c.ControlPlanes() {
		src := r.newSource(ProbeAdmin, "admin.conf("+n.Name+")", kubeconfigLoader(nodeFSOf(n), nodeEtcKubernetes+"/admin.conf"))
		r.admins = append(r.admins, src)
	}
	r.primary = r.admins[0]
	adminCfg, _, err := r.primary.current()
	if err != nil {
		return nil, err
	}

	setupCtx, cancelSetup := context.WithTimeout(ctx, opts.SetupTimeout)
	defer cancelSetup()
	lbCfg := rest.CopyConfig(adminCfg)
	lbCfg.Host = c.APIServerEndpoint
	client, err := kubernetes.NewForConfig(lbCfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(lbCfg)
	if err != nil {
		return nil, err
	}
	if opts.enabled(ProbeInCluster) && !c.NodeAgent {
		opts.Probes = slices.DeleteFunc(slices.Clone(AllProbesIf(opts.Probes)), func(p string) bool { return p == ProbeInCluster })
		r.opts = opts
		r.rec.event(time.Now(), ProbeInCluster, "", "cluster runs without node agents: no pod can run, in-cluster probe skipped")
	}
	if !opts.SkipSetup {
		switch {
		case opts.enabled(ProbeInCluster):
			err = Setup(setupCtx, client, opts.Namespace)
		case opts.enabled(ProbeAggregated), opts.enabled(ProbeWebhook), opts.enabled(ProbeStorage):
			err = ensureNamespace(setupCtx, client, opts.Namespace)
		}
		if err != nil {
			return nil, err
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.health = newAPIServerHealth(r.endpoints)
	r.goLoop(runCtx, "apiserver health", time.Second, r.health.poll)

	if opts.enabled(ProbeAggregated) {
		agg, err := startAggServer(runCtx, opts.AggregatorAddress, opts.Namespace, r.primaryKube, r.log)
		if err != nil {
			cancel()
			return nil, err
		}
		r.agg = agg
		if err := registerAPIService(setupCtx, client, dyn, opts.Namespace, agg.host(), agg.port(), agg.caPEM); err != nil {
			cancel()
			agg.stop()
			return nil, err
		}
		if err := waitAPIServiceAvailable(setupCtx, dyn); err != nil {
			r.rec.error(fmt.Sprintf("setup: %v", err))
			r.log.Warn("aggregated API not available at start", "err", err)
		}
	}

	if opts.enabled(ProbeWebhook) {
		wh, err := startWebhook(setupCtx, net.JoinHostPort(c.HostAddress, "0"), opts.Namespace, client, r.log)
		if err != nil {
			cancel()
			if r.agg != nil {
				r.agg.stop()
			}
			return nil, err
		}
		r.webhook = wh
	}

	if opts.enabled(ProbeAdmin) {
		r.startAdmin(runCtx)
	}
	if c.NodeAgent {
		if opts.enabled(ProbeNode) {
			r.startNode(runCtx)
		}
		if opts.enabled(ProbeNodeProxy) {
			r.startNodeProxy(runCtx)
		}
	} else if opts.enabled(ProbeNode) || opts.enabled(ProbeNodeProxy) {
		r.rec.event(time.Now(), ProbeNode, "", "cluster runs without node agents: node probes skipped")
	}
	if opts.enabled(ProbeInCluster) {
		r.startInCluster(runCtx, client)
	}
	if opts.enabled(ProbeAggregated) {
		r.startAggregated(runCtx, dyn)
	}
	if opts.enabled(ProbeWebhook) {
		r.startWebhookProbe(runCtx)
	}
	if opts.enabled(ProbeLease) {
		r.startLeases(runCtx)
	}
	if opts.enabled(ProbeStorage) {
		r.startStorage(runCtx)
	}
	if opts.enabled(ProbeLogs) {
		r.startLogScan(runCtx)
	}
	r.log.Info("probes running", "cluster", c.Name, "endpoints", len(r.endpoints))
	return r, nil
}

// Stop ends the probes, removes the APIService (unless KeepAPIService)
// and returns the report. Further calls return the same report.
func (r *Runner) Stop() Report {
	r.stopOnce.Do(func() {
		r.cancel()
		r.wg.Wait()
		if r.webhook != nil {
			r.rec.event(time.Now(), ProbeWebhook, "", fmt.Sprintf("webhook served %d admission reviews", r.webhook.calls.Load()))
			if !r.opts.KeepAPIService {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if err := r.unregisterWebhook(ctx); err != nil {
					r.rec.error(fmt.Sprintf("cleanup: %v", err))
				}
				cancel()
			}
			r.webhook.stop()
		}
		if r.agg != nil {
			if !r.opts.KeepAPIService {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if err := r.unregister(ctx); err != nil {
					r.rec.error(fmt.Sprintf("cleanup: %v", err))
				}
				cancel()
			}
			r.agg.stop()
		}
		r.report = r.rec.snapshot(time.Now())
	})
	return r.report
}

// Snapshot returns the report so far without stopping.
func (r *Runner) Snapshot() Report { return r.rec.snapshot(time.Now()) }

func (r *Runner) unregisterWebhook(ctx context.Context) error {
	client, err := r.primaryKube()
	if err != nil {
		return err
	}
	return unregisterWebhook(ctx, client)
}

// WebhookCalls is how many admission reviews the probe's webhook served.
func (r *Runner) WebhookCalls() int64 {
	if r.webhook == nil {
		return 0
	}
	return r.webhook.calls.Load()
}

func (r *Runner) unregister(ctx context.Context) error {
	cfg, _, err := r.primary.current()
	if err != nil {
		return err
	}
	lb := rest.CopyConfig(cfg)
	lb.Host = r.cluster.APIServerEndpoint
	client, err := kubernetes.NewForConfig(lb)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(lb)
	if err != nil {
		return err
	}
	return unregisterAPIService(ctx, client, dyn, r.opts.Namespace)
}

// newSource is a credential source whose changes are recorded as events.
func (r *Runner) newSource(probe, name string, load func() (*rest.Config, []byte, error)) *credSource {
	return &credSource{name: name, load: load, onChange: func(gen int, msg string) {
		r.rec.event(time.Now(), probe, name, msg)
		r.log.Info("credentials", "probe", probe, "source", name, "generation", gen, "msg", msg)
	}}
}

// primaryKube is a clientset with the primary admin credentials through
// the LB, built from the current admin.conf.
func (r *Runner) primaryKube() (kubernetes.Interface, error) {
	cfg, gen, err := r.primary.current()
	if err != nil {
		return nil, err
	}
	r.kubeMu.Lock()
	defer r.kubeMu.Unlock()
	if r.kube != nil && r.kubeGen == gen {
		return r.kube, nil
	}
	lb := rest.CopyConfig(cfg)
	lb.Host = r.cluster.APIServerEndpoint
	lb.Timeout = r.opts.RequestTimeout
	kube, err := kubernetes.NewForConfig(lb)
	if err != nil {
		return nil, err
	}
	r.kube, r.kubeGen = kube, gen
	return kube, nil
}

// goLoop runs f every interval until ctx ends.
func (r *Runner) goLoop(ctx context.Context, name string, every time.Duration, f func(context.Context)) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			f(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// check is one probe target: a GET (or method with body) of path on an
// endpoint with the current client of a credential.
type check struct {
	r      *Runner
	probe  string
	target string
	ep     endpoint
	path   string
	method string // "" is GET
	body   []byte
	// client returns the current client for ep; nil without error skips
	// this round (e.g. credentials not there yet).
	client func(ctx context.Context, ep endpoint) (*http.Client, error)
	// interpret may refine a failed answer (class != ""): it returns the
	// class, extra text for the error, and skip=true to not count it.
	interpret func(ctx context.Context, class Class, status int, body []byte) (Class, string, bool)
	// onOK, if set, sees every successful answer's body.
	onOK func(now time.Time, body []byte)

	down        bool      // a single apiserver failed at the connection level
	downSince   time.Time // when down was set
	clientError string
}

// startupGrace bounds a restart window: for this long after an apiserver
// went away, answers it gives while starting (readyz failing, 401/403
// before its authorization and token caches are loaded) count as refused.
// Beyond it they count as what they are, so a server that comes back
// broken is reported.
const startupGrace = 90 * time.Second

// tick performs one request. After a connection-level failure on a
// single apiserver it first waits for that apiserver's /readyz (with the
// same credentials): the restart window counts as refused, and requests
// resume once it is ready. Answers given while an apiserver restarts
// (seen here or by the health tracker) count as refused with a note; the
// window is bounded by startupGrace.
func (c *check) tick(ctx context.Context) {
	client, err := c.client(ctx, c.ep)
	if err != nil {
		if msg := err.Error(); msg != c.clientError {
			c.clientError = msg
			c.r.rec.event(time.Now(), c.probe, c.target, "no client: "+msg)
		}
		return
	}
	c.clientError = ""
	if client == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, c.r.opts.RequestTimeout)
	defer cancel()
	now := time.Now()
	if c.down && c.ep.direct {
		status, body, err := doGet(rctx, client, c.ep.base+"/readyz")
		if ctx.Err() != nil {
			return
		}
		class := Classify(err, status, body)
		inGrace := now.Sub(c.downSince) < startupGrace
		note := "waiting for /readyz after a connection failure"
		switch {
		case class == "":
			c.down = false
		case class == Refused:
		case inGrace && class != X509:
			note = fmt.Sprintf("apiserver starting: /readyz answered %s; counted as refused", class)
			class = Refused
		case class == Other:
			note = fmt.Sprintf("apiserver not ready %s after it went away", now.Sub(c.downSince).Round(time.Second))
		}
		if class != "" {
			c.r.rec.result(now, c.probe, c.target, class, describe(err, status, body), note)
			return
		}
	}
	status, body, err := doRequest(rctx, client, c.method, c.ep.base+c.path, c.body)
	if ctx.Err() != nil {
		return
	}
	class := Classify(err, status, body)
	msg := describe(err, status, body)
	note := ""
	if class != "" && c.interpret != nil {
		var extra string
		var skip bool
		class, extra, skip = c.interpret(rctx, class, status, body)
		if skip {
			c.r.rec.event(now, c.probe, c.target, "not counted: "+truncate(msg+" "+extra, 300))
			return
		}
		if extra != "" {
			msg += "; " + extra
		}
	}
	if class == Unauthorized || class == Forbidden || class == Other {
		if c.ep.direct {
			if c.r.health.restarting(c.ep.name, now) {
				note = fmt.Sprintf("apiserver %s was restarting (not ready moments ago); counted as refused, was %s", c.ep.name, class)
				class = Refused
			}
		} else if who, ok := c.r.health.restartingAny(now); ok {
			note = fmt.Sprintf("through the LB while apiserver %s was restarting (the LB has no readiness check); counted as refused, was %s", who, class)
			class = Refused
		}
	}
	if class == Refused && !c.down {
		c.down, c.downSince = true, now
	}
	c.r.rec.result(now, c.probe, c.target, class, msg, note)
	if class == "" && c.onOK != nil {
		c.onOK(now, body)
	}
}

func describe(err error, status int, body []byte) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("HTTP %d: %s", status, truncate(string(body), 500))
}

// run starts the check's loop.
func (c *check) run(ctx context.Context) {
	c.r.goLoop(ctx, c.probe+" "+c.target, c.r.opts.Interval, c.tick)
}

// apiserverHealth tracks each apiserver's /readyz like a load
// balancer's health check (unauthenticated, unverified), to tell answers
// given while an apiserver restarts from real failures.
type apiserverHealth struct {
	client  *http.Client
	targets []endpoint

	mu            sync.Mutex
	notReadySince map[string]time.Time // start of the current not-ready streak; zero when ready
	lastNotReady  map[string]time.Time
}

// settle is how long after its last not-ready observation an apiserver
// still counts as restarting.
const settle = 10 * time.Second

func newAPIServerHealth(eps []endpoint) *apiserverHealth {
	h := &apiserverHealth{client: insecureHealthClient(), notReadySince: map[string]time.Time{}, lastNotReady: map[string]time.Time{}}
	for _, ep := range eps {
		if ep.direct {
			h.targets = append(h.targets, ep)
		}
	}
	return h
}

func (h *apiserverHealth) poll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ep := range h.targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			status, _, err := doGet(rctx, h.client, ep.base+"/readyz")
			if ctx.Err() != nil {
				return
			}
			// Only 200 is ready: a starting apiserver answers 403 even to
			// /readyz until its RBAC caches are loaded.
			h.observe(ep.name, err == nil && status == http.StatusOK, time.Now())
		}()
	}
	wg.Wait()
}

func (h *apiserverHealth) observe(name string, ready bool, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ready {
		delete(h.notReadySince, name)
		return
	}
	if _, ok := h.notReadySince[name]; !ok {
		h.notReadySince[name] = now
	}
	h.lastNotReady[name] = now
}

// restarting reports whether apiserver name was not ready within settle
// of now, in a not-ready streak shorter than startupGrace (a server that
// never gets ready, or health checks that cannot see readiness, do not
// excuse failures).
func (h *apiserverHealth) restarting(name string, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	last, ok := h.lastNotReady[name]
	if !ok || now.Sub(last) >= settle || last.Sub(now) >= settle {
		return false
	}
	if since, ok := h.notReadySince[name]; ok && now.Sub(since) >= startupGrace {
		return false
	}
	return true
}

// restartingAny returns an apiserver that is restarting at now.
func (h *apiserverHealth) restartingAny(now time.Time) (string, bool) {
	h.mu.Lock()
	names := make([]string, 0, len(h.lastNotReady))
	for n := range h.lastNotReady {
		names = append(names, n)
	}
	h.mu.Unlock()
	slices.Sort(names)
	for _, n := range names {
		if h.restarting(n, now) {
			return n, true
		}
	}
	return "", false
}

// hostOf returns the host of an URL ("" if unparsable).
func hostOf(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return ""
	}
	return p.Host
}

// AllProbesIf returns sel, or every probe when sel is empty.
func AllProbesIf(sel []string) []string {
	if len(sel) == 0 {
		return AllProbes
	}
	return sel
}
