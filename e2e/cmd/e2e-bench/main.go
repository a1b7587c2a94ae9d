// Command e2e-bench is `make bench-scale`: how a rotation grows with the
// number of workers and with network latency. It brings up one e2e
// cluster (3 control-plane nodes, 2 workers, spares to grow to the largest
// N), and for each N ascending joins spares until the cluster has N
// workers, then for each network mode runs `rotate start --no-hold` and
// `rotate rollback` (back to the old CA, so the next run starts from the
// same cluster) and reads `rotate status -o json` after each. It prints a
// table and writes the numbers as JSON. The cluster and the operator
// network namespace are always removed at the end.
//
// A WAN mode ("50ms": round trip) runs rotate in an operator network
// namespace where every node address and the load balancer's are local
// addresses served by a delay proxy (e2e/wan) that forwards to the real
// nodes: every SSH and apiserver connection rotate makes pays the delay.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

type options struct {
	workers      []int
	roots        []string
	modes        []mode
	rotateBin    string
	out          string
	name         string
	subnet       string
	k8sBin       string
	harnessBin   string
	workDir      string
	joinParallel int
	quiet        bool
	verbose      bool // rotate -v: its debug log (node operations, API requests) in the work dir's logs
}

// mode is a network mode: direct (rotate in the host namespace) or
// through the delay proxy with round trip rtt (0 allowed: the proxy's own
// cost).
type mode struct {
	Name   string        `json:"name"`
	Direct bool          `json:"direct"`
	RTT    time.Duration `json:"rtt"`
}

func parseModes(s string) ([]mode, error) {
	var out []mode
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "none" {
			out = append(out, mode{Name: "none", Direct: true})
			continue
		}
		d, err := time.ParseDuration(f)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("--wan %q: want none or a round-trip time like 50ms", f)
		}
		out = append(out, mode{Name: d.String(), RTT: d})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--wan: no mode")
	}
	return out, nil
}

func parseWorkers(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--workers %q: want a list of worker counts ≥ 1", s)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("--workers %q: want ascending counts", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err == pflag.ErrHelp {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "\nbench FAILED: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("e2e-bench", pflag.ContinueOnError)
	binDir := os.Getenv("ROTATE_BIN_DIR")
	defRotate := "bin/rotate"
	if binDir != "" {
		defRotate = filepath.Join(binDir, "rotate")
	}
	workers := fs.String("workers", "2,10,30", "worker counts to measure, ascending (the cluster starts with 2 and grows)")
	wan := fs.String("wan", "none,50ms", "network modes: none (direct) or a round-trip time between rotate and the nodes (half each way), e.g. 0ms,50ms,100ms")
	var o options
	fs.StringVar(&o.rotateBin, "rotate-bin", defRotate, "rotate binary to measure")
	fs.StringVar(&o.out, "out", "bench-scale.json", "write the results as JSON here")
	fs.StringVar(&o.name, "name", "bench", "cluster name")
	fs.StringVar(&o.subnet, "subnet", "10.213.70.0/24", "cluster subnet")
	fs.StringVar(&o.k8sBin, "k8s-bin", os.Getenv("ROTATE_K8S_BIN"), "dir with the Kubernetes binaries (default: $ROTATE_K8S_BIN, else built)")
	fs.StringVar(&o.harnessBin, "harness-bin", binDir, "dir with a prebuilt e2e-node (default: $ROTATE_BIN_DIR, else built)")
	fs.StringVar(&o.workDir, "work-dir", "", "where state files, inventories and rotate's logs go (default: a new temp dir, kept)")
	fs.IntVar(&o.joinParallel, "join-parallel", 4, "spare workers joined at the same time")
	fs.StringSliceVar(&o.roots, "roots", []string{"cluster", "front-proxy"}, "the inventory's rotate list: the trust roots each run rotates (the harness's inventory adds etcd; the bench's history is of these two)")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "do not echo rotate's output (it is always in the work dir's logs)")
	fs.BoolVar(&o.verbose, "rotate-verbose", false, "run rotate with -v: every node operation and API request, timed, in the work dir's logs (to see where a run's time goes)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.workers, err = parseWorkers(*workers); err != nil {
		return err
	}
	if o.modes, err = parseModes(*wan); err != nil {
		return err
	}
	if o.rotateBin, err = filepath.Abs(o.rotateBin); err != nil {
		return err
	}
	if _, err := os.Stat(o.rotateBin); err != nil {
		return fmt.Errorf("rotate binary: %w (run `make build` or pass --rotate-bin)", err)
	}
	if o.joinParallel < 1 {
		o.joinParallel = 1
	}
	if o.workDir == "" {
		if o.workDir, err = os.MkdirTemp("", "rotate-bench-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(o.workDir, 0o700); err != nil {
		return err
	}
	if o.out, err = filepath.Abs(o.out); err != nil {
		return err
	}
	return bench(ctx, o)
}
