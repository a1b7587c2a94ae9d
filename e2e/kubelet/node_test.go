package kubelet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestParseTaintsAndLabels(t *testing.T) {
	taints, err := ParseTaints("node-role.kubernetes.io/control-plane:NoSchedule, dedicated=infra:NoExecute")
	if err != nil {
		t.Fatal(err)
	}
	want := []v1.Taint{
		{Key: "node-role.kubernetes.io/control-plane", Effect: v1.TaintEffectNoSchedule},
		{Key: "dedicated", Value: "infra", Effect: v1.TaintEffectNoExecute},
	}
	if !reflect.DeepEqual(taints, want) {
		t.Errorf("taints %v, want %v", taints, want)
	}
	for _, bad := range []string{"k=v", "k=v:Sometimes", "=v:NoSchedule"} {
		if _, err := ParseTaints(bad); err == nil {
			t.Errorf("ParseTaints(%q) accepted", bad)
		}
	}
	labels, err := ParseLabels("a=1,b.example.com/x=2,")
	if err != nil || len(labels) != 2 || labels["b.example.com/x"] != "2" {
		t.Errorf("labels %v, %v", labels, err)
	}
	if _, err := ParseLabels("novalue"); err == nil {
		t.Error("ParseLabels accepted a label without =")
	}
}

func TestValidateNodeLabels(t *testing.T) {
	base := Options{NodeName: "n", NodeIP: net.ParseIP("10.0.0.2"), Kubeconfig: "k", Config: "c", CertDir: "d"}
	tests := []struct {
		labels  map[string]string
		wantErr bool
	}{
		{map[string]string{"example.com/role": "x"}, false},
		{map[string]string{"node.kubernetes.io/exclude-from-external-load-balancers": ""}, false},
		{map[string]string{"topology.kubernetes.io/zone": "a"}, false},
		{map[string]string{"kubelet.kubernetes.io/x": "a"}, false},
		{map[string]string{"node-role.kubernetes.io/control-plane": ""}, true},
		{map[string]string{"k8s.io/anything": ""}, true},
	}
	for _, tt := range tests {
		o := base
		o.NodeLabels = tt.labels
		if err := o.Validate(); (err != nil) != tt.wantErr {
			t.Errorf("labels %v: err %v, wantErr %v", tt.labels, err, tt.wantErr)
		}
	}
	if err := (&Options{}).Validate(); err == nil || !strings.Contains(err.Error(), "node name") {
		t.Errorf("empty options: %v", err)
	}
}

func TestLoadKubeletConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	os.WriteFile(path, []byte(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  x509:
    clientCAFile: pki/ca.crt
healthzBindAddress: 127.0.0.1
healthzPort: 10249
rotateCertificates: true
`), 0o644)
	c, err := loadKubeletConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Authentication.X509.ClientCAFile != filepath.Join(dir, "pki/ca.crt") {
		t.Errorf("clientCAFile %q not resolved against the config dir", c.Authentication.X509.ClientCAFile)
	}
	if c.healthzAddress() != "127.0.0.1:10249" || c.port() != 10250 {
		t.Errorf("healthz %s port %d", c.healthzAddress(), c.port())
	}
	if (&kubeletConfig{}).healthzAddress() != "127.0.0.1:10248" {
		t.Error("healthz default")
	}
	var o Options
	o.leaseFrom(c)
	if o.LeaseDurationSeconds != 40 || o.LeaseInterval != 10*time.Second {
		t.Errorf("lease defaults: %ds every %s, want the kubelet's 40s every 10s", o.LeaseDurationSeconds, o.LeaseInterval)
	}
	o = Options{}
	o.leaseFrom(&kubeletConfig{NodeLeaseDurationSeconds: 8})
	if o.LeaseDurationSeconds != 8 || o.LeaseInterval != 2*time.Second {
		t.Errorf("nodeLeaseDurationSeconds 8: %ds every %s, want 8s every 2s", o.LeaseDurationSeconds, o.LeaseInterval)
	}
	o = Options{LeaseDurationSeconds: 20, LeaseInterval: time.Second}
	o.leaseFrom(&kubeletConfig{NodeLeaseDurationSeconds: 8})
	if o.LeaseDurationSeconds != 20 || o.LeaseInterval != time.Second {
		t.Errorf("explicit options overridden: %ds every %s", o.LeaseDurationSeconds, o.LeaseInterval)
	}
	os.WriteFile(path, []byte("kind: KubeProxyConfiguration\n"), 0o644)
	if _, err := loadKubeletConfig(path); err == nil {
		t.Error("wrong kind accepted")
	}
}

func TestInitialNodeAndStatus(t *testing.T) {
	o := &Options{
		NodeName:           "w1",
		NodeIP:             net.ParseIP("10.0.0.5"),
		NodeLabels:         map[string]string{"example.com/pool": "a"},
		RegisterWithTaints: []v1.Taint{{Key: "k", Value: "v", Effect: v1.TaintEffectNoSchedule}},
	}
	t0 := time.Unix(1000, 0)
	n := initialNode(o, 10250, t0)
	if n.Labels[v1.LabelHostname] != "w1" || n.Labels["example.com/pool"] != "a" || n.Labels[v1.LabelOSStable] == "" {
		t.Errorf("labels %v", n.Labels)
	}
	if len(n.Spec.Taints) != 1 || n.Spec.Taints[0].Key != "k" {
		t.Errorf("taints %v", n.Spec.Taints)
	}
	if n.Status.DaemonEndpoints.KubeletEndpoint.Port != 10250 {
		t.Error("kubelet endpoint port")
	}
	if len(n.Status.Addresses) != 2 || n.Status.Addresses[0] != (v1.NodeAddress{Type: v1.NodeInternalIP, Address: "10.0.0.5"}) {
		t.Errorf("addresses %v", n.Status.Addresses)
	}
	if q := n.Status.Allocatable[v1.ResourcePods]; q.Value() != 110 {
		t.Errorf("pods %v", q)
	}
	if q := n.Status.Capacity[v1.ResourceMemory]; q.String() != "8Gi" {
		t.Errorf("memory %v", q.String())
	}
	// A later heartbeat keeps transition times and foreign conditions.
	n.Status.Conditions = append(n.Status.Conditions, v1.NodeCondition{Type: v1.NodeNetworkUnavailable, Status: v1.ConditionFalse})
	t1 := t0.Add(10 * time.Second)
	setNodeStatus(n, o, 10250, t1)
	var ready *v1.NodeCondition
	foreign := false
	for i, c := range n.Status.Conditions {
		if c.Type == v1.NodeReady {
			ready = &n.Status.Conditions[i]
		}
		foreign = foreign || c.Type == v1.NodeNetworkUnavailable
	}
	if ready == nil || ready.Status != v1.ConditionTrue || !ready.LastHeartbeatTime.Time.Equal(t1) || !ready.LastTransitionTime.Time.Equal(t0) {
		t.Errorf("ready condition %+v", ready)
	}
	if !foreign {
		t.Error("NetworkUnavailable condition dropped")
	}
}

func TestRegisterAndLease(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	o := &Options{NodeName: "w1", NodeIP: net.ParseIP("10.0.0.5")}
	n, err := registerNode(ctx, client, o, 10250)
	if err != nil {
		t.Fatal(err)
	}
	// Registering again (a restart) adopts the node.
	if _, err := registerNode(ctx, client, o, 10250); err != nil {
		t.Fatalf("second registration: %v", err)
	}
	if _, err := updateNodeStatus(ctx, client, o, 10250); err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(2000, 0)
	if err := renewLease(ctx, client, n, 40, t0); err != nil {
		t.Fatal(err)
	}
	if err := renewLease(ctx, client, n, 40, t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	l, err := client.CoordinationV1().Leases("kube-node-lease").Get(ctx, "w1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *l.Spec.HolderIdentity != "w1" || *l.Spec.LeaseDurationSeconds != 40 || !l.Spec.RenewTime.Time.Equal(t0.Add(10*time.Second)) {
		t.Errorf("lease %+v", l.Spec)
	}
	if len(l.OwnerReferences) != 1 || l.OwnerReferences[0].Kind != "Node" || l.OwnerReferences[0].Name != "w1" {
		t.Errorf("owner %v", l.OwnerReferences)
	}
}

func TestKubeletServerClientAuth(t *testing.T) {
	clusterCA := newTestCA(t, "kubernetes")
	otherCA := newTestCA(t, "other")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	// The client CA file is a bundle during a rotation: both CAs trusted.
	bundleCA := newTestCA(t, "kubernetes-new")
	os.WriteFile(caFile, append(append([]byte{}, clusterCA.pem...), bundleCA.pem...), 0o644)
	pool, n, err := loadClientCAs(caFile)
	if err != nil || n != 2 {
		t.Fatalf("loadClientCAs: %d, %v", n, err)
	}

	o := &Options{NodeName: "w1", NodeIP: net.ParseIP("127.0.0.1"), CertDir: filepath.Join(dir, "pki")}
	serving, certFile, err := servingCertificate(o, &kubeletConfig{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(serving.Certificate[0])
	if !strings.HasPrefix(leaf.Subject.CommonName, "w1@") || len(leaf.IPAddresses) == 0 || !leaf.IPAddresses[0].Equal(o.NodeIP) {
		t.Errorf("serving cert CN %q IPs %v", leaf.Subject.CommonName, leaf.IPAddresses)
	}
	// Reused on the next start.
	again, _, _ := servingCertificate(o, &kubeletConfig{})
	if string(again.Certificate[0]) != string(serving.Certificate[0]) {
		t.Error("serving certificate regenerated although present")
	}
	if filepath.Base(certFile) != "kubelet.crt" {
		t.Errorf("serving cert file %s", certFile)
	}

	pods := func() ([]*v1.Pod, error) { return []*v1.Pod{testPod("b", "w1"), testPod("a", "w1")}, nil }
	srv := httptest.NewUnstartedServer(newKubeletHandler(pods))
	srv.TLS = newKubeletServer(serving, pool, nil).TLSConfig
	srv.StartTLS()
	defer srv.Close()

	client := func(certPEM, keyPEM []byte) *http.Client {
		cfg := &tls.Config{InsecureSkipVerify: true} // the apiserver does not verify kubelets on kubeadm
		if certPEM != nil {
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
	}
	okCert, okKey := clusterCA.issue(t, leafOpts{cn: "kube-apiserver-kubelet-client", orgs: []string{"kubeadm:cluster-admins"}, client: true})
	newCert, newKey := bundleCA.issue(t, leafOpts{cn: "kube-apiserver-kubelet-client", client: true})
	badCert, badKey := otherCA.issue(t, leafOpts{cn: "kube-apiserver-kubelet-client", client: true})

	for _, tt := range []struct {
		name      string
		cert, key []byte
		wantOK    bool
	}{
		{"cert from the cluster CA", okCert, okKey, true},
		{"cert from the second CA in the bundle", newCert, newKey, true},
		{"cert from an untrusted CA", badCert, badKey, false},
		{"no client cert", nil, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client(tt.cert, tt.key).Get(srv.URL + "/healthz")
			if !tt.wantOK {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("request succeeded with status %d", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "ok" {
				t.Errorf("healthz %d %q", resp.StatusCode, body)
			}
		})
	}

	resp, err := client(okCert, okKey).Get(srv.URL + "/pods")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list v1.PodList
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	if list.Kind != "PodList" || len(list.Items) != 2 || list.Items[0].Name != "a" {
		t.Errorf("pods: kind %q, %d items", list.Kind, len(list.Items))
	}
}

func TestHealthzServer(t *testing.T) {
	var healthy bool
	srv := httptest.NewServer(newHealthzServer(func() bool { return healthy }).Handler)
	defer srv.Close()
	get := func() int {
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get(); got != http.StatusServiceUnavailable {
		t.Errorf("before the first API call: %d", got)
	}
	healthy = true
	if got := get(); got != http.StatusOK {
		t.Errorf("after: %d", got)
	}
}
