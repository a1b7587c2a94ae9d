// Command e2e-kubelet is the e2e node agent: the kubelet's API identity
// (credentials, Node, Lease, :10250, pod status) without a container
// runtime. It takes the kubelet's own flags for the parts it implements.
//
//	e2e-kubelet --node-name=NAME --node-ip=IP \
//	  --kubeconfig=/etc/kubernetes/kubelet.conf \
//	  --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \
//	  --config=/var/lib/kubelet/config.yaml --cert-dir=/var/lib/kubelet/pki \
//	  [--register-with-taints=k=v:Effect,...] [--node-labels=k=v,...] \
//	  [--healthz-address=127.0.0.1:10248] [--port=10250]
//
// SIGTERM or SIGINT stops it cleanly (exit 0).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kubeca/rotate/e2e/kubelet"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	switch {
	case errors.Is(err, pflag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "e2e-kubelet:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := pflag.NewFlagSet("e2e-kubelet", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o                     kubelet.Options
		nodeIP, taints, label string
		logFormat             string
	)
	fs.StringVar(&o.NodeName, "node-name", "", "name of the Node (required)")
	fs.StringVar(&nodeIP, "node-ip", "", "the node's IP: InternalIP address and listen address of the kubelet API (required)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "/etc/kubernetes/kubelet.conf", "kubeconfig with the agent's credentials; written after a TLS bootstrap")
	fs.StringVar(&o.BootstrapKubeconfig, "bootstrap-kubeconfig", "", "kubeconfig used for the TLS bootstrap when --kubeconfig is missing or expired")
	fs.StringVar(&o.Config, "config", "/var/lib/kubelet/config.yaml", "KubeletConfiguration file")
	fs.StringVar(&o.CertDir, "cert-dir", "/var/lib/kubelet/pki", "directory of the client certificate pairs and the serving certificate")
	fs.StringVar(&taints, "register-with-taints", "", "taints to register the Node with: key=value:Effect,...")
	fs.StringVar(&label, "node-labels", "", "labels to register the Node with: key=value,...")
	fs.StringVar(&o.HealthzAddress, "healthz-address", "", "healthz endpoint (default: the config's healthzBindAddress:healthzPort, else 127.0.0.1:10248)")
	fs.IntVar(&o.Port, "port", 0, "kubelet API port on --node-ip (default: the config's port, else 10250)")
	fs.DurationVar(&o.StatusInterval, "node-status-update-frequency", 0, "node status update interval (default 10s)")
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if nodeIP != "" {
		if o.NodeIP = net.ParseIP(nodeIP); o.NodeIP == nil {
			return fmt.Errorf("invalid --node-ip %q", nodeIP)
		}
	}
	var err error
	if o.RegisterWithTaints, err = kubelet.ParseTaints(taints); err != nil {
		return fmt.Errorf("--register-with-taints: %w", err)
	}
	if o.NodeLabels, err = kubelet.ParseLabels(label); err != nil {
		return fmt.Errorf("--node-labels: %w", err)
	}
	switch logFormat {
	case "text":
		o.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	case "json":
		o.Logger = slog.New(slog.NewJSONHandler(stderr, nil))
	default:
		return fmt.Errorf("invalid --log-format %q", logFormat)
	}
	return kubelet.Run(ctx, o)
}
