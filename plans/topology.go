package plans

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/steps"
)

// Topology: where rotate reaches each node's apiserver, apart from the
// node's SSH address (nodes.apiServerPort, a control-plane node's
// apiServer).

// DefaultAPIServerPort is nodes.apiServerPort unless the inventory sets it.
const DefaultAPIServerPort = 6443

// nodes.unlisted: what preflight does about a Node that is in the cluster
// but not in the inventory.
const (
	UnlistedWarn = "warn"             // report it with what to do, go on
	UnlistedFail = steps.UnlistedFail // refuse to start
)

func (inv *Inventory) applyTopologyDefaults() {
	if inv.Nodes.APIServerPort == nil {
		inv.Nodes.APIServerPort = intPtr(DefaultAPIServerPort)
	}
	if inv.Nodes.Unlisted == "" {
		inv.Nodes.Unlisted = UnlistedWarn
	}
}

// topology checks nodes.apiServerPort and each node's apiServer.
func (v *validator) topology() {
	if p := v.inv.Nodes.APIServerPort; p != nil && !validPort(*p) {
		v.add("nodes.apiServerPort", "%d is not a TCP port (1-65535)", *p)
	}
	if u := v.inv.Nodes.Unlisted; u != "" && u != UnlistedWarn && u != UnlistedFail {
		v.add("nodes.unlisted", "%q is not one of %s, %s", u, UnlistedWarn, UnlistedFail)
	}
	for _, n := range nodeFields(v.inv.Nodes) {
		a := n.spec.APIServer
		if a == nil {
			continue
		}
		field := n.field + ".apiServer"
		if n.worker {
			v.add(field, "only control-plane nodes run an apiserver rotate checks; remove apiServer from this worker")
			continue
		}
		if a.Address != "" && !validHost(a.Address) {
			v.add(field+".address", "%q is neither an IP address nor a valid DNS name", a.Address)
		}
		if a.Port != nil && !validPort(*a.Port) {
			v.add(field+".port", "%d is not a TCP port (1-65535)", *a.Port)
		}
	}
}

func validPort(p int) bool { return p >= 1 && p <= 65535 }

// resolveTopology fills in each control-plane node's apiserver endpoint:
// its apiServer address (default: the node's address) and port (default:
// nodes.apiServerPort).
func (inv *Inventory) resolveTopology(c *steps.Config) {
	c.UnlistedNodes = inv.Nodes.Unlisted
	c.APIServers = map[string]string{}
	for _, n := range inv.Nodes.ControlPlane {
		c.APIServers[n.Name] = inv.apiServerEndpoint(n)
	}
}

// apiServerEndpoint is host:port of a control-plane node's apiserver.
func (inv *Inventory) apiServerEndpoint(n NodeSpec) string {
	host, port := n.Address, derefOr(inv.Nodes.APIServerPort, nil, DefaultAPIServerPort)
	if a := n.APIServer; a != nil {
		if a.Address != "" {
			host = a.Address
		}
		port = derefOr(a.Port, nil, port)
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// TopologyLines are the plan listing's lines about where rotate reaches
// each node: the apiservers' endpoints.
func (c *Config) TopologyLines() []string {
	var eps []string
	for _, n := range c.Steps.ControlPlane {
		eps = append(eps, n+" "+c.Steps.APIServerEndpoint(n))
	}
	lines := []string{fmt.Sprintf("apiservers: %s", strings.Join(eps, ", "))}
	var jumps []string
	for _, n := range c.Nodes {
		if j := n.JumpHost; j != nil {
			port := j.Port
			if port == 0 {
				port = nodes.DefaultPort
			}
			jumps = append(jumps, n.Name+" via "+net.JoinHostPort(j.Address, strconv.Itoa(port)))
		}
	}
	if len(jumps) > 0 {
		lines = append(lines, "ssh through jump hosts: "+strings.Join(jumps, ", "))
	}
	if d := c.DiscoverWorkers; d != nil {
		found := "found when the run starts"
		if len(c.DiscoveredWorkers) > 0 {
			found = "found: " + strings.Join(c.DiscoveredWorkers, ", ")
		}
		lines = append(lines, fmt.Sprintf("workers discovered from the API: Nodes matching %q, SSH address %q (%s)", d.Selector, d.Address, found))
	}
	return lines
}
