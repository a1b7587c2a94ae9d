package kubelet

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const testServer = "https://10.0.0.1:6443"

func writeBootstrapKubeconfig(t *testing.T, path string, caPEM []byte) {
	t.Helper()
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"kubernetes": {Server: testServer, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"tls-bootstrap-token-user": {Token: "abcdef.0123456789abcdef"}},
		Contexts:       map[string]*clientcmdapi.Context{"ctx": {Cluster: "kubernetes", AuthInfo: "tls-bootstrap-token-user"}},
		CurrentContext: "ctx",
	}
	if err := clientcmd.WriteToFile(cfg, path); err != nil {
		t.Fatal(err)
	}
}

// fakeSigner approves and signs every pending kubelet client CSR in the
// fake clientset with ca, like the KCM's csrapproving and csrsigning
// controllers, and records what it saw.
func fakeSigner(ctx context.Context, t *testing.T, c kubernetes.Interface, ca *testCA, seen chan<- *certificatesv1.CertificateSigningRequest) {
	for ctx.Err() == nil {
		list, err := c.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range list.Items {
				csr := &list.Items[i]
				if len(csr.Status.Certificate) > 0 {
					continue
				}
				block, _ := pem.Decode(csr.Spec.Request)
				req, err := x509.ParseCertificateRequest(block.Bytes)
				if err != nil {
					t.Errorf("parse CSR: %v", err)
					return
				}
				csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
					Type: certificatesv1.CertificateApproved, Status: v1.ConditionTrue, Reason: "AutoApproved",
				})
				csr.Status.Certificate = ca.sign(t, leafOpts{cn: req.Subject.CommonName, orgs: req.Subject.Organization, client: true}, req.PublicKey)
				if _, err := c.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, csr, metav1.UpdateOptions{}); err != nil {
					t.Errorf("update CSR status: %v", err)
					return
				}
				select {
				case seen <- csr.DeepCopy():
				default:
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBootstrapWritesPairSymlinkAndKubeconfig(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "kubernetes")
	kubeconfig := filepath.Join(dir, "etc", "kubelet.conf")
	boot := filepath.Join(dir, "bootstrap-kubelet.conf")
	certDir := filepath.Join(dir, "pki")
	writeBootstrapKubeconfig(t, boot, ca.pem)

	client := fake.NewClientset()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := make(chan *certificatesv1.CertificateSigningRequest, 4)
	go fakeSigner(ctx, t, client, ca, seen)

	var gotCfg *rest.Config
	factory := func(c *rest.Config) (kubernetes.Interface, error) { gotCfg = c; return client, nil }
	creds, err := loadCredentials(ctx, factory, kubeconfig, boot, certDir, "worker1", nil)
	if err != nil {
		t.Fatalf("loadCredentials: %v", err)
	}
	if !creds.Bootstrapped {
		t.Error("Bootstrapped = false, want true")
	}
	if gotCfg.BearerToken != "abcdef.0123456789abcdef" {
		t.Error("bootstrap client does not use the bootstrap token")
	}

	// The CSR the kubelet sends.
	csr := <-seen
	if csr.Spec.SignerName != certificatesv1.KubeAPIServerClientKubeletSignerName {
		t.Errorf("signerName = %q", csr.Spec.SignerName)
	}
	wantUsages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	if !slices.Equal(csr.Spec.Usages, wantUsages) {
		t.Errorf("usages = %v, want %v", csr.Spec.Usages, wantUsages)
	}
	if !strings.HasPrefix(csr.Name, "node-csr-") {
		t.Errorf("CSR name %q, want node-csr-<digest>", csr.Name)
	}
	block, _ := pem.Decode(csr.Spec.Request)
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if req.Subject.CommonName != "system:node:worker1" || !slices.Equal(req.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("CSR subject = %v", req.Subject)
	}
	if pub, ok := req.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CSR key is %T, want ECDSA P-256", req.PublicKey)
	}
	if len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses)+len(req.URIs) != 0 {
		t.Error("CSR carries SANs; the approver refuses those")
	}

	// The pair file and the symlink.
	current := filepath.Join(certDir, "kubelet-client-current.pem")
	target, err := os.Readlink(current)
	if err != nil {
		t.Fatalf("kubelet-client-current.pem is not a symlink: %v", err)
	}
	if !filepath.IsAbs(target) || filepath.Dir(target) != certDir {
		t.Errorf("symlink target %q, want an absolute path in %s", target, certDir)
	}
	if !regexp.MustCompile(`^kubelet-client-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}\.pem$`).MatchString(filepath.Base(target)) {
		t.Errorf("pair file name %q", filepath.Base(target))
	}
	fi, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pair file mode %v, want 0600", fi.Mode().Perm())
	}
	pair, _ := os.ReadFile(target)
	if !bytes.Contains(pair, []byte("CERTIFICATE")) || !bytes.Contains(pair, []byte("PRIVATE KEY")) {
		t.Error("pair file does not hold a certificate and a key")
	}
	if _, err := os.Stat(filepath.Join(certDir, tmpPrivateKeyFile)); !os.IsNotExist(err) {
		t.Error("temporary bootstrap key left behind")
	}

	// kubelet.conf refers to the symlink and carries the bootstrap CA.
	raw, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	ctxName := raw.Contexts[raw.CurrentContext]
	cluster, auth := raw.Clusters[ctxName.Cluster], raw.AuthInfos[ctxName.AuthInfo]
	if cluster.Server != testServer || !bytes.Equal(cluster.CertificateAuthorityData, ca.pem) {
		t.Errorf("kubelet.conf cluster = %s / CA %d bytes", cluster.Server, len(cluster.CertificateAuthorityData))
	}
	if auth.ClientCertificate != current || auth.ClientKey != current {
		t.Errorf("kubelet.conf client cert/key = %q/%q, want both %q", auth.ClientCertificate, auth.ClientKey, current)
	}
	if len(auth.ClientCertificateData)+len(auth.ClientKeyData) != 0 || auth.Token != "" {
		t.Error("kubelet.conf embeds credentials; the kubelet refers to the pem file")
	}
	if fi, _ := os.Stat(kubeconfig); fi.Mode().Perm() != 0o600 {
		t.Errorf("kubelet.conf mode %v, want 0600", fi.Mode().Perm())
	}

	// Credentials are inlined and identify the issued certificate.
	if creds.Config.CertFile != "" || creds.Config.KeyFile != "" || len(creds.Config.CertData) == 0 {
		t.Error("credentials refer to files; they must be read once")
	}
	if creds.Subject != "CN=system:node:worker1,O=system:nodes" {
		t.Errorf("Subject = %q", creds.Subject)
	}

	// A second start uses kubelet.conf as is: no new CSR.
	before, _ := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	creds2, err := loadCredentials(ctx, factory, kubeconfig, boot, certDir, "worker1", nil)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if creds2.Bootstrapped || len(after.Items) != len(before.Items) {
		t.Error("restart with a valid kubelet.conf bootstrapped again")
	}
	if creds2.Fingerprint != creds.Fingerprint {
		t.Error("restart loaded a different certificate")
	}
}

func TestLoadCredentialsExistingKubeconfig(t *testing.T) {
	ca := newTestCA(t, "kubernetes")
	certPEM, keyPEM := ca.issue(t, leafOpts{cn: "system:node:cp1", orgs: []string{"system:nodes"}, client: true})
	expiredPEM, expiredKey := ca.issue(t, leafOpts{cn: "system:node:cp1", orgs: []string{"system:nodes"}, client: true,
		notBefore: time.Now().Add(-2 * time.Hour), notAfter: time.Now().Add(-time.Hour)})

	tests := []struct {
		name          string
		write         func(t *testing.T, dir string) // writes kubelet.conf (and files)
		bootstrap     bool
		wantErr       bool
		wantBootstrap bool
	}{
		{
			name: "embedded client certificate",
			write: func(t *testing.T, dir string) {
				writeKubeconfig(t, filepath.Join(dir, "kubelet.conf"), &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}, ca.pem)
			},
		},
		{
			name: "client certificate by reference",
			write: func(t *testing.T, dir string) {
				pemPath := filepath.Join(dir, "pki", "kubelet-client-current.pem")
				os.MkdirAll(filepath.Dir(pemPath), 0o755)
				os.WriteFile(pemPath, append(append([]byte{}, certPEM...), keyPEM...), 0o600)
				writeKubeconfig(t, filepath.Join(dir, "kubelet.conf"), &clientcmdapi.AuthInfo{ClientCertificate: pemPath, ClientKey: pemPath}, ca.pem)
			},
		},
		{
			name:    "missing and no bootstrap kubeconfig",
			write:   func(*testing.T, string) {},
			wantErr: true,
		},
		{
			name: "expired client certificate bootstraps",
			write: func(t *testing.T, dir string) {
				writeKubeconfig(t, filepath.Join(dir, "kubelet.conf"), &clientcmdapi.AuthInfo{ClientCertificateData: expiredPEM, ClientKeyData: expiredKey}, ca.pem)
			},
			bootstrap:     true,
			wantBootstrap: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.write(t, dir)
			boot := ""
			if tt.bootstrap {
				boot = filepath.Join(dir, "bootstrap-kubelet.conf")
				writeBootstrapKubeconfig(t, boot, ca.pem)
			}
			client := fake.NewClientset()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			go fakeSigner(ctx, t, client, ca, make(chan *certificatesv1.CertificateSigningRequest, 1))
			factory := func(*rest.Config) (kubernetes.Interface, error) { return client, nil }
			creds, err := loadCredentials(ctx, factory, filepath.Join(dir, "kubelet.conf"), boot, filepath.Join(dir, "pki"), "cp1", nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if creds.Bootstrapped != tt.wantBootstrap {
				t.Errorf("Bootstrapped = %v, want %v", creds.Bootstrapped, tt.wantBootstrap)
			}
			if creds.Config.Host != testServer || !bytes.Equal(creds.Config.CAData, ca.pem) {
				t.Errorf("config host %s, CA %d bytes", creds.Config.Host, len(creds.Config.CAData))
			}
			if !tt.wantBootstrap && !bytes.HasPrefix(creds.Config.CertData, certPEM) {
				t.Error("client certificate is not the one in kubelet.conf")
			}
		})
	}
}

func writeKubeconfig(t *testing.T, path string, auth *clientcmdapi.AuthInfo, caPEM []byte) {
	t.Helper()
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"default-cluster": {Server: testServer, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"default-auth": auth},
		Contexts:       map[string]*clientcmdapi.Context{"default-context": {Cluster: "default-cluster", AuthInfo: "default-auth"}},
		CurrentContext: "default-context",
	}
	if err := clientcmd.WriteToFile(cfg, path); err != nil {
		t.Fatal(err)
	}
}

func TestBootstrapReusesCachedKeyAndCSRName(t *testing.T) {
	// A restart while the CSR is pending must reuse the key (and so the
	// CSR name) instead of piling up CSRs.
	dir := t.TempDir()
	ca := newTestCA(t, "kubernetes")
	boot := filepath.Join(dir, "bootstrap-kubelet.conf")
	writeBootstrapKubeconfig(t, boot, ca.pem)
	client := fake.NewClientset()
	factory := func(*rest.Config) (kubernetes.Interface, error) { return client, nil }

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := loadCredentials(ctx, factory, filepath.Join(dir, "kubelet.conf"), boot, filepath.Join(dir, "pki"), "w1", nil)
	cancel()
	if err == nil {
		t.Fatal("bootstrap succeeded without a signer")
	}
	first, _ := client.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
	if len(first.Items) != 1 {
		t.Fatalf("%d CSRs after the first attempt, want 1", len(first.Items))
	}

	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go fakeSigner(ctx, t, client, ca, make(chan *certificatesv1.CertificateSigningRequest, 1))
	if _, err := loadCredentials(ctx, factory, filepath.Join(dir, "kubelet.conf"), boot, filepath.Join(dir, "pki"), "w1", nil); err != nil {
		t.Fatal(err)
	}
	second, _ := client.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
	if len(second.Items) != 1 || second.Items[0].Name != first.Items[0].Name {
		t.Errorf("restart created another CSR (%d in all)", len(second.Items))
	}
}

func TestCertStoreUpdate(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "kubernetes")
	store := &certStore{dir: dir, prefix: "kubelet-client"}

	c1, k1 := ca.issue(t, leafOpts{cn: "system:node:a", client: true})
	p1, err := store.update(c1, k1, time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p1) != "kubelet-client-2030-01-02-03-04-05.pem" {
		t.Errorf("pair name %s", filepath.Base(p1))
	}
	c2, k2 := ca.issue(t, leafOpts{cn: "system:node:a", client: true})
	p2, err := store.update(c2, k2, time.Date(2030, 1, 2, 3, 4, 6, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.Readlink(store.currentPath()); got != p2 {
		t.Errorf("current -> %s, want %s", got, p2)
	}
	if _, err := os.Stat(p1); err != nil {
		t.Error("old pair removed; the kubelet keeps it")
	}
	if _, err := os.Lstat(filepath.Join(dir, "kubelet-client-updated.pem")); !os.IsNotExist(err) {
		t.Error("updated symlink left behind")
	}
	cur, err := store.current()
	if err != nil || cur.Leaf == nil && len(cur.Certificate) == 0 {
		t.Fatalf("current: %v", err)
	}

	// A key that does not match is refused.
	_, otherKey := ca.issue(t, leafOpts{cn: "x", client: true})
	if _, err := store.update(c2, otherKey, time.Now()); err == nil {
		t.Error("mismatched key accepted")
	}

	// A regular file in place of the symlink is an error, as in the kubelet.
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "kubelet-client-current.pem"), []byte("x"), 0o600)
	if _, err := (&certStore{dir: dir2, prefix: "kubelet-client"}).update(c1, k1, time.Now()); err == nil {
		t.Error("replaced a regular file")
	}
}
