package steps

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/nodes"
)

func TestAPIServerEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"own endpoint", Config{Addresses: map[string]string{"cp1": "10.0.0.1"}, APIServerPort: 6443, APIServers: map[string]string{"cp1": "api-1.example.com:8443"}}, "api-1.example.com:8443"},
		{"recorded without endpoints: SSH address and the port", Config{Addresses: map[string]string{"cp1": "10.0.0.1"}, APIServerPort: 7443}, "10.0.0.1:7443"},
		{"no port recorded: 6443", Config{Addresses: map[string]string{"cp1": "10.0.0.1"}}, "10.0.0.1:6443"},
		{"IPv6", Config{Addresses: map[string]string{"cp1": "fd00::1"}, APIServerPort: 6443}, "[fd00::1]:6443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.c.APIServerEndpoint("cp1"); got != tc.want {
				t.Fatalf("APIServerEndpoint = %q, want %q", got, tc.want)
			}
		})
	}
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// Every check that talks to one apiserver dials its endpoint, not the
// node's SSH address: here the SSH address's port 6443-equivalent is
// closed, and only the endpoint serves.
func TestAPIServerChecksDialTheEndpoint(t *testing.T) {
	f := newVerifyFixture(t)
	rt := f.rt
	port := rt.Config.APIServerPort
	rt.Config.APIServerPort = closedPort(t)
	rt.Config.APIServers = map[string]string{"cp1": net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	ctx := context.Background()

	t.Run("preflight and its baseline", func(t *testing.T) {
		f.preflight(t)
		b, err := rt.loadBaseline(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if why := b[checkAPIServer("cp1")]; why != "" {
			t.Fatalf("baseline of the apiserver failed: %s", why)
		}
	})
	t.Run("verify", func(t *testing.T) {
		if _, err := f.verify(t); err != nil {
			t.Fatalf("verify: %v", err)
		}
	})
	t.Run("apiserver restart gate", func(t *testing.T) {
		cp1 := rt.Nodes.(memNodes)["cp1"].(*nodes.MemRunner)
		// The process report of nodes.NewestProcess: kube-apiserver
		// started 1 s ago, its manifest written 10 s ago.
		cp1.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (nodes.Result, error) {
			return nodes.Result{Stdout: []byte("123 99900 100 1000 2000 1990\n")}, nil
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := (liveGates{}).Component(ctx, rt, Target{Node: "cp1", Role: RoleControlPlane}, APIServer); err != nil {
			t.Fatalf("gate: %v", err)
		}
	})
	t.Run("the SSH address is not dialed", func(t *testing.T) {
		rt.Config.APIServers = nil
		ok, why, err := rt.apiServerReady(ctx, rt.Config.APIServerEndpoint("cp1"))
		if err != nil || ok || !strings.Contains(why, "connection refused") {
			t.Fatalf("without its endpoint the check dials the closed port: ok=%v why=%q err=%v", ok, why, err)
		}
	})
}

// readyNode is a Node with its Ready condition.
func readyNode(name string, ready bool) *corev1.Node {
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionFalse
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}}}
}

// A Node in the cluster that the inventory does not list is reported with
// what to do (warn, the default) or refused (fail); its readiness does not
// fail preflight or, later, verify.
func TestUnlistedNodesInPreflight(t *testing.T) {
	const advice = "node w9 is in the cluster but not in the inventory: rotate does not touch it, and once trust narrows (phase 12) " +
		"its kubelet, holding a client certificate from the old CA, is locked out and the node goes NotReady; " +
		"add it to the inventory (nodes.workers or nodes.discoverWorkers), or drain and delete it (kubectl drain w9; kubectl delete node w9)"
	for _, tc := range []struct {
		name, mode string
		ready      bool
		wantErr    string // "" = preflight passes
		wantWarn   bool
	}{
		{"warn by default", "", true, "", true},
		{"warn", "warn", true, "", true},
		{"warn, the node not Ready either", "warn", false, "", true},
		{"fail", "fail", true, advice + " (nodes.unlisted: fail)", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newVerifyFixture(t)
			f.rt.Config.UnlistedNodes = tc.mode
			ctx := context.Background()
			if _, err := f.rt.Kube.CoreV1().Nodes().Create(ctx, readyNode("w9", tc.ready), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			rt := *f.rt
			rt.Out = &Outputs{}
			err := ClusterHealthy{}.Apply(ctx, &rt, ClusterTarget)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("preflight: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("preflight = %v, want %q", err, tc.wantErr)
			}
			warned := slices.Contains(f.progress, "warning: "+advice)
			if warned != tc.wantWarn {
				t.Fatalf("warned %v, want %v; progress %q", warned, tc.wantWarn, f.progress)
			}
			if err != nil {
				return
			}
			for k, v := range rt.Out.Values {
				f.st.values[k] = v
			}
			rep, err := f.verify(t)
			if err != nil {
				t.Fatalf("verify counts the unlisted node: %v", err)
			}
			wantPre := []string(nil)
			if !tc.ready {
				wantPre = []string{"node w9 is not Ready (already failing before the rotation)"}
			}
			if !slices.Equal(rep.PreExisting, wantPre) {
				t.Fatalf("pre-existing %q, want %q", rep.PreExisting, wantPre)
			}
		})
	}
}

// An inventory node that is not Ready still fails preflight.
func TestListedNodeNotReadyFailsPreflight(t *testing.T) {
	f := newVerifyFixture(t)
	ctx := context.Background()
	if _, err := f.rt.Kube.CoreV1().Nodes().Update(ctx, readyNode("w1", false), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rt := *f.rt
	rt.Out = &Outputs{}
	err := ClusterHealthy{}.Apply(ctx, &rt, ClusterTarget)
	if err == nil || !strings.Contains(err.Error(), "node w1 is not Ready") {
		t.Fatalf("preflight = %v, want node w1 is not Ready", err)
	}
}

func TestUnlistedNodesForThePlan(t *testing.T) {
	f := newVerifyFixture(t)
	ctx := context.Background()
	for _, n := range []string{"w9", "a-late-one"} {
		if _, err := f.rt.Kube.CoreV1().Nodes().Create(ctx, readyNode(n, true), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := UnlistedNodes(ctx, f.rt)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !strings.HasPrefix(got[0], "node a-late-one is in the cluster but not in the inventory") || !strings.HasPrefix(got[1], "node w9 ") {
		t.Fatalf("unlisted: %q", got)
	}
}
