package edit

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"go.yaml.in/yaml/v3"
)

// FileRefError reports a kubeconfig field that references a file instead of
// embedding data (certificate-authority, client-certificate, client-key).
// The caller edits the referenced file; this package never does.
type FileRefError struct {
	Field string // e.g. "certificate-authority"
	Name  string // cluster or user name
	Path  string
}

func (e *FileRefError) Error() string {
	return fmt.Sprintf("%s of %q references file %s instead of embedding data", e.Field, e.Name, e.Path)
}

// namedEntry finds list[*].name == name in a kubeconfig list (clusters,
// users, contexts) and returns the inner mapping (cluster, user, context).
func namedEntry(root *yaml.Node, list, inner, name string) (*yaml.Node, error) {
	l := get(root, list)
	if l == nil || l.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("kubeconfig has no %s", list)
	}
	var found *yaml.Node
	for _, e := range l.Content {
		if n := get(e, "name"); n != nil && n.Value == name {
			if found != nil {
				return nil, fmt.Errorf("kubeconfig has two %s named %q", list, name)
			}
			found = get(e, inner)
			if found == nil || found.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("%s entry %q has no %s", list, name, inner)
			}
		}
	}
	if found == nil {
		return nil, fmt.Errorf("kubeconfig has no %s entry named %q", strings.TrimSuffix(list, "s"), name)
	}
	return found, nil
}

// currentContext returns the context named by current-context, or the
// only context when current-context is unset.
func currentContext(root *yaml.Node) (*yaml.Node, error) {
	cur := get(root, "current-context")
	if cur != nil && cur.Value != "" {
		return namedEntry(root, "contexts", "context", cur.Value)
	}
	l := get(root, "contexts")
	if l != nil && l.Kind == yaml.SequenceNode && len(l.Content) == 1 {
		if c := get(l.Content[0], "context"); c != nil {
			return c, nil
		}
	}
	return nil, fmt.Errorf("kubeconfig has no current-context")
}

func decodeData(v *yaml.Node, field, name string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v.Value))
	if err != nil {
		return nil, fmt.Errorf("%s of %q is not valid base64", field, name)
	}
	return b, nil
}

// checkCertsPEM accepts PEM holding one or more CERTIFICATE blocks and
// nothing else.
func checkCertsPEM(b []byte, what string) error {
	rest := bytes.TrimSpace(b)
	n := 0
	for len(rest) > 0 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return fmt.Errorf("%s: not PEM (or trailing data after the certificates)", what)
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("%s: unexpected PEM block %q", what, blk.Type)
		}
		rest = bytes.TrimSpace(rest)
		n++
	}
	if n == 0 {
		return fmt.Errorf("%s: no certificate", what)
	}
	return nil
}

// KubeconfigCA returns the decoded certificate-authority-data (PEM) of the
// cluster of the current context. A cluster that references a CA file
// gives a *FileRefError carrying the path.
func KubeconfigCA(kc []byte) ([]byte, error) {
	doc, _, err := parse(kc, "kubeconfig")
	if err != nil {
		return nil, err
	}
	root := doc.Content[0]
	ctx, err := currentContext(root)
	if err != nil {
		return nil, err
	}
	cn := get(ctx, "cluster")
	if cn == nil || cn.Value == "" {
		return nil, fmt.Errorf("current context has no cluster")
	}
	cl, err := namedEntry(root, "clusters", "cluster", cn.Value)
	if err != nil {
		return nil, err
	}
	if v := get(cl, "certificate-authority-data"); v != nil && v.Value != "" {
		return decodeData(v, "certificate-authority-data", cn.Value)
	}
	if v := get(cl, "certificate-authority"); v != nil && v.Value != "" {
		return nil, &FileRefError{Field: "certificate-authority", Name: cn.Value, Path: v.Value}
	}
	return nil, fmt.Errorf("cluster %q has no certificate-authority-data", cn.Value)
}

// SetKubeconfigCA sets certificate-authority-data to caPEM (one or more
// certificates, e.g. the C0+C1 bundle) on every cluster entry that embeds
// its CA. Entries that reference a CA file (certificate-authority) keep the
// reference and are not given data: the caller updates that file. It is an
// error when no cluster embeds a CA, since then nothing would change.
// Setting the current value returns the input unchanged.
func SetKubeconfigCA(kc []byte, caPEM []byte) ([]byte, error) {
	if err := checkCertsPEM(caPEM, "CA"); err != nil {
		return nil, err
	}
	doc, st, err := parse(kc, "kubeconfig")
	if err != nil {
		return nil, err
	}
	l := get(doc.Content[0], "clusters")
	if l == nil || l.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("kubeconfig has no clusters")
	}
	data := base64.StdEncoding.EncodeToString(caPEM)
	embedded, changed := 0, false
	var refs []string
	for _, e := range l.Content {
		cl := get(e, "cluster")
		if cl == nil {
			continue
		}
		if v := get(cl, "certificate-authority-data"); v != nil && v.Value != "" {
			embedded++
			c, err := setScalar(cl, "certificate-authority-data", data)
			if err != nil {
				return nil, err
			}
			changed = changed || c
		} else if v := get(cl, "certificate-authority"); v != nil {
			refs = append(refs, v.Value)
		}
	}
	if embedded == 0 {
		if len(refs) > 0 {
			return nil, fmt.Errorf("no cluster embeds certificate-authority-data; CA file references to update instead: %s", strings.Join(refs, ", "))
		}
		return nil, fmt.Errorf("no cluster embeds certificate-authority-data")
	}
	return finish(kc, doc, st, changed)
}

// userEntry resolves user ("" = the current context's user).
func userEntry(root *yaml.Node, user string) (*yaml.Node, string, error) {
	if user == "" {
		ctx, err := currentContext(root)
		if err != nil {
			return nil, "", err
		}
		u := get(ctx, "user")
		if u == nil || u.Value == "" {
			return nil, "", fmt.Errorf("current context has no user")
		}
		user = u.Value
	}
	u, err := namedEntry(root, "users", "user", user)
	return u, user, err
}

// ClientCert is a kubeconfig user's client certificate and key: decoded
// PEM when embedded (client-certificate-data, client-key-data), else the
// referenced file paths (client-certificate, client-key), as kubelet.conf
// does with /var/lib/kubelet/pki/kubelet-client-current.pem.
type ClientCert struct {
	CertPEM, KeyPEM   []byte
	CertFile, KeyFile string
}

// String names where the certificate and key are, never the key.
func (c ClientCert) String() string {
	where := func(embedded []byte, file string) string {
		if len(embedded) > 0 {
			return "embedded"
		}
		if file != "" {
			return "file " + file
		}
		return "none"
	}
	return "ClientCert(cert: " + where(c.CertPEM, c.CertFile) + ", key: " + where(c.KeyPEM, c.KeyFile) + ")"
}

// GoString keeps %#v from dumping the key.
func (c ClientCert) GoString() string { return c.String() }

// ErrNoClientCert is wrapped by KubeconfigClientCert for a user that
// authenticates otherwise (a token, exec or auth-provider credentials).
var ErrNoClientCert = errors.New("no client certificate")

// KubeconfigClientCert returns a user's client certificate and key (see
// ClientCert). user "" means the current context's user; one without a
// client certificate gives an error wrapping ErrNoClientCert.
func KubeconfigClientCert(kc []byte, user string) (ClientCert, error) {
	doc, _, err := parse(kc, "kubeconfig")
	if err != nil {
		return ClientCert{}, err
	}
	u, name, err := userEntry(doc.Content[0], user)
	if err != nil {
		return ClientCert{}, err
	}
	var c ClientCert
	if v := get(u, "client-certificate-data"); v != nil && v.Value != "" {
		if c.CertPEM, err = decodeData(v, "client-certificate-data", name); err != nil {
			return ClientCert{}, err
		}
	} else if v := get(u, "client-certificate"); v != nil {
		c.CertFile = v.Value
	}
	if v := get(u, "client-key-data"); v != nil && v.Value != "" {
		if c.KeyPEM, err = decodeData(v, "client-key-data", name); err != nil {
			return ClientCert{}, err
		}
	} else if v := get(u, "client-key"); v != nil {
		c.KeyFile = v.Value
	}
	if c.CertPEM == nil && c.CertFile == "" {
		return ClientCert{}, fmt.Errorf("user %q has %w", name, ErrNoClientCert)
	}
	return c, nil
}

// SetKubeconfigClientCert embeds certPEM and keyPEM as the named user's
// client-certificate-data and client-key-data (user "" = the current
// context's user). The key must match the certificate. A user whose
// credentials are file references gets a *FileRefError: replace the file
// (or repoint its symlink) instead. Setting the current values returns the
// input unchanged.
func SetKubeconfigClientCert(kc []byte, user string, certPEM, keyPEM []byte) ([]byte, error) {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		// tls's message names the problem (mismatch, bad PEM), not the key.
		return nil, fmt.Errorf("client certificate and key: %w", err)
	}
	doc, st, err := parse(kc, "kubeconfig")
	if err != nil {
		return nil, err
	}
	u, name, err := userEntry(doc.Content[0], user)
	if err != nil {
		return nil, err
	}
	for _, f := range []string{"client-certificate", "client-key"} {
		if v := get(u, f); v != nil && v.Value != "" {
			return nil, &FileRefError{Field: f, Name: name, Path: v.Value}
		}
	}
	c1, err := setScalar(u, "client-certificate-data", base64.StdEncoding.EncodeToString(certPEM))
	if err != nil {
		return nil, err
	}
	c2, err := setScalar(u, "client-key-data", base64.StdEncoding.EncodeToString(keyPEM))
	if err != nil {
		return nil, err
	}
	return finish(kc, doc, st, c1 || c2)
}

// ControlPlaneKubeconfig is one of kubeadm's client kubeconfigs on a
// control-plane node, by file name in /etc/kubernetes.
type ControlPlaneKubeconfig struct {
	Name string
	// Optional: super-admin.conf exists only on the node kubeadm init ran
	// on (1.29+).
	Optional bool
}

// ControlPlaneKubeconfigs are kubeadm's client kubeconfigs on a
// control-plane node (kubelet.conf, on every node, is not one of them).
var ControlPlaneKubeconfigs = []ControlPlaneKubeconfig{
	{"admin.conf", false},
	{"super-admin.conf", true},
	{"controller-manager.conf", false},
	{"scheduler.conf", false},
}

// ScannedKubeconfig is one control-plane kubeconfig as ScanControlPlaneKubeconfigs found it.
type ScannedKubeconfig struct {
	Name   string // file name
	Raw    []byte
	Client ClientCert
	// Err is why the file could not be read or its client certificate
	// not found; Raw and Client are then empty.
	Err error
}

// ScanControlPlaneKubeconfigs reads each of ControlPlaneKubeconfigs with
// read (given the file name) and finds its current user's client
// certificate. An optional one that read reports missing
// (errors.Is(err, fs.ErrNotExist)) is left out.
func ScanControlPlaneKubeconfigs(read func(name string) ([]byte, error)) []ScannedKubeconfig {
	var out []ScannedKubeconfig
	for _, kc := range ControlPlaneKubeconfigs {
		raw, err := read(kc.Name)
		if errors.Is(err, fs.ErrNotExist) && kc.Optional {
			continue
		}
		if err != nil {
			out = append(out, ScannedKubeconfig{Name: kc.Name, Err: err})
			continue
		}
		cc, err := KubeconfigClientCert(raw, "")
		if err != nil {
			out = append(out, ScannedKubeconfig{Name: kc.Name, Err: err})
			continue
		}
		out = append(out, ScannedKubeconfig{Name: kc.Name, Raw: raw, Client: cc})
	}
	return out
}

// MapKubeconfigCAData rewrites the certificate-authority-data of every
// cluster entry that embeds one: fn gets the cluster's name and its CA
// PEM and returns the PEM wanted there (the same bytes to leave it). An
// entry that references a CA file, or has no CA, is not passed to fn. It
// returns how many entries embed CA data; when fn changes none, the input
// is returned unchanged.
func MapKubeconfigCAData(kc []byte, fn func(cluster string, caPEM []byte) ([]byte, error)) ([]byte, int, error) {
	doc, st, err := parse(kc, "kubeconfig")
	if err != nil {
		return nil, 0, err
	}
	l := get(doc.Content[0], "clusters")
	if l == nil || l.Kind != yaml.SequenceNode {
		return nil, 0, fmt.Errorf("kubeconfig has no clusters")
	}
	embedded, changed := 0, false
	for _, e := range l.Content {
		cl, name := get(e, "cluster"), ""
		if n := get(e, "name"); n != nil {
			name = n.Value
		}
		v := get(cl, "certificate-authority-data")
		if cl == nil || v == nil || v.Value == "" {
			continue
		}
		embedded++
		cur, err := decodeData(v, "certificate-authority-data", name)
		if err != nil {
			return nil, 0, err
		}
		want, err := fn(name, cur)
		if err != nil {
			return nil, 0, fmt.Errorf("cluster %q: %w", name, err)
		}
		if bytes.Equal(want, cur) {
			continue
		}
		if err := checkCertsPEM(want, "CA"); err != nil {
			return nil, 0, fmt.Errorf("cluster %q: %w", name, err)
		}
		c, err := setScalar(cl, "certificate-authority-data", base64.StdEncoding.EncodeToString(want))
		if err != nil {
			return nil, 0, err
		}
		changed = changed || c
	}
	out, err := finish(kc, doc, st, changed)
	return out, embedded, err
}

// KubeconfigUsers returns the names of the kubeconfig's users, in file
// order.
func KubeconfigUsers(kc []byte) ([]string, error) {
	doc, _, err := parse(kc, "kubeconfig")
	if err != nil {
		return nil, err
	}
	l := get(doc.Content[0], "users")
	if l == nil {
		return nil, nil
	}
	if l.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("kubeconfig users is not a list")
	}
	var out []string
	for _, e := range l.Content {
		if n := get(e, "name"); n != nil && n.Value != "" {
			out = append(out, n.Value)
		}
	}
	return out, nil
}
