//go:build e2e

package probes_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubeca/rotate/e2e/kubelet/localcp"
	"github.com/kubeca/rotate/e2e/probes"
)

const (
	cpAddr     = "10.77.0.1"
	workerAddr = "10.77.0.2"
	hostAddr   = "10.77.0.3"
)

func TestMain(m *testing.M) {
	os.Exit(localcp.Main(m, cpAddr+"/24", workerAddr+"/24", hostAddr+"/24"))
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(t *testing.T, logPath, bin string, args ...string) *proc {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(p.stop)
	return p
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestProbesAgainstLocalControlPlane runs every probe against a real
// control plane with two node agents, checks a clean run (including an
// agent restart, a prober rollout restart and an admin.conf rewrite) and
// then that broken kubelet credentials are reported as unauthorized and
// x509.
func TestProbesAgainstLocalControlPlane(t *testing.T) {
	localcp.Require(t)
	bin := localcp.BinDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	work := t.TempDir()

	agentBin := filepath.Join(work, "e2e-kubelet")
	if out, err := exec.Command("go", "build", "-o", agentBin, "github.com/kubeca/rotate/e2e/cmd/e2e-kubelet").CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	cpDir := filepath.Join(work, "cp")
	cp, err := localcp.Start(ctx, localcp.Config{BinDir: bin, Dir: cpDir, Address: cpAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	adminCfg, _ := cp.AdminConfig()
	client := kubernetes.NewForConfigOrDie(adminCfg)

	kubeletConfig := func(dir string) string {
		p := filepath.Join(dir, "config.yaml")
		os.MkdirAll(dir, 0o755)
		os.WriteFile(p, []byte("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nauthentication:\n  x509:\n    clientCAFile: /etc/kubernetes/pki/ca.crt\n"), 0o644)
		return p
	}
	// cp1: kubeadm's kubelet.conf (embedded client certificate).
	cpVarlib := filepath.Join(work, "cp1", "varlib")
	cpArgs := []string{"--node-name=cp1", "--node-ip=" + cpAddr, "--kubeconfig=/etc/kubernetes/kubelet.conf",
		"--config=" + kubeletConfig(cpVarlib), "--cert-dir=" + filepath.Join(cpVarlib, "pki"), "--healthz-address=127.0.0.1:10248"}
	startProc(t, filepath.Join(work, "agent-cp1.log"), agentBin, cpArgs...)
	// worker1: TLS bootstrap.
	wEtc, wVarlib := filepath.Join(work, "worker1", "etc"), filepath.Join(work, "worker1", "varlib")
	if err := cp.WriteBootstrapKubeconfig(filepath.Join(wEtc, "bootstrap-kubelet.conf")); err != nil {
		t.Fatal(err)
	}
	wArgs := []string{"--node-name=worker1", "--node-ip=" + workerAddr, "--kubeconfig=" + filepath.Join(wEtc, "kubelet.conf"),
		"--bootstrap-kubeconfig=" + filepath.Join(wEtc, "bootstrap-kubelet.conf"),
		"--config=" + kubeletConfig(wVarlib), "--cert-dir=" + filepath.Join(wVarlib, "pki"), "--healthz-address=127.0.0.1:10249"}
	worker := startProc(t, filepath.Join(work, "agent-worker1.log"), agentBin, wArgs...)
	waitUntil(t, 2*time.Minute, "both nodes registered", func() bool {
		l, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 2
	})

	clusterJSON := filepath.Join(work, "cluster.json")
	desc := map[string]any{
		"name": "localcp", "dir": work, "subnet": "10.77.0.0/24", "hostAddress": hostAddr, "lbAddress": cpAddr,
		"apiServerEndpoint": "https://" + cpAddr + ":6443", "binDir": bin, "adminKubeconfig": cp.AdminKubeconfig(),
		"nodes": []map[string]any{
			{"name": "cp1", "role": "control-plane", "address": cpAddr, "etcKubernetes": localcp.EtcKubernetes, "varLibKubelet": cpVarlib,
				"logDir": filepath.Join(cpDir, "logs")},
			{"name": "worker1", "role": "worker", "address": workerAddr, "etcKubernetes": wEtc, "varLibKubelet": wVarlib},
		},
	}
	data, _ := json.Marshal(desc)
	os.WriteFile(clusterJSON, data, 0o644)

	r, err := probes.Start(ctx, clusterJSON, probes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			r.Stop()
		}
	}()
	time.Sleep(10 * time.Second)

	// A rollout restart of the prober: the in-cluster client reloads.
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	if _, err := client.AppsV1().Deployments(probes.DefaultNamespace).Patch(ctx, probes.ProberName, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "in-cluster client reloaded for the new pod", func() bool {
		n := 0
		for _, e := range r.Snapshot().Events {
			if e.Probe == probes.ProbeInCluster && strings.Contains(e.Message, "started: loaded CA") {
				n++
			}
		}
		return n >= 2
	})
	// A node agent restart: refused through the node proxy is allowed.
	worker.stop()
	time.Sleep(3 * time.Second)
	startProc(t, filepath.Join(work, "agent-worker1.log"), agentBin, wArgs...)
	// An operator gets a rewritten admin.conf (same credentials).
	adminData, err := os.ReadFile(cp.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cp.AdminKubeconfig(), append(adminData, []byte("# rewritten\n")...), 0o600)
	time.Sleep(10 * time.Second)

	rep := r.Snapshot()
	t.Logf("clean phase:\n%s", rep.Summary())
	if !rep.Clean() {
		for _, f := range rep.Failures {
			t.Logf("failure: %+v", f)
		}
		t.Fatal("report not clean on a healthy cluster")
	}
	for _, p := range []string{probes.ProbeAdmin, probes.ProbeNode, probes.ProbeNodeProxy, probes.ProbeInCluster, probes.ProbeAggregated, probes.ProbeLease} {
		if st := rep.Probes[p]; st == nil || st.OK == 0 {
			t.Errorf("probe %s never succeeded", p)
		}
	}
	reloaded := false
	for _, e := range rep.Events {
		reloaded = reloaded || e.Probe == probes.ProbeAdmin && strings.Contains(e.Message, "changed, reloaded")
	}
	if !reloaded {
		t.Error("admin.conf rewrite not picked up")
	}

	// Broken kubelet credentials: a client certificate from another CA
	// (401), then CA data of another CA (x509).
	rogue := localcp.NewRogueCA(t)
	kc := filepath.Join(wEtc, "kubelet.conf")
	good, _ := os.ReadFile(kc)
	rawK, _ := clientcmd.Load(good)
	for _, ai := range rawK.AuthInfos {
		ai.ClientCertificate, ai.ClientKey = "", ""
		ai.ClientCertificateData, ai.ClientKeyData = rogue.ClientCert(t, "system:node:worker1", "system:nodes")
	}
	b, _ := clientcmd.Write(*rawK)
	os.WriteFile(kc, b, 0o600)
	waitUntil(t, 20*time.Second, "unauthorized recorded", func() bool { return r.Snapshot().Count(probes.ProbeNode, probes.Unauthorized) > 0 })
	rawK, _ = clientcmd.Load(good)
	for _, cl := range rawK.Clusters {
		cl.CertificateAuthorityData = rogue.PEM
	}
	b, _ = clientcmd.Write(*rawK)
	os.WriteFile(kc, b, 0o600)
	waitUntil(t, 20*time.Second, "x509 recorded", func() bool { return r.Snapshot().Count(probes.ProbeNode, probes.X509) > 0 })
	os.WriteFile(kc, good, 0o600)

	final := r.Stop()
	stopped = true
	t.Logf("final:\n%s", final.Summary())
	if final.Clean() {
		t.Error("report clean despite broken credentials")
	}
	if err := final.WriteFile(filepath.Join(work, "report.json")); err != nil {
		t.Fatal(err)
	}
	for _, f := range final.Failures {
		if strings.Contains(f.Error, "PRIVATE KEY") || strings.Contains(f.Error, "abcdef.0123456789abcdef") {
			t.Fatal("report leaks secrets")
		}
	}
	// Stop removed the registration.
	dyn := dynamic.NewForConfigOrDie(adminCfg)
	gvr := schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}
	_, err = dyn.Resource(gvr).Get(ctx, "v1alpha1.probe.rotate.e2e", metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("APIService still registered after Stop: %v", err)
	}
}
