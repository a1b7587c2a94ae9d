//go:build e2e

package kubelet_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"

	"github.com/kubeca/rotate/e2e/kubelet/localcp"
)

const (
	cpAddr   = "10.77.0.1"
	nodeAddr = "10.77.0.2"
	nodeName = "worker1"
)

func TestMain(m *testing.M) {
	os.Exit(localcp.Main(m, cpAddr+"/24", nodeAddr+"/24"))
}

type agentProc struct {
	cmd  *exec.Cmd
	done chan error
	log  string
}

func startAgent(t *testing.T, bin, logPath string, args ...string) *agentProc {
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
	p := &agentProc{cmd: cmd, done: make(chan error, 1), log: logPath}
	go func() { p.done <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	return p
}

// stop sends SIGTERM and returns how long the agent took to exit.
func (p *agentProc) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("agent exited with %v after SIGTERM; log %s", err, p.log)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not exit within 15s of SIGTERM")
	}
	return time.Since(start)
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, last)
}

func dumpLogs(t *testing.T, paths ...string) {
	t.Helper()
	if !t.Failed() && os.Getenv("LOCALCP_DUMP_LOGS") == "" {
		return
	}
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		lines := strings.Split(string(b), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("---- tail of %s\n%s", p, strings.Join(lines, "\n"))
	}
}

func TestAgentAgainstRealControlPlane(t *testing.T) {
	localcp.Require(t)
	bin := localcp.BinDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	work := t.TempDir()

	agentBin := filepath.Join(work, "e2e-kubelet")
	if out, err := exec.Command("go", "build", "-o", agentBin, "github.com/kubeca/rotate/e2e/cmd/e2e-kubelet").CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}

	cp, err := localcp.Start(ctx, localcp.Config{BinDir: bin, Dir: filepath.Join(work, "cp"), Address: cpAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	adminCfg, err := cp.AdminConfig()
	if err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfig
	client, err := admin(adminCfg)
	if err != nil {
		t.Fatal(err)
	}

	// The node's files, at kubeadm-join paths relative to its own dirs.
	etc, varlib := filepath.Join(work, nodeName, "etc"), filepath.Join(work, nodeName, "varlib")
	kubeconfig := filepath.Join(etc, "kubelet.conf")
	boot := filepath.Join(etc, "bootstrap-kubelet.conf")
	certDir := filepath.Join(varlib, "pki")
	config := filepath.Join(varlib, "config.yaml")
	if err := cp.WriteBootstrapKubeconfig(boot); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(varlib, 0o755)
	if err := os.WriteFile(config, []byte(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
rotateCertificates: true
healthzBindAddress: 127.0.0.1
healthzPort: 10248
`), 0o644); err != nil {
		t.Fatal(err)
	}
	agentLog := filepath.Join(work, "agent.log")
	t.Cleanup(func() {
		dumpLogs(t, agentLog, cp.LogPath("kube-controller-manager"), cp.LogPath("kube-apiserver"))
	})
	args := []string{
		"--node-name=" + nodeName, "--node-ip=" + nodeAddr,
		"--kubeconfig=" + kubeconfig, "--bootstrap-kubeconfig=" + boot,
		"--config=" + config, "--cert-dir=" + certDir,
		"--register-with-taints=example.com/soft=e2e:PreferNoSchedule",
		"--node-labels=example.com/pool=e2e",
		"--node-status-update-frequency=3s",
	}
	agent := startAgent(t, agentBin, agentLog, args...)

	// 1. TLS bootstrap through the CSR API, approved and signed by the KCM.
	eventually(t, 2*time.Minute, "kubelet.conf written by the TLS bootstrap", func() (bool, error) {
		_, err := os.Stat(kubeconfig)
		return err == nil, err
	})
	raw, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(certDir, "kubelet-client-current.pem")
	auth := raw.AuthInfos[raw.Contexts[raw.CurrentContext].AuthInfo]
	if auth.ClientCertificate != current || auth.ClientKey != current {
		t.Errorf("kubelet.conf refers to %q/%q, want %q", auth.ClientCertificate, auth.ClientKey, current)
	}
	target, err := os.Readlink(current)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := certutil.CertsFromFile(current)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := cp.CACert()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("kubelet client certificate does not chain to the cluster CA: %v", err)
	}
	if certs[0].Subject.CommonName != "system:node:"+nodeName || strings.Join(certs[0].Subject.Organization, ",") != "system:nodes" {
		t.Errorf("client certificate subject %s", certs[0].Subject)
	}
	csrs, err := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var nodeCSRs []certificatesv1.CertificateSigningRequest
	for _, c := range csrs.Items {
		if c.Spec.SignerName == certificatesv1.KubeAPIServerClientKubeletSignerName {
			nodeCSRs = append(nodeCSRs, c)
		}
	}
	if len(nodeCSRs) != 1 || !strings.HasPrefix(nodeCSRs[0].Spec.Username, "system:bootstrap:") {
		t.Fatalf("kubelet CSRs: %d (requestor %v)", len(nodeCSRs), nodeCSRs)
	}
	t.Logf("CSR %s by %s, approved: %v", nodeCSRs[0].Name, nodeCSRs[0].Spec.Username, nodeCSRs[0].Status.Conditions)

	// 2. Registration, Ready, healthz.
	var node *v1.Node
	eventually(t, time.Minute, "node Ready", func() (bool, error) {
		n, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		node = n
		for _, c := range n.Status.Conditions {
			if c.Type == v1.NodeReady && c.Status == v1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if node.Labels["example.com/pool"] != "e2e" || node.Labels[v1.LabelHostname] != nodeName {
		t.Errorf("node labels %v", node.Labels)
	}
	foundTaint := false
	for _, tn := range node.Spec.Taints {
		foundTaint = foundTaint || tn.Key == "example.com/soft" && tn.Value == "e2e"
	}
	if !foundTaint {
		t.Errorf("node taints %v", node.Spec.Taints)
	}
	if len(node.Status.Addresses) == 0 || node.Status.Addresses[0].Address != nodeAddr {
		t.Errorf("node addresses %v", node.Status.Addresses)
	}
	eventually(t, 30*time.Second, "healthz 200", func() (bool, error) {
		resp, err := http.Get("http://127.0.0.1:10248/healthz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == 200, fmt.Errorf("status %d", resp.StatusCode)
	})

	// 3. Lease renewal.
	lease, err := client.CoordinationV1().Leases("kube-node-lease").Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *lease.Spec.LeaseDurationSeconds != 40 || *lease.Spec.HolderIdentity != nodeName {
		t.Errorf("lease %+v", lease.Spec)
	}
	first := lease.Spec.RenewTime.Time
	eventually(t, 30*time.Second, "lease renewed", func() (bool, error) {
		l, err := client.CoordinationV1().Leases("kube-node-lease").Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return l.Spec.RenewTime.Time.After(first), nil
	})

	// 4. The apiserver reaches :10250 with its apiserver-kubelet-client
	// certificate, verified against clientCAFile.
	eventually(t, 30*time.Second, "node proxy healthz", func() (bool, error) {
		code, body, err := cp.Get(ctx, "/api/v1/nodes/"+nodeName+"/proxy/healthz")
		if err != nil {
			return false, err
		}
		return code == 200 && string(body) == "ok", fmt.Errorf("%d %s", code, body)
	})

	// 5. Pods: a Deployment's pod and a host-network pod become Running
	// and Ready; a rollout restart finishes (graceful deletion completed).
	one := int32(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: v1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec:       v1.PodSpec{Containers: []v1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
			},
		},
	}
	if _, err := client.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hostPod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hostnet", Namespace: "default"},
		Spec: v1.PodSpec{
			NodeName:    nodeName,
			HostNetwork: true,
			Containers:  []v1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, hostPod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDeployment := func(what string) {
		t.Helper()
		eventually(t, 2*time.Minute, what, func() (bool, error) {
			d, err := client.AppsV1().Deployments("default").Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return false, err
			}
			s := d.Status
			return s.ObservedGeneration == d.Generation && s.UpdatedReplicas == 1 && s.ReadyReplicas == 1 &&
					s.AvailableReplicas == 1 && s.Replicas == 1 && len(pods.Items) == 1,
				fmt.Errorf("status %+v, %d pods", s, len(pods.Items))
		})
	}
	waitDeployment("deployment available")
	pods, _ := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	webPod := pods.Items[0]
	if ip, err := netip.ParseAddr(webPod.Status.PodIP); err != nil || !netip.MustParsePrefix("10.244.2.0/24").Contains(ip) {
		t.Errorf("pod IP %q not in the node's fake range", webPod.Status.PodIP)
	}
	if webPod.Status.HostIP != nodeAddr {
		t.Errorf("host IP %q", webPod.Status.HostIP)
	}
	eventually(t, time.Minute, "host-network pod running", func() (bool, error) {
		p, err := client.CoreV1().Pods("default").Get(ctx, "hostnet", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.Phase == v1.PodRunning && p.Status.PodIP == nodeAddr, fmt.Errorf("phase %s IP %s", p.Status.Phase, p.Status.PodIP)
	})

	// /pods through the apiserver proxy lists them.
	code, body, err := cp.Get(ctx, "/api/v1/nodes/"+nodeName+"/proxy/pods")
	if err != nil || code != 200 {
		t.Fatalf("/pods: %d %v", code, err)
	}
	var list v1.PodList
	if err := json.Unmarshal(body, &list); err != nil || len(list.Items) != 2 {
		t.Errorf("/pods: %d items, %v", len(list.Items), err)
	}

	// Rollout restart: the old pod is deleted gracefully and the agent
	// finishes the deletion.
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	if _, err := client.AppsV1().Deployments("default").Patch(ctx, "web", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDeployment("rollout restart finished")
	pods, _ = client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if pods.Items[0].UID == webPod.UID {
		t.Error("rollout restart kept the old pod")
	}
	if err := client.CoreV1().Pods("default").Delete(ctx, "hostnet", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "graceful deletion finished by the agent", func() (bool, error) {
		_, err := client.CoreV1().Pods("default").Get(ctx, "hostnet", metav1.GetOptions{})
		return err != nil, nil
	})

	// 6. SIGTERM: clean and quick exit. A restart re-reads kubelet.conf:
	// no new CSR, same client certificate, node stays Ready.
	if took := agent.stop(t); took > 5*time.Second {
		t.Errorf("agent took %s to exit after SIGTERM", took)
	}
	agent = startAgent(t, agentBin, agentLog, args...)
	eventually(t, 30*time.Second, "healthz after restart", func() (bool, error) {
		resp, err := http.Get("http://127.0.0.1:10248/healthz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	})
	if again, _ := os.Readlink(current); again != target {
		t.Errorf("restart repointed the client certificate: %s -> %s", target, again)
	}
	csrs2, _ := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if len(csrs2.Items) != len(csrs.Items) {
		t.Errorf("restart created a CSR (%d -> %d)", len(csrs.Items), len(csrs2.Items))
	}
	lease, _ = client.CoordinationV1().Leases("kube-node-lease").Get(ctx, nodeName, metav1.GetOptions{})
	before := lease.Spec.RenewTime.Time
	eventually(t, 30*time.Second, "lease renewed after restart", func() (bool, error) {
		l, err := client.CoordinationV1().Leases("kube-node-lease").Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return l.Spec.RenewTime.Time.After(before), nil
	})
	agent.stop(t)
}
