package steps

import "time"

// Paths are kubeadm's locations on a node.
type Paths struct {
	KubernetesDir string // /etc/kubernetes
	PKIDir        string // /etc/kubernetes/pki
	ManifestsDir  string // /etc/kubernetes/manifests
	KubeletConfig string // /var/lib/kubelet/config.yaml
	KubeletPKIDir string // /var/lib/kubelet/pki
	// BackupDir holds the node copies of backups, BackupDir/<backup id>/;
	// the kubelet markers go next to it, in ../markers.
	BackupDir string // /var/lib/rotate/backups
}

// NewCASpec says where the new CAs come from.
type NewCASpec struct {
	// Generate (when Files are empty).
	Algorithm            string
	Validity             time.Duration
	ClusterCommonName    string
	FrontProxyCommonName string
	EtcdCommonName       string `json:",omitempty"`
	// User-supplied PEM files, read at preflight.
	ClusterCertFile, ClusterKeyFile       string
	FrontProxyCertFile, FrontProxyKeyFile string
	EtcdCertFile, EtcdKeyFile             string `json:",omitempty"`
	// ServiceAccountKeyFile is the new service-account signing key; ""
	// generates one like the old.
	ServiceAccountKeyFile string `json:",omitempty"`
}

// Workloads selects the pods restarted so they load the CA bundle.
type Workloads struct {
	Namespaces        []string // empty: all
	ExcludeNamespaces []string
	Kinds             []string // Deployment, DaemonSet, StatefulSet
	// SkipSelector is a label selector (labels.Parse syntax): workloads
	// whose labels match are never restarted; "" for none.
	SkipSelector string
	// Timeout is how long a restart waits for each workload's rollout; 0
	// means 5 minutes. Timeouts overrides it per "<namespace>/<name>".
	Timeout  time.Duration
	Timeouts map[string]time.Duration
}

// Config is everything the real phases need from the inventory.
type Config struct {
	Cluster               string
	ControlPlane          []string // node names, in rolling order
	Workers               []string
	Addresses             map[string]string // node name -> address
	APIServerPort         int               // 6443; see APIServers
	Paths                 Paths
	KubeletRestartCommand string
	NewCA                 NewCASpec
	Workloads             Workloads
	InClusterNamespaces   []string
	WorkloadConcurrency   int
	DefaultTimeout        time.Duration
	PhaseTimeouts         map[string]time.Duration
	// APIServers is each control-plane node's apiserver endpoint
	// (host:port), apart from its SSH address. A configuration recorded
	// without it reaches Address on APIServerPort.
	APIServers map[string]string
	// UnlistedNodes is what preflight does about a Node in the cluster
	// that is not in the run: "fail" refuses, anything else ("warn", or a
	// configuration recorded without it) reports it and goes on.
	UnlistedNodes string
	// ExtraKubeconfigs are kubeconfigs besides kubeadm's, by node (see
	// extrakubeconfigs.go).
	ExtraKubeconfigs map[string][]string
	// Etcd: the run rotates the etcd CA of a stacked etcd too (etcd.go).
	Etcd bool `json:",omitempty"`
	// ServiceAccount: the run rotates the service-account signing key too
	// (serviceaccount.go).
	ServiceAccount bool `json:",omitempty"`
}

// Timeout is the per-step, per-target deadline for a phase.
func (c *Config) Timeout(phase string) time.Duration {
	if c == nil {
		return 5 * time.Minute
	}
	if d, ok := c.PhaseTimeouts[phase]; ok && d > 0 {
		return d
	}
	if c.DefaultTimeout > 0 {
		return c.DefaultTimeout
	}
	return 5 * time.Minute
}

// Address is the node's address from the inventory.
func (c *Config) Address(node string) string { return c.Addresses[node] }

// APIServerEndpoint is host:port of the apiserver on control-plane node
// node: every gate, check and probe that talks to one apiserver dials it.
func (c *Config) APIServerEndpoint(node string) string {
	if ep := c.APIServers[node]; ep != "" {
		return ep
	}
	return joinHostPort(c.Address(node), c.APIServerPort)
}
