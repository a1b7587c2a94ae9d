// Command e2e-probe watches an e2e cluster during a CA rotation and
// reports every failed request with its cause (see package probes).
//
//	e2e-probe run --cluster cluster.json --report out.json [--duration 0]
//	    [--component-logs GLOB]... [--probes admin,node,...]
//	e2e-probe setup --cluster cluster.json
//	e2e-probe teardown --cluster cluster.json
//
// run sets up (unless --skip-setup), probes until SIGINT/SIGTERM or
// --duration, then writes the JSON report and prints the summary. Exit
// status: 0 clean, 1 not clean (x509, 401 or 403 seen), 2 error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubeca/rotate/e2e/clusterinfo"
	"github.com/kubeca/rotate/e2e/probes"
	"github.com/kubeca/rotate/internal/kubeconfig"
)

// errNotClean is returned by run when the report is not clean.
var errNotClean = errors.New("report not clean")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, pflag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errNotClean):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "e2e-probe:", err)
		os.Exit(2)
	}
}

const usage = `usage: e2e-probe run|setup|teardown --cluster cluster.json [flags]`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "run":
		return runProbes(ctx, args[1:], stdout, stderr)
	case "setup", "teardown":
		return manage(ctx, args[0], args[1:], stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	default:
		return fmt.Errorf("unknown command %q; %s", args[0], usage)
	}
}

func runProbes(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("e2e-probe run", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o        probes.Options
		cluster  string
		report   string
		duration time.Duration
		selected []string
		verbose  bool
	)
	fs.StringVar(&cluster, "cluster", "", "cluster description written by the harness (required)")
	fs.StringVar(&report, "report", "", "write the JSON report here (required)")
	fs.DurationVar(&duration, "duration", 0, "stop after this long (0: run until SIGINT/SIGTERM)")
	fs.StringArrayVar(&o.ComponentLogs, "component-logs", nil, "glob of KCM/scheduler log files to scan (repeatable; default: every control-plane node's logDir)")
	fs.StringSliceVar(&selected, "probes", nil, "probes to run (default all): "+strings.Join(probes.AllProbes, ","))
	fs.DurationVar(&o.Interval, "interval", 0, "interval between requests of one target (default 1s)")
	fs.DurationVar(&o.RequestTimeout, "timeout", 0, "request timeout (default 5s)")
	fs.StringVar(&o.AggregatorAddress, "aggregator-address", "", "listen address of the aggregated API server (default hostAddress:0)")
	fs.BoolVar(&o.SkipSetup, "skip-setup", false, "assume `e2e-probe setup` ran")
	fs.BoolVar(&o.KeepAPIService, "keep-apiservice", false, "leave the APIService registered on exit")
	fs.BoolVarP(&verbose, "verbose", "v", false, "log progress to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cluster == "" || report == "" {
		return errors.New("--cluster and --report are required")
	}
	o.Probes = selected
	if verbose {
		o.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	runCtx := ctx
	if duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	r, err := probes.Start(runCtx, cluster, o)
	if err != nil {
		return err
	}
	fmt.Fprintln(stderr, "e2e-probe: probes running")
	<-runCtx.Done()
	rep := r.Stop()
	if err := rep.WriteFile(report); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	fmt.Fprint(stdout, rep.Summary())
	if !rep.Clean() {
		return errNotClean
	}
	return nil
}

func manage(ctx context.Context, cmd string, args []string, stderr io.Writer) error {
	fs := pflag.NewFlagSet("e2e-probe "+cmd, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cluster string
		ns      string
		timeout time.Duration
	)
	fs.StringVar(&cluster, "cluster", "", "cluster description written by the harness (required)")
	fs.StringVar(&ns, "namespace", probes.DefaultNamespace, "namespace of the probe's resources")
	fs.DurationVar(&timeout, "timeout", 3*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cluster == "" {
		return errors.New("--cluster is required")
	}
	c, err := clusterinfo.Load(cluster)
	if err != nil {
		return err
	}
	cfg, err := adminConfig(c)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if cmd == "setup" {
		return probes.Setup(ctx, client, ns)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	return probes.Teardown(ctx, client, dyn, ns)
}

// adminConfig is the cluster's admin kubeconfig aimed at the LB.
func adminConfig(c *clusterinfo.Cluster) (*rest.Config, error) {
	path := c.AdminKubeconfig
	if path == "" {
		path = c.ControlPlanes()[0].EtcKubernetes + "/admin.conf"
	}
	cfg, err := kubeconfig.Load(path, "")
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	cfg.Host = c.APIServerEndpoint
	return cfg, nil
}
