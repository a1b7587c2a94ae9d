//go:build e2e

// End-to-end tests of the cluster harness against the real binaries. They
// need root, the Kubernetes binaries (e2e/scripts/build-binaries.sh, or
// ROTATE_E2E_BIN_DIR) and openssh-server:
//
//	go test -tags e2e ./e2e/cluster/ -run . -timeout 20m -v
package cluster

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubeca/rotate/e2e/cluster/supervisor"
	"github.com/kubeca/rotate/e2e/clusterinfo"
	"github.com/kubeca/rotate/e2e/probes"
	"github.com/kubeca/rotate/pki"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func testOptions(name, subnet string) Options {
	return Options{
		Name:          name,
		ControlPlanes: DefaultControlPlanes,
		Workers:       DefaultWorkers,
		SpareWorkers:  1,
		Subnet:        subnet,
		BinDir:        os.Getenv("ROTATE_E2E_BIN_DIR"),
		Progress:      os.Stderr,
		ReplaceStale:  true,
	}
}

// footprint is what a cluster may leave behind, captured before Down.
type footprint struct {
	spec     Spec
	inodes   map[string]uint64
	cgroups  []string
	registry string
	hostDirs []string // mount targets that did not exist before the test
}

func footprintOf(c *Cluster, hostDirs []string) footprint {
	inodes := map[string]uint64{}
	for k, v := range c.st.NSInodes {
		inodes[k] = v
	}
	return footprint{spec: c.st.Spec, inodes: inodes, cgroups: append([]string{}, c.st.Cgroups...), registry: c.st.Registered, hostDirs: hostDirs}
}

// missingHostDirs lists the node mount targets absent on the host.
func missingHostDirs() []string {
	var out []string
	for _, m := range (Node{Dir: "/x"}).nodeMounts() {
		if _, err := os.Stat(m[1]); err != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// leftovers lists everything of the cluster still present on the host.
func leftovers(fp footprint) []string {
	var out []string
	s := fp.spec
	prefix := "re2e-" + s.Name + "-"
	if raw, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(l, prefix) {
				out = append(out, "netns "+l)
			}
		}
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", s.HostLink)); err == nil {
		out = append(out, "link "+s.HostLink)
	}
	for _, m := range mountPoints() {
		if strings.HasPrefix(m, s.Dir+"/") || m == s.Dir || strings.HasPrefix(m, "/run/netns/"+prefix) {
			out = append(out, "mount "+m)
		}
	}
	for _, pid := range procsInNamespaces(fp.inodes) {
		out = append(out, fmt.Sprintf("process %d in a cluster namespace", pid))
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || procStart(pid) == 0 {
			continue
		}
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(raw), s.Dir+"/") {
			out = append(out, fmt.Sprintf("process %d: %s", pid, strings.ReplaceAll(string(raw), "\x00", " ")))
		}
	}
	for _, cg := range fp.cgroups {
		if _, err := os.Stat(cg); err == nil {
			out = append(out, "cgroup "+cg)
		}
	}
	if _, err := os.Stat(s.Dir); err == nil {
		out = append(out, "dir "+s.Dir)
	}
	if fp.registry != "" {
		if _, err := os.Stat(fp.registry); err == nil {
			out = append(out, "registry entry "+fp.registry)
		}
	}
	if others, _ := os.ReadDir(filepath.Join(registryDir, "clusters")); len(others) == 0 {
		for _, d := range fp.hostDirs {
			if _, err := os.Stat(d); err == nil {
				out = append(out, "host dir "+d)
			}
		}
	}
	return out
}

func downAndCheck(t *testing.T, c *Cluster, hostDirs []string) {
	t.Helper()
	fp := footprintOf(c, hostDirs)
	c.SetProgress(os.Stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	if err := c.Down(ctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	t.Logf("down took %s", time.Since(start).Round(time.Millisecond))
	if left := leftovers(fp); len(left) > 0 {
		t.Fatalf("left behind after down:\n  %s", strings.Join(left, "\n  "))
	}
}

// keepOnFailure makes a failed test's Down keep the logs.
func keepOnFailure(t *testing.T, c *Cluster) {
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join(c.Dir(), stateFile)); err != nil {
			return // already down
		}
		c.KeepDir = t.Failed()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := c.Down(ctx); err != nil {
			t.Errorf("cleanup down: %v", err)
		}
		if t.Failed() {
			t.Logf("logs kept in %s/nodes/*/log", c.Dir())
		}
	})
}

// TestCluster boots the default topology (3 control planes, 2 workers) and
// checks everything the harness promises, then tears it down.
func TestCluster(t *testing.T) {
	requireRoot(t)
	hostDirs := missingHostDirs()
	host, err := SnapshotHostRoot()
	if err != nil {
		t.Fatal(err)
	}
	_, err = user.Lookup(OperatorUser)
	hostHadOperator := err == nil
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	start := time.Now()
	c, err := Up(ctx, testOptions("e2e-test", "10.213.60.0/24"))
	if c != nil {
		keepOnFailure(t, c)
	}
	if err != nil {
		t.Fatal(err)
	}
	boot := time.Since(start)
	t.Logf("BOOT TIME: %s (3 control planes, 2 workers)", boot.Round(time.Millisecond))
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	s := c.Spec()
	agent := s.Kubelet

	t.Run("apiservers-readyz", func(t *testing.T) {
		for _, n := range s.ControlPlaneNodes() {
			if err := c.Readyz(ctx, n.Name); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		if err := c.readyz(ctx, s.LBAddress); err != nil {
			t.Errorf("through the load balancer: %v", err)
		}
	})

	// A spare worker joins now, as a node added to a running cluster; the
	// checks below treat it like every other node.
	t.Run("join-spare-node", func(t *testing.T) {
		spare := s.Nodes[len(s.Nodes)-1]
		if !spare.Spare {
			t.Fatalf("last node %s is not a spare", spare.Name)
		}
		inv, err := os.ReadFile(s.InventoryPath())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(inv), spare.Name) {
			t.Fatalf("spare %s is in the inventory before it joined", spare.Name)
		}
		if _, err := cs.CoreV1().Nodes().Get(ctx, spare.Name, metav1.GetOptions{}); err == nil {
			t.Fatalf("spare %s is a Node before it joined", spare.Name)
		}
		if err := c.JoinNode(ctx, spare.Name); err != nil {
			t.Fatal(err)
		}
		info := c.Info()
		if !slices.ContainsFunc(info.Nodes, func(n clusterinfo.Node) bool { return n.Name == spare.Name }) {
			t.Errorf("joined %s missing from cluster.json", spare.Name)
		}
		if err := c.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	})
	s = c.Spec() // the joined node is a node like the others from here on

	t.Run("leader-leases", func(t *testing.T) {
		for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
			l, err := cs.CoordinationV1().Leases("kube-system").Get(ctx, name, metav1.GetOptions{})
			if err := leaseHeld(l, err); err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			t.Logf("%s leader: %s", name, *l.Spec.HolderIdentity)
		}
	})

	t.Run("nodes-ready", func(t *testing.T) {
		if !agent {
			t.Skip("no node agent (e2e-kubelet) in this build")
		}
		for _, n := range s.Nodes {
			node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err := nodeReady(node, err); err != nil {
				t.Errorf("%s: %v", n.Name, err)
				continue
			}
			_, cpLabel := node.Labels["node-role.kubernetes.io/control-plane"]
			if cpLabel != n.ControlPlane() {
				t.Errorf("%s: control-plane label %v, want %v", n.Name, cpLabel, n.ControlPlane())
			}
			// The KubeletConfiguration from the init config reached every
			// node, the workers through kubeadm join's kubelet-config.
			l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				t.Errorf("%s: lease: %v", n.Name, err)
			} else if d := l.Spec.LeaseDurationSeconds; d == nil || *d != NodeLeaseDurationSeconds {
				t.Errorf("%s: lease duration %v, want the config's %d", n.Name, d, NodeLeaseDurationSeconds)
			}
		}
	})

	t.Run("kube-root-ca-everywhere", func(t *testing.T) {
		if err := rootCAPublished(ctx, cs); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("kubeadm-layout", func(t *testing.T) { checkLayout(t, c) })

	t.Run("ssh-sees-own-node", func(t *testing.T) {
		// A file that differs per node: the apiserver's serving cert on
		// control-plane nodes, the kubelet client cert on workers.
		seen := map[string]string{}
		for _, n := range s.Nodes {
			file := "/var/lib/kubelet/pki/kubelet-client-current.pem"
			if n.ControlPlane() {
				file = "/etc/kubernetes/pki/apiserver.crt"
			} else if !agent {
				file = "/etc/kubernetes/bootstrap-kubelet.conf" // same on every worker
			}
			sudo := ""
			if n.User() != "root" {
				sudo = "sudo -n "
			}
			out, err := c.SSH(ctx, n.Name, "hostname; "+sudo+"sha256sum "+file+"; test -d /run/sshd && test ! -e /run/netns")
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
				continue
			}
			f := strings.Fields(string(out))
			if len(f) < 2 || f[0] != n.Name {
				t.Errorf("%s: hostname/sum output %q", n.Name, out)
				continue
			}
			if want := sha256File(t, n.HostPath(file)); f[1] != want {
				t.Errorf("%s: %s over ssh has sha256 %s, the node's own file %s", n.Name, file, f[1], want)
			}
			if other, dup := seen[f[1]]; dup && (n.ControlPlane() || agent) {
				t.Errorf("%s and %s serve the same %s", n.Name, other, file)
			}
			seen[f[1]] = n.Name
		}
	})

	t.Run("ssh-rejects-wrong-host-key", func(t *testing.T) { checkHostKeyVerified(t, ctx, c) })

	t.Run("restart-kubelet-over-ssh", func(t *testing.T) {
		if !agent {
			t.Skip("no node agent (e2e-kubelet) in this build")
		}
		restart := filepath.Join(s.HarnessBin, "e2e-node") + " restart-kubelet"
		for _, name := range []string{"cp2", "worker1"} {
			n, _ := c.st.Spec.Node(name)
			before := servicePID(t, n, supervisor.KubeletService)
			t0 := time.Now()
			cmd := restart
			if n.User() != "root" {
				cmd = "sudo -n " + restart // rotate's become
			}
			out, err := c.SSH(ctx, name, cmd)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			after := servicePID(t, n, supervisor.KubeletService)
			t.Logf("%s: %s (%s round trip)", name, strings.TrimSpace(string(out)), time.Since(t0).Round(time.Millisecond))
			if after == before || after == 0 {
				t.Errorf("%s: agent pid %d -> %d", name, before, after)
			}
		}
		if err := c.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("static-pod-restart-on-content-change", func(t *testing.T) { checkManifestRestart(t, ctx, c) })

	t.Run("slow-mode", func(t *testing.T) { checkSlowMode(t, ctx, c) })

	t.Run("real-kubelets", func(t *testing.T) { checkRealKubelets(t, ctx, c, cs) })

	t.Run("serving-certificate-from-csr", func(t *testing.T) { checkServingCertFromCSR(t, ctx, c) })

	t.Run("non-root-ssh-with-sudo", func(t *testing.T) {
		nonRoot := 0
		for _, n := range s.Nodes {
			if n.User() == "root" {
				continue
			}
			nonRoot++
			out, err := c.SSH(ctx, n.Name, "id -un; sudo -n id -u; sudo -n cat /etc/kubernetes/pki/ca.crt >/dev/null && echo can-read-pki")
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
				continue
			}
			if got := strings.Fields(string(out)); len(got) != 3 || got[0] != OperatorUser || got[1] != "0" || got[2] != "can-read-pki" {
				t.Errorf("%s (port %d): %q, want %s, root through sudo", n.Name, n.Port(), out, OperatorUser)
			}
			if conn, err := net.DialTimeout("tcp", net.JoinHostPort(n.Address, "22"), time.Second); err == nil {
				conn.Close()
				t.Errorf("%s: sshd listens on 22 too, want only %d", n.Name, n.Port())
			}
		}
		if nonRoot == 0 {
			t.Fatal("no node is reached as a non-root user")
		}
	})

	t.Run("per-node-home-and-tmp", func(t *testing.T) {
		// What one node writes to /tmp or its home is that node's own.
		marker := fmt.Sprintf("rotate-e2e-marker-%d", time.Now().UnixNano())
		first, last := s.Nodes[0], s.Nodes[len(s.Nodes)-1]
		if _, err := c.SSH(ctx, first.Name, "touch /tmp/"+marker+" ~/"+marker); err != nil {
			t.Fatal(err)
		}
		if out, err := c.SSH(ctx, last.Name, "ls -a /tmp ~"); err != nil || strings.Contains(string(out), marker) {
			t.Errorf("%s sees %s's /tmp or home (%v): %s", last.Name, first.Name, err, out)
		}
		for _, p := range []string{"/tmp/" + marker, "/root/" + marker} {
			if fileExists(p) {
				t.Errorf("%s landed on the host", p)
			}
		}
	})

	t.Run("probes-see-credential-failures", func(t *testing.T) { checkProbes(t, ctx, c) })

	t.Run("kill-node-keeps-serving", func(t *testing.T) { checkKillNode(t, ctx, c, cs) })

	t.Run("resources", func(t *testing.T) {
		var total uint64
		for _, ns := range c.NodeStatuses(ctx) {
			total += ns.RSS
			t.Logf("%-8s rss %4d MiB  cpu %s", ns.Name, ns.RSS>>20, ns.CPU.Round(time.Second))
		}
		la, _ := os.ReadFile("/proc/loadavg")
		t.Logf("total rss %d MiB; loadavg %s", total>>20, strings.TrimSpace(string(la)))
	})

	t.Run("down-leaves-nothing", func(t *testing.T) {
		downAndCheck(t, c, hostDirs)
		now, err := SnapshotHostRoot()
		if err != nil {
			t.Fatal(err)
		}
		if d := host.Diff(now); len(d) > 0 {
			t.Errorf("the host's root filesystem changed while the cluster ran:\n  %s", strings.Join(d, "\n  "))
		}
		// The last cluster out removes the user; another cluster (the
		// rotation suite runs concurrently) may still need it.
		others, _ := os.ReadDir(filepath.Join(registryDir, "clusters"))
		if _, err := user.Lookup(OperatorUser); err == nil && !hostHadOperator && len(others) == 0 {
			t.Errorf("user %s left on the host", OperatorUser)
		}
	})
}

// replaceScheduler writes manifest to path on n and waits until the
// supervisor has replaced kube-scheduler's process.
func replaceScheduler(t *testing.T, ctx context.Context, n Node, path string, manifest []byte) {
	t.Helper()
	before := servicePID(t, n, "kube-scheduler")
	if err := writeFileAtomic(path, manifest, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, time.Minute, "kube-scheduler restart", func() error {
		if got := servicePID(t, n, "kube-scheduler"); got == before || got == 0 {
			return fmt.Errorf("pid %d", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// withAnnotation adds a pod annotation to a kubeadm manifest.
func withAnnotation(manifest []byte, key, value string) []byte {
	line := fmt.Sprintf("    %s: %q\n", key, value)
	edited := strings.Replace(string(manifest), "  annotations:\n", "  annotations:\n"+line, 1)
	if edited == string(manifest) {
		edited = strings.Replace(string(manifest), "metadata:\n", "metadata:\n  annotations:\n"+line, 1)
	}
	return []byte(edited)
}

// checkSlowMode: with a notice delay, a static pod is replaced only that
// long after its manifest changed.
func checkSlowMode(t *testing.T, ctx context.Context, c *Cluster) {
	const delay = 2 * time.Second
	if err := c.SetNoticeDelay(ctx, delay); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.SetNoticeDelay(ctx, 0); err != nil {
			t.Error(err)
		}
	}()
	n, _ := c.st.Spec.Node("cp3")
	path := filepath.Join(n.EtcKubernetes(), "manifests", "kube-scheduler.yaml")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	replaceScheduler(t, ctx, n, path, withAnnotation(orig, "e2e.rotate/slow", "1"))
	if d := time.Since(changed); d < delay {
		t.Errorf("kube-scheduler replaced %s after its manifest changed, before the %s notice delay", d, delay)
	}
	if err := writeFileAtomic(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
}

// logNodeProxyFailure logs what may say why the apiservers could not
// reach n's kubelet: the end of its kubelet's log, and the apiservers'
// last lines that name it.
func logNodeProxyFailure(t *testing.T, s Spec, n Node) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(n.LogDir(), supervisor.KubeletService+".log")); err == nil {
		t.Logf("%s: the end of its kubelet's log:\n%s", n.Name, lastLines(string(b), 30, ""))
	}
	for _, cp := range s.Nodes {
		if !cp.ControlPlane() {
			continue
		}
		logs, _ := filepath.Glob(filepath.Join(cp.LogDir(), "*apiserver*.log"))
		for _, l := range logs {
			if b, err := os.ReadFile(l); err == nil {
				t.Logf("%s: %s's last lines naming %s:\n%s", cp.Name, filepath.Base(l), n.Name, lastLines(string(b), 10, n.Name))
			}
		}
	}
}

// lastLines is the last n lines of s that contain substr.
func lastLines(s string, n int, substr string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out[max(0, len(out)-n):], "\n")
}

// checkRealKubelets: every node runs the real kubelet, which the
// apiservers reach through the node proxy, and mirror pods of the static
// pods show Running.
func checkRealKubelets(t *testing.T, ctx context.Context, c *Cluster, cs kubernetes.Interface) {
	s := c.Spec()
	for _, n := range s.Nodes {
		// The supervisor restarts an exited kubelet like systemd would; a
		// check of one instant right after restart-kubelet-over-ssh saw
		// worker1's between two lives (CI of c8db9d1), so wait for both.
		down := 0
		err := waitFor(ctx, time.Minute, "kubelet and container runtime of "+n.Name, func() error {
			if servicePID(t, n, supervisor.KubeletService) == 0 || servicePID(t, n, "containerd") == 0 {
				down++
				return errors.New("kubelet or container runtime not running")
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: %v", n.Name, err)
		} else if down > 0 {
			t.Logf("e2e: %s: kubelet or container runtime not running at %d look(s), then running", n.Name, down)
		}
		for _, path := range []string{"healthz", "pods"} {
			var body []byte
			err := waitFor(ctx, time.Minute, "node proxy /"+path+" of "+n.Name, func() error {
				var err error
				body, err = cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes/" + n.Name + "/proxy/" + path).DoRaw(ctx)
				return err
			})
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
				logNodeProxyFailure(t, s, n)
				continue
			}
			if path == "healthz" && string(body) != "ok" {
				t.Errorf("%s: kubelet /healthz = %q", n.Name, body)
			}
			if path == "pods" && !strings.Contains(string(body), `"kind":"PodList"`) {
				t.Errorf("%s: kubelet /pods = %.200s", n.Name, body)
			}
		}
		if n.ControlPlane() {
			name := "kube-apiserver-" + n.Name
			err := waitFor(ctx, time.Minute, "mirror pod "+name+" Running", func() error {
				p, err := cs.CoreV1().Pods("kube-system").Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if p.Status.Phase != "Running" {
					return fmt.Errorf("phase %s", p.Status.Phase)
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
	}
	if err := waitFor(ctx, 2*time.Minute, "CoreDNS available", func() error {
		d, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.AvailableReplicas != *d.Spec.Replicas {
			return fmt.Errorf("%d/%d available", d.Status.AvailableReplicas, *d.Spec.Replicas)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// checkServingCertFromCSR: a node with serverTLSBootstrap serves a certificate
// the cluster CA issued through the CSR API; the others serve the
// kubelet's self-signed one.
func checkServingCertFromCSR(t *testing.T, ctx context.Context, c *Cluster) {
	s := c.Spec()
	caPEM, err := os.ReadFile(filepath.Join(s.ControlPlaneNodes()[0].EtcKubernetes(), "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	seen := 0
	for _, n := range s.Nodes {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(n.Address, "10250"), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // inspecting the chain below
		if err != nil {
			t.Errorf("%s: dial kubelet: %v", n.Name, err)
			continue
		}
		leaf := conn.ConnectionState().PeerCertificates[0]
		conn.Close()
		_, verr := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if n.ServingCSR {
			seen++
			if verr != nil {
				t.Errorf("%s (serverTLSBootstrap): serving certificate %s does not verify against the cluster CA: %v", n.Name, leaf.Subject, verr)
			}
		} else if verr == nil {
			t.Errorf("%s: serving certificate verifies against the cluster CA, want the kubelet's self-signed one", n.Name)
		}
	}
	if seen == 0 {
		t.Fatal("no node with serverTLSBootstrap")
	}
}

// checkProbes runs every probe on the healthy cluster (clean, every probe
// succeeds, the webhook is called), then gives a node's kubelet.conf a
// client certificate of another CA (the node probe must record 401) and
// that CA's data (x509), and checks the probes clean up after themselves.
// The real kubelet reads kubelet.conf only when it starts, so it is not
// disturbed; the file is put back.
func checkProbes(t *testing.T, ctx context.Context, c *Cluster) {
	s := c.Spec()
	r, err := probes.Start(ctx, s.ClusterJSON(), probes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			r.Stop()
		}
	}()
	all := []string{probes.ProbeAdmin, probes.ProbeNode, probes.ProbeNodeProxy, probes.ProbeInCluster, probes.ProbeAggregated, probes.ProbeWebhook, probes.ProbeLease, probes.ProbeLogs}
	if err := waitFor(ctx, 2*time.Minute, "every probe to succeed", func() error {
		rep := r.Snapshot()
		for _, p := range all {
			if st := rep.Probes[p]; st == nil || st.OK == 0 {
				return fmt.Errorf("probe %s has not succeeded yet", p)
			}
		}
		if r.WebhookCalls() == 0 {
			return errors.New("webhook not called yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if rep := r.Snapshot(); !rep.Clean() {
		t.Fatalf("probes not clean on a healthy cluster:\n%s", rep.Summary())
	}

	w, _ := s.Node("worker1")
	kc := filepath.Join(w.EtcKubernetes(), "kubelet.conf")
	good, err := os.ReadFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := writeFileAtomic(kc, good, 0o600); err != nil {
			t.Error(err)
		}
	}()
	rogue, err := pki.NewCA(pki.CAOptions{CommonName: "rogue-ca"})
	if err != nil {
		t.Fatal(err)
	}
	is, err := pki.NewKubeletClientCert(w.Name, rogue, pki.ReissueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKeyPEM(is.Key)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(good)
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range cfg.AuthInfos {
		ai.ClientCertificate, ai.ClientKey = "", ""
		ai.ClientCertificateData, ai.ClientKeyData = pki.EncodeCertsPEM(is.Cert), keyPEM
	}
	write := func(cfg *clientcmdapi.Config) {
		t.Helper()
		b, err := clientcmd.Write(*cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeFileAtomic(kc, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(cfg)
	if err := waitFor(ctx, time.Minute, "a 401 for the rogue client certificate", func() error {
		if r.Snapshot().Count(probes.ProbeNode, probes.Unauthorized) == 0 {
			return errors.New("none yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if cfg, err = clientcmd.Load(good); err != nil {
		t.Fatal(err)
	}
	for _, cl := range cfg.Clusters {
		cl.CertificateAuthorityData = pki.EncodeCertsPEM(rogue.Cert)
	}
	write(cfg)
	if err := waitFor(ctx, time.Minute, "an x509 failure for the rogue CA data", func() error {
		if r.Snapshot().Count(probes.ProbeNode, probes.X509) == 0 {
			return errors.New("none yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	final := r.Stop()
	stopped = true
	if final.Clean() {
		t.Error("report clean despite broken credentials")
	}
	raw, _ := json.Marshal(final)
	if strings.Contains(string(raw), "PRIVATE KEY") {
		t.Error("report leaks a private key")
	}
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "rotate-probe", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("webhook configuration still registered after Stop: %v", err)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// syncSupervisor returns once n's supervisor has seen every manifest
// change made so far.
func syncSupervisor(t *testing.T, n Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := supervisor.Call(ctx, n.SupervisorSocket(), supervisor.Request{Op: "sync"}); err != nil {
		t.Fatal(err)
	}
}

func servicePID(t *testing.T, n Node, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := supervisor.Call(ctx, n.SupervisorSocket(), supervisor.Request{Op: "status"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range resp.Services {
		if s.Name == name && s.Running {
			return s.PID
		}
	}
	return 0
}

// checkLayout asserts the kubeadm file layout rotate relies on.
func checkLayout(t *testing.T, c *Cluster) {
	s := c.Spec()
	cp1 := s.ControlPlaneNodes()[0]
	ca := sha256File(t, filepath.Join(cp1.EtcKubernetes(), "pki", "ca.crt"))
	for _, n := range s.Nodes {
		if got := sha256File(t, filepath.Join(n.EtcKubernetes(), "pki", "ca.crt")); got != ca {
			t.Errorf("%s: ca.crt differs from cp1's", n.Name)
		}
		for _, f := range []string{"var-lib-kubelet/config.yaml"} {
			if !fileExists(filepath.Join(n.Dir, f)) {
				t.Errorf("%s: %s missing", n.Name, f)
			}
		}
		link := filepath.Join(n.VarLibKubelet(), "pki", "kubelet-client-current.pem")
		target, err := os.Readlink(link)
		if n.ControlPlane() || s.Kubelet {
			if err != nil || !strings.HasPrefix(target, "/var/lib/kubelet/pki/kubelet-client-") {
				t.Errorf("%s: kubelet-client-current.pem -> %q (%v)", n.Name, target, err)
			}
			kc, err := os.ReadFile(filepath.Join(n.EtcKubernetes(), "kubelet.conf"))
			if err != nil || !strings.Contains(string(kc), "client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem") {
				t.Errorf("%s: kubelet.conf does not reference the pem (%v)", n.Name, err)
			}
		}
		if n.ControlPlane() {
			for _, f := range []string{"admin.conf", "controller-manager.conf", "scheduler.conf", "manifests/kube-apiserver.yaml", "manifests/etcd.yaml", "pki/front-proxy-client.crt", "pki/apiserver-kubelet-client.crt", "pki/sa.key"} {
				if !fileExists(filepath.Join(n.EtcKubernetes(), f)) {
					t.Errorf("%s: %s missing", n.Name, f)
				}
			}
			wantSuper := n.Name == cp1.Name
			if got := fileExists(filepath.Join(n.EtcKubernetes(), "super-admin.conf")); got != wantSuper {
				t.Errorf("%s: super-admin.conf present %v, want %v", n.Name, got, wantSuper)
			}
			raw, _ := os.ReadFile(filepath.Join(n.EtcKubernetes(), "manifests", "etcd.yaml"))
			if !strings.Contains(string(raw), "--initial-cluster="+c.initialCluster()) {
				t.Errorf("%s: etcd manifest lacks the full --initial-cluster", n.Name)
			}
			raw, _ = os.ReadFile(filepath.Join(n.EtcKubernetes(), "manifests", "kube-apiserver.yaml"))
			if !strings.Contains(string(raw), "--enable-aggregator-routing=true") {
				t.Errorf("%s: kube-apiserver manifest lacks --enable-aggregator-routing", n.Name)
			}
		} else if s.Kubelet && fileExists(filepath.Join(n.EtcKubernetes(), "bootstrap-kubelet.conf")) {
			t.Errorf("%s: bootstrap-kubelet.conf still present after the TLS bootstrap", n.Name)
		}
	}
}

func checkHostKeyVerified(t *testing.T, ctx context.Context, c *Cluster) {
	s := c.Spec()
	cps := s.ControlPlaneNodes()
	// A known_hosts that pins cp2's host key to cp1's address.
	raw, err := os.ReadFile(filepath.Join(cps[1].SSHDir(), "ssh_host_ed25519_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	wrong := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(wrong, []byte(knownhosts.Line([]string{cps[0].Address}, pub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := c.SSHClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HostKeyCallback, err = knownhosts.New(wrong); err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(cps[0].Address, "22"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _, _, err = ssh.NewClientConn(conn, net.JoinHostPort(cps[0].Address, "22"), cfg)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		t.Fatalf("handshake with a mismatched host key: err = %v, want a knownhosts.KeyError", err)
	}
}

// checkManifestRestart edits a real manifest on cp2 the way rotate does.
func checkManifestRestart(t *testing.T, ctx context.Context, c *Cluster) {
	n, _ := c.st.Spec.Node("cp2")
	path := filepath.Join(n.EtcKubernetes(), "manifests", "kube-scheduler.yaml")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	before := servicePID(t, n, "kube-scheduler")
	// touch: no restart (the kubelet hashes content, not mtime).
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	syncSupervisor(t, n) // the supervisor has seen the touch
	if got := servicePID(t, n, "kube-scheduler"); got != before {
		t.Fatalf("touch restarted kube-scheduler: %d -> %d", before, got)
	}
	// Bump an annotation: restart.
	replaceScheduler(t, ctx, n, path, withAnnotation(orig, "e2e.rotate/restarted-at", "1"))
	if procStart(before) != 0 {
		t.Errorf("old kube-scheduler %d still running", before)
	}
	if err := writeFileAtomic(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
}

func checkKillNode(t *testing.T, ctx context.Context, c *Cluster, cs kubernetes.Interface) {
	s := c.Spec()
	victim := s.ControlPlaneNodes()[0]
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 5 * time.Second
	probe, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		at  time.Duration
		err error
	}
	var (
		mu      sync.Mutex
		results []result
	)
	killedAt := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			_, err := probe.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
			mu.Lock()
			results = append(results, result{time.Since(killedAt), err})
			mu.Unlock()
		}
	}()
	if err := c.KillNode(ctx, victim.Name, false); err != nil {
		close(stop)
		t.Fatal(err)
	}
	t.Logf("killed %s in %s", victim.Name, time.Since(killedAt).Round(time.Millisecond))
	if err := c.Readyz(ctx, victim.Name); err == nil {
		t.Errorf("%s still answers after kill-node", victim.Name)
	}
	time.Sleep(20 * time.Second) // observation window for the probe
	close(stop)
	wg.Wait()
	var fails []string
	for _, r := range results {
		if r.err != nil {
			fails = append(fails, fmt.Sprintf("%s: %v", r.at.Round(time.Millisecond), r.err))
			if r.at > 5*time.Second {
				t.Errorf("request through the load balancer failed %s after the kill: %v", r.at.Round(time.Millisecond), r.err)
			}
		}
	}
	t.Logf("%d requests through the LB during 20s after the kill, %d failed %v", len(results), len(fails), fails)
	if len(results) < 20 {
		t.Errorf("only %d probe requests", len(results))
	}
	// The rest of the cluster is ready (the killed node is skipped).
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("with %s down: %v", victim.Name, err)
	}
	t0 := time.Now()
	if err := c.StartNode(ctx, victim.Name); err != nil {
		t.Fatal(err)
	}
	t.Logf("start-node %s: /readyz after %s", victim.Name, time.Since(t0).Round(time.Millisecond))
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("after start-node: %v", err)
	}
}

// TestUpFailureCleanup fails Up after each stage that creates host state
// and checks that Down, from a freshly loaded handle (like the CLI), leaves
// nothing behind.
func TestUpFailureCleanup(t *testing.T) {
	requireRoot(t)
	for _, stage := range []string{"prepare", "network", "namespaces", "ssh", "control-plane"} {
		t.Run("after-"+stage, func(t *testing.T) {
			hostDirs := missingHostDirs()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			opts := testOptions("e2e-fail", "10.213.61.0/24")
			opts.FailAfter = stage
			c := upUntilInjected(t, ctx, opts, "Up")
			loaded, err := Load(c.Dir())
			if err != nil {
				t.Fatal(err)
			}
			downAndCheck(t, loaded, hostDirs)
		})
	}
}

// upUntilInjected runs Up, which must stop with the injected failure after
// stage opts.FailAfter, and returns what it created (kept for inspection
// if Up ends any other way).
func upUntilInjected(t *testing.T, ctx context.Context, opts Options, what string) *Cluster {
	t.Helper()
	c, err := Up(ctx, opts)
	if !errors.Is(err, ErrInjected) {
		if c != nil {
			keepOnFailure(t, c)
		}
		t.Fatalf("%s: %v, want the injected failure after stage %s", what, err, opts.FailAfter)
	}
	return c
}

// TestReplaceStale abandons a half-up cluster (sshds running, namespaces,
// links and mounts in place, as a killed CI job leaves them) and brings a
// new one up in the same dir: refused without ReplaceStale, taken down and
// replaced with it.
func TestReplaceStale(t *testing.T) {
	requireRoot(t)
	hostDirs := missingHostDirs()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts := testOptions("e2e-stale", "10.213.63.0/24")
	opts.FailAfter = "ssh"
	stale := upUntilInjected(t, ctx, opts, "Up")
	opts.ReplaceStale = false
	if _, err := Up(ctx, opts); err == nil || !strings.Contains(err.Error(), "already holds a cluster") {
		keepOnFailure(t, stale)
		t.Fatalf("Up over a stale cluster without ReplaceStale: %v, want a refusal", err)
	}
	opts.ReplaceStale = true
	c := upUntilInjected(t, ctx, opts, "Up with ReplaceStale")
	procs := stale.nodeProcs("cp1")
	if len(procs) == 0 {
		t.Fatal("the stale cluster recorded no processes on cp1: nothing was tested")
	}
	for _, p := range procs {
		if p.alive() {
			t.Errorf("%s (pid %d) of the stale cluster survived", p.Name, p.PID)
		}
	}
	downAndCheck(t, c, hostDirs)
}

// TestCLI runs the e2e-cluster binary: the cluster must outlive `up`, and
// `down` from another process must remove it.
func TestCLI(t *testing.T) {
	requireRoot(t)
	src, err := findSourceDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "e2e-cluster")
	if out, err := exec.Command("go", "build", "-C", src, "-o", bin, "./e2e/cmd/e2e-cluster").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	hostDirs := missingHostDirs()
	dir := filepath.Join(DefaultRoot, "e2e-cli")
	args := []string{"up", "--name", "e2e-cli", "--control-planes", "1", "--workers", "1", "--subnet", "10.213.62.0/24"}
	if b := os.Getenv("ROTATE_E2E_BIN_DIR"); b != "" {
		args = append(args, "--bin-dir", b)
	}
	up := exec.Command(bin, args...)
	up.Dir = src
	out, err := up.CombinedOutput()
	if c, lerr := Load(dir); lerr == nil {
		keepOnFailure(t, c)
	}
	if err != nil {
		t.Fatalf("e2e-cluster up: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "export KUBECONFIG=") {
		t.Errorf("up output lacks the kubectl hint:\n%s", out)
	}
	// The CLI has exited: the cluster still runs.
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("after the CLI exited: %v", err)
	}
	if out, err := exec.Command(bin, "status", "--name", "e2e-cli").CombinedOutput(); err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	} else {
		t.Logf("status:\n%s", out)
	}
	fp := footprintOf(c, hostDirs)
	if out, err := exec.Command(bin, "down", "--name", "e2e-cli").CombinedOutput(); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	if left := leftovers(fp); len(left) > 0 {
		t.Fatalf("left behind after down:\n  %s", strings.Join(left, "\n  "))
	}
}
