package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
)

// apiTimeout bounds every non-watch API call.
const apiTimeout = 10 * time.Second

// Run is the node agent: it loads its configuration and credentials once,
// then registers the Node, keeps its status and Lease fresh, serves the
// kubelet and healthz endpoints and runs the pods bound to it, until ctx
// ends. It returns nil after a clean shutdown.
func Run(ctx context.Context, o Options) error {
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return err
	}
	log := o.Logger.With("node", o.NodeName)

	cfg, err := loadKubeletConfig(o.Config)
	if err != nil {
		return err
	}
	o.leaseFrom(cfg)
	clientCAs, nCAs, err := loadClientCAs(cfg.Authentication.X509.ClientCAFile)
	if err != nil {
		return err
	}
	serving, servingFile, err := servingCertificate(&o, cfg)
	if err != nil {
		return err
	}
	healthzAddr := o.HealthzAddress
	if healthzAddr == "" {
		healthzAddr = cfg.healthzAddress()
	}
	port := o.Port
	if port == 0 {
		port = cfg.port()
	}
	log.Info("configuration loaded", "clientCAFile", cfg.Authentication.X509.ClientCAFile, "clientCAs", nCAs,
		"servingCert", servingFile, "healthz", healthzAddr, "port", port,
		"leaseDurationSeconds", o.LeaseDurationSeconds, "leaseRenewInterval", o.LeaseInterval)

	var apiOK atomic.Bool
	healthz := newHealthzServer(apiOK.Load)
	healthzLn, err := net.Listen("tcp", healthzAddr)
	if err != nil {
		return fmt.Errorf("listen healthz: %w", err)
	}
	kubeletAddr := net.JoinHostPort(o.NodeIP.String(), strconv.Itoa(port))
	kubeletLn, err := net.Listen("tcp", kubeletAddr)
	if err != nil {
		healthzLn.Close()
		return fmt.Errorf("listen kubelet API: %w", err)
	}

	var wg sync.WaitGroup
	serve := func(name string, srv *http.Server, ln net.Listener, tls bool) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if tls {
				err = srv.ServeTLS(ln, "", "")
			} else {
				err = srv.Serve(ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("server stopped", "server", name, "err", err)
			}
		}()
	}
	serve("healthz", healthz, healthzLn, false)

	// Stop the servers (and everything else) when ctx ends.
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = healthz.Shutdown(sctx)
		wg.Wait()
	}()

	creds, err := LoadCredentials(ctx, o.Kubeconfig, o.BootstrapKubeconfig, o.CertDir, o.NodeName, log)
	if err != nil {
		kubeletLn.Close()
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	log.Info("credentials loaded", "server", creds.Config.Host, "subject", creds.Subject,
		"sha256", creds.Fingerprint, "notAfter", creds.NotAfter, "bootstrapped", creds.Bootstrapped)

	restCfg := creds.Config
	restCfg.UserAgent = fmt.Sprintf("kubelet/%s (%s/%s) rotate-e2e-node-agent", KubeletVersion, runtime.GOOS, runtime.GOARCH)
	restCfg.QPS, restCfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		kubeletLn.Close()
		return fmt.Errorf("build client: %w", err)
	}

	nodeIP, _ := netip.AddrFromSlice(o.NodeIP)
	nodeIP = nodeIP.Unmap()
	syncer := &podSyncer{
		client:   client,
		nodeName: o.NodeName,
		nodeIP:   nodeIP.String(),
		ips:      newIPAllocator(defaultPodCIDR(nodeIP)),
		now:      time.Now,
		log:      log,
	}
	pods := newPodController(syncer)

	kubeletSrv := newKubeletServer(serving, clientCAs, newKubeletHandler(func() ([]*v1.Pod, error) {
		return pods.store.list(), nil
	}))
	kubeletSrv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	serve("kubelet", kubeletSrv, kubeletLn, true)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = kubeletSrv.Shutdown(sctx)
	}()

	// Register, retrying until the API accepts us (the kubelet's
	// registerWithAPIServer loop).
	var node *v1.Node
	for node == nil {
		rctx, cancel := context.WithTimeout(ctx, apiTimeout)
		n, err := registerNode(rctx, client, &o, port)
		cancel()
		if err == nil {
			node = n
			apiOK.Store(true)
			break
		}
		log.Warn("register node", "err", err)
		if !sleep(ctx, 2*time.Second) {
			return nil
		}
	}
	log.Info("node registered", "uid", node.UID)
	if node.Spec.PodCIDR != "" {
		if p, err := netip.ParsePrefix(node.Spec.PodCIDR); err == nil {
			syncer.ips = newIPAllocator(p)
		}
	}

	var nodeMu sync.Mutex
	currentNode := func() *v1.Node {
		nodeMu.Lock()
		defer nodeMu.Unlock()
		return node
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var loops sync.WaitGroup
	loop := func(name string, every time.Duration, f func(context.Context) error) {
		loops.Add(1)
		go func() {
			defer loops.Done()
			for {
				cctx, cancel := context.WithTimeout(runCtx, apiTimeout)
				err := f(cctx)
				cancel()
				switch {
				case err == nil:
					apiOK.Store(true)
				case runCtx.Err() == nil:
					log.Warn(name, "err", err)
				}
				if !sleep(runCtx, every) {
					return
				}
			}
		}()
	}
	loop("update node status", o.StatusInterval, func(ctx context.Context) error {
		n, err := updateNodeStatus(ctx, client, &o, port)
		if apierrors.IsNotFound(err) {
			n, err = registerNode(ctx, client, &o, port)
		}
		if err != nil {
			return err
		}
		nodeMu.Lock()
		node = n
		nodeMu.Unlock()
		return nil
	})
	loop("renew lease", o.LeaseInterval, func(ctx context.Context) error {
		return renewLease(ctx, client, currentNode(), o.LeaseDurationSeconds, time.Now())
	})

	loops.Add(1)
	go func() {
		defer loops.Done()
		pods.run(runCtx)
	}()

	<-ctx.Done()
	log.Info("shutting down")
	stop()
	loops.Wait()
	return nil
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
