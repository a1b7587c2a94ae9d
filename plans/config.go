package plans

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/steps"
)

// ConfigVersion is the layout of Config as a run records it (JSON). Bump
// it when a field of Config, nodes.Config or steps.Config is renamed or
// changes meaning: a run recorded with another layout then has its
// recorded inventory resolved again instead of its Config misread.
const ConfigVersion = 1

// ErrConfigLayout: a recorded Config of another version or layout.
var ErrConfigLayout = errors.New("recorded configuration has another layout")

// Config is an inventory resolved once, when it is loaded: defaults
// applied; every path of the operator machine absolute (see
// Inventory.resolvePath); each node's SSH settings merged with the global
// ones; the paths on the nodes clean. A run records it, so that resume and
// rollback use the same files from any working directory, and each package
// receives only its part (Nodes for the SSH pool, Steps for the steps).
type Config struct {
	Version int `json:"version"`
	// InventoryPath is the inventory file, absolute.
	InventoryPath string `json:"inventoryPath"`
	// Kubeconfig (absolute) and Context reach the cluster's API.
	Kubeconfig string `json:"kubeconfig"`
	Context    string `json:"context"`
	// Nodes is how to reach each node: the control plane in rolling
	// order, then the workers. The command line's
	// --insecure-ignore-host-keys is not recorded here.
	Nodes []nodes.Config `json:"nodes"`
	// WorkerBatch is how many workers restart at once.
	WorkerBatch int `json:"workerBatch"`
	// Hold is the inventory's hold setting.
	Hold  bool         `json:"hold"`
	Steps steps.Config `json:"steps"`
	// DiscoverWorkers is the inventory's nodes.discoverWorkers, and
	// DiscoveredWorkers the workers it found when the run started (they
	// are in Nodes and Steps.Workers like the listed ones).
	DiscoverWorkers   *DiscoverSpec `json:"discoverWorkers,omitempty"`
	DiscoveredWorkers []string      `json:"discoveredWorkers,omitempty"`
}

// Config is the inventory resolved when Load, Parse or ParseStructure
// validated it; an Inventory made otherwise (a test's) is resolved on the
// first call, its relative paths counting from the working directory.
func (inv *Inventory) Config() *Config {
	if inv.config == nil {
		inv.config = inv.resolve()
	}
	return inv.config
}

// Marshal is the Config as a run records it.
func (c *Config) Marshal() ([]byte, error) { return json.Marshal(c) }

// UnmarshalConfig reads a recorded Config. An error wraps ErrConfigLayout
// when the recording is of another version or layout.
func UnmarshalConfig(b []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfigLayout, err)
	}
	if c.Version != ConfigVersion {
		return nil, fmt.Errorf("%w: version %d, this rotate reads %d", ErrConfigLayout, c.Version, ConfigVersion)
	}
	return &c, nil
}

// resolvePath is the rule for a path of the operator machine: ~ and ~/...
// count from the user's home directory, and a relative path from the
// directory of the inventory file, as kubectl resolves the paths in a
// kubeconfig against the kubeconfig's directory.
func (inv *Inventory) resolvePath(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if p == "~" || strings.HasPrefix(p, "~/") {
		if inv.homeErr != nil {
			return "", fmt.Errorf("cannot resolve %s: %w", p, inv.homeErr)
		}
		p = filepath.Join(inv.home, p[1:])
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(inv.abs), p)
	}
	return filepath.Clean(p), nil
}

// localPath is resolvePath for a validated inventory.
func (inv *Inventory) localPath(p string) string {
	if r, err := inv.resolvePath(p); err == nil {
		return r
	}
	return p
}

// mergeSSH is a node's SSH settings: the global ones, overridden by those
// the node sets, with resolved paths.
func (inv *Inventory) mergeSSH(n NodeSpec) nodes.Config {
	g := inv.SSH
	c := nodes.Config{Name: n.Name, Address: n.Address, User: g.User, IdentityFile: g.IdentityFile,
		KnownHostsFile: g.KnownHostsFile, DialTimeout: g.DialTimeout, CommandTimeout: g.CommandTimeout}
	override(&c.User, n.User, "")
	override(&c.IdentityFile, n.IdentityFile, "")
	override(&c.KnownHostsFile, n.KnownHostsFile, "")
	override(&c.DialTimeout, n.DialTimeout, 0)
	override(&c.CommandTimeout, n.CommandTimeout, 0)
	c.Port = derefOr(n.Port, g.Port, 0)
	c.UseAgent = derefOr(n.UseAgent, g.UseAgent, false)
	c.Become = derefOr(n.Become, g.Become, false)
	c.IdentityFile = inv.localPath(c.IdentityFile)
	c.KnownHostsFile = inv.localPath(c.KnownHostsFile)
	j := g.JumpHost
	if n.JumpHost != nil {
		j = n.JumpHost
	}
	if j != nil {
		c.JumpHost = &nodes.JumpHost{Address: j.Address, Port: derefOr(j.Port, nil, 0), User: j.User, IdentityFile: inv.localPath(j.IdentityFile)}
	}
	return c
}

// override sets *dst to v unless v is unset.
func override[T comparable](dst *T, v, unset T) {
	if v != unset {
		*dst = v
	}
}

// derefOr is the first of own and glob that is set, else def.
func derefOr[T any](own, glob *T, def T) T {
	switch {
	case own != nil:
		return *own
	case glob != nil:
		return *glob
	}
	return def
}

type nodeField struct {
	field  string
	spec   NodeSpec
	worker bool
}

// nodeFields is every node with its field path, control plane first.
func nodeFields(ns NodesSpec) []nodeField {
	var out []nodeField
	for i, n := range ns.ControlPlane {
		out = append(out, nodeField{fmt.Sprintf("nodes.controlPlane[%d]", i), n, false})
	}
	for i, n := range ns.Workers {
		out = append(out, nodeField{fmt.Sprintf("nodes.workers[%d]", i), n, true})
	}
	return out
}

// resolve turns a validated, defaulted inventory into its Config.
func (inv *Inventory) resolve() *Config {
	c := &Config{
		Version:           ConfigVersion,
		InventoryPath:     inv.abs,
		Kubeconfig:        inv.localPath(inv.Kubernetes.Kubeconfig),
		Context:           inv.Kubernetes.Context,
		WorkerBatch:       inv.WorkerBatch(),
		Hold:              inv.Hold == nil || *inv.Hold,
		Steps:             inv.stepsConfig(),
		DiscoverWorkers:   inv.Nodes.DiscoverWorkers,
		DiscoveredWorkers: inv.discovered,
	}
	for _, n := range nodeFields(inv.Nodes) {
		c.Nodes = append(c.Nodes, inv.mergeSSH(n.spec))
	}
	return c
}

// stepsConfig is the part of the inventory the steps read.
func (inv *Inventory) stepsConfig() steps.Config {
	p := inv.Paths
	c := steps.Config{
		Cluster:   inv.Cluster.Name,
		Addresses: map[string]string{},
		Paths: steps.Paths{
			KubernetesDir: path.Clean(p.KubernetesDir), PKIDir: path.Clean(p.PKIDir), ManifestsDir: path.Clean(p.ManifestsDir),
			KubeletConfig: path.Clean(p.KubeletConfig), KubeletPKIDir: path.Clean(p.KubeletPKIDir), BackupDir: path.Clean(p.BackupDir),
		},
		APIServerPort:         derefOr(inv.Nodes.APIServerPort, nil, DefaultAPIServerPort),
		KubeletRestartCommand: inv.Kubelet.RestartCommand,
		Workloads: steps.Workloads{
			Namespaces: inv.Rollout.Workloads.Namespaces, ExcludeNamespaces: inv.Rollout.Workloads.ExcludeNamespaces,
			Kinds: inv.Rollout.Workloads.Kinds, SkipSelector: inv.Rollout.Workloads.SkipSelector,
			Timeout: inv.Rollout.Workloads.Timeout, Timeouts: inv.Rollout.Workloads.Timeouts,
		},
		InClusterNamespaces: inv.Rollout.InClusterClients.Namespaces,
		WorkloadConcurrency: inv.Rollout.WorkloadConcurrency,
		DefaultTimeout:      inv.Rollout.Timeouts.Default,
		PhaseTimeouts:       inv.Rollout.Timeouts.Phases,
	}
	for _, n := range inv.Nodes.ControlPlane {
		c.ControlPlane = append(c.ControlPlane, n.Name)
		c.Addresses[n.Name] = n.Address
		addExtraKubeconfigs(&c, n.Name, inv.ExtraKubeconfigs.ControlPlane, n.ExtraKubeconfigs)
	}
	for _, n := range inv.Nodes.Workers {
		c.Workers = append(c.Workers, n.Name)
		c.Addresses[n.Name] = n.Address
		addExtraKubeconfigs(&c, n.Name, inv.ExtraKubeconfigs.Workers, n.ExtraKubeconfigs)
	}
	inv.resolveTopology(&c)
	c.Etcd = inv.rotates(RootEtcd)
	c.ServiceAccount = inv.rotates(RootServiceAccount)
	if g := inv.NewCA.Generate; g != nil {
		c.NewCA = steps.NewCASpec{Algorithm: g.Algorithm, Validity: g.Validity, ClusterCommonName: g.ClusterCommonName, FrontProxyCommonName: g.FrontProxyCommonName, EtcdCommonName: g.EtcdCommonName}
	}
	if f := inv.NewCA.Files; f != nil {
		c.NewCA = steps.NewCASpec{
			ClusterCertFile: inv.localPath(f.ClusterCert), ClusterKeyFile: inv.localPath(f.ClusterKey),
			FrontProxyCertFile: inv.localPath(f.FrontProxyCert), FrontProxyKeyFile: inv.localPath(f.FrontProxyKey),
			EtcdCertFile: inv.localPath(f.EtcdCert), EtcdKeyFile: inv.localPath(f.EtcdKey),
		}
		if f.ServiceAccountKey != "" {
			c.NewCA.ServiceAccountKeyFile = inv.localPath(f.ServiceAccountKey)
		}
	}
	return c
}

// addExtraKubeconfigs records node's extra kubeconfigs: its role's, then
// its own, each path cleaned and listed once.
func addExtraKubeconfigs(c *steps.Config, node string, lists ...[]string) {
	seen := map[string]bool{}
	for _, l := range lists {
		for _, p := range l {
			p = path.Clean(p)
			if seen[p] {
				continue
			}
			seen[p] = true
			if c.ExtraKubeconfigs == nil {
				c.ExtraKubeconfigs = map[string][]string{}
			}
			c.ExtraKubeconfigs[node] = append(c.ExtraKubeconfigs[node], p)
		}
	}
}
