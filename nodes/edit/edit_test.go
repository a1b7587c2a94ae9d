package edit

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/kubeca/rotate/pki/pkitest"
)

// newCA is the shared test CA (pki/pkitest) on the wall clock.
func newCA(t *testing.T, cn string) *pkitest.CA {
	t.Helper()
	return pkitest.NewCA(t, cn, pkitest.Options{})
}

// issueClient issues a client certificate from ca and returns it and its
// key as PEM.
func issueClient(t *testing.T, ca *pkitest.CA, cn, org string) (certPEM, keyPEM []byte) {
	t.Helper()
	is := ca.IssueLeaf(t, pkitest.Leaf{CN: cn, Orgs: []string{org}, Client: true})
	return is.CertPEM, is.KeyPEM
}

const manifest = `# managed by kubeadm; edited by hand for the audit log
apiVersion: v1
kind: Pod
metadata:
  labels:
    component: kube-controller-manager
  name: kube-controller-manager
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-controller-manager
    - --bind-address=127.0.0.1
    - --client-ca-file=/etc/kubernetes/pki/ca.crt # trust
    - --root-ca-file=/etc/kubernetes/pki/ca.crt
    image: registry.k8s.io/kube-controller-manager:v1.37.2
    name: kube-controller-manager
    resources: {}
  - args:
    - --port=8080
    name: sidecar
  unknownField:
    keep: "yes"
status: {}
`

func TestManifestFlags(t *testing.T) {
	for _, tc := range []struct {
		name, container, flag, value string
		remove                       bool
		wantRemoved, wantAdded       []string
		wantErr                      string
	}{
		{name: "replace", container: "kube-controller-manager", flag: "root-ca-file", value: "/b.crt",
			wantRemoved: []string{"    - --root-ca-file=/etc/kubernetes/pki/ca.crt"}, wantAdded: []string{"    - --root-ca-file=/b.crt"}},
		{name: "replace keeps comment", container: "kube-controller-manager", flag: "--client-ca-file", value: "/b.crt",
			wantRemoved: []string{"    - --client-ca-file=/etc/kubernetes/pki/ca.crt # trust"}, wantAdded: []string{"    - --client-ca-file=/b.crt # trust"}},
		{name: "add sorted", container: "kube-controller-manager", flag: "cluster-signing-cert-file", value: "/c1.crt",
			wantAdded: []string{"    - --cluster-signing-cert-file=/c1.crt"}},
		{name: "add to args", container: "sidecar", flag: "v", value: "2",
			wantAdded: []string{"    - --v=2"}},
		{name: "same value", container: "kube-controller-manager", flag: "root-ca-file", value: "/etc/kubernetes/pki/ca.crt"},
		{name: "value needing quotes", container: "kube-controller-manager", flag: "root-ca-file", value: "/a b: c",
			wantRemoved: []string{"    - --root-ca-file=/etc/kubernetes/pki/ca.crt"}, wantAdded: []string{"    - '--root-ca-file=/a b: c'"}},
		{name: "remove", container: "kube-controller-manager", flag: "root-ca-file", remove: true,
			wantRemoved: []string{"    - --root-ca-file=/etc/kubernetes/pki/ca.crt"}},
		{name: "remove absent", container: "kube-controller-manager", flag: "nope", remove: true},
		{name: "no such container", container: "etcd", flag: "x", value: "y", wantErr: `no container "etcd" (containers: kube-controller-manager, sidecar)`},
		{name: "bad flag", container: "kube-controller-manager", flag: "a=b", value: "y", wantErr: "invalid flag name"},
		{name: "newline value", container: "kube-controller-manager", flag: "a", value: "x\ny", wantErr: "newline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out []byte
			var err error
			if tc.remove {
				out, err = RemoveManifestFlag([]byte(manifest), tc.container, tc.flag)
			} else {
				out, err = SetManifestFlag([]byte(manifest), tc.container, tc.flag, tc.value)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			assertDiff(t, []byte(manifest), out, tc.wantRemoved, tc.wantAdded)
			if !tc.remove {
				v, ok, err := ManifestFlag(out, tc.container, tc.flag)
				if err != nil || !ok || v != tc.value {
					t.Errorf("read back %q %v %v", v, ok, err)
				}
			}
		})
	}
	// Sorted insert: between --bind-address and --client-ca-file.
	out, _ := SetManifestFlag([]byte(manifest), "kube-controller-manager", "cluster-signing-cert-file", "/c1.crt")
	if !strings.Contains(string(out), "--bind-address=127.0.0.1\n    - --client-ca-file=/etc/kubernetes/pki/ca.crt # trust\n    - --cluster-signing-cert-file=/c1.crt\n    - --root-ca-file") {
		t.Errorf("not inserted in sorted position:\n%s", out)
	}
}

func TestManifestFlagAmbiguities(t *testing.T) {
	for name, m := range map[string]string{
		"duplicate":     "spec:\n  containers:\n  - name: c\n    command:\n    - c\n    - --a=1\n    - --a=2\n",
		"separate item": "spec:\n  containers:\n  - name: c\n    command:\n    - c\n    - --a\n    - \"1\"\n",
		"two documents": "spec:\n  containers:\n  - name: c\n    command: [c]\n---\nkind: x\n",
		"alias":         "x: &a 1\ny: *a\nspec:\n  containers:\n  - name: c\n    command: [c]\n",
		"not a mapping": "- a\n- b\n",
		"empty":         "",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := SetManifestFlag([]byte(m), "c", "a", "3"); err == nil {
				t.Error("ambiguous manifest edited")
			}
		})
	}
}

func TestManifestOtherIndentationKept(t *testing.T) {
	// Four spaces, sequences indented under their key: kept as is.
	in := "apiVersion: v1\nkind: Pod\nmetadata:\n    name: x\nspec:\n    containers:\n        - name: c\n          command:\n            - c\n            - --a=1\n"
	out, err := SetManifestFlag([]byte(in), "c", "a", "2")
	if err != nil {
		t.Fatal(err)
	}
	assertDiff(t, []byte(in), out, []string{"            - --a=1"}, []string{"            - --a=2"})

	// A layout yaml.v3 cannot emit (4-space mappings with dashes at +2) is
	// normalized; the content is the same.
	in = "spec:\n    containers:\n      - name: c\n        command:\n          - c\n          - --a=1\n"
	out, err = SetManifestFlag([]byte(in), "c", "a", "2")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := ManifestFlag(out, "c", "a"); v != "2" || !ok {
		t.Errorf("normalized manifest lost the edit:\n%s", out)
	}
}

func TestSetPodAnnotation(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"no annotations", "metadata:\n  name: x\nspec: {}\n", "metadata:\n  annotations:\n    k: v\n  name: x\nspec: {}\n"},
		{"empty flow annotations", "metadata:\n  annotations: {}\n  name: x\n", "metadata:\n  annotations:\n    k: v\n  name: x\n"},
		{"null annotations", "metadata:\n  annotations:\n  name: x\n", "metadata:\n  annotations:\n    k: v\n  name: x\n"},
		{"replace", "metadata:\n  annotations:\n    a: b\n    k: old # why\n", "metadata:\n  annotations:\n    a: b\n    k: v # why\n"},
		{"no metadata", "kind: Pod\n", "kind: Pod\nmetadata:\n  annotations:\n    k: v\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := SetPodAnnotation([]byte(tc.in), "k", "v")
			if err != nil || string(out) != tc.want {
				t.Errorf("got %v\n%s\nwant\n%s", err, out, tc.want)
			}
		})
	}
	out, _ := SetPodAnnotation([]byte("metadata:\n  name: x\n"), "k", "true")
	if !strings.Contains(string(out), `k: "true"`) {
		t.Errorf("string value not quoted: %s", out)
	}
}

func kubeconfig(caData, certData, keyData string) string {
	return `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: ` + caData + `
    server: https://192.0.2.10:6443
  name: kubernetes
- cluster:
    certificate-authority: /etc/other/ca.crt
    server: https://other:6443
  name: other
contexts:
- context:
    cluster: kubernetes
    user: admin
  name: admin@kubernetes
- context:
    cluster: other
    user: file-user
  name: other
current-context: admin@kubernetes
kind: Config
preferences: {}
users:
- name: admin
  user:
    client-certificate-data: ` + certData + `
    client-key-data: ` + keyData + `
- name: file-user
  user:
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
`
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestKubeconfig(t *testing.T) {
	c0, c1 := newCA(t, "C0"), newCA(t, "C1")
	cert0, key0 := issueClient(t, c0, "kubernetes-admin", "kubeadm:cluster-admins")
	cert1, key1 := issueClient(t, c1, "kubernetes-admin", "kubeadm:cluster-admins")
	kc := []byte(kubeconfig(b64(c0.CertPEM), b64(cert0), b64(key0)))

	ca, err := KubeconfigCA(kc)
	if err != nil || !bytes.Equal(ca, c0.CertPEM) {
		t.Fatalf("KubeconfigCA: %v", err)
	}
	other := bytes.Replace(kc, []byte("current-context: admin@kubernetes"), []byte("current-context: other"), 1)
	_, err = KubeconfigCA(other)
	var fe *FileRefError
	if !errors.As(err, &fe) || fe.Path != "/etc/other/ca.crt" || fe.Field != "certificate-authority" {
		t.Errorf("file ref CA: %v", err)
	}

	bundle := append(append([]byte{}, c0.CertPEM...), c1.CertPEM...)
	out, err := SetKubeconfigCA(kc, bundle)
	if err != nil {
		t.Fatal(err)
	}
	assertDiff(t, kc, out,
		[]string{"    certificate-authority-data: " + b64(c0.CertPEM)},
		[]string{"    certificate-authority-data: " + b64(bundle)})
	for name, bad := range map[string][]byte{
		"not PEM":      []byte("hello"),
		"a key":        key0,
		"trailing":     append(append([]byte{}, c1.CertPEM...), "junk"...),
		"empty":        nil,
		"cert and key": append(append([]byte{}, c1.CertPEM...), key1...),
	} {
		if _, err := SetKubeconfigCA(kc, bad); err == nil {
			t.Errorf("SetKubeconfigCA accepted %s", name)
		}
	}
	onlyRefs := []byte("clusters:\n- cluster:\n    certificate-authority: /ca.crt\n  name: x\n")
	if _, err := SetKubeconfigCA(onlyRefs, c1.CertPEM); err == nil || !strings.Contains(err.Error(), "/ca.crt") {
		t.Errorf("no embedded CA: %v", err)
	}

	cc, err := KubeconfigClientCert(kc, "")
	if err != nil || !bytes.Equal(cc.CertPEM, cert0) || !bytes.Equal(cc.KeyPEM, key0) || cc.CertFile != "" || cc.KeyFile != "" {
		t.Fatalf("KubeconfigClientCert: %v", err)
	}
	if s := fmt.Sprintf("%v %+v %#v", cc, cc, cc); strings.Contains(s, "PRIVATE") || !strings.Contains(s, "key: embedded") {
		t.Errorf("ClientCert formats as %s", s)
	}
	cc, err = KubeconfigClientCert(kc, "file-user")
	if err != nil || cc.CertFile != "/var/lib/kubelet/pki/kubelet-client-current.pem" || cc.KeyFile != cc.CertFile {
		t.Errorf("file refs: %v %v", cc, err)
	}
	if _, err := KubeconfigClientCert(kc, "nobody"); err == nil {
		t.Error("unknown user accepted")
	}

	out, err = SetKubeconfigClientCert(kc, "admin", cert1, key1)
	if err != nil {
		t.Fatal(err)
	}
	assertDiff(t, kc, out,
		[]string{"    client-certificate-data: " + b64(cert0), "    client-key-data: " + b64(key0)},
		[]string{"    client-certificate-data: " + b64(cert1), "    client-key-data: " + b64(key1)})
	if _, err := SetKubeconfigClientCert(kc, "admin", cert1, key0); err == nil || strings.Contains(err.Error(), string(key0[30:60])) {
		t.Errorf("mismatched key: %v", err)
	}
	if _, err := SetKubeconfigClientCert(kc, "file-user", cert1, key1); !errors.As(err, &fe) {
		t.Errorf("file-ref user: %v", err)
	}
	if same, err := SetKubeconfigClientCert(kc, "", cert0, key0); err != nil || !bytes.Equal(same, kc) {
		t.Errorf("same credentials changed the file: %v", err)
	}
}

func TestKubeletCertConfig(t *testing.T) {
	tests := []struct {
		cfg  string
		want KubeletCerts
		bad  bool
	}{
		{"kind: KubeletConfiguration\n", KubeletCerts{}, false},
		{"kind: KubeletConfiguration\nrotateCertificates: true\nserverTLSBootstrap: true\n", KubeletCerts{RotateCertificates: true, ServerTLSBootstrap: true}, false},
		{"kind: KubeletConfiguration\ntlsCertFile: /etc/kubelet/tls.crt\n", KubeletCerts{TLSCertFile: "/etc/kubelet/tls.crt"}, false},
		{"kind: KubeletConfiguration\nserverTLSBootstrap: yes-please\n", KubeletCerts{}, true},
		{"kind: Pod\n", KubeletCerts{}, true},
	}
	for _, tt := range tests {
		got, err := KubeletCertConfig([]byte(tt.cfg))
		if (err != nil) != tt.bad || (!tt.bad && got != tt.want) {
			t.Errorf("KubeletCertConfig(%q) = %+v, %v; want %+v (error %v)", tt.cfg, got, err, tt.want, tt.bad)
		}
	}
}

func TestKubeletConfig(t *testing.T) {
	for _, tc := range []struct{ name, in, get, want string }{
		{"set", "apiVersion: kubelet.config.k8s.io/v1beta1\nauthentication:\n  x509:\n    clientCAFile: /a\nkind: KubeletConfiguration\n", "/a",
			"apiVersion: kubelet.config.k8s.io/v1beta1\nauthentication:\n  x509:\n    clientCAFile: /b\nkind: KubeletConfiguration\n"},
		{"create", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n", "",
			"apiVersion: kubelet.config.k8s.io/v1beta1\nauthentication:\n  x509:\n    clientCAFile: /b\nkind: KubeletConfiguration\n"},
		{"empty x509", "authentication:\n  anonymous:\n    enabled: false\n  x509: {}\nkind: KubeletConfiguration\n", "",
			"authentication:\n  anonymous:\n    enabled: false\n  x509:\n    clientCAFile: /b\nkind: KubeletConfiguration\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := KubeletConfigClientCAFile([]byte(tc.in))
			if err != nil || got != tc.get {
				t.Errorf("get = %q, %v", got, err)
			}
			out, err := SetKubeletConfigClientCAFile([]byte(tc.in), "/b")
			if err != nil || string(out) != tc.want {
				t.Errorf("set: %v\n%s", err, out)
			}
		})
	}
	if _, err := SetKubeletConfigClientCAFile([]byte("kind: Pod\n"), "/b"); err == nil {
		t.Error("wrong kind accepted")
	}
}

// TestScanControlPlaneKubeconfigs: every kubeadm control-plane kubeconfig
// is read, a missing super-admin.conf is left out, any other missing or
// unusable file is reported by name.
func TestScanControlPlaneKubeconfigs(t *testing.T) {
	ca := newCA(t, "C0")
	cert, key := issueClient(t, ca, "kubernetes-admin", "kubeadm:cluster-admins")
	good := []byte(kubeconfig(b64(ca.CertPEM), b64(cert), b64(key)))
	files := map[string][]byte{"admin.conf": good, "controller-manager.conf": []byte("users: [")}
	got := ScanControlPlaneKubeconfigs(func(name string) ([]byte, error) {
		if b, ok := files[name]; ok {
			return b, nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	})
	var summary []string
	for _, kc := range got {
		switch {
		case kc.Err != nil:
			summary = append(summary, kc.Name+": error")
		case bytes.Equal(kc.Client.CertPEM, cert) && bytes.Equal(kc.Raw, good):
			summary = append(summary, kc.Name+": ok")
		default:
			summary = append(summary, kc.Name+": wrong certificate")
		}
	}
	if s := strings.Join(summary, ", "); s != "admin.conf: ok, controller-manager.conf: error, scheduler.conf: error" {
		t.Errorf("scan = %s", s)
	}
}
