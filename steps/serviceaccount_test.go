package steps

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
)

// fakeToken is a JWT-shaped token with the given key id, issue time and
// pod (the signature is not checked by the scan).
func fakeToken(kid string, iat time.Time, ns, pod string) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	claims := map[string]any{"iat": iat.Unix(), "kubernetes.io": map[string]any{"namespace": ns, "pod": map[string]string{"name": pod}}}
	return enc(map[string]string{"alg": "RS256", "kid": kid}) + "." + enc(claims) + ".c2lnbmF0dXJl"
}

// The scan script, run by a real sh over a kubelet root laid out like the
// kubelet's, finds every projected token (default and custom paths), skips
// the volume's other files, and never prints a signature.
func TestTokenScanScript(t *testing.T) {
	root := t.TempDir()
	iat := time.Unix(1796055721, 0)
	files := map[string]string{
		"pods/u1/volumes/kubernetes.io~projected/kube-api-access-a/token":     fakeToken("old", iat, "kube-system", "kube-proxy-x"),
		"pods/u1/volumes/kubernetes.io~projected/kube-api-access-a/ca.crt":    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		"pods/u1/volumes/kubernetes.io~projected/kube-api-access-a/namespace": "kube-system",
		"pods/u2/volumes/kubernetes.io~projected/vault-token/vault":           fakeToken("new", iat.Add(time.Minute), "apps", "web-1"),
		"pods/u2/volumes/kubernetes.io~configmap/cfg/token":                   fakeToken("old", iat, "apps", "not-projected"),
	}
	for p, c := range files {
		f := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("sh", "-c", nodes.ShCommand(tokenScanScript, root)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "c2lnbmF0dXJl") {
		t.Fatalf("the scan printed a token's signature:\n%s", out)
	}
	toks := parseTokenScan(string(out))
	if len(toks) != 2 {
		t.Fatalf("scan found %d tokens, want 2:\n%s", len(toks), out)
	}
	got := map[string]podToken{}
	for _, tk := range toks {
		got[tk.Pod] = tk
	}
	if tk := got["kube-system/kube-proxy-x"]; tk.KeyID != "old" || !tk.IssuedAt.Equal(iat) {
		t.Errorf("kube-proxy token %+v, want kid old issued %s", tk, iat)
	}
	if tk := got["apps/web-1"]; tk.KeyID != "new" {
		t.Errorf("custom-path token %+v, want kid new", tk)
	}
}

// tokenNode is a node whose projected tokens are signed by the stale key
// until its kubelet restarts, then by the wanted one.
type tokenNode struct {
	*nodes.MemRunner
	mu        sync.Mutex
	stale     bool
	restarts  int
	restartOK bool
	kids      [2]string // the stale and the wanted key id ("old", "new" when empty)
}

func newTokenNode(name string, stale bool, iat time.Time) *tokenNode {
	n := &tokenNode{MemRunner: nodes.NewMemRunner(name), stale: stale, restartOK: true}
	n.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (nodes.Result, error) {
		n.mu.Lock()
		defer n.mu.Unlock()
		if cmd == "systemctl restart kubelet" {
			if !n.restartOK {
				return nodes.Result{}, errors.New("exit status 5")
			}
			n.restarts++
			n.stale = false
			return nodes.Result{}, nil
		}
		kid := "new"
		if n.kids[1] != "" {
			kid = n.kids[1]
		}
		if n.stale {
			kid = "old"
			if n.kids[0] != "" {
				kid = n.kids[0]
			}
		}
		tok := fakeToken(kid, iat, "default", "app-"+name)
		head, rest, _ := strings.Cut(tok, ".")
		claims, _, _ := strings.Cut(rest, ".")
		return nodes.Result{Stdout: []byte("/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/k/token " + head + "." + claims + "\n")}, nil
	}
	return n
}

// Before trust narrows, a node whose pods still hold tokens of the old key
// has its kubelet restarted (once) and waited for; nodes whose tokens are
// already re-issued are left alone.
func TestTokensSignedByRestartsStaleKubelets(t *testing.T) {
	iat := time.Now().Add(-5 * time.Minute) // re-issued long ago: no settling wait
	cp1, w1 := newTokenNode("cp1", false, iat), newTokenNode("w1", true, iat)
	var mu sync.Mutex
	var gated []string
	rt := &Runtime{Nodes: memNodes{"cp1": cp1, "w1": w1}, Out: &Outputs{}, Config: testConfig([]string{"cp1"}, []string{"w1"}),
		Gates: gateFunc(func(node, c string) error { mu.Lock(); gated = append(gated, node+"/"+c); mu.Unlock(); return nil })}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := rt.tokensSignedBy(ctx, []string{"new"}, []string{"old"}, "new"); err != nil {
		t.Fatal(err)
	}
	if cp1.restarts != 0 || w1.restarts != 1 {
		t.Errorf("kubelet restarts cp1=%d w1=%d, want 0 and 1", cp1.restarts, w1.restarts)
	}
	if len(gated) != 1 || gated[0] != "w1/kubelet" {
		t.Errorf("gates %v, want the restarted kubelet of w1 only", gated)
	}
}

// A kubelet that cannot be restarted fails the step, naming the node.
func TestTokensSignedByRestartFails(t *testing.T) {
	w1 := newTokenNode("w1", true, time.Now().Add(-time.Hour))
	w1.restartOK = false
	rt := &Runtime{Nodes: memNodes{"w1": w1}, Out: &Outputs{}, Config: testConfig(nil, []string{"w1"}),
		Gates: gateFunc(func(string, string) error { return nil })}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := rt.tokensSignedBy(ctx, []string{"new"}, []string{"old"}, "new")
	if err == nil || !strings.Contains(err.Error(), "w1") || !strings.Contains(err.Error(), "restart kubelet") {
		t.Fatalf("err = %v, want the failed kubelet restart on w1", err)
	}
}

// Tokens re-issued just now are waited on until clients that re-read their
// token file once a minute have read them; the wait never exceeds
// tokenSettle from now, whatever the apiserver's clock says.
func TestTokensSignedBySettles(t *testing.T) {
	now := time.Now()
	clock := now
	var mu sync.Mutex
	w1 := newTokenNode("w1", false, now.Add(time.Hour)) // an apiserver clock far ahead
	rt := &Runtime{Nodes: memNodes{"w1": w1}, Out: &Outputs{}, Config: testConfig(nil, []string{"w1"}),
		Gates: gateFunc(func(string, string) error { return nil }),
		Now: func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			clock = clock.Add(10 * time.Second) // each look is ten seconds later
			return clock
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := rt.tokensSignedBy(ctx, []string{"new"}, []string{"old"}, "new"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	waited := clock.Sub(now)
	mu.Unlock()
	if waited < tokenSettle || waited > tokenSettle+30*time.Second {
		t.Errorf("waited %s of the step's clock, want about %s", waited, tokenSettle)
	}
}

// At the hold: legacy token Secrets signed by the old key and pods whose
// token files are still the old key's are named; JWKS consumers are
// reminded; a Secret of another type or another key is not named.
func TestSAHoldLines(t *testing.T) {
	oldKey := rsaPEM(t)
	oldPair, err := pki.NewSigningKeyLike(oldKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	newPair, err := pki.NewSigningKeyLike(oldKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := newFakeStore()
	st.cas[CAServiceAccount] = CAPair{Name: CAServiceAccount, OldCert: oldPair.PubPEM, OldKey: oldPair.KeyPEM, NewCert: newPair.PubPEM, NewKey: newPair.KeyPEM}
	now := time.Now()
	secret := func(ns, name string, typ corev1.SecretType, kid string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: typ,
			Data: map[string][]byte{"token": []byte(fakeToken(kid, now, ns, ""))}}
	}
	kube := fake.NewSimpleClientset(
		secret("ci", "deployer-token", corev1.SecretTypeServiceAccountToken, oldPair.KeyID),
		secret("ci", "fresh-token", corev1.SecretTypeServiceAccountToken, newPair.KeyID),
		secret("ci", "opaque", corev1.SecretTypeOpaque, oldPair.KeyID),
	)
	cfg := testConfig([]string{"cp1"}, []string{"w1"})
	cfg.ServiceAccount = true
	rt := &Runtime{Store: st, Kube: kube, Out: &Outputs{}, Config: cfg,
		Nodes: memNodes{"cp1": newTokenNode("cp1", false, now), "w1": newTokenNode("w1", true, now)}}
	// The token nodes sign with "new"/"old"; map them to the run's ids.
	rt.Nodes.(memNodes)["w1"].(*tokenNode).kids = [2]string{oldPair.KeyID, newPair.KeyID}
	rt.Nodes.(memNodes)["cp1"].(*tokenNode).kids = [2]string{oldPair.KeyID, newPair.KeyID}
	lines, err := rt.saHoldLines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(lines, "\n")
	for _, want := range []string{"publish both in /openid/v1/jwks", "OIDC federation",
		"pods still hold service-account tokens signed by the old key (w1: pod default/app-w1)",
		"1 legacy token Secret(s) hold a token signed by the old service-account key", ": ci/deployer-token;"} {
		if !strings.Contains(all, want) {
			t.Errorf("hold lines lack %q:\n%s", want, all)
		}
	}
	for _, not := range []string{"ci/fresh-token", "ci/opaque", "cp1: pod"} {
		if strings.Contains(all, not) {
			t.Errorf("hold lines name %q:\n%s", not, all)
		}
	}
}

func rsaPEM(t *testing.T) []byte {
	t.Helper()
	k, err := pki.GenerateKey(pki.RSA2048, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pki.EncodeKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The new key is generated like the old or read from the inventory's
// file; the old pair must match, and a supplied key must be new.
func TestNewServiceAccountKey(t *testing.T) {
	oldPEM := rsaPEM(t)
	old, err := pki.LoadSigningKey(oldPEM)
	if err != nil {
		t.Fatal(err)
	}
	rt := &Runtime{Out: &Outputs{}, Config: testConfig([]string{"cp1"}, nil)}

	pair, err := rt.newServiceAccountKey(oldPEM, old.PubPEM, "cp1")
	if err != nil {
		t.Fatal(err)
	}
	gen, err := pki.LoadSigningKey(pair.NewKey)
	if err != nil || gen.KeyID == old.KeyID || string(pair.OldKey) != string(oldPEM) {
		t.Fatalf("generated key %s (%v), old %s", gen.KeyID, err, old.KeyID)
	}

	dir := t.TempDir()
	supplied := filepath.Join(dir, "new-sa.key")
	newPEM := rsaPEM(t)
	os.WriteFile(supplied, newPEM, 0o600)
	rt.Config.NewCA.ServiceAccountKeyFile = supplied
	if pair, err = rt.newServiceAccountKey(oldPEM, old.PubPEM, "cp1"); err != nil || string(pair.NewKey) != string(newPEM) {
		t.Fatalf("supplied key not used: %v", err)
	}
	os.WriteFile(supplied, oldPEM, 0o600)
	if _, err := rt.newServiceAccountKey(oldPEM, old.PubPEM, "cp1"); err == nil || !strings.Contains(err.Error(), "is the key the cluster uses now") {
		t.Fatalf("the old key supplied as new: err = %v", err)
	}

	rt.Config.NewCA.ServiceAccountKeyFile = ""
	other, _ := pki.LoadSigningKey(rsaPEM(t))
	if _, err := rt.newServiceAccountKey(oldPEM, other.PubPEM, "cp1"); err == nil || !strings.Contains(err.Error(), "does not hold the public key of /etc/kubernetes/pki/sa.key") {
		t.Fatalf("mismatched pair: err = %v", err)
	}
}

// Preflight on every control-plane node: kubeadm's flags and paths, no
// external signer, and the same key as the first node (by key id, however
// it is encoded).
func TestSAPreflight(t *testing.T) {
	ctx := context.Background()
	oldPEM := rsaPEM(t)
	old, _ := pki.LoadSigningKey(oldPEM)
	st := newFakeStore()
	st.cas[CAServiceAccount] = CAPair{Name: CAServiceAccount, OldCert: old.PubPEM, OldKey: oldPEM}
	apiserver := func(extra ...string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\nspec:\n  containers:\n  - name: kube-apiserver\n    command:\n    - kube-apiserver\n" +
			"    - --service-account-key-file=/etc/kubernetes/pki/sa.pub\n    - --service-account-signing-key-file=/etc/kubernetes/pki/sa.key\n" + strings.Join(extra, "")
	}
	node := func(manifest string, key, pub []byte) *nodes.MemRunner {
		r := nodes.NewMemRunner("cp2")
		r.SetFile("/etc/kubernetes/manifests/kube-apiserver.yaml", []byte(manifest), 0o600)
		r.SetFile("/etc/kubernetes/manifests/kube-controller-manager.yaml", []byte(kcmManifest), 0o600)
		r.SetFile("/etc/kubernetes/pki/sa.key", key, 0o600)
		r.SetFile("/etc/kubernetes/pki/sa.pub", pub, 0o644)
		return r
	}
	rt := &Runtime{Store: st, Out: &Outputs{}, Config: testConfig([]string{"cp1", "cp2"}, nil)}
	cp2 := Target{Node: "cp2", Role: RoleControlPlane}
	// The same key in PKCS#8 on this node: accepted.
	k, _ := pki.ParseKeyPEM(oldPEM)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	same := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	if err := rt.saPreflight(ctx, node(apiserver(), same, old.PubPEM), cp2); err != nil {
		t.Fatalf("same key, other encoding: %v", err)
	}
	other := rsaPEM(t)
	otherKey, _ := pki.LoadSigningKey(other)
	for _, tc := range []struct {
		name     string
		r        *nodes.MemRunner
		wantErrs []string
	}{
		{"another key", node(apiserver(), other, otherKey.PubPEM), []string{"/etc/kubernetes/pki/sa.", "on cp2 holds key", "same service-account key"}},
		{"external signer", node(apiserver("    - --service-account-signing-endpoint=/run/signer.sock\n"), oldPEM, old.PubPEM), []string{"external signer", "out of scope"}},
		{"other path", node(strings.Replace(apiserver(), "pki/sa.pub", "keys/sa.pub", 1), oldPEM, old.PubPEM), []string{"--service-account-key-file is \"/etc/kubernetes/keys/sa.pub\"", "kubeadm's paths only"}},
	} {
		err := rt.saPreflight(ctx, tc.r, cp2)
		for _, w := range tc.wantErrs {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, w)
			}
		}
	}
}
