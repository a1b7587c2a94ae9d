package plans

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

func withDiscover(valid, spec string) string {
	return strings.Replace(valid, "nodes:\n", "nodes:\n  discoverWorkers: "+spec+"\n", 1)
}

func TestDiscoverValidation(t *testing.T) {
	dir, valid := fixtureDir(t)
	for _, tc := range []struct{ name, text, want string }{
		{"address only", withDiscover(valid, `{address: "{{.InternalIP}}"}`), ""},
		{"selector and address", withDiscover(valid, `{selector: "pool=edge,!node-role.kubernetes.io/control-plane", address: "{{.Name}}.nodes.example.com"}`), ""},
		{"no address", withDiscover(valid, `{selector: "pool=edge"}`),
			`nodes.discoverWorkers.address: required: a template of the SSH address, e.g. "{{.InternalIP}}"`},
		{"bad selector", withDiscover(valid, `{selector: "pool in (a", address: "{{.InternalIP}}"}`), "nodes.discoverWorkers.selector: \"pool in (a\" is not a label selector"},
		{"template syntax", withDiscover(valid, `{address: "{{.InternalIP"}`), `nodes.discoverWorkers.address: "{{.InternalIP": template: address:1: unclosed action`},
		{"unknown field", withDiscover(valid, `{address: "{{.IP}}"}`), `nodes.discoverWorkers.address: "{{.IP}}": template: address:1:2: executing "address" at <.IP>: can't evaluate field IP in type plans.NodeAddresses (the template sees .Name, .Hostname, .InternalIP, .ExternalIP)`},
		{"no global identity", strings.Replace(withDiscover(valid, `{address: "{{.InternalIP}}"}`), "  identityFile: id_ed25519\n", "", 1),
			"ssh.identityFile: required for nodes.discoverWorkers (discovered workers use the global ssh settings) unless ssh.useAgent is true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := invProblems(t, dir, tc.text)
			if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Fatalf("problems:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func node(name string, labels map[string]string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Status: corev1.NodeStatus{Addresses: addrs}}
}

func internal(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}

var cpLabel = map[string]string{"node-role.kubernetes.io/control-plane": ""}

func TestDiscoverWorkers(t *testing.T) {
	dir, valid := fixtureDir(t)
	cluster := []runtime.Object{
		node("cp1", cpLabel, internal("10.0.0.1")),
		node("cp2", cpLabel, internal("10.0.0.2")), // a control-plane node: never a worker
		node("w1", nil, internal("10.0.1.1")),      // listed: the inventory's address wins
		node("w3", nil, internal("10.0.1.3"), corev1.NodeAddress{Type: corev1.NodeHostName, Address: "w3.lan"}),
		node("w2", nil, internal("10.0.1.2"), internal("10.9.9.9")),
	}
	t.Run("found, sorted, recorded", func(t *testing.T) {
		inv, err := Load(write(t, dir, withDiscover(valid, `{address: "{{.InternalIP}}"}`)))
		if err != nil {
			t.Fatal(err)
		}
		if err := inv.DiscoverWorkers(context.Background(), fake.NewClientset(cluster...)); err != nil {
			t.Fatal(err)
		}
		c := inv.Config()
		if want := []string{"w1", "w2", "w3"}; !reflect.DeepEqual(c.Steps.Workers, want) {
			t.Fatalf("workers %v, want %v", c.Steps.Workers, want)
		}
		if want := []string{"w2", "w3"}; !reflect.DeepEqual(c.DiscoveredWorkers, want) {
			t.Fatalf("discovered %v, want %v", c.DiscoveredWorkers, want)
		}
		if c.Steps.Address("w2") != "10.0.1.2" || c.Steps.Address("w1") != "w1.example.com" {
			t.Fatalf("addresses %v", c.Steps.Addresses)
		}
		var w3 *struct{ user, key string }
		for _, n := range c.Nodes {
			if n.Name == "w3" {
				w3 = &struct{ user, key string }{n.User, n.IdentityFile}
			}
		}
		if w3 == nil || !strings.HasSuffix(w3.key, "id_ed25519") {
			t.Fatalf("w3 has no SSH settings of its own from ssh: %+v", w3)
		}
		// Recorded with the run and read back: the same nodes.
		raw, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := UnmarshalConfig(raw)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("recorded config differs:\n%+v\n%+v", back, c)
		}
		if lines := c.TopologyLines(); !strings.Contains(lines[len(lines)-1], "found: w2, w3") {
			t.Fatalf("plan lines %q", lines)
		}
		// Again (plan --live, then start on the same inventory): nothing twice.
		if err := inv.DiscoverWorkers(context.Background(), fake.NewClientset(cluster...)); err != nil {
			t.Fatal(err)
		}
		if got := inv.Config().Steps.Workers; len(got) != 3 {
			t.Fatalf("workers after a second discovery: %v", got)
		}
	})
	for _, tc := range []struct{ name, spec, want string }{
		{"no such address", `{address: "{{.ExternalIP}}"}`,
			`nodes.discoverWorkers.address: node w2: "{{.ExternalIP}}" gives "", not an IP address or DNS name (the node has Hostname="" InternalIP="10.0.1.2" ExternalIP="")`},
		{"not an address", `{address: "{{.InternalIP}}:22"}`, `nodes.discoverWorkers.address: node w2: "{{.InternalIP}}:22" gives "10.0.1.2:22"`},
		{"taken endpoint", `{address: "10.0.0.1"}`, "nodes.discoverWorkers.address: node w2: SSH endpoint 10.0.0.1:22 is node cp1's too"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := Load(write(t, dir, withDiscover(valid, tc.spec)))
			if err != nil {
				t.Fatal(err)
			}
			err = inv.DiscoverWorkers(context.Background(), fake.NewClientset(cluster...))
			var ie *InventoryError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DiscoverWorkers = %v, want an inventory error with %q", err, tc.want)
			}
			if got := inv.Config().Steps.Workers; len(got) != 1 {
				t.Fatalf("a failed discovery changed the workers: %v", got)
			}
		})
	}
}
