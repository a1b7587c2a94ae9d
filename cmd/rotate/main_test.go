package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

var rotateBin string

// TestMain builds the real binary: these tests run it as a user would,
// as separate processes, so exit codes and file locks are the real ones.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rotate-bin")
	if err != nil {
		panic(err)
	}
	rotateBin = filepath.Join(dir, "rotate")
	out, err := exec.Command("go", "build", "-o", rotateBin, ".").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func rotate(t *testing.T, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(rotateBin, args...)
	cmd.Dir = dir
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// env writes an inventory whose single node's SSH port is addr.
func env(t *testing.T, addr string) (dir, inv string) {
	t.Helper()
	dir = t.TempDir()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "id"), pem.EncodeToMemory(block), 0o600)
	os.WriteFile(filepath.Join(dir, "known_hosts"), nil, 0o600)
	// The cluster serves only the lock's Lease: rotate takes it before
	// anything else, then meets the node address given.
	os.WriteFile(filepath.Join(dir, "admin.conf"), []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: `+leaseAPIServer(t)+`}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600)
	host, port, _ := net.SplitHostPort(addr)
	text := `apiVersion: rotate.kubeca.io/v1alpha1
kind: Inventory
cluster: {name: lab}
kubernetes: {kubeconfig: admin.conf}
ssh: {identityFile: id, knownHostsFile: known_hosts, dialTimeout: 4s}
nodes:
  controlPlane:
    - {name: cp1, address: "` + host + `", port: ` + port + `}
`
	inv = filepath.Join(dir, "inv.yaml")
	os.WriteFile(inv, []byte(text), 0o600)
	return dir, inv
}

func TestHelpListsFlags(t *testing.T) {
	want := map[string][]string{
		"plan":     {"--inventory", "--live", "--no-hold"},
		"start":    {"--inventory", "--state", "--no-hold", "--insecure-ignore-host-keys"},
		"resume":   {"--state", "--insecure-ignore-host-keys", "--recover-from", "--inventory", "--verbose"},
		"rollback": {"--state", "--recover-from", "--inventory"},
		"status":   {"--state", "--output"},
		"events":   {"--state", "--output"},
	}
	for _, c := range commands() {
		if _, ok := want[c.name]; !ok {
			t.Errorf("command %s is not covered by this test", c.name)
		}
	}
	for cmd, flags := range want {
		for _, help := range []string{"--help", "-h"} {
			r := rotate(t, t.TempDir(), cmd, help)
			if r.code != 0 {
				t.Errorf("%s %s exit %d", cmd, help, r.code)
			}
			if n := strings.Count(r.stdout, "Usage: rotate "+cmd); n != 1 {
				t.Errorf("%s %s prints its usage %d times:\n%s", cmd, help, n, r.stdout)
			}
			for _, f := range flags {
				if !strings.Contains(r.stdout, f) {
					t.Errorf("%s %s lacks %s:\n%s", cmd, help, f, r.stdout)
				}
			}
		}
	}
	if r := rotate(t, t.TempDir()); r.code != 2 || !strings.Contains(r.stderr, "Commands:") {
		t.Errorf("no command: exit %d %q", r.code, r.stderr)
	}
	if r := rotate(t, t.TempDir(), "frobnicate"); r.code != 2 || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d %q", r.code, r.stderr)
	}
	if r := rotate(t, t.TempDir(), "start", "--bogus"); r.code != 2 || !strings.Contains(r.stderr, "unknown flag: --bogus") {
		t.Errorf("unknown flag: exit %d %q", r.code, r.stderr)
	}
}

func TestPlanExampleChangesNothing(t *testing.T) {
	dir := t.TempDir()
	ex, _ := filepath.Abs("../../examples/inventory.yaml")
	r := rotate(t, dir, "plan", "--inventory", ex)
	if r.code != 0 {
		t.Fatalf("plan exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"phase 0/12 preflight", "phase 12/12 narrow-trust", "kubelet-client-workers on worker1, worker2", "[hold afterwards"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("plan output lacks %q", want)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("plan wrote files: %v", ents)
	}
}

func TestBadInventoriesExit2(t *testing.T) {
	dir, inv := env(t, "127.0.0.1:22")
	good, _ := os.ReadFile(inv)
	cases := map[string]struct{ text, want string }{
		"unknown field":  {string(good) + "bogus: 1\n", `bogus (line 9): unknown field "bogus"`},
		"missing field":  {strings.Replace(string(good), "cluster: {name: lab}", "cluster: {}", 1), "cluster.name (line 3): required"},
		"duplicate node": {string(good) + "  workers:\n    - {name: cp1, address: 10.0.0.2}\n", `duplicate node name "cp1"`},
		"bad address":    {strings.Replace(string(good), `address: "127.0.0.1"`, `address: "300.1.1.1/24"`, 1), "is neither an IP address nor a valid DNS name"},
		"missing key":    {strings.Replace(string(good), "identityFile: id", "identityFile: gone", 1), "ssh.identityFile (line 5): file " + filepath.Join(dir, "gone") + " does not exist"},
		"not yaml":       {"{{{", "not valid YAML"},
		"duplicate key":  {string(good) + "cluster: {name: again}\n", `cluster (line 9): duplicate key "cluster" (first at line 3)`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.yaml")
			os.WriteFile(p, []byte(tc.text), 0o600)
			for _, cmd := range []string{"start", "plan"} {
				r := rotate(t, dir, cmd, "--inventory", p)
				if cmd == "plan" && name == "missing key" {
					// plan still shows the plan, and says what start will refuse.
					if r.code != 0 || !strings.Contains(r.stdout, filepath.Join(dir, "gone")+" does not exist") {
						t.Errorf("plan with a missing key file: exit %d, stdout %q", r.code, r.stdout)
					}
					continue
				}
				if r.code != 2 || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, p) {
					t.Errorf("%s: exit %d, stderr %q; want 2 and %q", cmd, r.code, r.stderr, tc.want)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "rotate.db")); err == nil {
				t.Errorf("a bad inventory created a state file")
			}
		})
	}
	t.Run("nonexistent", func(t *testing.T) {
		r := rotate(t, dir, "start", "--inventory", filepath.Join(dir, "nope.yaml"))
		if r.code != 2 || !strings.Contains(r.stderr, "nope.yaml: 1 problem(s):\n  - file does not exist") {
			t.Errorf("exit %d %q", r.code, r.stderr)
		}
	})
	t.Run("missing --inventory", func(t *testing.T) {
		if r := rotate(t, dir, "start"); r.code != 2 || !strings.Contains(r.stderr, "--inventory is required") {
			t.Errorf("exit %d %q", r.code, r.stderr)
		}
	})
}

// hangingSSH accepts TCP connections and never speaks, so a `rotate start`
// against it sits in preflight holding the state lock until its dial
// timeout.
func hangingSSH(t *testing.T) (addr string, accepted chan struct{}) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = make(chan struct{}, 16)
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			accepted <- struct{}{}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String(), accepted
}

func TestSecondProcessGetsBusyAndFirstIsUnaffected(t *testing.T) {
	addr, accepted := hangingSSH(t)
	dir, inv := env(t, addr)
	first := exec.Command(rotateBin, "start", "--inventory", inv)
	first.Dir = dir
	var fout, ferr bytes.Buffer
	first.Stdout, first.Stderr = &fout, &ferr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-accepted: // the first process holds the state and is in preflight
	case <-time.After(30 * time.Second):
		first.Process.Kill()
		t.Fatalf("first rotate never dialed the node: %s", ferr.String())
	}
	for _, args := range [][]string{{"start", "--inventory", inv}, {"resume"}, {"rollback"}} {
		start := time.Now()
		r := rotate(t, dir, args...)
		if r.code != 3 || !strings.Contains(r.stderr, "in use by another rotate process") {
			t.Errorf("second %v: exit %d, stderr %q; want 3 and a clear message", args, r.code, r.stderr)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("second %v took %s", args, d)
		}
	}
	// status shows the running process's snapshot instead, and says so.
	snapshot := filepath.Join(dir, "rotate.db.status.json")
	r := rotate(t, dir, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "rotate.db is in use by a running rotate; showing its snapshot rotate.db.status.json, written ") ||
		!strings.Contains(r.stdout, "cluster lab  state preflight") {
		t.Errorf("status during the run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = rotate(t, dir, "status", "-o", "json")
	if r.code != 0 || !strings.Contains(r.stderr, "showing its snapshot") || !strings.Contains(r.stdout, `"state": "preflight"`) {
		t.Errorf("status -o json during the run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	err := first.Wait()
	ee, _ := err.(*exec.ExitError)
	if ee == nil || ee.ExitCode() != 1 {
		t.Fatalf("first rotate: %v, want exit 1 (node unreachable); stderr %s", err, ferr.String())
	}
	if !strings.Contains(ferr.String(), "cp1") {
		t.Errorf("first rotate's error does not name the node: %s", ferr.String())
	}
	// Its run was recorded and is resumable; start refuses to begin another.
	r = rotate(t, dir, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "cluster lab  state failed  phase preflight") || !strings.Contains(r.stdout, "FAILED preflight/nodes-reachable@cp1") {
		t.Fatalf("status after failure: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := rotate(t, dir, "status", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"state": "failed"`) {
		t.Fatalf("status json: %d %s", r.code, r.stdout)
	} else if snap, err := os.ReadFile(snapshot); err != nil || withoutLock(t, snap) != withoutLock(t, []byte(r.stdout)) {
		// The last checkpoint's snapshot is what status prints from the
		// file, but for the cluster lock, which status reads live.
		t.Fatalf("snapshot differs from status -o json (%v):\n%s\nvs\n%s", err, snap, r.stdout)
	} else if !strings.Contains(r.stdout, `"source": "cluster"`) || !strings.Contains(r.stdout, `"held": true`) {
		// A failed run keeps the lock.
		t.Fatalf("status json does not show the lock held, read from the cluster:\n%s", r.stdout)
	}
	if st, err := os.Stat(snapshot); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot: %v, mode %v", err, st.Mode())
	}
	r = rotate(t, dir, "start", "--inventory", inv)
	if r.code != 2 || !strings.Contains(r.stderr, "rotate resume") || !strings.Contains(r.stderr, `cluster "lab"`) {
		t.Fatalf("start on unfinished run: exit %d %q", r.code, r.stderr)
	}
	st, _ := os.Stat(filepath.Join(dir, "rotate.db"))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %04o", st.Mode().Perm())
	}
	os.Chmod(filepath.Join(dir, "rotate.db"), 0o644)
	if r := rotate(t, dir, "status"); r.code != 2 || !strings.Contains(r.stderr, "chmod 600") {
		t.Fatalf("world-readable state: exit %d %q", r.code, r.stderr)
	}
}

func TestStatusWithoutStateFile(t *testing.T) {
	r := rotate(t, t.TempDir(), "status", "--state", "none.db")
	if r.code != 2 || !strings.Contains(r.stderr, "none.db") {
		t.Fatalf("exit %d %q", r.code, r.stderr)
	}
}

// A run started from the inventory's directory with a relative
// --inventory resumes and rolls back from anywhere with the files next to
// the inventory, never those of the directory it is run in.
func TestResumeFromAnotherDirectory(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // refused: preflight fails fast, after recording the run
	dir, _ := env(t, addr)
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "admin.conf"), []byte("not: [a kubeconfig"), 0o600)
	statePath := filepath.Join(dir, "rotate.db")

	r := rotate(t, dir, "start", "--inventory", "inv.yaml")
	if r.code != 1 || !strings.Contains(r.stderr, "cp1") {
		t.Fatalf("start: exit %d, stderr %q; want 1 (node unreachable)", r.code, r.stderr)
	}
	for _, cmd := range []string{"resume", "rollback"} {
		r := rotate(t, other, cmd, "--state", statePath)
		if strings.Contains(r.stderr, "does not exist") || strings.Contains(r.stderr, other) {
			t.Fatalf("%s from another directory used its files: exit %d, stderr %q", cmd, r.code, r.stderr)
		}
		if cmd == "resume" && (r.code != 1 || !strings.Contains(r.stderr, "cp1")) {
			t.Fatalf("resume: exit %d, stderr %q; want 1 (node unreachable again)", r.code, r.stderr)
		}
		if cmd == "rollback" && r.code != 0 {
			t.Fatalf("rollback: exit %d, stderr %q", r.code, r.stderr)
		}
	}
	// The rollback ended the run, and released the cluster lock; resuming
	// the ended run (refused) does not take it again.
	rotate(t, other, "resume", "--state", statePath)
	if r := rotate(t, other, "status", "--state", statePath); !strings.Contains(r.stdout, "\ncluster lock: lease kube-system/rotate-lock not held\n") {
		t.Errorf("status after rollback does not show the lock released:\n%s%s", r.stdout, r.stderr)
	}
	if r := rotate(t, other, "status", "--state", statePath); !strings.Contains(r.stdout, "inventory "+filepath.Join(dir, "inv.yaml")) {
		t.Errorf("status does not show the inventory's absolute path:\n%s", r.stdout)
	}
}

// withoutLock is a status JSON without its "lock" (read live by status
// from a state file, recorded in a snapshot).
func withoutLock(t *testing.T, raw []byte) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("status json: %v\n%s", err, raw)
	}
	delete(m, "lock")
	out, _ := json.Marshal(m)
	return string(out)
}
