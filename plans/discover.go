package plans

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/template"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// Workers discovered from the API (nodes.discoverWorkers): every Node the
// selector matches that the inventory does not list is a worker, reached
// over SSH at the address the template gives, with the global ssh
// settings. They are resolved once, when a run starts (and for
// `rotate plan --live`), into the Config the run records, so resume and
// rollback work on the same nodes.

// DiscoverSpec is nodes.discoverWorkers.
type DiscoverSpec struct {
	// Selector is a label selector (kubectl's syntax) over Nodes;
	// default DefaultDiscoverSelector.
	Selector string `yaml:"selector" json:"selector"`
	// Address is a text/template over NodeAddresses giving the SSH
	// address, e.g. "{{.InternalIP}}".
	Address string `yaml:"address" json:"address"`
}

// DefaultDiscoverSelector: every Node that is not a control-plane node.
const DefaultDiscoverSelector = "!node-role.kubernetes.io/control-plane"

// NodeAddresses is what the address template sees of a Node: its name and
// the first address of each type in its status.
type NodeAddresses struct {
	Name, Hostname, InternalIP, ExternalIP string
}

func nodeAddresses(n *corev1.Node) NodeAddresses {
	a := NodeAddresses{Name: n.Name}
	for _, ad := range n.Status.Addresses {
		var dst *string
		switch ad.Type {
		case corev1.NodeHostName:
			dst = &a.Hostname
		case corev1.NodeInternalIP:
			dst = &a.InternalIP
		case corev1.NodeExternalIP:
			dst = &a.ExternalIP
		}
		if dst != nil && *dst == "" {
			*dst = ad.Address
		}
	}
	return a
}

func (a NodeAddresses) String() string {
	return fmt.Sprintf("Hostname=%q InternalIP=%q ExternalIP=%q", a.Hostname, a.InternalIP, a.ExternalIP)
}

// parse parses the spec (defaulted). Errors name the field.
func (d *DiscoverSpec) parse() (labels.Selector, *template.Template, []Problem) {
	var probs []Problem
	sel, err := labels.Parse(d.Selector)
	if err != nil {
		probs = append(probs, Problem{Field: "nodes.discoverWorkers.selector", Msg: fmt.Sprintf("%q is not a label selector: %v", d.Selector, err)})
	}
	var tmpl *template.Template
	switch {
	case strings.TrimSpace(d.Address) == "":
		probs = append(probs, Problem{Field: "nodes.discoverWorkers.address", Msg: `required: a template of the SSH address, e.g. "{{.InternalIP}}"`})
	default:
		tmpl, err = template.New("address").Option("missingkey=error").Parse(d.Address)
		if err == nil {
			// Every field a Node can have is set: an error here is a
			// field the template names that NodeAddresses lacks.
			err = tmpl.Execute(new(strings.Builder), NodeAddresses{"n", "h", "10.0.0.1", "10.0.0.2"})
		}
		if err != nil {
			probs = append(probs, Problem{Field: "nodes.discoverWorkers.address",
				Msg: fmt.Sprintf("%q: %v (the template sees .Name, .Hostname, .InternalIP, .ExternalIP)", d.Address, err)})
			tmpl = nil
		}
	}
	return sel, tmpl, probs
}

// discover checks nodes.discoverWorkers.
func (v *validator) discover() {
	d := v.inv.Nodes.DiscoverWorkers
	if d == nil {
		return
	}
	_, _, probs := d.parse()
	for _, p := range probs {
		v.add(p.Field, "%s", p.Msg)
	}
	if c := v.inv.mergeSSH(NodeSpec{}); !c.UseAgent && c.IdentityFile == "" {
		v.add("ssh.identityFile", "required for nodes.discoverWorkers (discovered workers use the global ssh settings) unless ssh.useAgent is true")
	}
}

func (inv *Inventory) applyDiscoverDefaults() {
	if d := inv.Nodes.DiscoverWorkers; d != nil && d.Selector == "" {
		d.Selector = DefaultDiscoverSelector
	}
}

// Discovers reports whether the inventory has workers to discover.
func (inv *Inventory) Discovers() bool { return inv.Nodes.DiscoverWorkers != nil }

// DiscoverWorkers lists the Nodes nodes.discoverWorkers selects, adds
// those the inventory does not list as workers (in name order) and
// resolves the Config again. A template that gives no valid address for
// a node is an error naming the node; so is an SSH endpoint another node
// has.
func (inv *Inventory) DiscoverWorkers(ctx context.Context, kube kubernetes.Interface) error {
	d := inv.Nodes.DiscoverWorkers
	if d == nil {
		return nil
	}
	sel, tmpl, probs := d.parse()
	if len(probs) > 0 {
		return &InventoryError{File: inv.Path, Problems: probs}
	}
	list, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return fmt.Errorf("nodes.discoverWorkers: list nodes (%s): %w", sel, err)
	}
	listed := map[string]bool{}
	endpoints := map[string]string{}
	for _, n := range nodeFields(inv.Nodes) {
		listed[n.spec.Name] = true
		c := inv.mergeSSH(n.spec)
		endpoints[net.JoinHostPort(canonicalHost(n.spec.Address), strconv.Itoa(c.Port))] = n.spec.Name
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	var found []NodeSpec
	for i := range list.Items {
		n := &list.Items[i]
		if listed[n.Name] {
			continue
		}
		a := nodeAddresses(n)
		var b strings.Builder
		if err := tmpl.Execute(&b, a); err != nil {
			probs = append(probs, Problem{Field: "nodes.discoverWorkers.address", Msg: fmt.Sprintf("node %s: %v", n.Name, err)})
			continue
		}
		addr := strings.TrimSpace(b.String())
		if addr == "" || !validHost(addr) {
			probs = append(probs, Problem{Field: "nodes.discoverWorkers.address",
				Msg: fmt.Sprintf("node %s: %q gives %q, not an IP address or DNS name (the node has %s)", n.Name, d.Address, addr, a)})
			continue
		}
		spec := NodeSpec{Name: n.Name, Address: addr}
		ep := net.JoinHostPort(canonicalHost(addr), strconv.Itoa(inv.mergeSSH(spec).Port))
		if prev := endpoints[ep]; prev != "" {
			probs = append(probs, Problem{Field: "nodes.discoverWorkers.address",
				Msg: fmt.Sprintf("node %s: SSH endpoint %s is node %s's too", n.Name, ep, prev)})
			continue
		}
		endpoints[ep] = n.Name
		found = append(found, spec)
	}
	if len(probs) > 0 {
		return &InventoryError{File: inv.Path, Problems: probs}
	}
	inv.Nodes.Workers = append(inv.Nodes.Workers, found...)
	for _, n := range found {
		inv.discovered = append(inv.discovered, n.Name)
	}
	inv.config = inv.resolve()
	return nil
}
