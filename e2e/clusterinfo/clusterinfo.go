// Package clusterinfo is cluster.json: the description of an e2e cluster
// that the harness (e2e/cluster) writes and the probes, e2e/verify and the
// e2e tests read. Fields are only ever added.
package clusterinfo

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// Cluster is cluster.json.
type Cluster struct {
	Name              string `json:"name"`
	Dir               string `json:"dir"`
	Subnet            string `json:"subnet"`
	HostAddress       string `json:"hostAddress"`
	LBAddress         string `json:"lbAddress"`
	APIServerEndpoint string `json:"apiServerEndpoint"`
	BinDir            string `json:"binDir"`
	HarnessBinDir     string `json:"harnessBinDir"`
	AdminKubeconfig   string `json:"adminKubeconfig"`
	Inventory         string `json:"inventory"`
	SSHKey            string `json:"sshKey"`
	KnownHosts        string `json:"knownHosts"`
	// NodeAgent is false when the cluster runs without node agents (no
	// Node objects): the node probes are then skipped. Load takes an
	// absent field for true.
	NodeAgent bool   `json:"nodeAgent"`
	Nodes     []Node `json:"nodes"`
}

// Node is one node. The *Dir fields are host paths; symlinks inside them
// (kubelet-client-current.pem) are absolute paths as seen inside the node:
// resolve them against VarLibKubelet.
type Node struct {
	Name          string `json:"name"`
	Role          string `json:"role"`
	Address       string `json:"address"`
	Dir           string `json:"dir"`
	EtcKubernetes string `json:"etcKubernetes"`
	VarLibKubelet string `json:"varLibKubelet"`
	VarLibEtcd    string `json:"varLibEtcd"`
	LogDir        string `json:"logDir"`
	NetNS         string `json:"netns"`
	// SupervisorSocket is the host path of the node supervisor's socket.
	SupervisorSocket string `json:"supervisorSocket"`
	// ServingCSR: the kubelet's serving certificate comes from the CSR API
	// (serverTLSBootstrap: true).
	ServingCSR bool `json:"servingCSR,omitempty"`
}

// Roles.
const (
	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// Load reads and checks cluster.json.
func Load(p string) (*Cluster, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read cluster description: %w", err)
	}
	c := Cluster{NodeAgent: true}
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

// MountNS is the host path of node's persistent mount namespace (the
// harness bind-mounts it under Dir/ns): what is mounted inside the node
// only, such as the tmpfs of a pod's projected volume, is seen through it
// (nsenter --mount=MountNS).
func (c *Cluster) MountNS(node string) string {
	return filepath.Join(c.Dir, "ns", node+".mnt")
}
