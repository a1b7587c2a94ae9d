// Command e2e-cluster manages the e2e Kubernetes cluster (see e2e/cluster):
//
//	e2e-cluster up [--name e2e] [--dir DIR] [--control-planes 3] [--workers 2] [--subnet CIDR] [--bin-dir DIR]
//	e2e-cluster down [--name e2e | --dir DIR] [--keep-dir]
//	e2e-cluster status [--name e2e | --dir DIR]
//	e2e-cluster kill-node NAME [--graceful]
//	e2e-cluster start-node NAME
//	e2e-cluster set-notice-delay DURATION   slow mode: static pods replaced DURATION after their manifest changes
//	e2e-cluster join-node NAME               join a spare worker (up --spare-workers N)
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/kubeca/rotate/e2e/cluster"
)

const usage = `usage: e2e-cluster <command> [flags]

commands:
  up          create and start a cluster, wait until it is ready, leave it running
  down        stop and remove everything the cluster created
  status      show processes, resource use and readiness
  kill-node   kill every process of one node (the cluster keeps serving)
  start-node  start a killed node again
  set-notice-delay DURATION  replace static pods only DURATION after their manifest changes (0: at once)
  join-node   join a spare worker now (see up --spare-workers)

Run "e2e-cluster <command> --help" for its flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "up":
		err = up(ctx, args)
	case "down":
		err = down(ctx, args)
	case "status":
		err = status(ctx, args)
	case "kill-node":
		err = killNode(ctx, args)
	case "start-node":
		err = startNode(ctx, args)
	case "set-notice-delay":
		err = setNoticeDelay(ctx, args)
	case "join-node":
		err = joinNode(ctx, args)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e-cluster %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// dirFlags adds --name/--dir and returns a func resolving the cluster dir.
func dirFlags(fs *pflag.FlagSet) func() string {
	name := fs.String("name", cluster.DefaultName, "cluster name")
	dir := fs.String("dir", "", "cluster dir (default "+cluster.DefaultRoot+"/NAME)")
	return func() string {
		if *dir != "" {
			return *dir
		}
		return filepath.Join(cluster.DefaultRoot, *name)
	}
}

func up(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("up", pflag.ContinueOnError)
	var o cluster.Options
	fs.StringVar(&o.Name, "name", cluster.DefaultName, "cluster name (namespaces and links are named after it)")
	fs.StringVar(&o.Dir, "dir", "", "cluster dir (default "+cluster.DefaultRoot+"/NAME)")
	fs.IntVar(&o.ControlPlanes, "control-planes", cluster.DefaultControlPlanes, "control-plane nodes")
	fs.IntVar(&o.Workers, "workers", cluster.DefaultWorkers, "worker nodes")
	fs.IntVar(&o.SpareWorkers, "spare-workers", 0, "workers ready to join later with join-node (not in the inventory)")
	fs.StringVar(&o.Subnet, "subnet", cluster.DefaultSubnet, "node subnet (IPv4, /24 or larger); .1 host, .2 load balancer")
	fs.StringVar(&o.BinDir, "bin-dir", "", "dir with the Kubernetes binaries and etcd (default: e2e/scripts/build-binaries.sh)")
	fs.StringVar(&o.SourceDir, "source-dir", "", "root of the rotate module (default: found from the working dir)")
	fs.StringVar(&o.HarnessBinDir, "harness-bin-dir", "", "dir with a prebuilt e2e-node (default: go build)")
	fs.BoolVar(&o.NoKubelet, "no-kubelet", false, "run no kubelet and no container runtime (static pods only)")
	fs.DurationVar(&o.NoticeDelay, "notice-delay", 0, "static pods are replaced only this long after their manifest changes (slow mode)")
	fs.StringVar(&o.FailAfter, "fail-after", "", "testing: fail after this stage")
	timeout := fs.Duration("timeout", 10*time.Minute, "overall deadline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.Progress = os.Stderr
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	c, err := cluster.Up(ctx, o)
	if err != nil {
		if c != nil {
			return fmt.Errorf("%w\nlogs are in %s/nodes/*/log; remove what was created with: e2e-cluster down --dir %s", err, c.Dir(), c.Dir())
		}
		return err
	}
	s := c.Spec()
	fmt.Printf("cluster %s is up (%s)\n", s.Name, time.Since(start).Round(time.Second))
	fmt.Printf("inventory:    %s\n", s.InventoryPath())
	fmt.Printf("cluster.json: %s\n", s.ClusterJSON())
	fmt.Printf("\n  export KUBECONFIG=%s; %s/kubectl get nodes\n\n", s.AdminKubeconfig(), s.BinDir)
	fmt.Printf("tear down with: e2e-cluster down --dir %s\n", s.Dir)
	return nil
}

func down(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("down", pflag.ContinueOnError)
	dir := dirFlags(fs)
	keep := fs.Bool("keep-dir", false, "keep the cluster dir (logs, PKI)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := cluster.Load(dir())
	if err != nil {
		return err
	}
	c.SetProgress(os.Stderr)
	c.KeepDir = *keep
	start := time.Now()
	if err := c.Down(ctx); err != nil {
		return err
	}
	fmt.Printf("cluster %s is down (%s)\n", c.Spec().Name, time.Since(start).Round(time.Second))
	return nil
}

func status(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("status", pflag.ContinueOnError)
	dir := dirFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := cluster.Load(dir())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conds := c.Conditions(ctx)
	fmt.Print(cluster.FormatStatus(c.NodeStatuses(ctx), conds))
	for _, cd := range conds {
		if cd.Err != nil {
			return errors.New("cluster not ready")
		}
	}
	return nil
}

func nodeArg(fs *pflag.FlagSet, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		return "", fmt.Errorf("want exactly one argument, got %d", fs.NArg())
	}
	return fs.Arg(0), nil
}

func killNode(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("kill-node", pflag.ContinueOnError)
	dir := dirFlags(fs)
	graceful := fs.Bool("graceful", false, "SIGTERM first (default: SIGKILL everything, like a power cut)")
	node, err := nodeArg(fs, args)
	if err != nil {
		return err
	}
	c, err := cluster.Load(dir())
	if err != nil {
		return err
	}
	if err := c.KillNode(ctx, node, *graceful); err != nil {
		return err
	}
	fmt.Printf("node %s killed\n", node)
	return nil
}

func startNode(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("start-node", pflag.ContinueOnError)
	dir := dirFlags(fs)
	node, err := nodeArg(fs, args)
	if err != nil {
		return err
	}
	c, err := cluster.Load(dir())
	if err != nil {
		return err
	}
	start := time.Now()
	if err := c.StartNode(ctx, node); err != nil {
		return err
	}
	fmt.Printf("node %s started (%s)\n", node, time.Since(start).Round(time.Second))
	return nil
}

func setNoticeDelay(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("set-notice-delay", pflag.ContinueOnError)
	dir := dirFlags(fs)
	arg, err := nodeArg(fs, args)
	if err != nil {
		return err
	}
	d, err := time.ParseDuration(arg)
	if err != nil {
		return err
	}
	c, err := cluster.Load(dir())
	if err != nil {
		return err
	}
	return c.SetNoticeDelay(ctx, d)
}

func joinNode(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("join-node", pflag.ContinueOnError)
	dir := dirFlags(fs)
	node, err := nodeArg(fs, args)
	if err != nil {
		return err
	}
	c, err := cluster.Load(dir())
	if err != nil {
		return err
	}
	start := time.Now()
	if err := c.JoinNode(ctx, node); err != nil {
		return err
	}
	fmt.Printf("node %s joined (%s)\n", node, time.Since(start).Round(time.Second))
	return nil
}
