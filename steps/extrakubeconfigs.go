package steps

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/steps/fileedit"
)

// Extra kubeconfigs are kubeconfig files on the nodes besides kubeadm's
// (Config.ExtraKubeconfigs, from the inventory's extraKubeconfigs): other
// tools', operators'. They go through the rotation like the control
// plane's kubeconfigs:
//
//   - preflight (PrepareCerts) re-issues, from the new cluster CA, every
//     embedded client certificate in them that the old cluster CA issued
//     (same subject, groups and usages), once, into the store;
//   - extra-kubeconfigs (phase 7) adds the new CA to every cluster entry
//     whose certificate-authority-data holds the old one and writes the
//     prepared client certificates;
//   - extra-kubeconfigs-narrowed (phase 12) takes the old CA out of the
//     CA data where the new one is there too.
//
// Both are NodeEdits: every file is backed up before it is written and
// reverted from the backup. Entries for other clusters (CA data without
// the old CA) are left alone, as are CA and client certificate file
// references (preflight names a referenced client certificate the old CA
// issued: rotate does not rewrite files it was not told about). Nothing
// is restarted: the tools that read these files load them at their start.

// extraKey is the store key of user's prepared client certificate (ext
// ".crt") or key (".key") for the extra kubeconfig file on node.
func extraKey(node, file, user, ext string) string {
	return prepKey(node, "extra-kubeconfig"+file+"#"+user+ext)
}

// prepareExtraKubeconfigs is PrepareCerts' part for t's extra
// kubeconfigs; newCA is the new cluster CA. A listed file that is missing
// is an error: the inventory names it.
func (rt *Runtime) prepareExtraKubeconfigs(ctx context.Context, r nodes.Runner, t Target, newCA *pki.CA) error {
	paths := rt.Config.ExtraKubeconfigs[t.Node]
	if len(paths) == 0 {
		return nil
	}
	old, err := rt.oldClusterCA(ctx)
	if err != nil {
		return err
	}
	for _, p := range paths {
		raw, err := r.ReadFile(ctx, p)
		if err != nil {
			return fmt.Errorf("extra kubeconfig %s on %s (inventory extraKubeconfigs): %w", p, t.Node, err)
		}
		users, err := edit.KubeconfigUsers(raw)
		if err != nil {
			return fmt.Errorf("extra kubeconfig %s on %s: %w", p, t.Node, err)
		}
		for _, u := range users {
			cert, file, err := oldClientCert(raw, u, old)
			if err != nil {
				return fmt.Errorf("extra kubeconfig %s on %s: %w", p, t.Node, err)
			}
			if file != "" {
				if err := rt.noteOldClientCertFile(ctx, r, t, p, u, file, old); err != nil {
					return err
				}
				continue
			}
			if cert == nil {
				continue
			}
			is, err := pki.Reissue(cert, newCA, pki.ReissueOptions{})
			if err != nil {
				return fmt.Errorf("re-issue the client certificate of user %q in %s on %s: %w", u, p, t.Node, err)
			}
			rt.Out.Put(extraKey(t.Node, p, u, ".crt"), is.CertPEM)
			rt.Out.Put(extraKey(t.Node, p, u, ".key"), is.KeyPEM)
		}
	}
	return nil
}

// noteOldClientCertFile prints, for a user whose client certificate is the
// file certFile, that the old CA issued it and rotate leaves it.
func (rt *Runtime) noteOldClientCertFile(ctx context.Context, r nodes.Runner, t Target, kc, user, certFile string, old []*x509.Certificate) error {
	raw, err := r.ReadFile(ctx, certFile)
	if err != nil {
		return fmt.Errorf("extra kubeconfig %s on %s: user %q's client certificate: %w", kc, t.Node, user, err)
	}
	certs, _ := pki.ScanPEM(raw)
	if len(certs) > 0 && issuedByAny(certs[0], old) {
		rt.Printf("attention: extra kubeconfig %s on %s: user %q's client certificate %s is from the old CA and a file reference; rotate re-issues only embedded ones: replace it before trust narrows", kc, t.Node, user, certFile)
	}
	return nil
}

// oldClusterCA is the old cluster CA's certificates.
func (rt *Runtime) oldClusterCA(ctx context.Context) ([]*x509.Certificate, error) {
	pair, err := rt.caPair(ctx, CACluster)
	if err != nil {
		return nil, err
	}
	return pki.ParseCertsPEM(pair.OldCert)
}

func issuedByAny(c *x509.Certificate, cas []*x509.Certificate) bool {
	for _, ca := range cas {
		if pki.IssuedBy(c, ca) {
			return true
		}
	}
	return false
}

// oldClientCert returns user's embedded client certificate in kc if one
// of old issued it, or the file it references (whoever issued it); nil
// and "" for a user with other credentials or a certificate from another
// CA.
func oldClientCert(kc []byte, user string, old []*x509.Certificate) (*x509.Certificate, string, error) {
	cc, err := edit.KubeconfigClientCert(kc, user)
	if errors.Is(err, edit.ErrNoClientCert) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	if len(cc.CertPEM) == 0 {
		return nil, cc.CertFile, nil
	}
	certs, err := pki.ParseCertsPEM(cc.CertPEM)
	if err != nil {
		return nil, "", fmt.Errorf("user %q: client certificate: %w", user, err)
	}
	if !issuedByAny(certs[0], old) {
		return nil, "", nil
	}
	return certs[0], "", nil
}

// ExtraKubeconfigs gives the extra kubeconfigs the new CA next to the old
// one and client certificates from the new CA (see above).
func ExtraKubeconfigs() *NodeEdit {
	return &NodeEdit{StepName: "extra-kubeconfigs", Short: "extra kubeconfigs: CA bundle, client certs from the new CA",
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			return rt.extraKubeconfigEdits(ctx, t, widenPEM, true)
		}}
}

// ExtraKubeconfigsNarrowed takes the old CA out of the extra kubeconfigs'
// CA data (see above).
func ExtraKubeconfigsNarrowed() *NodeEdit {
	return &NodeEdit{StepName: "extra-kubeconfigs-narrowed", Short: "extra kubeconfigs trust only the new CA",
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			return rt.extraKubeconfigEdits(ctx, t, narrowPEM, false)
		}}
}

// extraKubeconfigEdits edits every extra kubeconfig of t: caEdit on each
// embedded CA data with the cluster CA pair, and, with certs, the prepared
// client certificate for every user whose embedded one the old CA issued.
func (rt *Runtime) extraKubeconfigEdits(ctx context.Context, t Target, caEdit func([]byte, CAPair) ([]byte, error), certs bool) ([]fileedit.Edit, error) {
	paths := rt.Config.ExtraKubeconfigs[t.Node]
	if len(paths) == 0 {
		return nil, nil
	}
	pair, err := rt.caPair(ctx, CACluster)
	if err != nil {
		return nil, err
	}
	old, err := pki.ParseCertsPEM(pair.OldCert)
	if err != nil {
		return nil, err
	}
	var edits []fileedit.Edit
	for _, p := range paths {
		edits = append(edits, fileedit.Edit{Path: p, Fn: func(cur []byte, exists bool) ([]byte, bool, error) {
			if !exists {
				return nil, false, fmt.Errorf("%s is missing (inventory extraKubeconfigs)", p)
			}
			b, _, err := edit.MapKubeconfigCAData(cur, func(_ string, ca []byte) ([]byte, error) { return caEdit(ca, pair) })
			if err != nil || !certs {
				return b, false, err
			}
			users, err := edit.KubeconfigUsers(b)
			if err != nil {
				return nil, false, err
			}
			for _, u := range users {
				c, _, err := oldClientCert(b, u, old)
				if err != nil {
					return nil, false, err
				}
				if c == nil {
					continue
				}
				// ctx is Apply's: the edit runs within it.
				crt, ok1, err := rt.Store.Value(ctx, extraKey(t.Node, p, u, ".crt"))
				if err != nil {
					return nil, false, err
				}
				key, ok2, err := rt.Store.Value(ctx, extraKey(t.Node, p, u, ".key"))
				if err != nil {
					return nil, false, err
				}
				if !ok1 || !ok2 {
					return nil, false, fmt.Errorf("user %q has a client certificate from the old CA that preflight did not see (added since): give it one from the new CA yourself, or roll back", u)
				}
				if b, err = edit.SetKubeconfigClientCert(b, u, crt, key); err != nil {
					return nil, false, err
				}
			}
			return b, false, nil
		}})
	}
	return edits, nil
}
