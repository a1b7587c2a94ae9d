package steps

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cluster-bootstrap/token/jws"

	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
)

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// waitStep is a cluster step that changes nothing itself: it waits for a
// condition the cluster reaches on its own (a controller republishing).
type waitStep struct {
	name  string
	short string
	cond  func(ctx context.Context, rt *Runtime) (bool, string, error)
	// after is called once the condition holds (Gate), to record outputs.
	after func(ctx context.Context, rt *Runtime)
}

func (s *waitStep) Name() string { return s.name }
func (s *waitStep) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	ok, _, err := s.cond(ctx, rt)
	return ok, err
}
func (s *waitStep) Apply(ctx context.Context, rt *Runtime, t Target) error { return nil }
func (s *waitStep) Gate(ctx context.Context, rt *Runtime, t Target) error {
	if err := rt.waitFor(ctx, s.short, func(ctx context.Context) (bool, string, error) { return s.cond(ctx, rt) }); err != nil {
		return err
	}
	if s.after != nil {
		s.after(ctx, rt)
	}
	return nil
}
func (s *waitStep) Revert(ctx context.Context, rt *Runtime, t Target) error { return nil }
func (s *waitStep) OnlyLooks()                                              {}
func (s *waitStep) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	return []string{"wait until " + s.short}, nil
}

const keyPublishedAt = "report/root-ca-published-at"

// RootCAPublished waits until the controller-manager has published B in
// every namespace's kube-root-ca.crt and every legacy token Secret.
func RootCAPublished() Step {
	return &waitStep{name: "root-ca-published", short: "kube-root-ca.crt and token Secrets hold old+new CA",
		cond: func(ctx context.Context, rt *Runtime) (bool, string, error) {
			b, _, err := rt.bundles(ctx)
			if err != nil {
				return false, "", err
			}
			return rt.rootCAPublished(ctx, b)
		},
		after: func(ctx context.Context, rt *Runtime) {
			rt.Out.Put(keyPublishedAt, []byte(rt.now().UTC().Format(time.RFC3339)))
		}}
}

// RootCANarrowed waits until only the new CA is published.
func RootCANarrowed() Step {
	return &waitStep{name: "root-ca-narrowed", short: "kube-root-ca.crt and token Secrets hold only the new CA",
		cond: func(ctx context.Context, rt *Runtime) (bool, string, error) {
			cl, err := rt.caPair(ctx, CACluster)
			if err != nil {
				return false, "", err
			}
			return rt.rootCAPublished(ctx, cl.NewCert)
		}}
}

// ExtensionAuthWidened waits until every apiserver has merged the new
// client CA and front-proxy CA into extension-apiserver-authentication,
// which aggregated API servers read before trusting the front proxy.
func ExtensionAuthWidened() Step {
	return &waitStep{name: "extension-auth-widened", short: "extension-apiserver-authentication holds the new CAs",
		cond: func(ctx context.Context, rt *Runtime) (bool, string, error) {
			cas, err := rt.runCAs(ctx)
			if err != nil {
				return false, "", err
			}
			cl, fp := cas.cluster, cas.frontProxy
			cm, err := rt.Kube.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
			if err != nil {
				return false, err.Error(), nil
			}
			if !bundleHas(cm.Data["client-ca-file"], cl.NewCert) {
				return false, "client-ca-file lacks the new CA", nil
			}
			if !bundleHas(cm.Data["requestheader-client-ca-file"], fp.NewCert) {
				return false, "requestheader-client-ca-file lacks the new front-proxy CA", nil
			}
			return true, "", nil
		}}
}

func bundleHas(bundle string, certPEM []byte) bool {
	have, err := pki.BundleFingerprints([]byte(bundle))
	if err != nil {
		return false
	}
	want, err := pki.BundleFingerprints(certPEM)
	if err != nil {
		return false
	}
	set := map[string]bool{}
	for _, h := range have {
		set[h] = true
	}
	for _, w := range want {
		if !set[w] {
			return false
		}
	}
	return true
}

// configMapDataStep sets some keys of a ConfigMap, with a backup.
type configMapDataStep struct {
	name, short, namespace, cmName string
	want                           func(ctx context.Context, rt *Runtime, cur map[string]string) (map[string]string, error)
	gate                           func(ctx context.Context, rt *Runtime) (bool, string, error)
}

func (s *configMapDataStep) Name() string { return s.name }
func (s *configMapDataStep) id() string   { return "configmaps/" + s.namespace + "/" + s.cmName }

func (s *configMapDataStep) get(ctx context.Context, rt *Runtime) (*corev1.ConfigMap, map[string]string, error) {
	cm, err := rt.Kube.CoreV1().ConfigMaps(s.namespace).Get(ctx, s.cmName, metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("get %s: %w", s.id(), err)
	}
	want, err := s.want(ctx, rt, cm.Data)
	return cm, want, err
}

func (s *configMapDataStep) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	cm, want, err := s.get(ctx, rt)
	if err != nil {
		return false, err
	}
	for k, v := range want {
		if cm.Data[k] != v {
			return false, nil
		}
	}
	return true, nil
}

// backup saves what the keys Apply sets hold now; changed says whether
// Apply would change any of them.
func (s *configMapDataStep) backup(ctx context.Context, rt *Runtime) (cm *corev1.ConfigMap, want map[string]string, changed bool, err error) {
	cm, want, err = s.get(ctx, rt)
	if err != nil {
		return nil, nil, false, err
	}
	old := map[string]string{}
	for k, v := range want {
		old[k] = cm.Data[k]
		changed = changed || cm.Data[k] != v
	}
	if !changed {
		return cm, want, false, nil
	}
	if err := rt.backupAPIData(ctx, s.id(), old); err != nil {
		return nil, nil, false, fmt.Errorf("back up %s: %w", s.id(), err)
	}
	return cm, want, true, nil
}

// TakeBackups: see EarlyBackup.
func (s *configMapDataStep) TakeBackups(ctx context.Context, rt *Runtime, t Target) error {
	_, _, _, err := s.backup(ctx, rt)
	return err
}

func (s *configMapDataStep) Apply(ctx context.Context, rt *Runtime, t Target) error {
	cm, want, changed, err := s.backup(ctx, rt)
	if err != nil || !changed {
		return err
	}
	for k, v := range want {
		cm.Data[k] = v
	}
	if _, err := rt.Kube.CoreV1().ConfigMaps(s.namespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update %s: %w", s.id(), err)
	}
	return nil
}

func (s *configMapDataStep) Gate(ctx context.Context, rt *Runtime, t Target) error {
	if s.gate == nil {
		return nil
	}
	return rt.waitFor(ctx, s.short, func(ctx context.Context) (bool, string, error) { return s.gate(ctx, rt) })
}

func (s *configMapDataStep) Revert(ctx context.Context, rt *Runtime, t Target) error {
	var old map[string]string
	ok, err := rt.loadAPIBackup(ctx, s.id(), &old)
	if err != nil || !ok {
		return err
	}
	cm, err := rt.Kube.CoreV1().ConfigMaps(s.namespace).Get(ctx, s.cmName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get %s: %w", s.id(), err)
	}
	same := true
	for k, v := range old {
		if cm.Data[k] != v {
			same = false
		}
		cm.Data[k] = v
	}
	if same {
		return nil
	}
	if _, err := rt.Kube.CoreV1().ConfigMaps(s.namespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("restore %s: %w", s.id(), err)
	}
	return nil
}

func (s *configMapDataStep) RevertGate(ctx context.Context, rt *Runtime, t Target) error {
	return s.Gate(ctx, rt, t)
}

func (s *configMapDataStep) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	_, want, err := s.get(ctx, rt)
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return []string{fmt.Sprintf("update ConfigMap %s/%s keys %s", s.namespace, s.cmName, strings.Join(keys, ", "))}, nil
}

// ExtensionAuthNarrowed rewrites extension-apiserver-authentication to the
// new CAs only: apiservers merge their CAs into it and never drop one that
// has not expired, so nobody else would.
func ExtensionAuthNarrowed() Step {
	return &configMapDataStep{name: "extension-auth-narrowed", short: "extension-apiserver-authentication holds only the new CAs",
		namespace: metav1.NamespaceSystem, cmName: "extension-apiserver-authentication",
		want: func(ctx context.Context, rt *Runtime, cur map[string]string) (map[string]string, error) {
			cas, err := rt.runCAs(ctx)
			if err != nil {
				return nil, err
			}
			cl, fp := cas.cluster, cas.frontProxy
			return map[string]string{"client-ca-file": string(cl.NewCert), "requestheader-client-ca-file": string(fp.NewCert)}, nil
		}}
}

// ClusterInfo points kube-public/cluster-info at the new CA; the
// controller-manager's bootstrap signer recomputes the JWS signatures,
// which the gate verifies against the bootstrap tokens.
func ClusterInfo() Step {
	return &configMapDataStep{name: "cluster-info", short: "cluster-info JWS signatures match its new content",
		namespace: metav1.NamespacePublic, cmName: "cluster-info",
		want: func(ctx context.Context, rt *Runtime, cur map[string]string) (map[string]string, error) {
			cl, err := rt.caPair(ctx, CACluster)
			if err != nil {
				return nil, err
			}
			kc, ok := cur["kubeconfig"]
			if !ok {
				return nil, fmt.Errorf("cluster-info has no kubeconfig key")
			}
			b, err := edit.SetKubeconfigCA([]byte(kc), cl.NewCert)
			if err != nil {
				return nil, fmt.Errorf("cluster-info kubeconfig: %w", err)
			}
			return map[string]string{"kubeconfig": string(b)}, nil
		},
		gate: clusterInfoSigned}
}

func clusterInfoSigned(ctx context.Context, rt *Runtime) (bool, string, error) {
	cm, err := rt.Kube.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, "cluster-info", metav1.GetOptions{})
	if err != nil {
		return false, err.Error(), nil
	}
	content := cm.Data["kubeconfig"]
	for k, sig := range cm.Data {
		id, ok := strings.CutPrefix(k, "jws-kubeconfig-")
		if !ok {
			continue
		}
		sec, err := rt.Kube.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Sprintf("bootstrap token %s: %v", id, err), nil
		}
		if !jws.DetachedTokenIsValid(sig, content, id, string(sec.Data["token-secret"])) {
			return false, "signature " + k + " not yet recomputed", nil
		}
	}
	return true, "", nil
}

// DiscoveryHash prints the new --discovery-token-ca-cert-hash.
type DiscoveryHash struct{ readOnly }

func (DiscoveryHash) Name() string { return "discovery-hash" }

func (DiscoveryHash) Apply(ctx context.Context, rt *Runtime, t Target) error {
	cl, err := rt.caPair(ctx, CACluster)
	if err != nil {
		return err
	}
	certs, err := pki.ParseCertsPEM(cl.NewCert)
	if err != nil {
		return err
	}
	h := DiscoveryTokenCAHash(certs[0])
	rt.Out.Put("report/discovery-hash", []byte(h))
	rt.Printf("new join hash: --discovery-token-ca-cert-hash %s", h)
	return nil
}

// DiscoveryTokenCAHash is kubeadm's CA pin: sha256 of the SPKI.
func DiscoveryTokenCAHash(c *x509.Certificate) string {
	s := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(s[:])
}

// servingCert dials an apiserver's endpoint (host:port, see
// Config.APIServerEndpoint) and returns its leaf certificate.
func (rt *Runtime) servingCert(ctx context.Context, endpoint string) (*x509.Certificate, error) {
	host, _, _ := net.SplitHostPort(endpoint)
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: rt.Trust.TLSConfigFor(host)}
	conn, err := d.DialContext(ctx, "tcp", endpoint)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	st := conn.(*tls.Conn).ConnectionState()
	return st.PeerCertificates[0], nil
}

// ExtensionAuthSnapshot records extension-apiserver-authentication before
// the apiservers merge the new CAs into it, and puts it back on rollback —
// after the apiservers have been reverted (it runs before them, so it is
// reverted after them). Apiservers only ever add CAs to that ConfigMap,
// so without this a rolled-back cluster would keep trusting the new CAs
// for aggregated APIs.
func ExtensionAuthSnapshot() Step {
	s := &configMapDataStep{name: "extension-auth-snapshot", short: "extension-apiserver-authentication recorded",
		namespace: metav1.NamespaceSystem, cmName: "extension-apiserver-authentication",
		want: func(ctx context.Context, rt *Runtime, cur map[string]string) (map[string]string, error) {
			return map[string]string{"client-ca-file": cur["client-ca-file"], "requestheader-client-ca-file": cur["requestheader-client-ca-file"]}, nil
		}}
	return &snapshotStep{s}
}

// snapshotStep backs up a ConfigMap's keys without changing them.
type snapshotStep struct{ *configMapDataStep }

func (s *snapshotStep) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	var old map[string]string
	return rt.loadAPIBackup(ctx, s.id(), &old)
}

func (s *snapshotStep) Apply(ctx context.Context, rt *Runtime, t Target) error {
	_, want, err := s.get(ctx, rt)
	if err != nil {
		return err
	}
	return rt.backupAPIData(ctx, s.id(), want)
}

// TakeBackups: see EarlyBackup (the snapshot is the step's whole work).
func (s *snapshotStep) TakeBackups(ctx context.Context, rt *Runtime, t Target) error {
	return s.Apply(ctx, rt, t)
}

func (s *snapshotStep) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	return []string{"record ConfigMap " + s.namespace + "/" + s.cmName + " to restore it on rollback"}, nil
}
