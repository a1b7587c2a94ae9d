//go:build e2e

// Package rotation is the end-to-end proof of `rotate` on a real HA
// control plane: 3 control-plane nodes (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler from the real binaries, PKI and
// manifests from the real kubeadm) and 2 workers, each a network and mount
// namespace reached over real OpenSSH, while probes exercise every kind of
// credential holder and fail the test on any x509 or 401 error.
package rotation

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubeca/rotate/e2e/cluster"
	"github.com/kubeca/rotate/e2e/clusterinfo"
	"github.com/kubeca/rotate/e2e/probes"
	"github.com/kubeca/rotate/e2e/verify"
	"github.com/kubeca/rotate/internal/kubeconfig"
	"github.com/kubeca/rotate/kubecsr"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/state"
)

type env struct {
	t       *testing.T
	c       *cluster.Cluster
	info    clusterinfo.Cluster
	probes  *probes.Runner
	workdir string
	upAt    time.Time // the cluster was up and ready
	// probed are the nodes the probes follow (those up at setup); joined
	// the spare workers joined since, and when JoinNode returned.
	probed []clusterinfo.Node
	joined map[string]time.Time
}

func setup(t *testing.T, ctx context.Context) *env {
	t.Helper()
	start := time.Now()
	host, err := cluster.SnapshotHostRoot()
	if err != nil {
		t.Fatal(err)
	}
	c, err := cluster.Up(ctx, cluster.Options{Name: "rot", ControlPlanes: 3, Workers: 2, SpareWorkers: 1, Subnet: "10.213.48.0/24",
		BinDir: os.Getenv("ROTATE_K8S_BIN"), HarnessBinDir: os.Getenv("ROTATE_BIN_DIR"), Progress: testWriter{t}, ReplaceStale: true})
	if err != nil {
		t.Fatalf("cluster up: %v", err)
	}
	t.Cleanup(func() {
		dctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := c.Down(dctx); err != nil {
			t.Errorf("cluster down: %v", err)
		}
		// The nodes share the host's root filesystem: nothing they ran
		// may have changed it.
		if now, err := cluster.SnapshotHostRoot(); err != nil {
			t.Error(err)
		} else if d := host.Diff(now); len(d) > 0 {
			t.Errorf("the host's root filesystem changed while the cluster ran:\n  %s", strings.Join(d, "\n  "))
		}
	})
	t.Logf("e2e: cluster up in %s", time.Since(start).Round(time.Second))
	e := &env{t: t, c: c, info: c.Info(), workdir: t.TempDir(), upAt: time.Now(), joined: map[string]time.Time{}}
	e.probed = e.info.Nodes
	p, err := probes.Start(ctx, filepath.Join(c.Dir(), "cluster.json"), probes.Options{})
	if err != nil {
		t.Fatalf("start probes: %v", err)
	}
	e.probes = p
	return e
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("cluster| %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *env) cp1() clusterinfo.Node { return e.info.Nodes[0] }

func (e *env) client(t *testing.T) kubernetes.Interface {
	// The operator's admin.conf as it is now on cp1 (rotate updates it).
	cfg, err := kubeconfig.Load(filepath.Join(e.cp1().EtcKubernetes, "admin.conf"), "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host = "https://" + e.cp1().Address + ":6443"
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// probesClean fails the test on any x509 or 401 error seen so far: a
// credential somebody holds was not trusted by whoever checked it.
func (e *env) probesClean(t *testing.T, when string) {
	t.Helper()
	rep := e.probes.Snapshot()
	credentialFailures(t, rep, when)
	storageKept(t, rep, when)
}

// storageKept fails the test unless the storage probe wrote and read back
// its value every second so far through some apiserver: etcd kept quorum,
// also while its members restarted one by one.
func storageKept(t *testing.T, rep probes.Report, when string) {
	t.Helper()
	st := rep.Probes[probes.ProbeStorage]
	if st == nil || st.OK == 0 {
		t.Errorf("%s: the storage probe never stored a value", when)
		return
	}
	if st.Requests == st.OK {
		return
	}
	for _, f := range rep.Failures {
		if f.Probe == probes.ProbeStorage {
			t.Logf("e2e: storage failure %s %s", f.Time.Format("15:04:05.000"), f.Error)
		}
	}
	t.Errorf("%s: storage probe: %d of %d writes+reads failed on every apiserver", when, st.Requests-st.OK, st.Requests)
}

// checkEtcdRotated reads the etcd CA now on cp1, which must differ from
// before, and checks every member on it, refusing before's certificates.
func (e *env) checkEtcdRotated(t *testing.T, ctx context.Context, before *pki.CA, when string) *pki.CA {
	t.Helper()
	now, err := verify.ReadCA(e.cp1(), "etcd/ca")
	if err != nil {
		t.Fatal(err)
	}
	if pki.Fingerprint(now.Cert) == pki.Fingerprint(before.Cert) {
		t.Fatalf("%s: etcd/ca.crt on cp1 is still the etcd CA from before", when)
	}
	if err := verify.EtcdOnCA(ctx, e.info, now, before); err != nil {
		t.Errorf("%s: %v", when, err)
	}
	return now
}

func sortedIDs(ids ...string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

// readCA reads the CA name.crt/name.key in cp1's pki dir.
func (e *env) readCA(t *testing.T, name string) *pki.CA {
	t.Helper()
	ca, err := verify.ReadCA(e.cp1(), name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// readPubKeyID is the key id of the public key file name in cp1's pki dir.
func (e *env) readPubKeyID(t *testing.T, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(e.cp1().EtcKubernetes, "pki", name))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pki.PublicKeyIDs(raw)
	if err != nil || len(ids) != 1 {
		t.Fatalf("%s on cp1: %v %v", name, ids, err)
	}
	return ids[0]
}

// checkSAKeyRotated reads the service-account key now on cp1, which must
// differ from before, and checks the cluster on it alone (checkSAKeyIs).
func (e *env) checkSAKeyRotated(t *testing.T, ctx context.Context, ca *pki.CA, admin tls.Certificate, before verify.SAKey, when string) verify.SAKey {
	t.Helper()
	now, err := verify.ReadSAKey(e.cp1())
	if err != nil {
		t.Fatal(err)
	}
	if now.ID == before.ID {
		t.Fatalf("%s: sa.key on cp1 is still the service-account key from before (%s)", when, before.ID)
	}
	e.checkSAKeyIs(t, ctx, ca, admin, now, before, when)
	return now
}

// checkSAKeyIs checks that sa.key on every control-plane node is current,
// that every apiserver publishes only current, accepts a token it signs
// and rejects one previous signs, and that every pod's token on every
// node is signed by current: the kubelets re-issued them.
func (e *env) checkSAKeyIs(t *testing.T, ctx context.Context, ca *pki.CA, admin tls.Certificate, current, previous verify.SAKey, when string) {
	t.Helper()
	for _, n := range e.info.ControlPlanes() {
		if k, err := verify.ReadSAKey(n); err != nil || k.ID != current.ID {
			t.Errorf("%s: sa.key on %s is %s (%v), want %s", when, n.Name, k.ID, err, current.ID)
		}
	}
	if err := verify.ServiceAccountKeyIs(ctx, e.info, e.client(t), []*x509.Certificate{ca.Cert}, admin, current, previous); err != nil {
		t.Errorf("%s: %v", when, err)
	}
	if err := verify.PodTokensSignedBy(ctx, e.info, current.ID); err != nil {
		t.Errorf("%s: %v", when, err)
	}
}

func credentialFailures(t *testing.T, rep probes.Report, when string) {
	t.Helper()
	x509s, unauth := rep.Count("", probes.X509), rep.Count("", probes.Unauthorized)
	t.Logf("e2e: probes %s: %d x509, %d unauthorized, %d forbidden (an apiserver answers 403 while its RBAC caches load after a restart), %d refused\n%s",
		when, x509s, unauth, rep.Count("", probes.Forbidden), rep.Count("", probes.Refused), rep.Summary())
	if x509s+unauth > 0 {
		n := 0
		for _, f := range rep.Failures {
			if f.Class == probes.X509 || f.Class == probes.Unauthorized {
				t.Logf("e2e: credential failure %s %s %s [%s] %s %s", f.Time.Format("15:04:05.000"), f.Probe, f.Target, f.Class, f.Error, f.Note)
				if n++; n == 40 {
					break
				}
			}
		}
		t.Fatalf("probes recorded credential failures %s:\n%s", when, rep.Summary())
	}
}

var (
	killMidFanOut    = regexp.MustCompile(`\] distribute\s+\S+\s+done`)
	killMidEtcd      = regexp.MustCompile(`\] etcd-trust-both\s+cp\S*\s+done`)
	killMidAPIServer = regexp.MustCompile(`\] apiserver-trust-both\s+cp\S*\s+done`)
	killMidKubelets  = regexp.MustCompile(`\] kubelet-trust-workers\s+\S+\s+done`)
	killAfterSwitch  = regexp.MustCompile(`\] kubelet-client-cp\s+\S+\s+done`)
	// killAtHandover: switch-issuance has just restarted the controller-
	// manager leader, its last target; the lease is still the stopped
	// process's until a standby has watched it for a lease duration. A
	// rollback from here that restarts that standby first (the revert's
	// first target) starts its watch over: before rollback waited for a
	// live leader, the lease went 54 s unrenewed here (26 s in CI when
	// killed later, at killAfterSwitch).
	killAtHandover = regexp.MustCompile(`\] kubelet-csrs\s+cluster\s+running`)
)

// TestRotation is one cluster, three rotations, each from the CA the one
// before left:
//  1. with the apiservers unable to reach one worker's kubelet from before
//     the run (a firewalled 10250): start (killed mid fan-out, mid
//     apiserver rolling restart, mid kubelet batches; resumed each time)
//     → hold, whose report lists that path as pre-existing → resume →
//     completed; end state checked (kubeadm check-expiration, the real CSR
//     signer);
//
// then in slow mode (every static pod replaced only 5 s after its manifest
// changes, the old process serving meanwhile, like a busy kubelet):
//  2. start --no-hold, a worker unreachable over SSH mid-run (clean
//     failure naming it), the operator's machine lost, resume from a
//     control-plane node's state copy after the worker returns, that
//     machine killed after the signer switch and lost too, resume from
//     another node's copy → completed; end state checked; rollback of the completed run → run
//     1's CA;
//
// and back to static pods replaced at once:
//  3. start, killed right after the signer switch restarted the
//     controller-manager leader, rollback (which must wait for the lease
//     handover before restarting a standby) → run 1's CA.
//
// Runs 1 and 2 rotate the etcd CA and the service-account key too (the
// harness's inventory lists them; run 1 is also killed mid member roll):
// every member then serves and trusts only the new etcd CA, every
// apiserver publishes and accepts only the new key and every pod's token
// on every node is the new key's, and after the rollback run 1's again.
// Run 3 lists the default roots and leaves both alone.
//
// The probes run throughout and must record zero x509/401/403 errors —
// the real kubelets' own requests and logs, apiserver → kubelet and the
// admission webhook included — no lease renewal gap, and no second in
// which no apiserver could write and read back a value (etcd quorum).
func TestRotation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Minute)
	defer cancel()
	e := setup(t, ctx)
	c0, err := verify.ReadCA(e.cp1(), "ca")
	if err != nil {
		t.Fatal(err)
	}
	oldClient, err := verify.ClientCert(c0, "e2e-old-ca-client")
	if err != nil {
		t.Fatal(err)
	}
	e0, err := verify.ReadCA(e.cp1(), "etcd/ca")
	if err != nil {
		t.Fatal(err)
	}
	s0, err := verify.ReadSAKey(e.cp1())
	if err != nil {
		t.Fatal(err)
	}
	inv := e.info.Inventory
	dir := filepath.Join(e.workdir, "run1")
	os.MkdirAll(dir, 0o700)

	// plan --live: every change per node, from the live cluster, and
	// nothing changed.
	before := e.fingerprintFiles(t)
	pl := rotate(t, ctx, dir, nil, nil, "plan", "--live", "--inventory", inv)
	mustSucceed(t, pl, "plan --live")
	for _, want := range []string{
		"cp1: update /etc/kubernetes/manifests/kube-controller-manager.yaml:",
		"+- --client-ca-file=/etc/kubernetes/pki/rotate-ca-bundle.crt",
		"worker1: create /etc/kubernetes/pki/rotate-ca-bundle.crt",
		"update ConfigMap kube-public/cluster-info keys kubeconfig",
		"restart kube-apiserver (static pod)",
		"+- --trusted-ca-file=/etc/kubernetes/pki/etcd/rotate-ca-bundle.crt",
		"cp2: update /etc/kubernetes/pki/etcd/server.crt",
		"cp3: create /etc/kubernetes/pki/rotate-sa-bundle.pub",
		"+- --service-account-key-file=/etc/kubernetes/pki/rotate-sa-bundle.pub",
		"+- --service-account-signing-key-file=/etc/kubernetes/pki/rotate-sa.key",
		"cluster: every apiserver publishes the old and the new service-account key",
		"cp1: update /etc/kubernetes/pki/sa.pub: replace PEM content (not shown)",
	} {
		if !strings.Contains(pl.out, want) {
			t.Errorf("plan --live lacks %q", want)
		}
	}
	if strings.Contains(pl.out, "cannot describe") || strings.Contains(pl.out, "PRIVATE KEY") {
		t.Errorf("plan --live could not describe a step or printed a key:\n%s", pl.out)
	}
	if after := e.fingerprintFiles(t); after != before {
		t.Fatalf("plan --live changed files on the nodes")
	}
	if _, err := os.Stat(filepath.Join(dir, "rotate.db")); err == nil {
		t.Fatalf("plan --live wrote a state file")
	}

	// Run 1 -------------------------------------------------------------
	// The apiservers cannot reach the last worker's kubelet from before the
	// run: not rotate's doing, so not a reason to fail; the hold report
	// must list it as pre-existing.
	unreachable := e.info.Nodes[len(e.info.Nodes)-1]
	e.setKubeletUnreachable(t, unreachable, true)
	// Workloads a restart cannot roll, and a Secret other tools keep the
	// old CA in: listed at the hold, never waited on.
	e.createStubbornWorkloads(t, ctx, c0)
	t0 := time.Now()
	r := rotate(t, ctx, dir, killMidFanOut, nil, "start", "--inventory", inv)
	if !r.killed {
		t.Fatalf("rotate start was not killed mid fan-out (exit %d)\n%s", r.code, tail(r.out, 30))
	}
	// An operator watches `rotate status` from a second terminal while the
	// run holds the state file: it shows the phase in progress.
	watched := ""
	watch := func(line string) {
		if watched == "" && strings.Contains(line, "==> phase 5/12 apiserver-trust") {
			watched = e.statusDuringRun(t, ctx, dir)
		}
	}
	// Killed in the middle of the etcd member roll too: one member trusts
	// both etcd CAs, the others not yet.
	for _, kill := range []*regexp.Regexp{killMidEtcd, killMidAPIServer, killMidKubelets} {
		r = rotate(t, ctx, dir, kill, watch, "resume")
		if !r.killed {
			t.Fatalf("resume was not killed at %s (exit %d)\n%s", kill, r.code, tail(r.out, 30))
		}
	}
	if watched != "apiserver-trust" {
		t.Errorf("status during the run showed phase %q, want apiserver-trust", watched)
	}
	r = rotate(t, ctx, dir, nil, nil, "resume")
	mustSucceed(t, r, "resume to the hold")
	if !strings.Contains(r.out, "held after phase 11/12 verify") {
		t.Fatalf("run did not hold before narrowing:\n%s", tail(r.out, 20))
	}
	st := rotate(t, ctx, dir, nil, nil, "status")
	mustSucceed(t, st, "status")
	for _, want := range []string{"state held", "HELD before narrowing trust", "attention: ", "pre-existing: apiserver → kubelet " + unreachable.Name,
		"workload: " + stubbornPaused + ": paused, not restarted",
		"workload: " + stubbornOnDelete + ": updateStrategy OnDelete, not restarted",
		"workload: " + stubbornNeverReady + ": not all pods available before the run",
		"attention: " + stubbornSecret + " key ca.crt holds the old cluster CA",
		"legacy token Secret(s) hold a token signed by the old service-account key and stop working when trust narrows",
		"the controller-manager does not re-sign them): " + stubbornToken,
		"cluster lock: lease kube-system/rotate-lock held by rotate run "} {
		if !strings.Contains(st.out, want) {
			t.Errorf("status at the hold lacks %q:\n%s", want, st.out)
		}
	}
	// A second operator with another state file (and a kubeconfig that
	// works now: admin.conf from a control-plane node) is refused while the
	// run holds the cluster.
	other := filepath.Join(e.workdir, "run1-other-operator")
	os.MkdirAll(other, 0o700)
	otherInv := e.inventoryWithKubeconfig(t, other)
	if o := rotate(t, ctx, other, nil, nil, "start", "--inventory", otherInv); o.code != 3 || !strings.Contains(o.out, "locked by another rotate run") {
		t.Errorf("a second start while run 1 holds: exit %d, want 3 and the lock's holder\n%s", o.code, tail(o.out, 10))
	}
	// A node joins while the run holds (an autoscaler, a late kubeadm
	// join): its kubelet bootstraps from cluster-info, which carries the new
	// CA by now; rotate names it before narrowing and lets it through.
	spare := e.c.Spares()[0]
	if err := e.c.JoinNode(ctx, spare); err != nil {
		t.Fatalf("join %s at the hold: %v", spare, err)
	}
	e.joined[spare] = time.Now()
	e.setKubeletUnreachable(t, unreachable, false)
	// The apiservers accept and publish both service-account keys.
	if ids, err := verify.PublishedKeyIDs(ctx, e.info, []*x509.Certificate{c0.Cert, e.readCA(t, "rotate-ca").Cert}, oldClient); err != nil {
		t.Errorf("at the hold: %v", err)
	} else {
		newSA := e.readPubKeyID(t, "rotate-sa.pub")
		for n, got := range ids {
			if !slices.Equal(got, sortedIDs(s0.ID, newSA)) {
				t.Errorf("at the hold apiserver %s publishes %v, want the old and new service-account keys %v", n, got, sortedIDs(s0.ID, newSA))
			}
		}
	}
	e.probesClean(t, "at the hold")
	r = rotate(t, ctx, dir, nil, nil, "resume")
	mustSucceed(t, r, "resume past the hold")
	wall := time.Since(t0)
	if want := "node " + spare + " is not in the run (joined during the run, Ready); its kubelet client certificate: new CA"; !strings.Contains(r.out, want) || !strings.Contains(r.out, "keeps working once trust narrows") {
		t.Errorf("resume past the hold did not name the node that joined (%q):\n%s", want, tail(r.out, 60))
	}
	if _, err := e.client(t).CoordinationV1().Leases("kube-system").Get(ctx, "rotate-lock", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the cluster lock after run 1 completed: %v, want it released (NotFound)", err)
	}
	if !strings.Contains(r.out, "--discovery-token-ca-cert-hash sha256:") {
		t.Errorf("no join hash printed:\n%s", tail(r.out, 10))
	}
	e.reportTiming(t, filepath.Join(dir, "rotate.db"), wall)
	// The inventory's kubeconfig is a copy of admin.conf from before the
	// rotation: rotate says it is stale, and the operator (this test)
	// replaces it with the rotated admin.conf as told, for the next run.
	if !strings.Contains(r.out, "note: the inventory's kubeconfig "+e.info.AdminKubeconfig+" does not trust the cluster CA now in use") {
		t.Errorf("no advice about the stale inventory kubeconfig:\n%s", tail(r.out, 5))
	}
	if b, err := os.ReadFile(filepath.Join(e.cp1().EtcKubernetes, "admin.conf")); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(e.info.AdminKubeconfig, b, 0o600); err != nil {
		t.Fatal(err)
	}

	c1, err := verify.ReadCA(e.cp1(), "ca")
	if err != nil {
		t.Fatal(err)
	}
	if pki.Fingerprint(c1.Cert) == pki.Fingerprint(c0.Cert) {
		t.Fatal("ca.crt on cp1 is still the old CA")
	}
	e.checkOnCA(t, ctx, c1, c0, "after the rotation")
	e1 := e.checkEtcdRotated(t, ctx, e0, "after run 1")
	newClient, err := verify.ClientCert(c1, "e2e-new-ca-client")
	if err != nil {
		t.Fatal(err)
	}
	s1 := e.checkSAKeyRotated(t, ctx, c1, newClient, s0, "after run 1")
	if err := verify.ExpectRejected(ctx, e.info, []*x509.Certificate{c1.Cert}, oldClient); err != nil {
		t.Errorf("old-CA client certificate after narrowing: %v", err)
	}
	if err := verify.ExpectClientStatus(ctx, e.info, []*x509.Certificate{c1.Cert}, newClient, 200); err != nil {
		t.Errorf("new-CA client certificate: %v", err)
	}
	e.kubeadmCheckExpiration(t, ctx, c1)
	e.csrThroughNewSigner(t, ctx, c1)
	// The kubelets rotate their certificates (kubeadm's rotateCertificates,
	// the cluster's serverTLSBootstrap): their new ones came through the CSR
	// API and the controller-manager's signer.
	if err := verify.KubeletClientCertsFromCSRs(ctx, e.info, e.client(t)); err != nil {
		t.Error(err)
	}
	e.probesClean(t, "after run 1")
	// The joined node kept working through narrowing, on the new CA only;
	// the operator adds it to the inventory for the next runs.
	e.info = e.c.Info()
	if err := verify.KubeletCertsIssuedBy(e.only(t, spare), c1.Cert); err != nil {
		t.Errorf("node %s joined at the hold: %v", spare, err)
	}
	if err := verify.NodesReady(ctx, e.client(t)); err != nil {
		t.Errorf("after run 1 with %s joined: %v", spare, err)
	}
	inv = filepath.Join(e.workdir, "inventory-with-"+spare+".yaml")
	if raw, err := e.c.Inventory(); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(inv, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	// Slow mode from here on: a static pod is replaced only 5 s after its
	// manifest changed; meanwhile the old process keeps serving with what
	// it read.
	if err := e.c.SetNoticeDelay(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	// Run 2 (from the CA of run 1) ---------------------------------------
	// A worker unreachable over SSH mid-run: a clean failure naming it;
	// once it is back, resume completes. Then rollback of the completed
	// run returns the cluster to run 1's CA.
	dir2 := filepath.Join(e.workdir, "run2")
	os.MkdirAll(dir2, 0o700)
	w2 := unreachable
	cut := false
	r = rotate(t, ctx, dir2, nil, func(line string) {
		if !cut && strings.Contains(line, "==> phase 9/12 servers") {
			cut = true
			e.setLink(t, w2, "down")
		}
	}, "start", "--no-hold", "--inventory", inv)
	if !cut {
		t.Fatalf("run 2 never reached phase 9:\n%s", tail(r.out, 30))
	}
	if r.code != 1 || !strings.Contains(r.out, w2.Name) {
		t.Fatalf("run with %s unreachable: exit %d, want 1 and an error naming the node\n%s", w2.Name, r.code, tail(r.out, 20))
	}
	st = rotate(t, ctx, dir2, nil, nil, "status")
	if !strings.Contains(st.out, "state failed") || !strings.Contains(st.out, "FAILED servers/") {
		t.Fatalf("status after the fault:\n%s", st.out)
	}
	e.setLink(t, w2, "up")
	if err := verify.Eventually(ctx, 3*time.Minute, func(ctx context.Context) error { return verify.NodesReady(ctx, e.client(t)) }); err != nil {
		t.Fatalf("node %s did not come back: %v", w2.Name, err)
	}
	// And the operator's machine died with its state file: every
	// control-plane node holds a copy (root-only), from which a new
	// machine rebuilds the state and the run goes on.
	mirrors := e.checkStateMirrors(t)
	for _, f := range []string{"rotate.db", "rotate.db.status.json", "rotate.db.events.jsonl"} {
		os.Remove(filepath.Join(dir2, f))
	}
	dir2 = filepath.Join(e.workdir, "run2-new-machine")
	os.MkdirAll(dir2, 0o700)
	// The new machine dies too, killed mid-run after the signer switch,
	// with its state file: a third one recovers from another node's copy,
	// which may lag the last checkpoint (steps are idempotent).
	r = rotate(t, ctx, dir2, killAfterSwitch, nil, "resume", "--recover-from", "cp2", "--inventory", inv)
	if !r.killed {
		t.Fatalf("resume --recover-from cp2 was not killed after the signer switch (exit %d)\n%s", r.code, tail(r.out, 30))
	}
	if !strings.Contains(r.out, "recovered from node cp2") {
		t.Errorf("recovery not reported:\n%s", tail(r.out, 20))
	}
	for _, f := range []string{"rotate.db", "rotate.db.status.json", "rotate.db.events.jsonl"} {
		os.Remove(filepath.Join(dir2, f))
	}
	dir2 = filepath.Join(e.workdir, "run2-third-machine")
	os.MkdirAll(dir2, 0o700)
	r = rotate(t, ctx, dir2, nil, nil, "resume", "--recover-from", "cp3", "--inventory", inv)
	mustSucceed(t, r, "resume --recover-from cp3 after the second machine died")
	if !strings.Contains(r.out, "recovered from node cp3") {
		t.Errorf("second recovery not reported:\n%s", tail(r.out, 20))
	}
	if ev := rotate(t, ctx, dir2, nil, nil, "events"); ev.code != 0 || !strings.Contains(ev.out, "recover") {
		t.Errorf("the journal does not record the recovery (exit %d):\n%s", ev.code, tail(ev.out, 10))
	}
	if again := rotate(t, ctx, dir2, nil, nil, "resume", "--recover-from", "cp1", "--inventory", inv); again.code != 2 {
		t.Errorf("recovery over an existing state file: exit %d, want 2\n%s", again.code, tail(again.out, 5))
	}
	c2, err := verify.ReadCA(e.cp1(), "ca")
	if err != nil {
		t.Fatal(err)
	}
	if pki.Fingerprint(c2.Cert) == pki.Fingerprint(c1.Cert) {
		t.Fatal("run 2 completed but ca.crt on cp1 is still run 1's CA")
	}
	e.checkOnCA(t, ctx, c2, c1, "after run 2, resumed after the fault")
	e2 := e.checkEtcdRotated(t, ctx, e1, "after run 2")
	c2Client, err := verify.ClientCert(c2, "e2e-run2-ca-client")
	if err != nil {
		t.Fatal(err)
	}
	s2 := e.checkSAKeyRotated(t, ctx, c2, c2Client, s1, "after run 2")
	e.probesClean(t, "after run 2")

	// Rollback from the completed run.
	r = rotate(t, ctx, dir2, nil, nil, "rollback")
	mustSucceed(t, r, "rollback of the completed run")
	// The run has ended: its copies are gone, and no node resurrects it.
	for _, m := range mirrors {
		if _, err := os.Stat(m); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("state copy %s left after the run ended (%v)", m, err)
		}
		if _, err := os.Stat(m + ".finished"); err != nil {
			t.Errorf("no tombstone next to %s: %v", m, err)
		}
	}
	late := filepath.Join(e.workdir, "run2-late")
	os.MkdirAll(late, 0o700)
	if res := rotate(t, ctx, late, nil, nil, "resume", "--recover-from", "cp1", "--inventory", inv); res.code != 2 {
		t.Errorf("recovery of an ended run: exit %d, want 2\n%s", res.code, tail(res.out, 5))
	}
	if strings.Contains(r.out, "note: the inventory's kubeconfig") {
		t.Errorf("advice about the inventory kubeconfig after rolling back to the CA it trusts:\n%s", tail(r.out, 5))
	}
	// checkOnCA also proves a client certificate from run 2's CA rejected.
	e.checkOnCA(t, ctx, c1, c2, "after rollback of the completed run")
	if err := verify.EtcdOnCA(ctx, e.info, e1, e2); err != nil {
		t.Errorf("after rollback of the completed run: %v", err)
	}
	if err := verify.ExpectClientStatus(ctx, e.info, []*x509.Certificate{c1.Cert}, newClient, 200); err != nil {
		t.Errorf("run 1's client certificate after rollback of run 2: %v", err)
	}
	e.checkSAKeyIs(t, ctx, c1, newClient, s1, s2, "after rollback of the completed run")
	e.probesClean(t, "after rollback of run 2")

	// Run 3: killed after the signer switch, rolled back from there ------
	// The operator's inventory lists only the cluster and front-proxy CAs
	// (rotate's default): the etcd CA and the service-account key are left
	// as they are. Back to static pods replaced at once: run 2's rollback
	// took every revert through slow mode already, and the suite must stay
	// under 30 minutes (slow mode cost run 3 about 2 minutes).
	if err := e.c.SetNoticeDelay(ctx, 0); err != nil {
		t.Fatal(err)
	}
	dir3 := filepath.Join(e.workdir, "run3")
	os.MkdirAll(dir3, 0o700)
	inv3 := filepath.Join(e.workdir, "inventory-default-roots.yaml")
	if raw, err := os.ReadFile(inv); err != nil {
		t.Fatal(err)
	} else if raw, err = cluster.WithRoots(raw, []string{"cluster", "front-proxy"}); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(inv3, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	r = rotate(t, ctx, dir3, killAtHandover, nil, "start", "--no-hold", "--inventory", inv3)
	if strings.Contains(r.out, "] etcd-") || strings.Contains(r.out, "] service-account-") {
		t.Errorf("run 3 rotates neither the etcd CA nor the service-account key, but its output names their steps:\n%s", tail(r.out, 20))
	}
	if !r.killed {
		t.Fatalf("run 3 was not killed after the signer switch (exit %d)\n%s", r.code, tail(r.out, 30))
	}
	r = rotate(t, ctx, dir3, nil, nil, "rollback")
	mustSucceed(t, r, "rollback from after the signer switch")
	// Run 3's CA must be neither used nor trusted any more.
	e.checkOnCA(t, ctx, c1, readStateCA(t, filepath.Join(dir3, "rotate.db")), "after rollback from mid-run")
	if err := verify.EtcdOnCA(ctx, e.info, e1, e2); err != nil {
		t.Errorf("after run 3 (etcd not listed) and its rollback: %v", err)
	}
	e.checkSAKeyIs(t, ctx, c1, newClient, s1, s2, "after run 3 (service-account not listed) and its rollback")
	calls := e.probes.WebhookCalls()
	rep := e.probes.Stop()
	if p := os.Getenv("ROTATE_E2E_REPORT"); p != "" {
		if err := rep.WriteFile(p); err != nil {
			t.Errorf("write the probe report: %v", err)
		}
	}
	credentialFailures(t, rep, "over the whole test")
	storageKept(t, rep, "over the whole test")
	e.probesCovered(t, rep, calls, w2.Name)
}

// inventoryWithKubeconfig writes, in dir, the cluster's inventory with
// the kubeconfig replaced by a copy of cp1's admin.conf as it is now.
func (e *env) inventoryWithKubeconfig(t *testing.T, dir string) string {
	t.Helper()
	kc, err := os.ReadFile(filepath.Join(e.cp1().EtcKubernetes, "admin.conf"))
	if err != nil {
		t.Fatal(err)
	}
	kcPath := filepath.Join(dir, "admin.conf")
	if err := os.WriteFile(kcPath, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	inv, err := e.c.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(inv), e.info.AdminKubeconfig) {
		t.Fatalf("the inventory does not name %s", e.info.AdminKubeconfig)
	}
	path := filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(inv), e.info.AdminKubeconfig, kcPath)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// only is the cluster with only node name (for checks of one node).
func (e *env) only(t *testing.T, name string) clusterinfo.Cluster {
	t.Helper()
	c := e.info
	c.Nodes = nil
	for _, n := range e.info.Nodes {
		if n.Name == name {
			c.Nodes = append(c.Nodes, n)
		}
	}
	if len(c.Nodes) != 1 {
		t.Fatalf("no node %s in cluster.json", name)
	}
	return c
}

// checkStateMirrors checks every control-plane node holds the run's state
// copy, root-only (0600 in a 0700 directory), and returns their host
// paths.
func (e *env) checkStateMirrors(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, n := range e.info.Nodes {
		if n.Role != cluster.RoleControlPlane {
			continue
		}
		p := filepath.Join(n.Dir, "var-lib-rotate", "state", e.info.Name+".db")
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s holds no state copy: %v", n.Name, err)
		}
		dir, err := os.Stat(filepath.Dir(p))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 || dir.Mode().Perm() != 0o700 {
			t.Errorf("%s: state copy mode %v in a directory of mode %v, want 0600 in 0700", n.Name, st.Mode().Perm(), dir.Mode().Perm())
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
			t.Errorf("%s: state copy owned by uid %d, want root", n.Name, sys.Uid)
		}
		out = append(out, p)
	}
	return out
}

// statusDuringRun runs `rotate status -o json` while another rotate holds
// the state file and returns the phase it shows in progress.
func (e *env) statusDuringRun(t *testing.T, ctx context.Context, dir string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, rotateBin, "status", "-o", "json")
	cmd.Dir = dir
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Errorf("status during the run: %v\n%s%s", err, stdout.String(), stderr.String())
		return ""
	}
	var st struct {
		Run struct {
			State string `json:"state"`
			Phase string `json:"phase"`
		} `json:"run"`
	}
	if err := json.Unmarshal([]byte(stdout.String()), &st); err != nil {
		t.Errorf("status during the run: %v\n%s", err, stdout.String())
		return ""
	}
	t.Logf("e2e: status during the run: state %q, phase %q (%s)", st.Run.State, st.Run.Phase, strings.TrimSpace(stderr.String()))
	if st.Run.Phase != "" {
		return st.Run.Phase
	}
	return st.Run.State
}

// probesCovered checks that the probes did what they claim: every kubelet
// answered the apiservers, the webhook was called, and no Lease (leaders
// and every kubelet's) went unrenewed for longer than its duration — but
// that of cut, whose network the test took down for a while.
func (e *env) probesCovered(t *testing.T, rep probes.Report, webhookCalls int64, cut string) {
	t.Helper()
	if webhookCalls == 0 {
		t.Errorf("the admission webhook was never called")
	}
	seen := 0
	for _, f := range rep.Failures {
		// A gap is an Other of the lease probe; its GETs' own failures
		// (an apiserver shutting down behind the LB: counted as refused)
		// are not gaps.
		if f.Probe != probes.ProbeLease || f.Class != probes.Other {
			continue
		}
		seen++
		if f.Target == "lease "+cut+" renewal" {
			t.Logf("e2e: expected lease gap of %s (its network was down): %s %s", cut, f.Time.Format("15:04:05"), f.Error)
			continue
		}
		if why, ok := e.etcdUnderLeader(f); ok {
			t.Logf("e2e: leader lease gap while the etcd member under the holder's apiserver restarted: %s %s: %s (%s)", f.Time.Format("15:04:05"), f.Target, f.Error, why)
			continue
		}
		t.Errorf("lease renewal gap at %s: %s: %s", f.Time.Format("15:04:05"), f.Target, f.Error)
	}
	if n := rep.Count(probes.ProbeLease, probes.Other); n != seen {
		t.Errorf("%d lease renewal gaps, only %d with details (%d failure details dropped)", n, seen, rep.DroppedFailures)
	}
	// The node lifecycle controller is the judge of a kubelet's liveness:
	// no node but the cut one changed its Ready condition since the
	// cluster came up.
	nodes, err := e.client(t).CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Items {
		for _, c := range n.Status.Conditions {
			if c.Type != corev1.NodeReady || n.Name == cut {
				continue
			}
			since := e.upAt
			if at, ok := e.joined[n.Name]; ok {
				since = at // it became Ready when it joined; not since
			}
			if c.Status != corev1.ConditionTrue {
				t.Errorf("node %s: Ready=%s since %s (%s), during the test", n.Name, c.Status, c.LastTransitionTime.Format("15:04:05"), c.Reason)
				continue
			}
			if !c.LastTransitionTime.After(since) {
				continue
			}
			why, ok := e.kubeletStartRace(rep, n.Name)
			if ok {
				t.Logf("e2e: node %s: Ready again since %s after its kubelet reported NotReady on its own start: %s", n.Name, c.LastTransitionTime.Format("15:04:05"), why)
			} else {
				t.Errorf("node %s: Ready=%s since %s (%s), during the test; the kubelet's own NotReady reports: %s", n.Name, c.Status, c.LastTransitionTime.Format("15:04:05"), c.Reason, why)
			}
		}
	}
	proxy := rep.Probes[probes.ProbeNodeProxy]
	for _, n := range e.probed {
		for _, path := range []string{"", " /pods"} {
			target := "apiserver cp1 -> kubelet " + n.Name + path
			if proxy == nil || proxy.Targets[target] == nil || proxy.Targets[target].OK == 0 {
				t.Errorf("probe %s never succeeded", target)
			}
		}
	}
}

// kubeletStartRaces are the conditions a real kubelet (v1.37) reports for
// a moment when it starts, before its first status is Ready: kubelet.Run
// begins posting node status before the pod lifecycle event generator's
// first relist, and the CSI plugin marks the node not ready until it has
// initialized the CSINode object. On a loaded machine a restarted kubelet
// can post NotReady with these until its next status update. Upstream
// behaviour, not rotate's: a kubelet the rotation restarts may show it.
var kubeletStartRaces = []string{
	"PLEG is not healthy: pleg has yet to be successful",
	"container runtime status check may not have completed yet",
	"CSINode is not yet initialized",
}

var conditionMessage = regexp.MustCompile(`"message":"((?:[^"\\]|\\.)*)"`)

// onlyStartRaces reports whether a kubelet's "Node became not ready" log
// line gives only start races as the reasons: its condition message (one
// error, or several as "[a, b]") holds nothing else.
// A leader's lease is renewed through the apiserver of its node, which
// kubeadm points at the node's own etcd member only
// (--etcd-servers=https://127.0.0.1:2379): while that member restarts (it
// takes ~7 s to stop) the leader cannot renew for its renewDeadline (10 s)
// and gives up; a standby takes the lease once it expired (15 s). A gap
// of a leader's lease is accepted only when it began as the etcd member of
// the holder's node was being stopped for a manifest change (the node's
// supervisor log, as a kubelet's would tell) and is no longer than that
// handover takes.
var (
	leaseGapHolder = regexp.MustCompile(`not renewed for (\d+)s \(holder "([^"_]+)_`)
	supervisorStop = regexp.MustCompile(`^time=(\S+) .*msg="manifest changed, stopping the old pod" node=\S+ pod=etcd `)
)

func (e *env) etcdUnderLeader(f probes.Failure) (string, bool) {
	m := leaseGapHolder.FindStringSubmatch(f.Error)
	if m == nil || (f.Target != "lease kube-controller-manager renewal" && f.Target != "lease kube-scheduler renewal") {
		return "", false
	}
	secs, _ := strconv.Atoi(m[1])
	if secs > 40 {
		return "", false
	}
	lastRenew := f.Time.Add(-time.Duration(secs) * time.Second)
	for _, n := range e.info.Nodes {
		if n.Name != m[2] || n.LogDir == "" {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(n.LogDir, "supervisor.log"))
		if err != nil {
			return "", false
		}
		for _, line := range strings.Split(string(raw), "\n") {
			sm := supervisorStop.FindStringSubmatch(line)
			if sm == nil {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, sm[1])
			if err != nil {
				continue
			}
			if !at.Before(lastRenew.Add(-3*time.Second)) && !at.After(lastRenew.Add(4*time.Second)) {
				return "etcd on " + n.Name + " stopped at " + at.Format("15:04:05.000") + ", the lease last renewed at " + lastRenew.Format("15:04:05"), true
			}
		}
	}
	return "", false
}

func onlyStartRaces(line string) bool {
	m := conditionMessage.FindStringSubmatch(line)
	if m == nil || m[1] == "" {
		return false
	}
	rest := m[1]
	for _, r := range kubeletStartRaces {
		rest = strings.ReplaceAll(rest, r, "")
	}
	return strings.Trim(rest, "[], ") == ""
}

// kubeletStartRace reports whether node's Ready flip during the test is
// explained by its kubelet's own NotReady reports, all of them the start
// race above, and describes them. Without any (the node lifecycle
// controller marked it: the kubelet went silent) or with any other
// cause, it is not.
func (e *env) kubeletStartRace(rep probes.Report, node string) (string, bool) {
	var logFile string
	for _, n := range e.info.Nodes {
		if n.Name == node && n.LogDir != "" {
			logFile = n.LogDir + "/kubelet.log"
		}
	}
	var lines []string
	ok := true
	for _, ev := range rep.NotReady {
		if ev.Target != logFile {
			continue
		}
		lines = append(lines, ev.Message)
		ok = ok && onlyStartRaces(ev.Message)
	}
	if len(lines) == 0 {
		return "none (the node lifecycle controller's verdict, or a line the log scan did not see)", false
	}
	return strings.Join(lines, "\n"), ok
}

// setKubeletUnreachable makes n's kubelet unreachable from every
// control-plane node (an "unreachable" route to n in their network
// namespaces), like a firewall in front of port 10250: the apiservers'
// node proxy, logs and exec fail, while SSH from the operator and n's own
// connections to the API (through the load balancer) work.
func (e *env) setKubeletUnreachable(t *testing.T, n clusterinfo.Node, on bool) {
	t.Helper()
	op := "del"
	if on {
		op = "add"
		t.Cleanup(func() { e.setKubeletUnreachable(t, n, false) })
	}
	for _, cp := range e.info.Nodes {
		if cp.Role != cluster.RoleControlPlane {
			continue
		}
		out, err := exec.Command("ip", "-n", cp.NetNS, "route", op, "unreachable", n.Address+"/32").CombinedOutput()
		if err != nil && (on || !strings.Contains(string(out), "No such process")) {
			t.Fatalf("ip route %s unreachable %s on %s: %v %s", op, n.Address, cp.Name, err, out)
		}
	}
	t.Logf("e2e: kubelet of %s reachable from the apiservers: %v", n.Name, !on)
}

// checkOnCA asserts the cluster runs on ca only; other (if set) is the CA
// that must no longer be trusted or used.
func (e *env) checkOnCA(t *testing.T, ctx context.Context, ca *pki.CA, other *pki.CA, when string) {
	t.Helper()
	caPEM := pki.EncodeCertsPEM(ca.Cert)
	fp, err := verify.ReadCA(e.cp1(), "front-proxy-ca")
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]func(ctx context.Context) error{
		"extension-apiserver-authentication": func(ctx context.Context) error {
			return verify.ExtensionAuthIs(ctx, e.client(t), caPEM, pki.EncodeCertsPEM(fp.Cert))
		},
		"apiservers serve from the CA":        func(ctx context.Context) error { return verify.ServingIssuer(ctx, e.info, ca.Cert) },
		"kubelet client certificates":         func(context.Context) error { return verify.KubeletCertsIssuedBy(e.info, ca.Cert) },
		"kubelet serving certificates":        func(ctx context.Context) error { return verify.KubeletServingIssuedBy(ctx, e.info, ca.Cert) },
		"control-plane kubeconfigs":           func(context.Context) error { return verify.KubeconfigsIssuedBy(e.info, ca.Cert) },
		"kube-root-ca.crt":                    func(ctx context.Context) error { return verify.RootCAIs(ctx, e.client(t), caPEM) },
		"cluster-info":                        func(ctx context.Context) error { return verify.ClusterInfoIs(ctx, e.client(t), caPEM) },
		"nodes Ready":                         func(ctx context.Context) error { return verify.NodesReady(ctx, e.client(t)) },
		"operator's own apiserver flags kept": func(context.Context) error { return e.userFlagsKept() },
	}
	for name, check := range checks {
		// Controllers republish asynchronously (kube-root-ca.crt, JWS).
		if err := verify.Eventually(ctx, 2*time.Minute, check); err != nil {
			t.Errorf("%s: %s: %v", when, name, err)
		}
	}
	if other != nil {
		c, err := verify.ClientCert(other, "e2e-other-ca")
		if err != nil {
			t.Fatal(err)
		}
		if err := verify.ExpectRejected(ctx, e.info, []*x509.Certificate{ca.Cert}, c); err != nil {
			t.Errorf("%s: a client certificate from the other CA: %v", when, err)
		}
	}
}

// userFlagsKept checks that the apiserver flags the operator set through
// kubeadm's apiServer.extraArgs (the harness sets two) survive rotate's
// manifest edits and their reverts.
func (e *env) userFlagsKept() error {
	for _, n := range e.info.Nodes {
		if n.Role != cluster.RoleControlPlane {
			continue
		}
		b, err := os.ReadFile(filepath.Join(n.EtcKubernetes, "manifests", "kube-apiserver.yaml"))
		if err != nil {
			return err
		}
		for _, flag := range []string{"--shutdown-watch-termination-grace-period=3s", "--enable-aggregator-routing=true"} {
			if !strings.Contains(string(b), flag) {
				return fmt.Errorf("%s: kube-apiserver manifest lost %s", n.Name, flag)
			}
		}
	}
	return nil
}

// fingerprintFiles hashes every file under the nodes' /etc/kubernetes and
// /var/lib/kubelet.
func (e *env) fingerprintFiles(t *testing.T) string {
	t.Helper()
	h := sha256.New()
	for _, n := range e.info.Nodes {
		for _, root := range []string{n.EtcKubernetes, n.VarLibKubelet} {
			filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
				if err != nil || fi.IsDir() {
					return nil
				}
				b, _ := os.ReadFile(p)
				fmt.Fprintf(h, "%s %o %x\n", p, fi.Mode(), sha256.Sum256(b))
				return nil
			})
		}
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func (e *env) setLink(t *testing.T, n clusterinfo.Node, state string) {
	t.Helper()
	out, err := exec.Command("ip", "-n", n.NetNS, "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("list links of %s: %v %s", n.Name, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		dev := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
		if dev == "lo" {
			continue
		}
		if out, err := exec.Command("ip", "-n", n.NetNS, "link", "set", "dev", dev, state).CombinedOutput(); err != nil {
			t.Fatalf("set %s %s on %s: %v %s", dev, state, n.Name, err, out)
		}
	}
	t.Logf("e2e: network of %s %s", n.Name, state)
}

// kubeadmCheckExpiration runs the real `kubeadm certs check-expiration` on
// every control-plane node: it must read every certificate, list the CAs,
// and reach the cluster's kubeadm-config with the rotated admin.conf.
func (e *env) kubeadmCheckExpiration(t *testing.T, ctx context.Context, ca *pki.CA) {
	t.Helper()
	for _, n := range e.info.Nodes {
		if n.Role != cluster.RoleControlPlane {
			continue
		}
		var last string
		err := verify.Eventually(ctx, 2*time.Minute, func(ctx context.Context) error {
			// --config: the harness has no mirror pods, which kubeadm would
			// wait for to learn the advertise address from the cluster.
			out, err := e.c.Exec(ctx, n.Name, filepath.Join(e.info.BinDir, "kubeadm"), "certs", "check-expiration", "--config", filepath.Join(n.Dir, "kubeadm.yaml"))
			last = string(out)
			if err != nil {
				return err
			}
			missingOK := "!MISSING! super-admin.conf" // only the init node has one
			cleaned := strings.ReplaceAll(last, missingOK, "")
			for _, want := range []string{"CERTIFICATE AUTHORITY", "apiserver ", "front-proxy-client", "admin.conf", "\nca "} {
				if !strings.Contains(cleaned, want) {
					return fmt.Errorf("output lacks %q", want)
				}
			}
			if strings.Contains(strings.ToLower(cleaned), "error") || strings.Contains(cleaned, "MISSING") {
				return fmt.Errorf("kubeadm reports a problem")
			}
			return nil
		})
		if err != nil {
			t.Errorf("kubeadm certs check-expiration on %s: %v\n%s", n.Name, err, last)
			continue
		}
		t.Logf("e2e: kubeadm certs check-expiration on %s OK", n.Name)
	}
}

// csrThroughNewSigner issues a kubelet client certificate through the real
// CSR API and the real controller-manager signer, now on the new CA.
func (e *env) csrThroughNewSigner(t *testing.T, ctx context.Context, ca *pki.CA) {
	t.Helper()
	is, err := kubecsr.RequestKubeletClientCert(ctx, e.client(t), "e2e-csr-node", kubecsr.Options{Timeout: 2 * time.Minute})
	if err != nil {
		t.Errorf("CSR through the real signer: %v", err)
		return
	}
	if !pki.IssuedBy(is.Cert, ca.Cert) {
		t.Errorf("CSR was signed by %s, not the new CA", is.Cert.Issuer)
	}
	t.Logf("e2e: CSR via the real signer issued %s", pki.Describe(is.Cert))
}

func readStateCA(t *testing.T, path string) *pki.CA {
	t.Helper()
	s, err := state.Open(path, state.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m, ok, err := s.CA(context.Background(), "cluster")
	if err != nil || !ok {
		t.Fatalf("no CA in %s: %v", path, err)
	}
	ca, err := pki.LoadCA(m.NewCert, m.NewKey, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// reportTiming splits the wall time into time rotate spent waiting on
// health gates (components restarting, controllers republishing) and the
// rest (its own work, node I/O, apply).
func (e *env) reportTiming(t *testing.T, path string, wall time.Duration) {
	s, err := state.Open(path, state.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Errorf("timing: %v", err)
		return
	}
	defer s.Close()
	recs, _ := s.Steps(context.Background())
	var gate, apply time.Duration
	perPhase := map[string]time.Duration{}
	for _, r := range recs {
		gate += r.GateTime
		apply += r.ApplyTime
		perPhase[r.Phase] += r.GateTime + r.ApplyTime
	}
	b, _ := json.Marshal(perPhase)
	t.Logf("e2e: full rotation wall time %s (3 kills and resumes, hold included): gates waiting on components %s, apply (rotate's own work incl. waits inside rollouts) %s; per phase %s",
		wall.Round(time.Second), gate.Round(time.Second), apply.Round(time.Second), b)
}

// TestKubeletStartRaceLines: which "Node became not ready" lines count as
// a kubelet's start race (no cluster needed).
func TestKubeletStartRaceLines(t *testing.T) {
	line := func(msg string) string {
		return `I1130 12:13:04.955088    4414 setters.go:552] "Node became not ready" node="worker1" condition={"type":"Ready","status":"False","lastHeartbeatTime":"2026-11-30T12:13:04Z","lastTransitionTime":"2026-11-30T12:13:04Z","reason":"KubeletNotReady","message":"` + msg + `"}`
	}
	for msg, want := range map[string]bool{
		"CSINode is not yet initialized":                                                       true,
		"PLEG is not healthy: pleg has yet to be successful":                                   true,
		"[CSINode is not yet initialized, PLEG is not healthy: pleg has yet to be successful]": true,
		"container runtime status check may not have completed yet":                            true,
		"[CSINode is not yet initialized, container runtime is down]":                          false,
		"failed to initialize CSINode: timed out":                                              false,
		"container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady": false,
		"": false,
		`PLEG is not healthy: pleg was last seen active 3m0s ago; threshold is 3m0s`: false,
	} {
		if got := onlyStartRaces(line(msg)); got != want {
			t.Errorf("%q: %v, want %v", msg, got, want)
		}
	}
	if onlyStartRaces(`"Node became not ready" node="w1"`) {
		t.Error("a line without a condition message counted as a start race")
	}
}

// TestEtcdUnderLeader: a leader lease gap is accepted only when the etcd
// member of the holder's node was being stopped as the renewals stopped
// (the supervisor log of a real run), not for another node's member, a
// stop long before, or a gap longer than the handover takes.
func TestEtcdUnderLeader(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "supervisor.log"), []byte(
		`time=2026-11-30T14:58:16.100Z level=INFO msg="manifest change seen" node=cp1 pod=etcd actAfter=5s
time=2026-11-30T14:58:21.158Z level=INFO msg="manifest changed, stopping the old pod" node=cp1 pod=etcd file=/etc/kubernetes/manifests/etcd.yaml old=e6216ccae67b new=7f2e17dcc937 grace=30s
time=2026-11-30T14:58:29.010Z level=INFO msg="starting pod" node=cp1 pod=etcd file=/etc/kubernetes/manifests/etcd.yaml hash=7f2e17dcc937
`), 0o600)
	e := &env{info: clusterinfo.Cluster{Nodes: []clusterinfo.Node{{Name: "cp1", LogDir: dir}, {Name: "cp2", LogDir: t.TempDir()}}}}
	at := time.Date(2026, 11, 30, 14, 58, 47, 0, time.UTC)
	gap := func(target, holder string, secs int, when time.Time) probes.Failure {
		return probes.Failure{Time: when, Probe: probes.ProbeLease, Target: target, Class: probes.Other,
			Error: fmt.Sprintf(`not renewed for %ds (holder "%s_e66c061b-021f", leaseDuration 15s, slack 10s)`, secs, holder)}
	}
	for _, c := range []struct {
		name string
		f    probes.Failure
		want bool
	}{
		{"the holder's member stopped as renewals stopped", gap("lease kube-controller-manager renewal", "cp1", 26, at), true},
		{"the scheduler's lease likewise", gap("lease kube-scheduler renewal", "cp1", 26, at), true},
		{"another node's member", gap("lease kube-controller-manager renewal", "cp2", 26, at), false},
		{"renewals stopped long after the stop", gap("lease kube-controller-manager renewal", "cp1", 26, at.Add(time.Minute)), false},
		{"longer than a handover", gap("lease kube-controller-manager renewal", "cp1", 60, at.Add(34*time.Second)), false},
		{"a node lease", gap("lease cp1 renewal", "cp1", 26, at), false},
	} {
		if _, got := e.etcdUnderLeader(c.f); got != c.want {
			t.Errorf("%s: accepted %v, want %v", c.name, got, c.want)
		}
	}
}
