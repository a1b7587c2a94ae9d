package steps

import (
	"context"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
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
		// The process report of nodes.AwaitProcess: kube-apiserver
		// started 1 s ago, its manifest written 10 s ago.
		runs := 0
		cp1.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (nodes.Result, error) {
			runs++
			return nodes.Result{Stdout: []byte("123 99900 100 1000 2000 1990\n\n")}, nil
		}
		// Restarted, but /readyz fails twice: the gate waits for it over
		// HTTPS without asking the node again.
		f.notReady.Store(2)
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := (liveGates{}).Component(ctx, rt, Target{Node: "cp1", Role: RoleControlPlane}, APIServer); err != nil {
			t.Fatalf("gate: %v", err)
		}
		if n := f.notReady.Load(); n >= 0 || runs != 1 {
			t.Errorf("gate passed with readyz failures left %d after %d node commands, want all used up after 1", n+1, runs)
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
	const advice = "node w9 is in the cluster but not in the inventory: rotate does not touch it, so once the apiservers serve " +
		"certificates from the new CA (switch-issuance, phase 9) its kubelet, given no bundle, cannot verify them, and once trust " +
		"narrows (phase 12) its old-CA client certificate is refused: the node goes NotReady; " +
		"add it to the inventory (nodes.workers or nodes.discoverWorkers), or drain and delete it (kubectl drain w9; kubectl delete node w9); " +
		"the run stops before switching issuance while it is there (kubectl annotate node w9 rotate.kubeca.io/accept-lockout=true lets it go on without it)"
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
			if len(rep.PreExisting) != 0 {
				t.Fatalf("pre-existing %q", rep.PreExisting)
			}
			want := []UnlistedNode{{Name: "w9", AtStart: true, Ready: tc.ready, Issuer: IssuerUnknown,
				Source: "no issued kubelet client CSR for system:node:w9 in the certificates API; rotate does not reach the node over SSH to read it"}}
			if !reflect.DeepEqual(rep.Unlisted, want) {
				t.Fatalf("hold report's unlisted nodes %+v, want %+v", rep.Unlisted, want)
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

// kubeletCSR is an issued kubelet client CSR of node, signed by ca.
func kubeletCSR(t *testing.T, name, node string, ca *pki.CA, signer string, notBefore time.Time) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	is, err := pki.NewKubeletClientCert(node, ca, pki.ReissueOptions{Now: notBefore})
	if err != nil {
		t.Fatal(err)
	}
	return &certificatesv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:   certificatesv1.CertificateSigningRequestSpec{SignerName: signer, Username: "system:bootstrap:abcdef"},
		Status: certificatesv1.CertificateSigningRequestStatus{Certificate: is.CertPEM}}
}

// A Node that joins after start: verify lists it with its kubelet client
// certificate's issuer, and the first step of narrow-trust refuses to
// narrow while its certificate is from the old CA or unknown, unless its
// lock-out is accepted on the Node.
func TestJoinedNodeBeforeNarrowing(t *testing.T) {
	const client = certificatesv1.KubeAPIServerClientKubeletSignerName
	t0 := time.Now().Add(-time.Hour)
	for _, tc := range []struct {
		name     string
		csrs     func(old, new *pki.CA) []runtime.Object
		annotate bool
		issuer   string
		source   string // a part of it
		refused  bool
	}{
		{"no CSR left", nil, false, IssuerUnknown, "no issued kubelet client CSR for system:node:j1", true},
		{"old CA", func(old, _ *pki.CA) []runtime.Object {
			return []runtime.Object{kubeletCSR(t, "csr-old", "j1", old, client, t0)}
		}, false, IssuerOld, "CSR csr-old, ", true},
		{"old, then renewed from the new CA", func(old, nw *pki.CA) []runtime.Object {
			return []runtime.Object{kubeletCSR(t, "csr-new", "j1", nw, client, t0.Add(time.Minute)), kubeletCSR(t, "csr-old", "j1", old, client, t0)}
		}, false, IssuerNew, "CSR csr-new, ", false},
		{"another node's and another signer's are not its", func(old, nw *pki.CA) []runtime.Object {
			return []runtime.Object{kubeletCSR(t, "csr-w1", "w1", nw, client, t0), kubeletCSR(t, "csr-serving", "j1", nw, certificatesv1.KubeletServingSignerName, t0),
				kubeletCSR(t, "csr-old", "j1", old, client, t0.Add(-time.Minute))}
		}, false, IssuerOld, "CSR csr-old, ", true},
		{"a CA of neither", func(_, _ *pki.CA) []runtime.Object {
			other, err := pki.NewCA(pki.CAOptions{CommonName: "other"})
			if err != nil {
				t.Fatal(err)
			}
			return []runtime.Object{kubeletCSR(t, "csr-x", "j1", other, client, t0)}
		}, false, IssuerUnknown, "signed by neither CA of the run", true},
		{"old CA, lock-out accepted", func(old, _ *pki.CA) []runtime.Object {
			return []runtime.Object{kubeletCSR(t, "csr-old", "j1", old, client, t0)}
		}, true, IssuerOld, "CSR csr-old, ", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newVerifyFixture(t)
			f.preflight(t)
			ctx := context.Background()
			old, err := pki.LoadCA(f.st.cas[CACluster].OldCert, f.st.cas[CACluster].OldKey, time.Now(), 0)
			if err != nil {
				t.Fatal(err)
			}
			nw, err := f.rt.newCA(ctx, CACluster)
			if err != nil {
				t.Fatal(err)
			}
			j1 := readyNode("j1", true)
			if tc.annotate {
				j1.Annotations = map[string]string{AcceptLockoutAnnotation: "true"}
			}
			if _, err := f.rt.Kube.CoreV1().Nodes().Create(ctx, j1, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if tc.csrs != nil {
				for _, o := range tc.csrs(old, nw) {
					if _, err := f.rt.Kube.CertificatesV1().CertificateSigningRequests().Create(ctx, o.(*certificatesv1.CertificateSigningRequest), metav1.CreateOptions{}); err != nil {
						t.Fatal(err)
					}
				}
			}

			rep, err := f.verify(t)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if len(rep.Unlisted) != 1 {
				t.Fatalf("hold report's unlisted nodes: %+v", rep.Unlisted)
			}
			u := rep.Unlisted[0]
			if u.Name != "j1" || u.AtStart || !u.Ready || u.Issuer != tc.issuer || !strings.Contains(u.Source, tc.source) || u.Accepted != tc.annotate {
				t.Fatalf("unlisted %+v, want j1 joined during the run, Ready, issuer %s from %q", u, tc.issuer, tc.source)
			}
			inAttention := slices.ContainsFunc(rep.Attention, func(a string) bool {
				return strings.HasPrefix(a, "node j1 is not in the run (joined during the run, Ready)")
			})
			if inAttention != tc.refused {
				t.Fatalf("in the hold's attention list: %v, want %v: %q", inAttention, tc.refused, rep.Attention)
			}

			f.progress = nil
			err = NoKubeletLockedOut{}.Apply(ctx, f.rt, ClusterTarget)
			if !tc.refused {
				if err != nil {
					t.Fatalf("guard: %v", err)
				}
				if len(f.progress) != 1 || !strings.HasPrefix(f.progress[0], "node j1 is not in the run") {
					t.Fatalf("guard said %q", f.progress)
				}
				return
			}
			for _, want := range []string{
				"refusing to narrow trust:\n  - node j1 is not in the run (joined during the run, Ready); its kubelet client certificate: " + tc.issuer,
				"once trust narrows its kubelet is refused by every apiserver and the node goes NotReady",
				"kubeadm join with --discovery-token-ca-cert-hash " + DiscoveryTokenCAHash(nw.Cert),
				"kubectl drain j1; kubectl delete node j1",
				"kubectl annotate node j1 rotate.kubeca.io/accept-lockout=true",
			} {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("guard = %v\nwant it to say %q", err, want)
				}
			}
		})
	}
}

// Without Nodes outside the run the guard passes silently, and it is the
// first step of narrow-trust: nothing has narrowed when it refuses.
func TestNoKubeletLockedOutWithoutUnlistedNodes(t *testing.T) {
	f := newVerifyFixture(t)
	f.preflight(t)
	f.progress = nil
	if err := (NoKubeletLockedOut{}).Apply(context.Background(), f.rt, ClusterTarget); err != nil || len(f.progress) != 0 {
		t.Fatalf("guard = %v, said %q", err, f.progress)
	}
}

// Before the apiservers serve from the new CA, every Node outside the run
// stops the run (its kubelet was given no bundle), whatever its client
// certificate, unless the operator accepted its lock-out; without such
// Nodes the guard passes silently.
func TestNoKubeletCutOff(t *testing.T) {
	for _, tc := range []struct {
		name      string
		node      *corev1.Node // nil: none outside the run
		accept    bool
		wantErr   []string
		wantPrint string
	}{
		{name: "no node outside the run"},
		{name: "a node that joined during the run", node: readyNode("j1", true), wantErr: []string{
			"refusing to switch issuance to the new CA:\n  - node j1 is not in the run (joined during the run, Ready)",
			"rotate gave its kubelet no bundle, so once the apiservers serve certificates from the new CA (switch-issuance, next) it cannot verify them",
			"kubectl drain j1; kubectl delete node j1",
			"kubectl annotate node j1 rotate.kubeca.io/accept-lockout=true",
		}},
		{name: "not Ready, still refused", node: readyNode("j1", false), wantErr: []string{"node j1 is not in the run (joined during the run, not Ready)"}},
		{name: "lock-out accepted", node: readyNode("j1", true), accept: true,
			wantPrint: "node j1 is not in the run (joined during the run, Ready); its kubelet client certificate: unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newVerifyFixture(t)
			f.preflight(t)
			ctx := context.Background()
			if tc.node != nil {
				if tc.accept {
					tc.node.Annotations = map[string]string{AcceptLockoutAnnotation: "true"}
				}
				if _, err := f.rt.Kube.CoreV1().Nodes().Create(ctx, tc.node, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			f.progress = nil
			err := NoKubeletCutOff{}.Apply(ctx, f.rt, ClusterTarget)
			if len(tc.wantErr) == 0 && err != nil {
				t.Fatalf("guard: %v", err)
			}
			for _, want := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("guard = %v\nwant it to say %q", err, want)
				}
			}
			switch {
			case tc.wantPrint != "":
				if len(f.progress) != 1 || !strings.HasPrefix(f.progress[0], tc.wantPrint) || !strings.Contains(f.progress[0], "switching issuance anyway") {
					t.Fatalf("guard said %q, want %q ... switching issuance anyway", f.progress, tc.wantPrint)
				}
			case len(f.progress) != 0:
				t.Fatalf("guard said %q", f.progress)
			}
		})
	}
}
