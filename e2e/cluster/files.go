package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"

	"go.yaml.in/yaml/v3"

	"github.com/kubeca/rotate/e2e/clusterinfo"
)

// Info returns the cluster.json content.
func (c *Cluster) Info() clusterinfo.Cluster {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info()
}

// info is Info; the caller holds c.mu (JoinNode may run concurrently and
// mark nodes joined).
func (c *Cluster) info() clusterinfo.Cluster {
	s := &c.st.Spec
	info := clusterinfo.Cluster{
		Name:              s.Name,
		Dir:               s.Dir,
		Subnet:            s.Subnet,
		HostAddress:       s.HostAddress,
		LBAddress:         s.LBAddress,
		APIServerEndpoint: s.APIServerEndpoint(),
		BinDir:            s.BinDir,
		HarnessBinDir:     s.HarnessBin,
		AdminKubeconfig:   s.AdminKubeconfig(),
		Inventory:         s.InventoryPath(),
		SSHKey:            s.SSHKey(),
		KnownHosts:        s.KnownHosts(),
		NodeAgent:         s.Kubelet,
	}
	for _, n := range s.Nodes {
		if n.Spare {
			continue
		}
		info.Nodes = append(info.Nodes, clusterinfo.Node{
			Name:             n.Name,
			Role:             n.Role,
			Address:          n.Address,
			Dir:              n.Dir,
			EtcKubernetes:    n.EtcKubernetes(),
			VarLibKubelet:    n.VarLibKubelet(),
			VarLibEtcd:       n.VarLibEtcd(),
			LogDir:           n.LogDir(),
			NetNS:            n.NetNS,
			SupervisorSocket: n.SupervisorSocket(),
			ServingCSR:       n.ServingCSR,
		})
	}
	return info
}

// writeClusterJSON writes cluster.json under c.mu, so of concurrent
// JoinNode calls the last write holds every node joined so far.
func (c *Cluster) writeClusterJSON() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	raw, err := json.MarshalIndent(c.info(), "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(c.st.Spec.ClusterJSON(), append(raw, '\n'), 0o644)
}

// Inventory types: exactly the keys of examples/inventory.yaml, in its order.
type invNode struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	Port    int    `yaml:"port,omitempty"`
	User    string `yaml:"user,omitempty"`
	Become  bool   `yaml:"become,omitempty"`
}

type inventory struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Cluster    struct {
		Name string `yaml:"name"`
	} `yaml:"cluster"`
	Kubernetes struct {
		Kubeconfig string `yaml:"kubeconfig"`
		Context    string `yaml:"context"`
	} `yaml:"kubernetes"`
	SSH struct {
		User           string `yaml:"user"`
		Port           int    `yaml:"port"`
		IdentityFile   string `yaml:"identityFile"`
		UseAgent       bool   `yaml:"useAgent"`
		Become         bool   `yaml:"become"`
		KnownHostsFile string `yaml:"knownHostsFile"`
		DialTimeout    string `yaml:"dialTimeout"`
		CommandTimeout string `yaml:"commandTimeout"`
	} `yaml:"ssh"`
	Nodes struct {
		ControlPlane  []invNode `yaml:"controlPlane"`
		Workers       []invNode `yaml:"workers"`
		APIServerPort int       `yaml:"apiServerPort"`
		Unlisted      string    `yaml:"unlisted"`
	} `yaml:"nodes"`
	Paths struct {
		KubernetesDir string `yaml:"kubernetesDir"`
		PKIDir        string `yaml:"pkiDir"`
		ManifestsDir  string `yaml:"manifestsDir"`
		KubeletConfig string `yaml:"kubeletConfig"`
		KubeletPKIDir string `yaml:"kubeletPKIDir"`
		BackupDir     string `yaml:"backupDir"`
	} `yaml:"paths"`
	Kubelet struct {
		RestartCommand string `yaml:"restartCommand"`
	} `yaml:"kubelet"`
	ExtraKubeconfigs struct {
		ControlPlane []string `yaml:"controlPlane"`
		Workers      []string `yaml:"workers"`
	} `yaml:"extraKubeconfigs"`
	NewCA struct {
		Generate struct {
			Algorithm            string `yaml:"algorithm"`
			Validity             string `yaml:"validity"`
			ClusterCommonName    string `yaml:"clusterCommonName"`
			FrontProxyCommonName string `yaml:"frontProxyCommonName"`
			EtcdCommonName       string `yaml:"etcdCommonName"`
		} `yaml:"generate"`
	} `yaml:"newCA"`
	Rollout struct {
		WorkerBatchSize     int `yaml:"workerBatchSize"`
		WorkloadConcurrency int `yaml:"workloadConcurrency"`
		Workloads           struct {
			Namespaces        []string          `yaml:"namespaces"`
			ExcludeNamespaces []string          `yaml:"excludeNamespaces"`
			Kinds             []string          `yaml:"kinds"`
			SkipSelector      string            `yaml:"skipSelector"`
			Timeout           string            `yaml:"timeout"`
			Timeouts          map[string]string `yaml:"timeouts"`
		} `yaml:"workloads"`
		InClusterClients struct {
			Namespaces []string `yaml:"namespaces"`
		} `yaml:"inClusterClients"`
		Timeouts struct {
			Default string            `yaml:"default"`
			Phases  map[string]string `yaml:"phases"`
		} `yaml:"timeouts"`
	} `yaml:"rollout"`
	Hold   bool     `yaml:"hold"`
	Rotate []string `yaml:"rotate"`
}

// Inventory returns rotate's inventory for this cluster.
func (c *Cluster) Inventory() ([]byte, error) {
	s := &c.st.Spec
	var inv inventory
	inv.APIVersion = "rotate.kubeca.io/v1alpha1"
	inv.Kind = "Inventory"
	inv.Cluster.Name = s.Name
	inv.Kubernetes.Kubeconfig = s.AdminKubeconfig()
	inv.SSH.User = "root"
	inv.SSH.Port = 22
	inv.SSH.IdentityFile = s.SSHKey()
	inv.SSH.KnownHostsFile = s.KnownHosts()
	inv.SSH.DialTimeout = "10s"
	inv.SSH.CommandTimeout = "3m"
	inv.Nodes.ControlPlane = []invNode{}
	inv.Nodes.Workers = []invNode{}
	for _, n := range s.Nodes {
		if n.Spare {
			continue // joins later, if at all: not the operator's inventory
		}
		in := invNode{Name: n.Name, Address: n.Address}
		if n.User() != "root" {
			in.User, in.Become = n.User(), true
		}
		if n.Port() != 22 {
			in.Port = n.Port()
		}
		if n.ControlPlane() {
			inv.Nodes.ControlPlane = append(inv.Nodes.ControlPlane, in)
		} else {
			inv.Nodes.Workers = append(inv.Nodes.Workers, in)
		}
	}
	inv.Nodes.APIServerPort = 6443
	inv.Nodes.Unlisted = "warn"
	inv.Paths.KubernetesDir = "/etc/kubernetes"
	inv.Paths.PKIDir = "/etc/kubernetes/pki"
	inv.Paths.ManifestsDir = "/etc/kubernetes/manifests"
	inv.Paths.KubeletConfig = "/var/lib/kubelet/config.yaml"
	inv.Paths.KubeletPKIDir = "/var/lib/kubelet/pki"
	inv.Paths.BackupDir = "/var/lib/rotate/backups"
	inv.Kubelet.RestartCommand = filepath.Join(s.HarnessBin, "e2e-node") + " restart-kubelet"
	// None by default; a test that puts kubeconfigs on the nodes lists
	// them in its copy of the inventory.
	inv.ExtraKubeconfigs.ControlPlane = []string{}
	inv.ExtraKubeconfigs.Workers = []string{}
	g := &inv.NewCA.Generate
	g.Algorithm = "ECDSA-P256"
	g.Validity = "87600h"
	g.ClusterCommonName = "kubernetes-ca-rotated-" + s.Name
	g.FrontProxyCommonName = "front-proxy-ca-rotated-" + s.Name
	g.EtcdCommonName = "etcd-ca-rotated-" + s.Name
	r := &inv.Rollout
	r.WorkerBatchSize = 1
	r.WorkloadConcurrency = 2
	r.Workloads.Namespaces = []string{}
	r.Workloads.ExcludeNamespaces = []string{}
	r.Workloads.Kinds = []string{"Deployment", "DaemonSet", "StatefulSet"}
	r.Workloads.Timeout = "5m" // each workload's rollout
	r.Workloads.Timeouts = map[string]string{}
	r.InClusterClients.Namespaces = []string{"kube-system"}
	// Per-step default; phase names are rotate's and are left out here, so
	// the inventory never names a phase rotate does not know.
	r.Timeouts.Default = "5m"
	r.Timeouts.Phases = map[string]string{}
	inv.Hold = true
	// Every trust root rotate rotates on this cluster's stacked etcd.
	inv.Rotate = []string{"cluster", "front-proxy", "etcd", "service-account"}

	return encodeYAML("# rotate inventory for e2e cluster "+s.Name+" (generated by e2e/cluster)\n", &inv)
}

// encodeYAML is v in YAML with a two-space indent, after header.
func encodeYAML(header string, v any) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(header)
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// EditInventory parses the inventory raw, lets edit change its top-level
// mapping and encodes it again (comments kept, two-space indent).
func EditInventory(raw []byte, edit func(top *yaml.Node) error) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("inventory is not a mapping")
	}
	if err := edit(doc.Content[0]); err != nil {
		return nil, err
	}
	return encodeYAML("", &doc)
}

// WithRoots returns the inventory raw with its rotate list replaced by
// roots.
func WithRoots(raw []byte, roots []string) ([]byte, error) {
	return EditInventory(raw, func(m *yaml.Node) error {
		list := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		for _, r := range roots {
			list.Content = append(list.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: r})
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			if m.Content[i].Value == "rotate" {
				m.Content[i+1] = list
				return nil
			}
		}
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "rotate"}, list)
		return nil
	})
}

func (c *Cluster) writeInventory() error {
	raw, err := c.Inventory()
	if err != nil {
		return err
	}
	return writeFileAtomic(c.st.Spec.InventoryPath(), raw, 0o644)
}
