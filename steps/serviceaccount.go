package steps

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-multierror"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/steps/fileedit"
)

// The service-account signing key (kubeadm's sa.key and sa.pub), rotated
// when the inventory lists service-account. Its steps ride in the phases of
// the cluster CA, in the invariant's order, and add no restart:
//
//   - preflight: a new key of the old one's type and size, stored with the
//     old pair; every apiserver verifies tokens with kubeadm's sa.pub and
//     signs with sa.key (and the controller-manager signs legacy token
//     Secrets with sa.key), the same key on every control-plane node;
//   - distribute: rotate-sa.key, rotate-sa.pub and rotate-sa-bundle.pub
//     (old+new public keys) next to kubeadm's;
//   - apiserver-trust: apiserver-trust-both points --service-account-key-file
//     at the bundle (tokens of both keys are accepted); then
//     service-account-keys waits until every apiserver publishes both keys
//     in /openid/v1/jwks;
//   - servers: switch-issuance makes the apiservers sign new tokens with the
//     new key (--service-account-signing-key-file) and the
//     controller-managers legacy token Secrets
//     (--service-account-private-key-file). The kubelet-client steps after
//     it restart every kubelet, and a restarted kubelet requests every
//     running pod's projected token anew: signed by the new key;
//   - narrow-trust: service-account-tokens, just before the old key goes, proves, on every node, that
//     every projected token is signed by the new key (restarting a kubelet
//     whose tokens are not), and waits long enough after the last re-issue
//     for clients that cache their token file (client-go re-reads it every
//     minute); then control-plane-canonical makes sa.key and sa.pub the new
//     key and points the flags back at them. From then on a token signed by
//     the old key is rejected.
//
// Rollback: switch-issuance's revert makes the apiservers sign with the old
// key again; the kubelet-trust steps' reverts restart the kubelets, which
// re-request every token; service-account-keys' revert, just before
// apiserver-trust-both's drops the new public key, proves (and if need be
// forces) that every projected token is signed by the old key again.
// Controller-managers restart with their apiserver in switch-issuance's
// revert and again in kubeconfigs' and kcm-trust-both's, so their own
// controller tokens come from apiservers signing with the old key.

// CAServiceAccount names the service-account key pair in the state file:
// OldCert and NewCert hold the public keys (PEM "PUBLIC KEY"), OldKey and
// NewKey the private keys.
const CAServiceAccount = "service-account"

// Files of the service-account key, relative to the pki dir.
const (
	fileSAKey    = "sa.key"
	fileSAPub    = "sa.pub"
	fileNewSAKey = "rotate-sa.key"
	fileNewSAPub = "rotate-sa.pub"
	fileSABundle = "rotate-sa-bundle.pub"
)

// tokenSettle is how long after a pod's token file was re-issued a client
// may still send the token it read before: client-go re-reads a token file
// once a minute (transport.NewCachedFileTokenSource), plus a margin.
const tokenSettle = 70 * time.Second

// newServiceAccountKey checks the old pair (sa.key and sa.pub as read from
// node, the first control-plane node) and makes the new key like it, or
// reads the inventory's.
func (rt *Runtime) newServiceAccountKey(oldKey, oldPub []byte, node string) (CAPair, error) {
	c := rt.Config
	k, err := pki.ParseKeyPEM(oldKey)
	if err != nil {
		return CAPair{}, fmt.Errorf("%s on %s: %w", c.pki(fileSAKey), node, err)
	}
	signing, err := pki.KeyID(k.Public())
	if err != nil {
		return CAPair{}, err
	}
	ids, err := pki.PublicKeyIDs(oldPub)
	if err != nil {
		return CAPair{}, fmt.Errorf("%s on %s: %w", c.pki(fileSAPub), node, err)
	}
	if !slices.Contains(ids, signing) {
		return CAPair{}, fmt.Errorf("%s on %s does not hold the public key of %s: tokens the apiserver signs would not verify; fix the pair before rotating it", c.pki(fileSAPub), node, c.pki(fileSAKey))
	}
	var nk pki.SigningKey
	if f := c.NewCA.ServiceAccountKeyFile; f != "" {
		raw, err := os.ReadFile(f)
		if err != nil {
			return CAPair{}, fmt.Errorf("new service-account key: %w", err)
		}
		if nk, err = pki.LoadSigningKey(raw); err != nil {
			return CAPair{}, fmt.Errorf("new service-account key %s: %w", f, err)
		}
		if slices.Contains(ids, nk.KeyID) {
			return CAPair{}, fmt.Errorf("new service-account key %s is the key the cluster uses now (%s): give a new one", f, nk.KeyID)
		}
	} else if nk, err = pki.NewSigningKeyLike(oldKey, nil); err != nil {
		return CAPair{}, fmt.Errorf("generate the new service-account key: %w", err)
	}
	rt.Printf("service-account key: old %s (%s), new %s", signing, pki.KeyShape(k.Public()), nk.KeyID)
	return CAPair{Name: CAServiceAccount, OldCert: oldPub, OldKey: oldKey, NewCert: nk.PubPEM, NewKey: nk.KeyPEM}, nil
}

// saKeys is the run's service-account material: the pair, the bundle of
// old+new public keys, and the key ids.
type saKeys struct {
	pair   CAPair
	bundle []byte
	oldIDs []string // sa.pub may hold more than one key
	newID  string
}

func (rt *Runtime) saKeys(ctx context.Context) (saKeys, error) {
	pair, err := rt.caPair(ctx, CAServiceAccount)
	if err != nil {
		return saKeys{}, err
	}
	b, err := pki.PublicKeyBundle(pair.OldCert, pair.NewCert)
	if err != nil {
		return saKeys{}, err
	}
	oldIDs, err := pki.PublicKeyIDs(pair.OldCert)
	if err != nil {
		return saKeys{}, err
	}
	newIDs, err := pki.PublicKeyIDs(pair.NewCert)
	if err != nil || len(newIDs) != 1 {
		return saKeys{}, fmt.Errorf("the run's new service-account public key: %v", err)
	}
	return saKeys{pair: pair, bundle: b, oldIDs: oldIDs, newID: newIDs[0]}, nil
}

// saDistribute is what distribute adds on a control-plane node when the
// run rotates the service-account key.
func (rt *Runtime) saDistribute(ctx context.Context) ([]fileedit.Edit, error) {
	if !rt.Config.ServiceAccount {
		return nil, nil
	}
	k, err := rt.saKeys(ctx)
	if err != nil {
		return nil, err
	}
	c := rt.Config
	return []fileedit.Edit{
		fileedit.SetContent(c.pki(fileNewSAKey), k.pair.NewKey, 0o600),
		fileedit.SetContent(c.pki(fileNewSAPub), k.pair.NewCert, 0o644),
		fileedit.SetContent(c.pki(fileSABundle), k.bundle, 0o644),
	}, nil
}

// saPreflightPaths are the files saPreflight reads (PrepareCerts fetches
// them with the node's other files in one round trip).
func (c *Config) saPreflightPaths() []string {
	return []string{c.manifest(APIServer), c.manifest(ControllerManager), c.pki(fileSAKey), c.pki(fileSAPub)}
}

// saPreflight checks, on control-plane node t, that the apiserver and the
// controller-manager use kubeadm's sa.key and sa.pub and that they are the
// pair the run read from the first control-plane node.
func (rt *Runtime) saPreflight(ctx context.Context, r nodes.Runner, t Target) error {
	c := rt.Config
	pair, err := rt.caPair(ctx, CAServiceAccount)
	if err != nil {
		return err
	}
	want := map[Component]map[string]string{
		APIServer:         {"service-account-key-file": c.pki(fileSAPub), "service-account-signing-key-file": c.pki(fileSAKey)},
		ControllerManager: {"service-account-private-key-file": c.pki(fileSAKey)},
	}
	for _, comp := range []Component{APIServer, ControllerManager} {
		p := c.manifest(comp)
		m, err := r.ReadFile(ctx, p)
		if err != nil {
			return fmt.Errorf("read %s on %s: %w", p, t.Node, err)
		}
		if comp == APIServer {
			if v, ok, _ := edit.ManifestFlag(m, comp.Name, "service-account-signing-endpoint"); ok {
				return fmt.Errorf("%s on %s: the apiserver signs tokens through an external signer (--service-account-signing-endpoint=%s): rotating that key is the signer's job, out of scope for rotate", p, t.Node, v)
			}
		}
		for flag, path := range want[comp] {
			v, ok, err := edit.ManifestFlag(m, comp.Name, flag)
			if err != nil {
				return fmt.Errorf("%s on %s: %w", p, t.Node, err)
			}
			if comp == ControllerManager && !ok {
				continue // no legacy token Secrets signed here
			}
			if v != path {
				return fmt.Errorf("%s on %s: --%s is %q, not kubeadm's %s: rotate rotates the service-account key at kubeadm's paths only", p, t.Node, flag, v, path)
			}
		}
	}
	// The same keys, by key id (a copy may be encoded differently).
	for name, want := range map[string][]byte{fileSAKey: pair.OldKey, fileSAPub: pair.OldCert} {
		cur, err := r.ReadFile(ctx, c.pki(name))
		if err != nil {
			return fmt.Errorf("read %s on %s: %w", c.pki(name), t.Node, err)
		}
		have, err := pki.PublicKeyIDs(cur)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", c.pki(name), t.Node, err)
		}
		if wantIDs, _ := pki.PublicKeyIDs(want); !slices.Equal(have, wantIDs) {
			return fmt.Errorf("%s on %s holds key %s, not %s as on %s: every control-plane node must hold the same service-account key",
				c.pki(name), t.Node, strings.Join(have, ","), strings.Join(wantIDs, ","), c.ControlPlane[0])
		}
	}
	return nil
}

// ServiceAccountKeys proves the widening: every apiserver publishes both
// keys in /openid/v1/jwks (it verifies tokens of both). Its revert makes
// sure no pod still holds a token of the new key before
// apiserver-trust-both's revert drops that key (see the top of the file).
type ServiceAccountKeys struct{}

func (ServiceAccountKeys) Name() string { return "service-account-keys" }

func (ServiceAccountKeys) Check(context.Context, *Runtime, Target) (bool, error) { return false, nil }
func (ServiceAccountKeys) Gate(context.Context, *Runtime, Target) error          { return nil }

func (ServiceAccountKeys) Apply(ctx context.Context, rt *Runtime, t Target) error {
	k, err := rt.saKeys(ctx)
	if err != nil {
		return err
	}
	want := append(slices.Clone(k.oldIDs), k.newID)
	return rt.waitFor(ctx, "every apiserver to publish the old and new service-account keys", func(ctx context.Context) (bool, string, error) {
		for _, n := range rt.Config.ControlPlane {
			ids, err := rt.jwksKeyIDs(ctx, n)
			if err != nil {
				return false, err.Error(), nil
			}
			for _, id := range want {
				if !slices.Contains(ids, id) {
					return false, fmt.Sprintf("apiserver %s publishes %s, not %s", n, strings.Join(ids, ", "), id), nil
				}
			}
		}
		return true, "", nil
	})
}

func (ServiceAccountKeys) Revert(ctx context.Context, rt *Runtime, t Target) error {
	k, err := rt.saKeys(ctx)
	if err != nil {
		return err
	}
	return rt.tokensSignedBy(ctx, k.oldIDs, []string{k.newID}, "old")
}

// Describe is what plan --live shows: what the step waits for.
func (s ServiceAccountKeys) Describe(_ context.Context, rt *Runtime, _ Target) ([]string, error) {
	return s.Explain(rt.Config), nil
}

func (ServiceAccountKeys) Explain(*Config) []string {
	return []string{"every apiserver publishes the old and the new service-account key (/openid/v1/jwks)",
		"on rollback: every pod's projected token is signed by the old key again before the new key is dropped"}
}

// ServiceAccountTokens proves, before trust narrows, that every pod's
// projected token on every node is signed by the new key.
type ServiceAccountTokens struct{}

func (ServiceAccountTokens) Name() string { return "service-account-tokens" }

func (ServiceAccountTokens) Check(context.Context, *Runtime, Target) (bool, error) { return false, nil }
func (ServiceAccountTokens) Gate(context.Context, *Runtime, Target) error          { return nil }
func (ServiceAccountTokens) Revert(context.Context, *Runtime, Target) error        { return nil }

func (ServiceAccountTokens) Apply(ctx context.Context, rt *Runtime, t Target) error {
	k, err := rt.saKeys(ctx)
	if err != nil {
		return err
	}
	return rt.tokensSignedBy(ctx, []string{k.newID}, k.oldIDs, "new")
}

// Describe is what plan --live shows: what the step waits for.
func (s ServiceAccountTokens) Describe(_ context.Context, rt *Runtime, _ Target) ([]string, error) {
	return s.Explain(rt.Config), nil
}

func (ServiceAccountTokens) Explain(*Config) []string {
	return []string{"every pod's projected token on every node is signed by the new service-account key (a kubelet whose are not is restarted: it re-requests them)",
		fmt.Sprintf("then waits until %s after the last re-issue, for clients that re-read their token file once a minute", tokenSettle)}
}

// jwksKeyIDs are the key ids apiserver n publishes. With a client
// certificate the apiserver is asked directly; otherwise through the
// kubeconfig's server.
func (rt *Runtime) jwksKeyIDs(ctx context.Context, n string) ([]string, error) {
	var body []byte
	if rt.AdminCert != nil && rt.Trust != nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+rt.Config.APIServerEndpoint(n)+"/openid/v1/jwks", nil)
		if err != nil {
			return nil, err
		}
		resp, err := rt.Trust.HTTPClient().Do(req)
		if err != nil {
			return nil, fmt.Errorf("apiserver %s: %w", n, err)
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("apiserver %s: /openid/v1/jwks: %d %s", n, resp.StatusCode, firstLine(body))
		}
	} else {
		b, err := rt.Kube.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
		if err != nil {
			return nil, fmt.Errorf("/openid/v1/jwks: %w", err)
		}
		body = b
	}
	var doc struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("apiserver %s: /openid/v1/jwks: %w", n, err)
	}
	var ids []string
	for _, k := range doc.Keys {
		ids = append(ids, k.Kid)
	}
	sort.Strings(ids)
	return ids, nil
}

// podToken is one projected service-account token on a node: which pod's
// volume holds it, its key id and when it was issued. The token itself
// never leaves the node: the scan prints the header and the claims only.
type podToken struct {
	Path     string
	KeyID    string
	Pod      string // namespace/name, from the claims
	IssuedAt time.Time
}

// tokenScanScript prints, for every file of a projected volume that holds
// a JWT, its path, header and claims (not the signature: without it the
// claims are no credential). $1 is the kubelet's root directory.
const tokenScanScript = `for f in "$1"/pods/*/volumes/kubernetes.io~projected/*/*; do
  [ -f "$f" ] || continue
  t=$(head -c 16384 "$f")
  case "$t" in eyJ*.*.*) ;; *) continue ;; esac
  printf '%s %s\n' "$f" "$(printf '%s' "$t" | cut -d. -f1,2)"
done`

// scanTokens lists the projected tokens on node r.
func (rt *Runtime) scanTokens(ctx context.Context, r nodes.Runner) ([]podToken, error) {
	res, err := r.Run(ctx, nodes.ShCommand(tokenScanScript, rt.Config.kubeletRoot()), nil)
	if err != nil {
		return nil, fmt.Errorf("list the pods' service-account tokens on %s: %w", r.Name(), err)
	}
	return parseTokenScan(string(res.Stdout)), nil
}

// parseTokenScan reads tokenScanScript's output; lines it cannot read are
// skipped (a file that is not a token after all).
func parseTokenScan(out string) []podToken {
	var toks []podToken
	for _, line := range strings.Split(out, "\n") {
		p, jwt, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		kid, err := pki.TokenKeyID(jwt)
		if err != nil {
			continue
		}
		tok := podToken{Path: p, KeyID: kid}
		if _, claims, ok := strings.Cut(jwt, "."); ok {
			if raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(claims, "=")); err == nil {
				var c struct {
					Iat int64 `json:"iat"`
					K8s struct {
						Namespace string `json:"namespace"`
						Pod       struct {
							Name string `json:"name"`
						} `json:"pod"`
					} `json:"kubernetes.io"`
				}
				if json.Unmarshal(raw, &c) == nil {
					tok.IssuedAt = time.Unix(c.Iat, 0)
					if c.K8s.Pod.Name != "" {
						tok.Pod = c.K8s.Namespace + "/" + c.K8s.Pod.Name
					}
				}
			}
		}
		toks = append(toks, tok)
	}
	return toks
}

func (t podToken) String() string {
	if t.Pod != "" {
		return "pod " + t.Pod
	}
	return t.Path
}

// tokensSignedBy waits, on every node at once (bounded like the other
// fan-outs), until no projected token is signed by one of the keys in
// stale; a kubelet whose tokens still are is
// restarted once (a restarted kubelet requests every running pod's token
// anew) and waited for. Then it waits until tokenSettle after the newest
// token signed by a key of want, so that clients caching their token file
// have read the re-issued one. which is "new" or "old", for messages.
func (rt *Runtime) tokensSignedBy(ctx context.Context, want, stale []string, which string) error {
	var (
		mu     sync.Mutex
		newest time.Time
		errs   *multierror.Error
	)
	names := rt.Config.nodeNames()
	forEachBounded(len(names), tokenScanConcurrency, func(i int) {
		last, err := rt.nodeTokensSignedBy(ctx, names[i], want, stale, which)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = multierror.Append(errs, err)
		}
		if last.After(newest) {
			newest = last
		}
	})
	if err := errs.ErrorOrNil(); err != nil {
		return err
	}
	until := newest.Add(tokenSettle)
	if max := rt.now().Add(tokenSettle); until.After(max) {
		until = max // the apiserver's clock ahead of ours
	}
	if wait := until.Sub(rt.now()); wait > 0 {
		rt.Printf("every token is signed by the %s key; waiting %s more (until %s) for clients that re-read their token file once a minute",
			which, wait.Round(time.Second), until.Format(time.TimeOnly))
	}
	return rt.waitFor(ctx, fmt.Sprintf("clients to re-read the tokens re-issued by the %s key (until %s)", which, until.Format(time.RFC3339)), func(context.Context) (bool, string, error) {
		if rt.now().Before(until) {
			return false, "a client re-reads its token file once a minute", nil
		}
		return true, "", nil
	})
}

// nodeTokensSignedBy is tokensSignedBy on one node; it returns when the
// newest token of a wanted key was issued.
func (rt *Runtime) nodeTokensSignedBy(ctx context.Context, n string, want, stale []string, which string) (time.Time, error) {
	r, err := rt.node(ctx, Target{Node: n})
	if err != nil {
		return time.Time{}, err
	}
	restarted := false
	var newest time.Time
	err = rt.waitFor(ctx, fmt.Sprintf("every pod's service-account token on %s to be signed by the %s key", n, which), func(ctx context.Context) (bool, string, error) {
		toks, err := rt.scanTokens(ctx, r)
		if err != nil {
			return false, err.Error(), nil
		}
		var old []string
		newest = time.Time{}
		for _, tk := range toks {
			switch {
			case slices.Contains(stale, tk.KeyID):
				old = append(old, tk.String())
			case slices.Contains(want, tk.KeyID) && tk.IssuedAt.After(newest):
				newest = tk.IssuedAt
			}
		}
		if len(old) == 0 {
			return true, "", nil
		}
		sort.Strings(old)
		why := fmt.Sprintf("%d token(s) signed by the other key: %s", len(old), strings.Join(old, ", "))
		if !restarted {
			rt.Printf("%s: %s; restarting the kubelet so that it requests them anew", n, why)
			if err := rt.restartKubelet(ctx, r); err != nil {
				return false, "", err
			}
			restarted = true
			if err := rt.gateKubelet(ctx, n); err != nil {
				return false, "", err
			}
		}
		return false, why, nil
	})
	return newest, err
}

// legacyTokenSecrets names the Secrets of type
// kubernetes.io/service-account-token whose token the given key ids signed.
func (rt *Runtime) legacyTokenSecrets(ctx context.Context, ids []string) ([]string, error) {
	list, err := rt.Kube.CoreV1().Secrets("").List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretTypeServiceAccountToken)})
	if err != nil {
		return nil, fmt.Errorf("list service-account token Secrets: %w", err)
	}
	var out []string
	for _, s := range list.Items {
		if s.Type != corev1.SecretTypeServiceAccountToken {
			continue
		}
		kid, err := pki.TokenKeyID(string(s.Data["token"]))
		if err != nil || !slices.Contains(ids, kid) {
			continue
		}
		out = append(out, s.Namespace+"/"+s.Name)
	}
	sort.Strings(out)
	return out, nil
}

// saHoldLines are the hold report's lines about the service-account key.
func (rt *Runtime) saHoldLines(ctx context.Context) ([]string, error) {
	if !rt.Config.ServiceAccount {
		return nil, nil
	}
	k, err := rt.saKeys(ctx)
	if err != nil {
		return nil, err
	}
	lines := []string{"service-account key: apiservers accept tokens of the old key (" + strings.Join(k.oldIDs, ", ") + ") and the new (" + k.newID + ") and publish both in /openid/v1/jwks; " +
		"anything outside the cluster that verifies service-account tokens with the published keys (OIDC federation to a cloud's IAM, Vault's kubernetes auth with a copied key) must have the new key before trust narrows"}
	stale, err := rt.oldKeyPodTokens(ctx, k.oldIDs)
	if err != nil {
		return nil, err
	}
	if len(stale) > 0 {
		lines = append(lines, fmt.Sprintf("pods still hold service-account tokens signed by the old key (%s): service-account-tokens restarts those nodes' kubelets before trust narrows, which re-issues them", short(stale)))
	}
	secrets, err := rt.legacyTokenSecrets(ctx, k.oldIDs)
	if err != nil {
		return nil, err
	}
	if len(secrets) > 0 {
		lines = append(lines, fmt.Sprintf("%d legacy token Secret(s) hold a token signed by the old service-account key and stop working when trust narrows (the controller-manager does not re-sign them): %s; "+
			"to have it sign a new one, remove the Secret's token (kubectl patch secret -n <ns> <name> --type=json -p '[{\"op\":\"remove\",\"path\":\"/data/token\"}]') and hand the new token to whoever uses it",
			len(secrets), short(secrets)))
	}
	return lines, nil
}

// oldKeyPodTokens names, per node, the pods whose projected tokens a key
// of ids signed ("node: pod", or the token's path). A node that cannot be
// read is named too: its tokens are unknown.
func (rt *Runtime) oldKeyPodTokens(ctx context.Context, ids []string) ([]string, error) {
	names := rt.Config.nodeNames()
	per := make([][]string, len(names)) // node order, whatever finishes first
	errs := make([]error, len(names))
	forEachBounded(len(names), tokenScanConcurrency, func(i int) {
		n := names[i]
		r, err := rt.node(ctx, Target{Node: n})
		if err != nil {
			errs[i] = err
			return
		}
		toks, err := rt.scanTokens(ctx, r)
		if err != nil {
			per[i] = []string{fmt.Sprintf("%s: tokens not read: %v", n, err)}
			return
		}
		for _, tk := range toks {
			if slices.Contains(ids, tk.KeyID) {
				per[i] = append(per[i], n+": "+tk.String())
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return slices.Concat(per...), nil
}

// tokenScanConcurrency bounds the nodes whose token files are read (and
// whose kubelets may restart) at once.
const tokenScanConcurrency = 8

// kubeletRoot is the kubelet's root directory (where pods' volumes are).
func (c *Config) kubeletRoot() string { return path.Dir(c.Paths.KubeletConfig) }
