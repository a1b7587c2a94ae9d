package verify

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubeca/rotate/e2e/clusterinfo"
	"github.com/kubeca/rotate/pki"
)

// The service-account signing key as the cluster uses it: which key the
// apiservers publish, which tokens they accept, and which key signed the
// tokens the kubelets mounted into pods.

// SAKey is a service-account signing key read from a node's sa.key.
type SAKey struct {
	Key crypto.Signer
	ID  string // the apiserver's key id
}

// ReadSAKey reads kubeadm's sa.key on n.
func ReadSAKey(n clusterinfo.Node) (SAKey, error) {
	raw, err := os.ReadFile(filepath.Join(n.EtcKubernetes, "pki", "sa.key"))
	if err != nil {
		return SAKey{}, err
	}
	k, err := pki.ParseKeyPEM(raw)
	if err != nil {
		return SAKey{}, fmt.Errorf("%s sa.key: %w", n.Name, err)
	}
	id, err := pki.KeyID(k.Public())
	if err != nil {
		return SAKey{}, err
	}
	return SAKey{Key: k, ID: id}, nil
}

// issuer is kubeadm's default --service-account-issuer (and so the
// apiservers' audience).
const issuer = "https://kubernetes.default.svc.cluster.local"

// ForgeToken signs, with k, a token for the service account default/default
// (uid) as the apiserver would issue it: issuer, audience, expiry and the
// kubernetes.io claims.
func ForgeToken(k SAKey, uid string, now time.Time) (string, error) {
	rk, ok := k.Key.(*rsa.PrivateKey)
	if !ok {
		return "", fmt.Errorf("forge a token: key %s is %T, want RSA (kubeadm's)", k.ID, k.Key)
	}
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	head := enc(map[string]string{"alg": "RS256", "kid": k.ID})
	claims := enc(map[string]any{
		"iss": issuer, "aud": []string{issuer}, "sub": "system:serviceaccount:default:default",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"kubernetes.io": map[string]any{"namespace": "default", "serviceaccount": map[string]string{"name": "default", "uid": uid}},
	})
	sum := sha256.Sum256([]byte(head + "." + claims))
	sig, err := rsa.SignPKCS1v15(rand.Reader, rk, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return head + "." + claims + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// PublishedKeyIDs is, per apiserver, the sorted key ids of its
// /openid/v1/jwks, read with the client certificate admin.
func PublishedKeyIDs(ctx context.Context, info clusterinfo.Cluster, roots []*x509.Certificate, admin tls.Certificate) (map[string][]string, error) {
	c := apiClient(roots, admin)
	out := map[string][]string{}
	for _, n := range info.ControlPlanes() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+net.JoinHostPort(n.Address, "6443")+"/openid/v1/jwks", nil)
		resp, err := c.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%s: /openid/v1/jwks: %w", n.Name, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: /openid/v1/jwks: %d %s", n.Name, resp.StatusCode, firstLine(string(body)))
		}
		var doc struct {
			Keys []struct {
				Kid string `json:"kid"`
			} `json:"keys"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return nil, fmt.Errorf("%s: /openid/v1/jwks: %w", n.Name, err)
		}
		var ids []string
		for _, k := range doc.Keys {
			ids = append(ids, k.Kid)
		}
		sort.Strings(ids)
		out[n.Name] = ids
	}
	return out, nil
}

// ServiceAccountKeyIs checks that every apiserver publishes exactly the key
// of current in /openid/v1/jwks, authenticates a token current signed as
// the service account it names, and rejects (401) one previous signed.
func ServiceAccountKeyIs(ctx context.Context, info clusterinfo.Cluster, kc kubernetes.Interface, roots []*x509.Certificate, admin tls.Certificate, current, previous SAKey) error {
	sa, err := kc.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("service account default/default: %w", err)
	}
	now := time.Now()
	good, err := ForgeToken(current, string(sa.UID), now)
	if err != nil {
		return err
	}
	bad, err := ForgeToken(previous, string(sa.UID), now)
	if err != nil {
		return err
	}
	var problems []string
	published, err := PublishedKeyIDs(ctx, info, roots, admin)
	if err != nil {
		return err
	}
	for n, ids := range published {
		if len(ids) != 1 || ids[0] != current.ID {
			problems = append(problems, fmt.Sprintf("%s publishes keys %v, want only %s", n, ids, current.ID))
		}
	}
	c := apiClient(roots)
	for _, n := range info.ControlPlanes() {
		// review asks the apiserver who the bearer of token is.
		review := func(token string) (int, []byte, error) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+net.JoinHostPort(n.Address, "6443")+"/apis/authentication.k8s.io/v1/selfsubjectreviews",
				strings.NewReader(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`))
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			if err != nil {
				return 0, nil, err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			return resp.StatusCode, b, nil
		}
		code, body, err := review(good)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: token of the current key: %v", n.Name, err))
		case code != http.StatusCreated || !strings.Contains(string(body), `"username":"system:serviceaccount:default:default"`):
			problems = append(problems, fmt.Sprintf("%s: a token of the current key (%s) answered %d, want 201 as system:serviceaccount:default:default: %s", n.Name, current.ID, code, firstLine(string(body))))
		}
		code, body, err = review(bad)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: token of the previous key: %v", n.Name, err))
		case code != http.StatusUnauthorized:
			problems = append(problems, fmt.Sprintf("%s: a token of the previous key (%s) answered %d, want 401: %s", n.Name, previous.ID, code, firstLine(string(body))))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("service-account key: %s", strings.Join(problems, "; "))
	}
	return nil
}

// PodTokensSignedBy checks that every projected token the kubelets mounted
// into pods, on every node, is signed by key id want. The tokens are read
// inside each node's mount namespace (the volumes are tmpfs mounted there).
func PodTokensSignedBy(ctx context.Context, info clusterinfo.Cluster, want string) error {
	var problems []string
	total := 0
	for _, n := range info.Nodes {
		script := `for f in /var/lib/kubelet/pods/*/volumes/kubernetes.io~projected/*/token; do [ -f "$f" ] && { printf '%s ' "$f"; cut -d. -f1 "$f"; }; done`
		out, err := exec.CommandContext(ctx, "nsenter", "--mount="+info.MountNS(n.Name), "--", "sh", "-c", script).Output()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", n.Name, err))
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f, head, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			total++
			kid, err := pki.TokenKeyID(head + ".")
			if err != nil || kid != want {
				problems = append(problems, fmt.Sprintf("%s:%s signed by %q", n.Name, f, kid))
			}
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		return fmt.Errorf("pod tokens not signed by %s: %s", want, strings.Join(problems, "; "))
	}
	if total == 0 {
		return fmt.Errorf("no pod token on any node: nothing proves the kubelets re-issued them")
	}
	return nil
}
