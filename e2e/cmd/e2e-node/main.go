// Command e2e-node runs inside an e2e cluster node (see e2e/cluster):
//
//	e2e-node supervisor       static pods from the manifests, the container runtime and kubelet as services
//	e2e-node restart-kubelet  restart the kubelet; returns once it is healthy again
//	e2e-node set-notice-delay D  act on manifest changes only D after they are seen (slow mode)
//	e2e-node status           list the supervised processes
//	e2e-node lb               TCP load balancer for the control-plane endpoint
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/kubeca/rotate/e2e/cluster/lb"
	"github.com/kubeca/rotate/e2e/cluster/supervisor"
)

// DefaultSocket is where the supervisor listens inside a node (the node's own
// /run/rotate-e2e, see e2e/cluster).
const DefaultSocket = "/run/rotate-e2e/supervisor.sock"

const usage = `usage: e2e-node <command> [flags]

commands:
  supervisor       run static pods from the manifest directory, and the node's services
  restart-kubelet  restart the kubelet and wait until its healthz is 200
  set-notice-delay DURATION  act on manifest changes only DURATION after they are seen
  status           print the supervised processes (JSON)
  lb               run the TCP load balancer for the control-plane endpoint
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch os.Args[1] {
	case "supervisor":
		err = runSupervisor(ctx, os.Args[2:])
	case "restart-kubelet":
		err = runRestartKubelet(ctx, os.Args[2:])
	case "status":
		err = runStatus(ctx, os.Args[2:])
	case "set-notice-delay":
		err = runSetNoticeDelay(ctx, os.Args[2:])
	case "lb":
		err = runLB(ctx, os.Args[2:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e-node %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func runSupervisor(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("supervisor", pflag.ContinueOnError)
	var cfg supervisor.Config
	var services string
	fs.StringVar(&cfg.NodeName, "node-name", "", "node name (for logs)")
	fs.StringVar(&cfg.ManifestDir, "manifests", "/etc/kubernetes/manifests", "static pod manifest directory")
	fs.StringVar(&cfg.LogDir, "log-dir", "/var/log/rotate-e2e", "directory for <component>.log files")
	fs.StringVar(&cfg.Socket, "socket", DefaultSocket, "control socket")
	fs.StringVar(&cfg.Path, "path", os.Getenv("PATH"), "PATH for the components")
	fs.StringVar(&services, "services", "", `services as JSON: [{"name":"kubelet","argv":["kubelet","--config=..."]}]; started in order`)
	fs.DurationVar(&cfg.NoticeDelay, "notice-delay", 0, "act on a manifest change only this long after it was seen (slow mode)")
	fs.DurationVar(&cfg.Resync, "resync", 20*time.Second, "full re-read of the manifest directory (changes are seen at once through inotify)")
	fs.DurationVar(&cfg.ServiceStopTimeout, "service-stop-timeout", 20*time.Second, "time between SIGTERM and SIGKILL for a service")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if services != "" {
		if err := json.Unmarshal([]byte(services), &cfg.Services); err != nil {
			return fmt.Errorf("--services: %w", err)
		}
	}
	return supervisor.New(cfg, logger()).Run(ctx)
}

func runRestartKubelet(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("restart-kubelet", pflag.ContinueOnError)
	socket := fs.String("socket", DefaultSocket, "supervisor control socket")
	healthz := fs.String("healthz", "http://127.0.0.1:10248/healthz", "node agent health endpoint")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the new agent to become healthy")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	pid, err := supervisor.RestartKubelet(ctx, *socket, *healthz, 200*time.Millisecond)
	if err != nil {
		return err
	}
	fmt.Printf("kubelet restarted (pid %d), healthy after %s\n", pid, time.Since(start).Round(time.Millisecond))
	return nil
}

func runStatus(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("status", pflag.ContinueOnError)
	socket := fs.String("socket", DefaultSocket, "supervisor control socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := supervisor.Call(ctx, *socket, supervisor.Request{Op: "status"})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(resp.Services)
}

func runSetNoticeDelay(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("set-notice-delay", pflag.ContinueOnError)
	socket := fs.String("socket", DefaultSocket, "supervisor control socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want one DURATION argument")
	}
	d, err := time.ParseDuration(fs.Arg(0))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = supervisor.Call(ctx, *socket, supervisor.Request{Op: "set-notice-delay", NoticeDelay: d})
	return err
}

func runLB(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("lb", pflag.ContinueOnError)
	var cfg lb.Config
	var backends string
	fs.StringVar(&cfg.Listen, "listen", "", "listen address host:port")
	fs.StringVar(&backends, "backends", "", "comma-separated backend host:port list")
	fs.DurationVar(&cfg.DialTimeout, "dial-timeout", time.Second, "per-backend dial timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, b := range strings.Split(backends, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Backends = append(cfg.Backends, b)
		}
	}
	l, err := lb.New(cfg, logger())
	if err != nil {
		return err
	}
	return l.Run(ctx)
}
