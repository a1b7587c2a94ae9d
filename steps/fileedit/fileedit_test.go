package fileedit

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
)

// TestPlanRestore: what a revert restores before the restart gates and
// what after, decided by content (see PlanRestore).
func TestPlanRestore(t *testing.T) {
	ctx := context.Background()
	mk := func(cn string) *pki.CA {
		ca, err := pki.NewCA(pki.CAOptions{CommonName: cn})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	leaf := func(ca *pki.CA) *pki.Issued {
		is, err := pki.Reissue(&x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}}, ca, pki.ReissueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	c0, c1 := mk("kubernetes"), mk("kubernetes-new")
	l0, l1 := leaf(c0), leaf(c1)
	pub := func(ca *pki.CA) string {
		p, err := pki.PublicKeyPEM(ca.Key.Public())
		if err != nil {
			t.Fatal(err)
		}
		return string(p)
	}
	saPub, saKey := "/etc/kubernetes/pki/sa.pub", "/etc/kubernetes/pki/sa.key"
	b := string(c0.CertPEM) + string(c1.CertPEM)
	const (
		ca, caKey, bundle = "/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/pki/ca.key", "/etc/kubernetes/pki/rotate-ca-bundle.crt"
		crt, key          = "/etc/kubernetes/pki/apiserver.crt", "/etc/kubernetes/pki/apiserver.key"
		conf, manifest    = "/etc/kubernetes/admin.conf", "/etc/kubernetes/manifests/kube-apiserver.yaml"
		link, pem0, pem1  = "/var/lib/kubelet/pki/kubelet-client-current.pem", "/var/lib/kubelet/pki/kubelet-client-0.pem", "/var/lib/kubelet/pki/kubelet-client-1.pem"
	)
	// Node states: path -> content; "" is no file, "-> p" a link to p.
	tests := []struct {
		name          string
		before, after map[string]string
		edited        []string // edit order; a path not backed up is not the step's
		early, late   []string
	}{
		{name: "narrowed CA after its key, after everything else",
			before: map[string]string{ca: string(c0.CertPEM), caKey: string(c0.KeyPEM), manifest: "client-ca-file: bundle", conf: "ca: B"},
			after:  map[string]string{ca: string(c1.CertPEM), caKey: string(c1.KeyPEM), manifest: "client-ca-file: ca.crt", conf: "ca: C1"},
			edited: []string{ca, caKey, manifest, conf},
			early:  []string{conf, manifest}, late: []string{caKey, ca}},
		{name: "a bundle losing the new CA narrows",
			before: map[string]string{ca: string(c0.CertPEM)}, after: map[string]string{ca: b},
			edited: []string{ca}, late: []string{ca}},
		{name: "a bundle gaining a CA back widens",
			before: map[string]string{bundle: b}, after: map[string]string{bundle: string(c1.CertPEM)},
			edited: []string{bundle}, early: []string{bundle}},
		{name: "leaf certificates and keys before the manifest",
			before: map[string]string{crt: string(l0.CertPEM), key: string(l0.KeyPEM), manifest: "signer: ca.crt"},
			after:  map[string]string{crt: string(l1.CertPEM), key: string(l1.KeyPEM), manifest: "signer: rotate-ca.crt"},
			edited: []string{crt, key, manifest}, early: []string{key, crt, manifest}},
		{name: "a removal goes last, a link repointed at a leaf early",
			before: map[string]string{link: "-> " + pem0, pem0: string(l0.CertPEM) + string(l0.KeyPEM)},
			after:  map[string]string{link: "-> " + pem1, pem0: string(l0.CertPEM) + string(l0.KeyPEM), pem1: string(l1.CertPEM) + string(l1.KeyPEM)},
			edited: []string{pem1, link}, early: []string{link}, late: []string{pem1}},
		{name: "removing a CA and its key: both late, the key first",
			before: map[string]string{}, after: map[string]string{"/etc/kubernetes/pki/rotate-ca.crt": string(c1.CertPEM), "/etc/kubernetes/pki/rotate-ca.key": string(c1.KeyPEM)},
			edited: []string{"/etc/kubernetes/pki/rotate-ca.crt", "/etc/kubernetes/pki/rotate-ca.key"},
			late:   []string{"/etc/kubernetes/pki/rotate-ca.key", "/etc/kubernetes/pki/rotate-ca.crt"}},
		{name: "sa.pub losing the new service-account key narrows; sa.key early",
			before: map[string]string{saPub: pub(c0), saKey: string(c0.KeyPEM), manifest: "key-file: bundle"},
			after:  map[string]string{saPub: pub(c1), saKey: string(c1.KeyPEM), manifest: "key-file: sa.pub"},
			edited: []string{saKey, saPub, manifest},
			early:  []string{saKey, manifest}, late: []string{saPub}},
		{name: "a key file gaining the old key back widens",
			before: map[string]string{saPub: pub(c0) + pub(c1)}, after: map[string]string{saPub: pub(c1)},
			edited: []string{saPub}, early: []string{saPub}},
		{name: "in place already, or never the step's: nothing",
			before: map[string]string{ca: string(c0.CertPEM), conf: "a"}, after: map[string]string{ca: string(c0.CertPEM), conf: "b"},
			edited: []string{ca}},
	}
	set := func(r *nodes.MemRunner, files map[string]string) {
		for p, v := range files {
			switch {
			case v == "":
				_ = r.Remove(ctx, p)
			case strings.HasPrefix(v, "-> "):
				r.SetSymlink(strings.TrimPrefix(v, "-> "), p)
			default:
				r.SetFile(p, []byte(v), 0o644)
			}
		}
	}
	paths := func(bs []nodes.Backup) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.Path)
		}
		return out
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := nodes.NewMemBackupStore()
			r := nodes.NewMemRunner("cp1")
			set(r, tt.before)
			for _, p := range tt.edited {
				if _, err := nodes.BackupFile(ctx, r, store, "/var/lib/rotate/backups", "r1.test", p); err != nil {
					t.Fatal(err)
				}
			}
			set(r, tt.after)
			st, err := PlanRestore(ctx, r, store, "/etc/kubernetes/manifests", tt.edited)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(paths(st.Early), " "), strings.Join(tt.early, " "); got != want {
				t.Errorf("early\n got %s\nwant %s", got, want)
			}
			if got, want := strings.Join(paths(st.Late), " "), strings.Join(tt.late, " "); got != want {
				t.Errorf("late\n got %s\nwant %s", got, want)
			}
		})
	}
}
