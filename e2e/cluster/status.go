package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kubeca/rotate/e2e/cluster/supervisor"
)

// NodeStatus is the state of one node's processes.
type NodeStatus struct {
	Name     string
	Role     string
	Address  string
	Stopped  bool // killed with KillNode
	Daemons  map[string]bool
	Services []supervisor.ServiceStatus
	RSS      uint64        // bytes, every process of the node
	CPU      time.Duration // CPU time used by the node's cgroup so far
}

// NodeStatuses reports every node's daemons, supervised services and
// resource use.
func (c *Cluster) NodeStatuses(ctx context.Context) []NodeStatus {
	var out []NodeStatus
	for _, n := range append([]Node{{Name: "lb", Role: "load-balancer", Address: c.st.Spec.LBAddress}}, c.st.Spec.Nodes...) {
		ns := NodeStatus{Name: n.Name, Role: n.Role, Address: n.Address, Daemons: map[string]bool{}, Stopped: slices.Contains(c.st.Stopped, n.Name)}
		for _, p := range c.nodeProcs(n.Name) {
			ns.Daemons[p.Name] = p.alive()
		}
		if n.Dir != "" && ns.Daemons["supervisor"] {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if resp, err := supervisor.Call(cctx, n.SupervisorSocket(), supervisor.Request{Op: "status"}); err == nil {
				ns.Services = resp.Services
			}
			cancel()
		}
		ns.RSS, ns.CPU = c.usage(n.Name)
		out = append(out, ns)
	}
	return out
}

// usage returns resident memory and CPU time of a node's cgroup.
func (c *Cluster) usage(node string) (uint64, time.Duration) {
	if c.st.Spec.CgroupRoot == "" {
		var pids []int
		for _, p := range c.nodeProcs(node) {
			pids = append(pids, p.PID)
		}
		return rss(pids), 0
	}
	cg := filepath.Join(c.st.Spec.CgroupRoot, node)
	var cpu time.Duration
	if raw, err := os.ReadFile(filepath.Join(cg, "cpu.stat")); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				us, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				cpu = time.Duration(us) * time.Microsecond
			}
		}
	}
	return rss(cgroupProcs(cg)), cpu
}

// FormatStatus renders node statuses and conditions for humans.
func FormatStatus(nodes []NodeStatus, conds []Condition) string {
	var b strings.Builder
	var total uint64
	for _, n := range nodes {
		state := "running"
		if n.Stopped {
			state = "STOPPED"
		}
		var ds []string
		for _, d := range []string{"sshd", "supervisor", "lb"} {
			if alive, ok := n.Daemons[d]; ok {
				ds = append(ds, fmt.Sprintf("%s=%s", d, upDown(alive)))
			}
		}
		fmt.Fprintf(&b, "%-9s %-14s %-15s %-8s %s  rss=%dMiB cpu=%s\n", n.Name, n.Role, n.Address, state, strings.Join(ds, " "), n.RSS>>20, n.CPU.Round(time.Second))
		total += n.RSS
		for _, s := range n.Services {
			fmt.Fprintf(&b, "    %-24s pid=%-7d %-4s restarts=%d\n", s.Name, s.PID, upDown(s.Running), s.Restarts)
		}
	}
	fmt.Fprintf(&b, "total rss=%dMiB\n", total>>20)
	for _, cd := range conds {
		res := "ok"
		if cd.Err != nil {
			res = "NOT OK: " + cd.Err.Error()
		}
		fmt.Fprintf(&b, "%-40s %s\n", cd.Name, res)
	}
	return b.String()
}

func upDown(b bool) string {
	if b {
		return "up"
	}
	return "down"
}
