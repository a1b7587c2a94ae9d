package orchestrator

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
)

const testKubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`

// inventoryDir writes an inventory whose every file of this machine is
// named relative to it, and returns its directory.
func inventoryDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"admin.conf": testKubeconfig, "id": "key", "known_hosts": "",
		"ca.crt": "x", "ca.key": "x", "fp.crt": "x", "fp.key": "x",
		"inv.yaml": `apiVersion: rotate.kubeca.io/v1alpha1
kind: Inventory
cluster: {name: lab}
kubernetes: {kubeconfig: admin.conf}
ssh: {identityFile: id, knownHostsFile: known_hosts}
nodes:
  controlPlane:
    - {name: cp1, address: 127.0.0.1, port: 1}
paths: {backupDir: /srv/rotate/backups}
newCA:
  files: {clusterCert: ca.crt, clusterKey: ca.key, frontProxyCert: fp.crt, frontProxyKey: fp.key}
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// elsewhere is another directory, with an admin.conf that is not one: a
// resume that read it would fail.
func elsewhere(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "admin.conf"), []byte("not: [a kubeconfig"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startValues is what Start records of the inventory at path.
func startValues(t *testing.T, path string) map[string][]byte {
	t.Helper()
	inv, err := plans.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	values, err := inventoryValues(inv)
	if err != nil {
		t.Fatal(err)
	}
	return values
}

// recordRun writes a state file holding a run and values, as Start does.
func recordRun(t *testing.T, statePath string, values map[string][]byte) {
	t.Helper()
	store, err := state.Open(statePath, state.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	run := state.Run{ID: "run-1", Cluster: "lab", PlanVersion: plans.Version, State: StateFailed, Phase: "preflight"}
	if err := store.Commit(context.Background(), state.Checkpoint{Run: &run, Values: values}); err != nil {
		t.Fatal(err)
	}
}

// checkResolved asserts that a resumed session uses dir's files.
func checkResolved(t *testing.T, s *session, dir string) {
	t.Helper()
	rc := s.engine.rt.Config
	for got, want := range map[string]string{
		s.cfg.Kubeconfig:              filepath.Join(dir, "admin.conf"),
		s.cfg.Nodes[0].IdentityFile:   filepath.Join(dir, "id"),
		s.cfg.Nodes[0].KnownHostsFile: filepath.Join(dir, "known_hosts"),
		rc.NewCA.ClusterCertFile:      filepath.Join(dir, "ca.crt"),
		rc.NewCA.FrontProxyKeyFile:    filepath.Join(dir, "fp.key"),
		rc.Paths.BackupDir:            "/srv/rotate/backups",
	} {
		if got != want {
			t.Errorf("resumed session uses %q, want %q", got, want)
		}
	}
}

// A run started with a relative inventory path resumes (and rolls back)
// from any working directory with the files next to the inventory.
func TestResumeFromAnotherDirectory(t *testing.T) {
	dir := inventoryDir(t)
	statePath := filepath.Join(t.TempDir(), "rotate.db")
	t.Chdir(dir)
	values := startValues(t, "inv.yaml")
	if string(values[keyInventoryPath]) != filepath.Join(dir, "inv.yaml") {
		t.Fatalf("recorded inventory path %q, want it absolute", values[keyInventoryPath])
	}
	recordRun(t, statePath, values)

	t.Chdir(elsewhere(t))
	s, _, err := resumeSession(context.Background(), Common{StatePath: statePath})
	if err != nil {
		t.Fatalf("resume from another directory: %v", err)
	}
	defer s.close()
	checkResolved(t, s, dir)
}

// A run recorded by an older rotate (the inventory and its path as given,
// no resolved configuration) still resumes from the directory it was
// started in.
func TestResumeRunOfAnOlderRotate(t *testing.T) {
	dir := inventoryDir(t)
	statePath := filepath.Join(t.TempDir(), "rotate.db")
	raw, err := os.ReadFile(filepath.Join(dir, "inv.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	recordRun(t, statePath, map[string][]byte{keyInventoryRaw: raw, keyInventoryPath: []byte("inv.yaml")})

	t.Chdir(dir)
	s, _, err := resumeSession(context.Background(), Common{StatePath: statePath})
	if err != nil {
		t.Fatalf("resume an older run from its directory: %v", err)
	}
	checkResolved(t, s, dir)
	s.close()

	// Elsewhere it fails as it always did, naming what is missing, rather
	// than using another directory's files.
	t.Chdir(elsewhere(t))
	_, _, err = resumeSession(context.Background(), Common{StatePath: statePath})
	if err == nil || !strings.Contains(err.Error(), "recorded inventory") || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("resume an older run elsewhere: %v", err)
	}
}

// A recorded configuration this rotate cannot read (another layout) falls
// back to the recorded inventory, at its recorded absolute path.
func TestResumeWithAnotherConfigLayout(t *testing.T) {
	dir := inventoryDir(t)
	statePath := filepath.Join(t.TempDir(), "rotate.db")
	values := startValues(t, filepath.Join(dir, "inv.yaml"))
	values[keyInventoryConfig] = []byte(`{"version":99}`)
	recordRun(t, statePath, values)
	t.Chdir(elsewhere(t))
	s, _, err := resumeSession(context.Background(), Common{StatePath: statePath})
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	checkResolved(t, s, dir)
}
