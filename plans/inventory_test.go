package plans

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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

// knownHostsLine is a known_hosts entry (an ed25519 public key made with
// ssh-keygen for this file, its private half thrown away).
const knownHostsLine = "10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEryAMak7Dv1keOB5A5xgKgRxP1eMVom1ILEpBcsU42I\n"

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
	c := inv.Config().Nodes[1]
	if c.Name != "w1" || c.Port != 2222 || c.User != "root" || c.IdentityFile != filepath.Join(dir, "id_ed25519") ||
		c.KnownHostsFile != filepath.Join(dir, "known_hosts") || c.DialTimeout != 10*time.Second {
		t.Fatalf("worker ssh = %+v", c)
	}
	if cfg := inv.Config(); cfg.Steps.Paths.BackupDir != DefaultBackupDir || cfg.Kubeconfig != filepath.Join(dir, "admin.conf") || cfg.InventoryPath != filepath.Join(dir, "inv.yaml") {
		t.Fatalf("config = %+v", cfg)
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

// Relative paths count from the inventory file's directory, ~ from the
// home directory, whatever the working directory.
func TestPathsResolveAgainstTheInventory(t *testing.T) {
	dir, valid := fixtureDir(t)
	home := t.TempDir()
	t.Setenv("HOME", home)
	os.WriteFile(filepath.Join(home, "known_hosts"), []byte(knownHostsLine), 0o600)
	for _, f := range []string{"ca.crt", "ca.key", "fp.crt", "fp.key"} {
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600)
	}
	text := strings.Replace(valid, "knownHostsFile: known_hosts", "knownHostsFile: ~/known_hosts", 1) +
		"newCA:\n  files:\n    clusterCert: ca.crt\n    clusterKey: ./ca.key\n    frontProxyCert: " + filepath.Join(dir, "fp.crt") + "\n    frontProxyKey: sub/../fp.key\n"
	write(t, dir, text)
	t.Chdir(dir)
	inv, err := Load("inv.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	c := inv.Config()
	for got, want := range map[string]string{
		c.InventoryPath:                    filepath.Join(dir, "inv.yaml"),
		c.Kubeconfig:                       filepath.Join(dir, "admin.conf"),
		c.Nodes[0].IdentityFile:            filepath.Join(dir, "id_ed25519"),
		c.Nodes[1].KnownHostsFile:          filepath.Join(home, "known_hosts"),
		c.Steps.NewCA.ClusterCertFile:      filepath.Join(dir, "ca.crt"),
		c.Steps.NewCA.ClusterKeyFile:       filepath.Join(dir, "ca.key"),
		c.Steps.NewCA.FrontProxyCertFile:   filepath.Join(dir, "fp.crt"),
		c.Steps.NewCA.FrontProxyKeyFile:    filepath.Join(dir, "fp.key"),
		inv.Config().Steps.Paths.BackupDir: DefaultBackupDir,
	} {
		if got != want {
			t.Errorf("resolved %q, want %q", got, want)
		}
	}
}

func TestConfigRoundTrip(t *testing.T) {
	dir, valid := fixtureDir(t)
	inv, err := Load(write(t, dir, valid+"rollout:\n  workloads:\n    namespaces: []\n  timeouts:\n    phases:\n      servers: 15m\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := inv.Config().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, inv.Config()) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, inv.Config())
	}
	if a, b := planShape(got.Plan(Options{Hold: true})), planShape(Build(inv, Options{Hold: true})); a != b {
		t.Fatalf("the recorded configuration plans differently:\n%s\nwant\n%s", a, b)
	}
	for name, bad := range map[string]string{
		"other version": strings.Replace(string(b), `"version":1`, `"version":2`, 1),
		"unknown field": strings.Replace(string(b), `"version":1`, `"version":1,"renamed":true`, 1),
		"not JSON":      "{",
	} {
		if _, err := UnmarshalConfig([]byte(bad)); !errors.Is(err, ErrConfigLayout) {
			t.Errorf("%s: %v, want ErrConfigLayout", name, err)
		}
	}
}

// planShape lists each phase's steps, targets and concurrency.
func planShape(p *Plan) string {
	var b strings.Builder
	for _, ph := range p.Phases {
		fmt.Fprintf(&b, "%d %s hold=%v\n", ph.Index, ph.Name, ph.HoldAfter)
		for _, ps := range ph.Steps {
			fmt.Fprintf(&b, "  %s %v x%d\n", ps.Step.Name(), ps.Targets, ps.Concurrency)
		}
	}
	return b.String()
}
