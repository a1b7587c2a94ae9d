package redact

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/kubeca/rotate/pki/pkitest"
)

// testCredential is a certificate and its key, PEM.
func testCredential(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	is := pkitest.NewCA(t, cn+" CA", pkitest.Options{}).IssueLeaf(t, pkitest.Leaf{CN: cn, Client: true})
	return is.CertPEM, is.KeyPEM
}

// TestSummarizeDiffRedactsStructurally: whatever the shape of the file (a
// kubeconfig in YAML or JSON, quoted keys, a key where none belongs, a
// bearer token in an argument, plain text), the summary of its change shows
// no secret, shows certificates by subject and fingerprint, and still says
// that a secret changed.
func TestSummarizeDiffRedactsStructurally(t *testing.T) {
	oldCert, oldKey := testCredential(t, "kubernetes-admin-old")
	newCert, newKey := testCredential(t, "kubernetes-admin-new")
	caCert, caKey := testCredential(t, "kubernetes")
	kubeconfig := func(cert, key []byte) string {
		return `apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: ` + b64(caCert) + `
    server: https://10.0.0.1:6443
  name: kubernetes
users:
- name: kubernetes-admin
  user:
    client-certificate-data: ` + b64(cert) + `
    client-key-data: ` + b64(key) + `
contexts:
- context: {cluster: kubernetes, user: kubernetes-admin}
  name: admin
current-context: admin
`
	}
	jsonKubeconfig := func(cert, key []byte) string {
		return `{"apiVersion":"v1","kind":"Config","clusters":[{"name":"kubernetes","cluster":{"server":"https://10.0.0.1:6443","certificate-authority-data":"` + b64(caCert) + `"}}],` +
			`"users":[{"name":"kubernetes-admin","user":{"client-certificate-data":"` + b64(cert) + `","client-key-data":"` + b64(key) + `"}}]}`
	}
	credUser := func(token, password, envValue, idToken, refresh, secret string) string {
		return `apiVersion: v1
kind: Config
users:
- name: t
  user:
    token: ` + token + `
- name: p
  user:
    username: admin
    password: "` + password + `"
- name: e
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: get-token
      args: ["--header", "Authorization: Bearer ` + token + `", "--token=` + token + `"]
      env:
      - name: CLOUD_SECRET
        value: ` + envValue + `
- name: o
  user:
    auth-provider:
      name: oidc
      config:
        client-id: rotate
        client-secret: ` + secret + `
        id-token: ` + idToken + `
        refresh-token: ` + refresh + `
`
	}
	tests := []struct {
		name    string
		a, b    string
		secrets []string // none may appear
		want    []string // each must appear
	}{
		{
			name: "kubeadm kubeconfig", a: kubeconfig(oldCert, oldKey), b: kubeconfig(newCert, newKey),
			secrets: []string{b64(oldKey)[:24], b64(newKey)[:24], b64(oldCert)[:24], b64(newCert)[:24]},
			want:    []string{"+client-certificate-data: CN=kubernetes-admin-new (sha256 ", "-client-certificate-data: CN=kubernetes-admin-old (sha256 ", "+client-key-data: <redacted ", "-client-key-data: <redacted "},
		},
		{
			name: "quoted keys", a: strings.ReplaceAll(kubeconfig(oldCert, oldKey), "client-key-data:", `"client-key-data":`), b: strings.ReplaceAll(kubeconfig(newCert, newKey), "client-key-data:", `"client-key-data":`),
			secrets: []string{b64(oldKey)[:24], b64(newKey)[:24]},
			want:    []string{"+client-key-data: <redacted "},
		},
		{
			name: "JSON kubeconfig on one line", a: jsonKubeconfig(oldCert, oldKey), b: jsonKubeconfig(newCert, newKey),
			secrets: []string{b64(oldKey)[:24], b64(newKey)[:24]},
			want:    []string{"+client-certificate-data: CN=kubernetes-admin-new", "+client-key-data: <redacted "},
		},
		{
			name:    "token, password, exec env and auth-provider users",
			a:       credUser("abcdef.0123456789abcdef", "hunter2-old", "env-secret-old", "eyJidtokenold", "refresh-old", "oidc-secret-old"),
			b:       credUser("ghijkl.0123456789ghijkl", "hunter2-new", "env-secret-new", "eyJidtokennew", "refresh-new", "oidc-secret-new"),
			secrets: []string{"abcdef.0123", "ghijkl.0123", "hunter2", "env-secret", "eyJidtoken", "refresh-old", "refresh-new", "oidc-secret"},
			want:    []string{"+token: <redacted ", "+password: <redacted ", "+value: <redacted ", "+id-token: <redacted ", "Bearer <redacted ", "--token=<redacted "},
		},
		{
			name:    "a key where no key belongs",
			a:       "apiVersion: v1\nkind: Config\npreferences: {}\n",
			b:       "apiVersion: v1\nkind: Config\npreferences:\n  note: |\n" + indent(string(caKey), "    ") + "clusters:\n- name: x\n  cluster:\n    certificate-authority-data: " + b64(caKey) + "\n    server: https://x\n    extensions:\n    - name: blob\n      extension: {data: " + b64(newKey) + "}\n",
			secrets: []string{"PRIVATE KEY", b64(caKey)[:24], b64(newKey)[:24], strings.Split(string(caKey), "\n")[1][:20]},
			want:    []string{"+certificate-authority-data: <redacted ", "+server: https://x"},
		},
		{
			name:    "comments",
			a:       "apiVersion: v1\nkind: Config\n",
			b:       "apiVersion: v1\n# token: s3cr3t-in-a-comment\nkind: Config # password=also-secret\n",
			secrets: []string{"s3cr3t-in-a-comment", "also-secret"},
		},
		{
			name:    "static pod manifest flags",
			a:       "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --token-auth-file=/etc/kubernetes/tokens.csv\n",
			b:       "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --token-auth-file=/etc/kubernetes/tokens.csv\n    - --bootstrap-token=abcdef.fedcba9876543210\n",
			secrets: []string{"fedcba9876543210"},
			want:    []string{"+- --bootstrap-token=<redacted "},
		},
		{
			name:    "plain text",
			a:       "KUBELET_KUBEADM_ARGS=\"--v=2\"\n",
			b:       "KUBELET_KUBEADM_ARGS=\"--v=2\"\nAuthorization: Bearer plain-bearer-secret\nAPI_TOKEN=plain-token-secret\n",
			secrets: []string{"plain-bearer-secret", "plain-token-secret"},
			want:    []string{"+Authorization: Bearer <redacted ", "+API_TOKEN=<redacted "},
		},
		{
			name: "PEM files", a: string(oldCert) + string(oldKey), b: string(newCert) + string(newKey),
			secrets: []string{"PRIVATE", b64(oldCert)[:24]},
			want:    []string{"replace PEM content (not shown)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Diff([]byte(tt.a), []byte(tt.b))
			for _, s := range tt.secrets {
				if strings.Contains(got, s) {
					t.Errorf("summary shows %q:\n%s", s, got)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("summary lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

func indent(s, by string) string {
	return by + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+by) + "\n"
}

// TestRedactText: free text (an error shown by status) keeps its words
// and loses keys and tokens.
func TestRedactText(t *testing.T) {
	_, key := testCredential(t, "x")
	in := "apply: write /etc/kubernetes/pki/ca.key: " + string(key) + " then Authorization: Bearer tok-123 and " + b64(key) + " token=abc"
	got := Text(in)
	for _, s := range []string{"PRIVATE KEY", "tok-123", b64(key)[:24], "token=abc"} {
		if strings.Contains(got, s) {
			t.Errorf("RedactText shows %q: %s", s, got)
		}
	}
	if !strings.HasPrefix(got, "apply: write /etc/kubernetes/pki/ca.key: <private key redacted>\n then Authorization: Bearer <redacted ") {
		t.Errorf("RedactText = %s", got)
	}
}

func TestDiffRedacts(t *testing.T) {
	a := "x: 1\n    client-key-data: QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n"
	b := "x: 2\n    client-key-data: WllYV1ZVVFNSUVBPTk1MS0pJSEdGRURDQkE=\n"
	s := Diff([]byte(a), []byte(b))
	if strings.Contains(s, "QUJD") || strings.Contains(s, "WllY") || !strings.Contains(s, "+x: 2") {
		t.Fatalf("summary leaks or lacks the change: %s", s)
	}
}

func TestDiffHidesPEM(t *testing.T) {
	old := "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\nF4PmtgfsmayO+E9Fq==\n-----END EC PRIVATE KEY-----\n"
	s := Diff([]byte(old), []byte(strings.Replace(old, "F4P", "G5Q", 1)))
	if strings.Contains(s, "F4P") || strings.Contains(s, "G5Q") || strings.Contains(s, "PRIVATE") {
		t.Fatalf("summary shows key material: %s", s)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
