package steps

import (
	"context"
	"crypto/x509"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/pki"
)

// What else in the cluster trusts or presents the old CAs: Secrets and
// ConfigMaps that carry an old CA certificate, or a certificate one of them
// issued, in any data key. Rotate does not change them (it cannot know
// what reads them); verify lists them in the hold report, naming the
// object and the key only, never a value.

// rotateManagedConfigMaps are the ConfigMaps rotate (or the control plane
// it drives) rewrites itself: kube-root-ca.crt in every namespace (the
// controller-manager republishes it from --root-ca-file), and the two
// kubeadm/apiserver ones phase 2, 9 and 12 edit.
var rotateManagedConfigMaps = map[string]bool{
	"kube-system/extension-apiserver-authentication": true,
	"kube-public/cluster-info":                       true,
}

// oldCACarriers lists every Secret and ConfigMap key outside those rotate
// manages whose PEM holds an old CA, or a certificate an old CA issued, as
// one line each. Legacy service-account token Secrets are left out: the
// controller-manager's token controller rewrites their ca.crt, and
// root-ca-published/root-ca-narrowed wait for it.
func (rt *Runtime) oldCACarriers(ctx context.Context) ([]string, error) {
	olds, err := rt.oldCAs(ctx)
	if err != nil {
		return nil, err
	}
	if rt.Config.Etcd {
		// etcd's clients outside the control plane (a monitoring stack's
		// client certificate and CA in a Secret) break when the members
		// narrow to the new etcd CA.
		pair, err := rt.caPair(ctx, CAEtcd)
		if err != nil {
			return nil, err
		}
		e, err := parseOldCA(pair)
		if err != nil {
			return nil, err
		}
		olds = append(olds, e)
	}
	var out []string
	scan := func(kind, ns, name, key string, data []byte) {
		if line := oldCAInPEM(data, olds); line != "" {
			out = append(out, fmt.Sprintf("%s %s/%s key %s %s", kind, ns, name, key, line))
		}
	}
	secrets, err := rt.Kube.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list secrets: %w", err)
	}
	for _, s := range secrets.Items {
		if s.Type == corev1.SecretTypeServiceAccountToken {
			continue
		}
		for k, v := range s.Data {
			scan("Secret", s.Namespace, s.Name, k, v)
		}
	}
	cms, err := rt.Kube.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list configmaps: %w", err)
	}
	for _, cm := range cms.Items {
		if cm.Name == "kube-root-ca.crt" || rotateManagedConfigMaps[cm.Namespace+"/"+cm.Name] {
			continue
		}
		for k, v := range cm.Data {
			scan("ConfigMap", cm.Namespace, cm.Name, k, []byte(v))
		}
		for k, v := range cm.BinaryData {
			scan("ConfigMap", cm.Namespace, cm.Name, k, v)
		}
	}
	sort.Strings(out)
	return out, nil
}

// oldCAs are the run's cluster and front-proxy CAs, parsed.
func (rt *Runtime) oldCAs(ctx context.Context) ([]oldCA, error) {
	cas, err := rt.runCAs(ctx)
	if err != nil {
		return nil, err
	}
	var out []oldCA
	for _, p := range []CAPair{cas.cluster, cas.frontProxy} {
		o, err := parseOldCA(p)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, nil
}

func parseOldCA(p CAPair) (oldCA, error) {
	o, err := pki.ParseCertsPEM(p.OldCert)
	if err != nil {
		return oldCA{}, fmt.Errorf("old %s CA: %w", p.Name, err)
	}
	n, err := pki.ParseCertsPEM(p.NewCert)
	if err != nil {
		return oldCA{}, fmt.Errorf("new %s CA: %w", p.Name, err)
	}
	return oldCA{name: p.Name, old: o, new: n}, nil
}

// oldCA is one of the run's CAs: its name, the old certificates (ca.crt
// as the run found it) and the new.
type oldCA struct {
	name     string
	old, new []*x509.Certificate
}

// oldCAInPEM says what data holds of the old CAs, or "" for nothing: an
// old CA certificate itself (and whether its successor is there too), or a
// certificate one issued. Data that is not PEM holds nothing.
func oldCAInPEM(data []byte, cas []oldCA) string {
	certs, _ := pki.ScanPEM(data)
	if len(certs) == 0 {
		return ""
	}
	has := map[string]bool{}
	for _, c := range certs {
		has[pki.Fingerprint(c)] = true
	}
	holds := func(cs []*x509.Certificate) bool {
		for _, c := range cs {
			if has[pki.Fingerprint(c)] {
				return true
			}
		}
		return false
	}
	for _, ca := range cas {
		if holds(ca.old) {
			if holds(ca.new) {
				return fmt.Sprintf("holds the old %s CA next to the new one: remove the old one after narrowing", ca.name)
			}
			return fmt.Sprintf("holds the old %s CA, not the new one: add the new CA before resuming", ca.name)
		}
	}
	for _, ca := range cas {
		for _, o := range ca.old {
			for _, c := range certs {
				if pki.IssuedBy(c, o) {
					return fmt.Sprintf("holds %s, issued by the old %s CA: re-issue it from the new CA before resuming", pki.Describe(c), ca.name)
				}
			}
		}
	}
	return ""
}
