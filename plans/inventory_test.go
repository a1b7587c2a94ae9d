package plans

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fixtureDir writes the files a valid inventory references and returns a
// valid inventory text using them.
func fixtureDir(t *testing.T) (dir, valid string) {
	t.Helper()
	dir = t.TempDir()
	for _, f := range []string{"admin.conf", "id_ed25519", "known_hosts"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	valid = `apiVersion: rotate.kubeca.io/v1alpha1
kind: Inventory
cluster:
  name: test
kubernetes:
  kubeconfig: admin.conf
ssh:
  identityFile: id_ed25519
  knownHostsFile: known_hosts
nodes:
  controlPlane:
    - name: cp1
      address: 10.0.0.1
  workers:
    - name: w1
      address: w1.example.com
      port: 2222
`
	return dir, valid
}

func write(t *testing.T, dir, text string) string {
	t.Helper()
	p := filepath.Join(dir, "inv.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadValidAppliesDefaults(t *testing.T) {
	dir, valid := fixtureDir(t)
	inv, err := Load(write(t, dir, valid))
	if err != nil {
		t.Fatal(err)
	}
	if inv.Paths.PKIDir != "/etc/kubernetes/pki" || inv.Kubelet.RestartCommand != "systemctl restart kubelet" {
		t.Fatalf("defaults not applied: %+v %+v", inv.Paths, inv.Kubelet)
	}
	if !*inv.Hold || inv.NewCA.Generate.Algorithm != "ECDSA-P256" || inv.NewCA.Generate.Validity != 87600*time.Hour {
		t.Fatalf("defaults: hold=%v newCA=%+v", *inv.Hold, inv.NewCA.Generate)
	}
	c := inv.NodeSSH(inv.Nodes.Workers[0])
	if c.Port != 2222 || c.User != "root" || c.IdentityFile != filepath.Join(dir, "id_ed25519") {
		t.Fatalf("worker ssh = %+v", c)
	}
	if len(inv.Digest) != 64 {
		t.Fatalf("digest %q", inv.Digest)
	}
}

func TestExampleInventoryParses(t *testing.T) {
	raw, err := os.ReadFile("../examples/inventory.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inv, err := ParseStructure("../examples/inventory.yaml", raw)
	if err != nil {
		t.Fatalf("example inventory: %v", err)
	}
	if len(inv.Nodes.ControlPlane) != 3 || len(inv.Nodes.Workers) != 2 || inv.Rollout.Timeouts.Phases["servers"] != 15*time.Minute {
		t.Fatalf("example parsed as %+v", inv.Nodes)
	}
	p := Build(inv, Options{Hold: true})
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(p.Phases) != 13 || !p.Phases[11].HoldAfter || p.Phases[11].Name != "verify" {
		t.Fatalf("plan phases: %d, hold after verify: %v", len(p.Phases), p.Phases[11].HoldAfter)
	}
}

func TestInventoryErrors(t *testing.T) {
	dir, valid := fixtureDir(t)
	cases := []struct {
		name string
		text string // "" = do not write a file
		want []string
	}{
		{"not yaml", "cluster: [unclosed\n", []string{"not valid YAML"}},
		{"not a mapping", "- a\n- b\n", []string{"not a YAML mapping"}},
		{"empty", "", []string{"file is empty"}},
		{"missing fields", "apiVersion: rotate.kubeca.io/v1alpha1\nkind: Inventory\n", []string{
			"cluster.name: required", "kubernetes.kubeconfig: required", "nodes.controlPlane: at least one"}},
		{"wrong kind", strings.Replace(valid, "kind: Inventory", "kind: Cluster", 1), []string{`kind (line 2): must be "Inventory"`}},
		{"unknown fields", strings.Replace(valid, "  identityFile: id_ed25519", "  identtyFile: id_ed25519\n  identityFile: id_ed25519", 1) + "extra: 1\n", []string{
			`ssh.identtyFile (line 8): unknown field "identtyFile"`, `extra (line 19): unknown field "extra"`}},
		{"duplicate node names", strings.Replace(valid, "name: w1", "name: cp1", 1), []string{
			`nodes.workers[0].name (line 15): duplicate node name "cp1" (also nodes.controlPlane[0])`}},
		{"bad address", strings.Replace(valid, "address: 10.0.0.1", "address: 10.0.0.1:22", 1), []string{
			`nodes.controlPlane[0].address (line 13): "10.0.0.1:22" is neither an IP address nor a valid DNS name`}},
		{"bad port", strings.Replace(valid, "port: 2222", "port: 70000", 1), []string{"nodes.workers[0].port (line 17): 70000 is not a TCP port"}},
		{"missing identity file", strings.Replace(valid, "identityFile: id_ed25519", "identityFile: nope", 1), []string{
			"ssh.identityFile (line 8): file " + filepath.Join(dir, "nope") + " does not exist"}},
		{"wrong type", strings.Replace(valid, "port: 2222", "port: many", 1), []string{"nodes.workers[0].port (line 17): cannot use string"}},
		{"bad algorithm", valid + "newCA:\n  generate:\n    algorithm: DSA\n", []string{`newCA.generate.algorithm (line 20): "DSA" is not one of`}},
		{"unknown phase timeout", valid + "rollout:\n  timeouts:\n    phases:\n      nope: 1m\n", []string{`rollout.timeouts.phases.nope (line 21): unknown phase "nope"`}},
		{"both batch settings", valid + "rollout:\n  workerBatchSize: 2\n  workerBatchPercent: 50\n", []string{"set either workerBatchSize or workerBatchPercent"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, dir, tc.text)
			_, err := Load(p)
			var ie *InventoryError
			if !errors.As(err, &ie) || !errors.Is(err, ErrInventory) {
				t.Fatalf("Load = %v, want *InventoryError", err)
			}
			if !strings.Contains(err.Error(), "inventory "+p) {
				t.Errorf("error does not name the file: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
	t.Run("nonexistent file", func(t *testing.T) {
		_, err := Load(filepath.Join(dir, "missing.yaml"))
		if err == nil || !strings.Contains(err.Error(), "missing.yaml: 1 problem(s):\n  - file does not exist") {
			t.Fatalf("Load = %v", err)
		}
	})
	t.Run("all problems at once", func(t *testing.T) {
		text := strings.Replace(strings.Replace(valid, "address: 10.0.0.1", "address: -bad-", 1), "name: test", "name: \"\"", 1)
		_, err := Load(write(t, dir, text))
		var ie *InventoryError
		if !errors.As(err, &ie) || len(ie.Problems) != 2 {
			t.Fatalf("want 2 problems reported together, got %v", err)
		}
	})
}

func TestWorkerBatch(t *testing.T) {
	inv := &Inventory{Nodes: NodesSpec{Workers: make([]NodeSpec, 10)}}
	for _, tc := range []struct{ size, pct, want int }{{0, 0, 1}, {3, 0, 3}, {0, 25, 2}, {0, 1, 1}, {0, 100, 10}} {
		inv.Rollout.WorkerBatchSize, inv.Rollout.WorkerBatchPercent = tc.size, tc.pct
		if got := inv.WorkerBatch(); got != tc.want {
			t.Errorf("size %d pct %d: got %d want %d", tc.size, tc.pct, got, tc.want)
		}
	}
}
