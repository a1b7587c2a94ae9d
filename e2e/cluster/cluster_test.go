package cluster

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestPlan(t *testing.T) {
	s, err := plan(Options{Name: "e2e", Dir: "/tmp/x", ControlPlanes: 3, Workers: 2, Subnet: "10.213.47.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	if s.HostAddress != "10.213.47.1" || s.LBAddress != "10.213.47.2" {
		t.Fatalf("host %s lb %s", s.HostAddress, s.LBAddress)
	}
	var got []string
	for _, n := range s.Nodes {
		got = append(got, n.Name+"="+n.Address+"/"+n.Role)
	}
	want := []string{"cp1=10.213.47.11/control-plane", "cp2=10.213.47.12/control-plane", "cp3=10.213.47.13/control-plane", "worker1=10.213.47.101/worker", "worker2=10.213.47.102/worker"}
	if !slices.Equal(got, want) {
		t.Fatalf("nodes %v, want %v", got, want)
	}
	if s.Nodes[0].Dir != "/tmp/x/nodes/cp1" || s.Nodes[0].NetNS != "re2e-e2e-cp1" {
		t.Fatalf("node 0: %+v", s.Nodes[0])
	}
	if s.APIServerEndpoint() != "https://10.213.47.2:6443" {
		t.Fatal(s.APIServerEndpoint())
	}

	for _, bad := range []Options{
		{Name: "UPPER", ControlPlanes: 1},
		{Name: "x", ControlPlanes: 0},
		{Name: "x", ControlPlanes: 1, Subnet: "10.0.0.0/25"},
		{Name: "x", ControlPlanes: 1, Subnet: "fd00::/64"},
		{Name: "x", ControlPlanes: 1, Workers: -1},
	} {
		if _, err := plan(bad); err == nil {
			t.Errorf("plan(%+v): nil error", bad)
		}
	}
}

func TestHostLinkName(t *testing.T) {
	for _, name := range []string{"e2e", "a-much-longer-cluster-name"} {
		l := hostLinkName(name)
		if len(l) > 15 || !strings.HasPrefix(l, "re2e-") {
			t.Errorf("hostLinkName(%q) = %q", name, l)
		}
	}
	if hostLinkName("aaaaaaaaaaaaaaaa1") == hostLinkName("aaaaaaaaaaaaaaaa2") {
		t.Error("long names collide")
	}
}

// keyPaths lists every mapping key path of a YAML document
// ("ssh.identityFile", "nodes.controlPlane[].name").
func keyPaths(n *yaml.Node, prefix string, out map[string]bool) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			keyPaths(c, prefix, out)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if prefix != "" {
				p = prefix + "." + p
			}
			out[p] = true
			keyPaths(n.Content[i+1], p, out)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			keyPaths(c, prefix+"[]", out)
		}
	}
}

func TestInventoryMatchesExampleSchema(t *testing.T) {
	src, err := findSourceDir()
	if err != nil {
		t.Skip(err)
	}
	raw, err := os.ReadFile(filepath.Join(src, "examples", "inventory.yaml"))
	if err != nil {
		t.Skip(err)
	}
	var ex yaml.Node
	if err := yaml.Unmarshal(raw, &ex); err != nil {
		t.Fatal(err)
	}
	exKeys := map[string]bool{}
	keyPaths(&ex, "", exKeys)

	s, err := plan(Options{Name: "e2e", Dir: "/tmp/x", ControlPlanes: 3, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	s.HarnessBin = "/tmp/x/bin"
	c := &Cluster{st: &state{Spec: s}}
	inv, err := c.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	var got yaml.Node
	if err := yaml.Unmarshal(inv, &got); err != nil {
		t.Fatal(err)
	}
	gotKeys := map[string]bool{}
	keyPaths(&got, "", gotKeys)

	// A node entry has the same keys in either list.
	norm := func(m map[string]bool) {
		for k := range m {
			for _, l := range []string{"nodes.controlPlane[].", "nodes.workers[]."} {
				if strings.HasPrefix(k, l) {
					delete(m, k)
					m["nodes.*[]."+strings.TrimPrefix(k, l)] = true
				}
			}
		}
	}
	norm(exKeys)
	norm(gotKeys)
	var unknown, missing []string
	for k := range gotKeys {
		if !exKeys[k] && !strings.HasPrefix(k, "rollout.timeouts.phases.") {
			unknown = append(unknown, k)
		}
	}
	// Per-node overrides and per-phase timeouts are optional.
	optional := map[string]bool{"nodes.*[].apiServer": true, "nodes.*[].apiServer.address": true, "nodes.*[].apiServer.port": true}
	for k := range exKeys {
		if !gotKeys[k] && !optional[k] && !strings.HasPrefix(k, "rollout.timeouts.phases.") {
			missing = append(missing, k)
		}
	}
	sort.Strings(unknown)
	sort.Strings(missing)
	if len(unknown) > 0 || len(missing) > 0 {
		t.Fatalf("inventory keys differ from examples/inventory.yaml: unknown %v, missing %v\n%s", unknown, missing, inv)
	}
	for _, want := range []string{
		"restartCommand: /tmp/x/bin/e2e-node restart-kubelet",
		"kubeconfig: /tmp/x/admin.conf",
		"knownHostsFile: /tmp/x/ssh/known_hosts",
		"identityFile: /tmp/x/ssh/id_ed25519",
		"hold: true",
	} {
		if !strings.Contains(string(inv), want) {
			t.Errorf("inventory lacks %q", want)
		}
	}
}

func TestClusterJSONContract(t *testing.T) {
	s, err := plan(Options{Name: "e2e", Dir: "/tmp/x", ControlPlanes: 1, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{st: &state{Spec: s}}
	raw, err := json.Marshal(c.Info())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "dir", "subnet", "hostAddress", "lbAddress", "apiServerEndpoint", "binDir", "adminKubeconfig", "inventory", "sshKey", "knownHosts", "nodes"} {
		if _, ok := m[k]; !ok {
			t.Errorf("cluster.json lacks %q", k)
		}
	}
	node := m["nodes"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "role", "address", "dir", "etcKubernetes", "varLibKubelet"} {
		if _, ok := node[k]; !ok {
			t.Errorf("cluster.json node lacks %q", k)
		}
	}
	if m["apiServerEndpoint"] != "https://10.213.47.2:6443" || node["role"] != "control-plane" || node["etcKubernetes"] != "/tmp/x/nodes/cp1/etc-kubernetes" {
		t.Errorf("cluster.json: %s", raw)
	}
}

func TestCheckDirFree(t *testing.T) {
	dir := t.TempDir()
	if err := checkDirFree(filepath.Join(dir, "missing")); err != nil {
		t.Error(err)
	}
	if err := checkDirFree(dir); err != nil {
		t.Error(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkDirFree(dir); err == nil {
		t.Error("non-empty dir accepted")
	}
	if err := os.WriteFile(filepath.Join(dir, stateFile+".down"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkDirFree(dir); err != nil {
		t.Errorf("dir of a cluster taken down: %v", err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("leftovers of a downed cluster were not removed")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stateFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkDirFree(dir); err == nil {
		t.Error("dir of a live cluster accepted")
	}
}

func TestHostPath(t *testing.T) {
	n := Node{Name: "cp1", Dir: t.TempDir()}
	pki := filepath.Join(n.VarLibKubelet(), "pki")
	if err := os.MkdirAll(pki, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pki, "kubelet-client-1.pem"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/var/lib/kubelet/pki/kubelet-client-1.pem", filepath.Join(pki, "kubelet-client-current.pem")); err != nil {
		t.Fatal(err)
	}
	tests := map[string]string{
		"/var/lib/kubelet/pki/kubelet-client-current.pem": filepath.Join(pki, "kubelet-client-1.pem"),
		"/etc/kubernetes/pki/ca.crt":                      filepath.Join(n.EtcKubernetes(), "pki", "ca.crt"),
		"/etc/hostname":                                   "/etc/hostname",
	}
	for in, want := range tests {
		if got := n.HostPath(in); got != want {
			t.Errorf("HostPath(%q) = %q, want %q", in, got, want)
		}
	}
}
