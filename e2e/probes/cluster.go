package probes

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Cluster is the cluster description (cluster.json) the harness writes.
// Only the fields the probes use are declared; unknown fields are ignored.
type Cluster struct {
	Name              string `json:"name"`
	Dir               string `json:"dir"`
	Subnet            string `json:"subnet"`
	HostAddress       string `json:"hostAddress"`
	LBAddress         string `json:"lbAddress"`
	APIServerEndpoint string `json:"apiServerEndpoint"`
	BinDir            string `json:"binDir"`
	AdminKubeconfig   string `json:"adminKubeconfig"`
	Inventory         string `json:"inventory"`
	// NodeAgent is false when the cluster runs without node agents (no
	// Node objects): the node probes are then skipped. Absent = true.
	NodeAgent *bool  `json:"nodeAgent,omitempty"`
	Nodes     []Node `json:"nodes"`
}

// Node is one node of the cluster. EtcKubernetes and VarLibKubelet are
// host paths of the node's /etc/kubernetes and /var/lib/kubelet.
type Node struct {
	Name          string `json:"name"`
	Role          string `json:"role"`
	Address       string `json:"address"`
	Dir           string `json:"dir"`
	EtcKubernetes string `json:"etcKubernetes"`
	VarLibKubelet string `json:"varLibKubelet"`
	LogDir        string `json:"logDir,omitempty"`
}

// Roles.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// LoadCluster reads and checks cluster.json.
func LoadCluster(p string) (*Cluster, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read cluster description: %w", err)
	}
	var c Cluster
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("parse cluster description %s: %w", p, err)
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("cluster description %s: %w", p, err)
	}
	return &c, nil
}

func (c *Cluster) validate() error {
	var errs []error
	if _, err := url.Parse(c.APIServerEndpoint); err != nil || !strings.HasPrefix(c.APIServerEndpoint, "https://") {
		errs = append(errs, fmt.Errorf("apiServerEndpoint %q is not an https URL", c.APIServerEndpoint))
	}
	if len(c.ControlPlanes()) == 0 {
		errs = append(errs, errors.New("no control-plane node"))
	}
	for _, n := range c.Nodes {
		if n.Name == "" || n.Address == "" || n.EtcKubernetes == "" {
			errs = append(errs, fmt.Errorf("node %q: name, address and etcKubernetes are required", n.Name))
		}
	}
	return errors.Join(errs...)
}

// ControlPlanes returns the control-plane nodes in order.
func (c *Cluster) ControlPlanes() []Node {
	var out []Node
	for _, n := range c.Nodes {
		if n.Role == RoleControlPlane {
			out = append(out, n)
		}
	}
	return out
}

// HasNodeAgents reports whether nodes run a node agent.
func (c *Cluster) HasNodeAgents() bool { return c.NodeAgent == nil || *c.NodeAgent }

// Node paths as seen inside a node.
const (
	nodeEtcKubernetes = "/etc/kubernetes"
	nodeVarLibKubelet = "/var/lib/kubelet"
)

// nodeFS maps paths as seen inside a node (what kubeconfigs and symlinks
// hold) to host paths. Paths outside the two mounted directories are used
// as they are.
type nodeFS struct {
	etc, varlib string
}

func (n Node) fs() nodeFS { return nodeFS{etc: n.EtcKubernetes, varlib: n.VarLibKubelet} }

func (f nodeFS) hostPath(p string) string {
	p = path.Clean(p)
	for _, m := range []struct{ node, host string }{{nodeEtcKubernetes, f.etc}, {nodeVarLibKubelet, f.varlib}} {
		if m.host == "" {
			continue
		}
		if p == m.node {
			return m.host
		}
		if rest, ok := strings.CutPrefix(p, m.node+"/"); ok {
			return filepath.Join(m.host, rest)
		}
	}
	return p
}

// readFile reads a node path, following symlinks with node semantics (an
// absolute link target is a node path, as the kubelet writes
// kubelet-client-current.pem).
func (f nodeFS) readFile(p string) ([]byte, error) {
	for range 16 {
		hp := f.hostPath(p)
		fi, err := os.Lstat(hp)
		if err != nil {
			return nil, err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return os.ReadFile(hp)
		}
		target, err := os.Readlink(hp)
		if err != nil {
			return nil, err
		}
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(p), target)
		}
		p = target
	}
	return nil, fmt.Errorf("%s: too many levels of symbolic links", p)
}
