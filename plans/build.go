package plans

import (
	"github.com/kubeca/rotate/steps"
)

// Phase names, in order. They are the FSM states, the keys of
// rollout.timeouts.phases and what `rotate status` shows.
var PhaseNames = []string{
	"preflight",
	"distribute",
	"controller-manager-trust",
	"publication",
	"in-cluster-clients",
	"apiserver-trust",
	"scheduler-trust",
	"kubeconfigs",
	"cloud-controller-manager",
	"servers",
	"cluster-info",
	"verify",
	"narrow-trust",
}

func init() {
	for _, n := range PhaseNames {
		knownPhases[n] = true
	}
}

// Options change how a plan is built.
type Options struct {
	// Hold pauses after verify (phase 11) until `rotate resume`.
	Hold bool
}

// Build turns a validated inventory into the plan of docs/rotation.md
// (see Config.Plan).
func Build(inv *Inventory, opts Options) *Plan { return inv.Config().Plan(opts) }

// Plan is the plan of docs/rotation.md for this configuration: widen trust
// (phases 1-8), switch issuance (9), verify and hold (10-11), narrow trust
// (12).
func (c *Config) Plan(opts Options) *Plan {
	var cp, workers, all []steps.Target
	for _, n := range c.Steps.ControlPlane {
		cp = append(cp, steps.Target{Node: n, Role: steps.RoleControlPlane})
	}
	for _, n := range c.Steps.Workers {
		workers = append(workers, steps.Target{Node: n, Role: steps.RoleWorker})
	}
	all = append(append(all, cp...), workers...)
	cluster := []steps.Target{steps.ClusterTarget}
	batch := c.WorkerBatch
	// Steps that only read, check or move files (no restart) act on this
	// many nodes at once: each node has its own sshd, the connections are
	// open after nodes-reachable, and each step is a few round trips, so
	// waiting for the slowest of 8 at a time made them grow with the
	// workers (preflight 2 s with 2 workers, 10.5 s with 30). Logins
	// through one jump host are limited apart (nodes.jumpHandshakes).
	wide := 32
	one := func(s steps.Step, t []steps.Target) PlannedStep {
		return PlannedStep{Step: s, Targets: t, Concurrency: 1}
	}
	fan := func(s steps.Step, t []steps.Target, n int) PlannedStep {
		return PlannedStep{Step: s, Targets: t, Concurrency: n}
	}
	seq := func(parts ...[]PlannedStep) []PlannedStep {
		var out []PlannedStep
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	// The etcd CA's steps are there only when the run rotates it.
	etcd := func(s ...PlannedStep) []PlannedStep {
		if !c.Steps.Etcd {
			return nil
		}
		return s
	}
	// The service-account key's steps are there only when the run rotates
	// it.
	sa := func(s ...PlannedStep) []PlannedStep {
		if !c.Steps.ServiceAccount {
			return nil
		}
		return s
	}
	// The worker kubelets restart in batches in the background while the
	// control plane goes on with the steps up to until ("": the phase's
	// end), none of which acts on a worker: on real nodes a batch costs
	// the same at any size, and the control plane's steps are mostly
	// waits on its own gates. Dropped when there are no workers.
	workersAlongside := func(s steps.Step, until string) []PlannedStep {
		if len(workers) == 0 {
			return nil
		}
		return []PlannedStep{{Step: s, Targets: workers, Concurrency: batch, Background: true, Until: until}}
	}

	phases := []Phase{
		{Name: "preflight", Short: "reach every node, check health, prepare the new CAs and certificates", Steps: seq([]PlannedStep{
			fan(steps.NodesReachable{}, all, wide),
			one(steps.ClusterHealthy{}, cluster),
			one(steps.WorkloadsBaseline{}, cluster),
		},
			// A stacked etcd, healthy, with the members its gates will want,
			// before anything is made for it.
			etcd(one(steps.EtcdMembers{}, cluster)),
			[]PlannedStep{one(steps.NewCAs{}, cluster), fan(steps.PrepareCerts{}, all, wide)},
		)},
		{Name: "distribute", Short: "new CAs and old+new bundles to the nodes", Steps: []PlannedStep{
			fan(steps.Distribute(), all, wide),
		}},
		{Name: "controller-manager-trust", Short: "controller-managers trust and publish old+new", Steps: []PlannedStep{
			one(steps.KCMTrustBoth(), cp),
		}},
		{Name: "publication", Short: "wait until kube-root-ca.crt and token Secrets hold old+new", Steps: []PlannedStep{
			one(steps.RootCAPublished(), cluster),
		}},
		{Name: "in-cluster-clients", Short: "restart in-cluster clients so they load the bundle (waited for in servers)", Steps: []PlannedStep{
			one(steps.InClusterClientsRestart(), cluster),
		}},
		{Name: "apiserver-trust", Short: "apiservers accept client certificates of old and new CAs", Steps: seq(
			etcd(one(steps.EtcdTrustBoth(), cp)),
			[]PlannedStep{
				one(steps.ExtensionAuthSnapshot(), cluster),
				one(steps.APIServerTrustBoth(), cp),
				one(steps.ExtensionAuthWidened(), cluster),
			},
			sa(one(steps.ServiceAccountKeys{}, cluster)),
		)},
		{Name: "scheduler-trust", Short: "schedulers trust old+new", Steps: []PlannedStep{
			one(steps.SchedulerTrustBoth(), cp),
		}},
		{Name: "kubeconfigs", Short: "control-plane and extra kubeconfigs: bundle and client certificates from the new CA", Steps: []PlannedStep{
			one(steps.Kubeconfigs(), cp),
			fan(steps.ExtraKubeconfigs(), all, wide),
		}},
		{Name: "cloud-controller-manager", Short: "cloud-controller-manager trusts old+new, where present", Steps: []PlannedStep{
			one(steps.CCMTrustBoth(), cp),
		}},
		{Name: "servers", Short: "kubelets trust both, workloads restart, issuance switches to the new CAs", Steps: seq(
			workersAlongside(steps.KubeletTrustBoth("kubelet-trust-workers"), "no-kubelet-cut-off"),
			[]PlannedStep{one(steps.WebhookCABundles(), cluster), one(steps.KubeletTrustBoth("kubelet-trust-cp"), cp)},
			// The in-cluster clients restarted in phase 4 roll out while
			// trust widens; they must have the bundle before issuance switches.
			[]PlannedStep{one(steps.InClusterClientsRolledOut(), cluster), one(steps.WorkloadsRestart(), cluster), one(steps.NoKubeletCutOff{}, cluster)},
			etcd(one(steps.EtcdCerts(), cp)),
			[]PlannedStep{one(steps.SwitchIssuance(), cp), one(steps.KubeletCSRs{}, cluster)},
			workersAlongside(steps.KubeletClientCert("kubelet-client-workers"), ""),
			[]PlannedStep{one(steps.KubeletClientCert("kubelet-client-cp"), cp)},
		)},
		{Name: "cluster-info", Short: "cluster-info carries the new CA; bootstrap signatures recomputed", Steps: []PlannedStep{
			one(steps.ClusterInfo(), cluster),
		}},
		{Name: "verify", Short: "prove the cluster runs on the new CAs; list what still needs the old", HoldAfter: true, Steps: []PlannedStep{
			fan(steps.VerifyNode{}, all, wide),
			one(steps.Verify{}, cluster),
		}},
		{Name: "narrow-trust", Short: "drop the old CAs: the point after which old-CA certificates fail", Steps: seq(
			[]PlannedStep{one(steps.NoKubeletLockedOut{}, cluster)},
			// The worker kubelets need nothing from the control plane's
			// narrowing (they were switched to C1 in phase 9) and it
			// nothing from them: they narrow alongside it.
			workersAlongside(steps.KubeletNarrow("kubelet-narrow-workers"), "extra-kubeconfigs-narrowed"),
			[]PlannedStep{
				one(steps.NarrowKCMRootCA(), cp),
				one(steps.RootCANarrowed(), cluster),
			},
			etcd(one(steps.EtcdNarrow(), cp)),
			// Last before the old key goes: the restarts since the kubelets
			// re-issued the tokens count toward the wait for clients to
			// re-read them.
			sa(one(steps.ServiceAccountTokens{}, cluster)),
			[]PlannedStep{
				one(steps.ControlPlaneCanonical(), cp),
				one(steps.ExtensionAuthNarrowed(), cluster),
				one(steps.WebhookCABundlesNarrowed(), cluster),
			},
			[]PlannedStep{
				one(steps.KubeletNarrow("kubelet-narrow-cp"), cp),
				one(steps.CCMNarrow(), cp),
				fan(steps.ExtraKubeconfigsNarrowed(), all, wide),
				fan(steps.Cleanup(), all, wide),
				one(steps.DiscoveryHash{}, cluster),
			},
		)},
	}
	for i := range phases {
		phases[i].Index = i
		if phases[i].Name != PhaseNames[i] {
			panic("plans: phase list and PhaseNames disagree at " + phases[i].Name)
		}
	}
	if !opts.Hold {
		for i := range phases {
			phases[i].HoldAfter = false
		}
	}
	return &Plan{Version: Version, Phases: phases}
}

// WorkerBatch is how many workers restart at once.
func (inv *Inventory) WorkerBatch() int {
	r := inv.Rollout
	if r.WorkerBatchPercent > 0 {
		n := len(inv.Nodes.Workers) * r.WorkerBatchPercent / 100
		if n < 1 {
			n = 1
		}
		return n
	}
	if r.WorkerBatchSize < 1 {
		return 1
	}
	return r.WorkerBatchSize
}
