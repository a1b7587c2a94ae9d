package plans

import (
	"errors"
	"fmt"
	"net"
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
	for f, content := range map[string]string{"admin.conf": "x", "id_ed25519": "x", "known_hosts": knownHostsLine,
		"bad_known_hosts": "cp1 ssh-ed25519 not-base64\n"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o600); err != nil {
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
	if w := inv.Config().Steps.Workloads; w.Timeout != 5*time.Minute || w.SkipSelector != "" {
		t.Fatalf("workload defaults = %+v", w)
	}
	if len(inv.Digest) != 64 {
		t.Fatalf("digest %q", inv.Digest)
	}
}

// exampleInventory is examples/inventory.yaml, parsed.
func exampleInventory(t *testing.T) *Inventory {
	t.Helper()
	raw, err := os.ReadFile("../examples/inventory.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inv, err := ParseStructure("../examples/inventory.yaml", raw)
	if err != nil {
		t.Fatalf("example inventory: %v", err)
	}
	return inv
}

func TestExampleInventoryParses(t *testing.T) {
	inv := exampleInventory(t)
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

// TestVerifyPhasePerNode: verify checks every node as its own target, fanned
// out, then the cluster.
func TestVerifyPhasePerNode(t *testing.T) {
	inv := exampleInventory(t)
	ph, _, _ := Build(inv, Options{}).Phase("verify")
	var got []string
	for _, ps := range ph.Steps {
		var ts []string
		for _, tg := range ps.Targets {
			ts = append(ts, tg.String())
		}
		got = append(got, fmt.Sprintf("%s on %s (%d)", ps.Step.Name(), strings.Join(ts, ","), ps.Concurrency))
	}
	c := inv.Config()
	nodes := append(append([]string{}, c.Steps.ControlPlane...), c.Steps.Workers...)
	want := []string{"verify-nodes on " + strings.Join(nodes, ",") + " (32)", "verify on cluster (1)"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("verify phase = %q, want %q", got, want)
	}
}

func TestInventoryErrors(t *testing.T) {
	dir, valid := fixtureDir(t)
	// edit replaces old with new in the valid inventory (old must occur).
	edit := func(old, new string) string {
		if !strings.Contains(valid, old) {
			t.Fatalf("fixture lacks %q", old)
		}
		return strings.Replace(valid, old, new, 1)
	}
	cases := []struct {
		name string
		text string
		want []string
		n    int // how many problems, 0: not checked
	}{
		{"not yaml", "cluster: [unclosed\n", []string{"not valid YAML"}, 1},
		{"not a mapping", "- a\n- b\n", []string{"not a YAML mapping"}, 1},
		{"empty", "", []string{"file is empty"}, 1},
		{"missing fields", "apiVersion: rotate.kubeca.io/v1alpha1\nkind: Inventory\n", []string{
			"cluster.name: required", "kubernetes.kubeconfig: required", "nodes.controlPlane: at least one"}, 0},
		{"wrong kind", edit("kind: Inventory", "kind: Cluster"), []string{`kind (line 2): must be "Inventory"`}, 1},
		{"unknown fields", edit("  identityFile: id_ed25519", "  identtyFile: id_ed25519\n  identityFile: id_ed25519") + "extra: 1\n", []string{
			`ssh.identtyFile (line 8): unknown field "identtyFile"`, `extra (line 19): unknown field "extra"`}, 2},
		{"duplicate node names", edit("name: w1", "name: cp1"), []string{
			`nodes.workers[0].name (line 15): duplicate node name "cp1" (also nodes.controlPlane[0])`}, 1},
		{"bad address", edit("address: 10.0.0.1", "address: 10.0.0.1:22"), []string{
			`nodes.controlPlane[0].address (line 13): "10.0.0.1:22" is neither an IP address nor a valid DNS name`}, 1},
		{"IPv4 with an octet over 255", edit("address: 10.0.0.1", "address: 10.0.0.256"), []string{
			`nodes.controlPlane[0].address (line 13): "10.0.0.256" is neither an IP address nor a valid DNS name (a name ending in a number is read as an IPv4 address)`}, 1},
		{"IPv4 with three parts", edit("address: 10.0.0.1", "address: 1.2.3"), []string{
			`nodes.controlPlane[0].address (line 13): "1.2.3" is neither an IP address nor a valid DNS name (a name ending`}, 1},
		{"IPv4 node name", edit("name: cp1", "name: 10.0.0.9"), []string{
			`nodes.controlPlane[0].name (line 12): "10.0.0.9" is an IP address: name is the Kubernetes Node name`}, 1},
		{"IPv6 node name", edit("name: cp1", `name: "fd00::1"`), []string{
			`nodes.controlPlane[0].name (line 12): "fd00::1" is an IP address`}, 1},
		{"upper-case node name", edit("name: cp1", "name: CP1"), []string{
			`nodes.controlPlane[0].name (line 12): "CP1" is not a valid Kubernetes node name (lower case RFC 1123)`}, 1},
		{"duplicate address and port", edit("address: w1.example.com\n      port: 2222", "address: 10.0.0.1\n      port: 22"), []string{
			`nodes.workers[0].address (line 16): duplicate SSH endpoint 10.0.0.1:22 (also nodes.controlPlane[0])`}, 1},
		{"IPv4 with leading zeros", edit("address: 10.0.0.1", `address: "10.000.0.1"`), []string{
			`nodes.controlPlane[0].address (line 13): "10.000.0.1" is neither an IP address`}, 1},
		{"duplicate DNS name in another case", valid + "    - name: w2\n      address: W1.Example.com\n      port: 2222\n", []string{
			`nodes.workers[1].address (line 19): duplicate SSH endpoint w1.example.com:2222 (also nodes.workers[0])`}, 1},
		{"extra kubeconfigs", valid + "extraKubeconfigs:\n  controlPlane: [/etc/kubernetes/monitoring.conf, relative.conf, /etc/kubernetes/monitoring.conf]\n  workers: [/etc/kubernetes//kubelet.conf]\n", []string{
			`extraKubeconfigs.controlPlane[1] (line 19): must be an absolute path on the node, got "relative.conf"`,
			`extraKubeconfigs.controlPlane[2] (line 19): duplicate path /etc/kubernetes/monitoring.conf (also extraKubeconfigs.controlPlane[0])`,
			`extraKubeconfigs.workers[0] (line 20): /etc/kubernetes//kubelet.conf is kubeadm's: rotate updates it anyway`}, 3},
		{"a node's extra kubeconfigs", edit("      port: 2222\n", "      port: 2222\n      extraKubeconfigs: [~/.kube/config]\n"), []string{
			`nodes.workers[0].extraKubeconfigs[0] (line 18): must be an absolute path on the node, got "~/.kube/config"`}, 1},
		{"bad port", edit("port: 2222", "port: 70000"), []string{"nodes.workers[0].port (line 17): 70000 is not a TCP port"}, 1},
		{"node port 0", edit("port: 2222", "port: 0"), []string{"nodes.workers[0].port (line 17): 0 is not a TCP port (1-65535)"}, 1},
		{"global port 0", edit("  knownHostsFile: known_hosts", "  knownHostsFile: known_hosts\n  port: 0"), []string{
			"ssh.port (line 10): 0 is not a TCP port (1-65535)"}, 1},
		{"negative global durations", edit("  knownHostsFile: known_hosts", "  knownHostsFile: known_hosts\n  dialTimeout: -5s\n  commandTimeout: -1m"), []string{
			"ssh.dialTimeout (line 10): must be positive, got -5s", "ssh.commandTimeout (line 11): must be positive, got -1m0s"}, 2},
		{"negative node duration", edit("port: 2222", "port: 2222\n      dialTimeout: -1s"), []string{
			"nodes.workers[0].dialTimeout (line 18): must be positive, got -1s"}, 1},
		{"negative rollout timeouts", valid + "rollout:\n  timeouts:\n    default: -1m\n    phases:\n      servers: -2m\n", []string{
			"rollout.timeouts.default (line 20): must be positive, got -1m0s", "rollout.timeouts.phases.servers (line 22): must be positive, got -2m0s"}, 2},
		{"unknown trust root", valid + "rotate: [cluster, front-proxy, etcdd]\n", []string{
			`rotate[2] (line 18): "etcdd" is not a trust root rotate knows (cluster, front-proxy, etcd, service-account)`}, 1},
		{"service-account twice", valid + "rotate: [cluster, front-proxy, service-account, service-account]\n", []string{
			`rotate[3] (line 18): "service-account" listed twice`}, 1},
		{"service-account without the cluster CAs", valid + "rotate: [service-account]\n", []string{
			`rotate (line 18): must list cluster and front-proxy`}, 1},
		{"trust root twice", valid + "rotate: [cluster, front-proxy, etcd, etcd]\n", []string{
			`rotate[3] (line 18): "etcd" listed twice`}, 1},
		{"etcd without the cluster CAs", valid + "rotate: [etcd]\n", []string{
			`rotate (line 18): must list cluster and front-proxy: they are rotated together, etcd and service-account in addition to them`}, 1},
		{"etcd CA files required with etcd", valid + "rotate: [cluster, front-proxy, etcd]\nnewCA:\n  files:\n    clusterCert: admin.conf\n    clusterKey: admin.conf\n    frontProxyCert: admin.conf\n    frontProxyKey: admin.conf\n", []string{
			"newCA.files.etcdCert", "newCA.files.etcdKey"}, 2},
		{"etcd CA files without etcd", valid + "newCA:\n  files:\n    clusterCert: admin.conf\n    clusterKey: admin.conf\n    frontProxyCert: admin.conf\n    frontProxyKey: admin.conf\n    etcdCert: admin.conf\n", []string{
			"newCA.files.etcdCert (line 24): set, but rotate does not list etcd"}, 1},
		{"etcd CA named like the cluster CA", valid + "rotate: [cluster, front-proxy, etcd]\nnewCA:\n  generate:\n    clusterCommonName: same\n    etcdCommonName: same\n", []string{
			"newCA.generate.etcdCommonName (line 22): must differ from clusterCommonName and frontProxyCommonName"}, 1},
		{"service-account key file without service-account", valid + "newCA:\n  files:\n    clusterCert: admin.conf\n    clusterKey: admin.conf\n    frontProxyCert: admin.conf\n    frontProxyKey: admin.conf\n    serviceAccountKey: admin.conf\n", []string{
			"newCA.files.serviceAccountKey", "set, but rotate does not list service-account"}, 1},
		{"service-account key file missing", valid + "rotate: [cluster, front-proxy, service-account]\nnewCA:\n  files:\n    clusterCert: admin.conf\n    clusterKey: admin.conf\n    frontProxyCert: admin.conf\n    frontProxyKey: admin.conf\n    serviceAccountKey: nope.key\n", []string{
			"newCA.files.serviceAccountKey", "nope.key"}, 1},
		{"negative validity", valid + "newCA:\n  generate:\n    validity: -1h\n", []string{
			"newCA.generate.validity (line 20): -1h0m0s is too short for a CA"}, 1},
		{"missing identity file", edit("identityFile: id_ed25519", "identityFile: nope"), []string{
			"ssh.identityFile (line 8): file " + filepath.Join(dir, "nope") + " does not exist"}, 1},
		{"unparsable known_hosts", edit("knownHostsFile: known_hosts", "knownHostsFile: bad_known_hosts"), []string{
			"ssh.knownHostsFile (line 9): not a usable known_hosts file: knownhosts: " + filepath.Join(dir, "bad_known_hosts")}, 1},
		{"known_hosts is a directory", edit("knownHostsFile: known_hosts", "knownHostsFile: ."), []string{
			"ssh.knownHostsFile (line 9): " + dir + " is a directory, not a file (host keys are always verified"}, 1},
		{"node known_hosts", edit("port: 2222", "port: 2222\n      knownHostsFile: bad_known_hosts"), []string{
			"nodes.workers[0].knownHostsFile (line 18): not a usable known_hosts file"}, 1},
		{"wrong type", edit("port: 2222", "port: many"), []string{"nodes.workers[0].port (line 17): cannot use string"}, 1},
		{"bad algorithm", valid + "newCA:\n  generate:\n    algorithm: DSA\n", []string{`newCA.generate.algorithm (line 20): "DSA" is not one of`}, 1},
		{"unknown phase timeout", valid + "rollout:\n  timeouts:\n    phases:\n      nope: 1m\n", []string{`rollout.timeouts.phases.nope (line 21): unknown phase "nope"`}, 1},
		{"bad workload settings", valid + "rollout:\n  workloads:\n    skipSelector: \"tier in (a\"\n    timeout: -1m\n    timeouts:\n      nonamespace: 1m\n      apps/zero: 0s\n", []string{
			"rollout.workloads.skipSelector (line 20): not a label selector",
			"rollout.workloads.timeout (line 21): must be positive, got -1m0s",
			`rollout.workloads.timeouts["apps/zero"] (line 22): must be positive, got 0s`,
			`rollout.workloads.timeouts["nonamespace"] (line 22): key must be <namespace>/<name> of a workload, got "nonamespace"`}, 4},
		{"both batch settings", valid + "rollout:\n  workerBatchSize: 2\n  workerBatchPercent: 50\n", []string{"set either workerBatchSize or workerBatchPercent"}, 1},
		{"backupDir /", valid + "paths:\n  backupDir: /\n", []string{"paths.backupDir (line 19): must be a directory below /"}, 1},
		{"duplicate top-level key", valid + "cluster:\n  name: again\n", []string{`cluster (line 18): duplicate key "cluster" (first at line 3)`}, 1},
		{"duplicate nested key", edit("  identityFile: id_ed25519", "  identityFile: id_ed25519\n  identityFile: other"), []string{
			`ssh.identityFile (line 9): duplicate key "identityFile" (first at line 8)`}, 1},
		{"duplicate key in a node", edit("port: 2222", "port: 2222\n      port: 2223"), []string{
			`nodes.workers[0].port (line 18): duplicate key "port" (first at line 17)`}, 1},
		{"too large", valid + "# " + strings.Repeat("x", MaxSize) + "\n", []string{"file is larger than 1048576 bytes (1 MiB): not an inventory"}, 1},
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
			if tc.n > 0 && len(ie.Problems) != tc.n {
				t.Errorf("%d problems, want %d:\n%v", len(ie.Problems), tc.n, err)
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

// Problems come in document order, the same on every run (no map order).
func TestInventoryProblemOrderIsStable(t *testing.T) {
	dir, valid := fixtureDir(t)
	text := strings.Replace(valid, "name: test", `name: ""`, 1) + `paths:
  pkiDir: pki
  backupDir: backups
  kubeletConfig: config.yaml
newCA:
  files:
    frontProxyKey: fp.key
    clusterCert: ca.crt
rollout:
  timeouts:
    phases:
      zeta: 1m
      alpha: 1m
      servers: -1m
      beta: 1m
`
	p := write(t, dir, text)
	var first string
	for i := 0; i < 20; i++ {
		_, err := Load(p)
		var ie *InventoryError
		if !errors.As(err, &ie) {
			t.Fatalf("Load = %v", err)
		}
		for j := 1; j < len(ie.Problems); j++ {
			if ie.Problems[j].Line < ie.Problems[j-1].Line {
				t.Fatalf("problems not in document order:\n%v", err)
			}
		}
		if i == 0 {
			first = err.Error()
			if len(ie.Problems) != 12 {
				t.Fatalf("%d problems, want 12:\n%v", len(ie.Problems), err)
			}
			continue
		}
		if err.Error() != first {
			t.Fatalf("run %d listed the problems differently:\n%v\nfirst:\n%s", i, err, first)
		}
	}
}

func TestUseAgentNeedsASocket(t *testing.T) {
	dir, valid := fixtureDir(t)
	text := strings.Replace(valid, "  identityFile: id_ed25519\n", "  useAgent: true\n", 1)
	l, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, tc := range []struct{ name, sock, want string }{
		{"unset", "", "ssh.useAgent (line 8): useAgent is true but $SSH_AUTH_SOCK is not set"},
		{"missing", filepath.Join(dir, "gone.sock"), "ssh.useAgent (line 8): useAgent is true but $SSH_AUTH_SOCK " + filepath.Join(dir, "gone.sock") + ": "},
		{"not a socket", filepath.Join(dir, "known_hosts"), "ssh.useAgent (line 8): useAgent is true but $SSH_AUTH_SOCK " + filepath.Join(dir, "known_hosts") + " is not a socket"},
		{"a socket", filepath.Join(dir, "agent.sock"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("SSH_AUTH_SOCK", tc.sock)
			inv, err := Load(write(t, dir, text))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c := inv.Config().Nodes[0]; !c.UseAgent || c.IdentityFile != "" {
					t.Fatalf("node ssh = %+v", c)
				}
				return
			}
			var ie *InventoryError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) || len(ie.Problems) != 1 || !ie.Problems[0].Local {
				t.Fatalf("Load = %v; want one local problem %q", err, tc.want)
			}
			// Without the checks of this machine the plan still loads.
			if _, err := ParseStructure("inv.yaml", []byte(text)); err != nil {
				t.Fatalf("ParseStructure = %v", err)
			}
		})
	}
}

func TestMissingFilesAreLocalProblems(t *testing.T) {
	dir, valid := fixtureDir(t)
	text := strings.Replace(strings.Replace(valid, "identityFile: id_ed25519", "identityFile: nope", 1), "name: cp1", "name: CP1", 1)
	_, err := Load(write(t, dir, text))
	var ie *InventoryError
	if !errors.As(err, &ie) || len(ie.Problems) != 2 {
		t.Fatalf("Load = %v", err)
	}
	if ie.Problems[0].Field != "ssh.identityFile" || !ie.Problems[0].Local || ie.Problems[1].Local {
		t.Fatalf("local flags: %+v", ie.Problems)
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
	t.Run("no home", func(t *testing.T) {
		t.Setenv("HOME", "")
		_, err := Load(filepath.Join(dir, "inv.yaml"))
		if err == nil || !strings.Contains(err.Error(), "ssh.knownHostsFile (line 9): cannot resolve ~/known_hosts: $HOME is not defined") {
			t.Fatalf("Load = %v", err)
		}
	})
}

func TestConfigRoundTrip(t *testing.T) {
	dir, valid := fixtureDir(t)
	inv, err := Load(write(t, dir, strings.Replace(valid, "      port: 2222\n", "      port: 2222\n      extraKubeconfigs: [/root/.kube/config, /etc/kubernetes/ci.conf]\n", 1)+
		"rollout:\n  workloads:\n    namespaces: []\n  timeouts:\n    phases:\n      servers: 15m\nextraKubeconfigs:\n  workers: [/etc/kubernetes/ci.conf/]\n"))
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
	if w := []string{"/etc/kubernetes/ci.conf", "/root/.kube/config"}; !reflect.DeepEqual(got.Steps.ExtraKubeconfigs["w1"], w) || len(got.Steps.ExtraKubeconfigs) != 1 {
		t.Errorf("extra kubeconfigs = %v; want w1: %q (the role's first, each once)", got.Steps.ExtraKubeconfigs, w)
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
