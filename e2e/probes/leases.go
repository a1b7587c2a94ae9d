package probes

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// Leader Leases of the control-plane components (the kubelets' node
// Leases are followed too).
var leaderLeases = []string{"kube-controller-manager", "kube-scheduler"}

// nodeMonitorGracePeriod is kube-controller-manager's default
// --node-monitor-grace-period: a node whose Lease is not renewed for this
// long is marked NotReady. A control-plane kubelet talks to its own
// apiserver (kubeadm's kubelet.conf on control-plane nodes), so it cannot
// renew while that apiserver restarts — up to the pod's grace period when
// the apiserver is slow to shut down. That is a gap only once Kubernetes
// itself would act on it.
const nodeMonitorGracePeriod = 50 * time.Second

// leaseWatch follows one Lease.
type leaseWatch struct {
	r       *Runner
	name    string
	holder  string
	flagged time.Time // renewTime of the gap already recorded
	// minGap is the shortest gap recorded as a failure, whatever the
	// Lease's duration.
	minGap time.Duration
}

// startLeases: GET the KCM and scheduler leader Leases, and every
// kubelet's node Lease, through the LB with the primary admin credentials
// every second; a renewTime older than leaseDuration + LeaseSlack (for a
// node Lease: at least nodeMonitorGracePeriod) is a failure (one per gap),
// a holder change an event.
func (r *Runner) startLeases(ctx context.Context) {
	client := credClient(r.primary)
	lb := r.endpoints[len(r.endpoints)-1]
	watch := func(ns, name string) {
		lw := &leaseWatch{r: r, name: name}
		if ns == "kube-node-lease" {
			lw.minGap = nodeMonitorGracePeriod
		}
		(&check{r: r, probe: ProbeLease, target: "lease " + name, ep: lb,
			path: "/apis/coordination.k8s.io/v1/namespaces/" + ns + "/leases/" + name, client: client, onOK: lw.observe}).run(ctx)
	}
	for _, name := range leaderLeases {
		watch("kube-system", name)
	}
	if r.cluster.NodeAgent {
		for _, n := range r.cluster.Nodes {
			watch("kube-node-lease", n.Name)
		}
	}
}

func (lw *leaseWatch) observe(now time.Time, body []byte) {
	var l coordinationv1.Lease
	if err := json.Unmarshal(body, &l); err != nil || l.Spec.RenewTime == nil {
		return
	}
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if holder != lw.holder {
		if lw.holder != "" {
			lw.r.rec.event(now, ProbeLease, "lease "+lw.name, fmt.Sprintf("leader changed from %s to %s", lw.holder, holder))
		}
		lw.holder = holder
	}
	duration := 15 * time.Second
	if l.Spec.LeaseDurationSeconds != nil {
		duration = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	renew := l.Spec.RenewTime.Time
	gap := now.Sub(renew)
	if gap > max(duration+lw.r.opts.LeaseSlack, lw.minGap) && !renew.Equal(lw.flagged) {
		lw.flagged = renew
		lw.r.rec.result(now, ProbeLease, "lease "+lw.name+" renewal", Other,
			fmt.Sprintf("not renewed for %s (holder %q, leaseDuration %s, slack %s)", gap.Round(time.Second), holder, duration, lw.r.opts.LeaseSlack), "")
	}
}
