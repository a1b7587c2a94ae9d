package kubelet

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

const (
	clientPairPrefix = "kubelet-client"
	// tmpPrivateKeyFile caches the bootstrap key until the CSR is signed,
	// so a restart mid-bootstrap reuses it (the kubelet's file name).
	tmpPrivateKeyFile = "kubelet-client.key.tmp"
)

// Credentials are what the agent authenticates with, read once.
type Credentials struct {
	// Config has every certificate and key inlined: nothing is re-read
	// from disk after load.
	Config *rest.Config
	// Bootstrapped is true when this start obtained a new client
	// certificate through the CSR API.
	Bootstrapped bool
	// Subject and Fingerprint identify the client certificate (SHA-256 of
	// its DER), for logs.
	Subject     string
	Fingerprint string
	NotAfter    time.Time
}

// LoadCredentials returns the agent's API credentials the way the kubelet
// obtains them: kubelet.conf when it exists and its client certificate has
// not expired, otherwise a TLS bootstrap with the bootstrap kubeconfig that
// writes kubelet-client-<timestamp>.pem, repoints kubelet-client-current.pem
// and writes kubelet.conf referring to that symlink. It blocks until the
// CSR is approved and signed or ctx ends.
func LoadCredentials(ctx context.Context, kubeconfig, bootstrapKubeconfig, certDir, nodeName string, log *slog.Logger) (*Credentials, error) {
	return loadCredentials(ctx, newClientset, kubeconfig, bootstrapKubeconfig, certDir, nodeName, log)
}

// clientFactory builds the bootstrap client (a fake in unit tests).
type clientFactory func(*rest.Config) (kubernetes.Interface, error)

func newClientset(c *rest.Config) (kubernetes.Interface, error) { return kubernetes.NewForConfig(c) }

func loadCredentials(ctx context.Context, newClient clientFactory, kubeconfig, bootstrapKubeconfig, certDir, nodeName string, log *slog.Logger) (*Credentials, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	valid, reason := kubeconfigStillValid(kubeconfig)
	bootstrapped := false
	if !valid {
		if bootstrapKubeconfig == "" {
			return nil, fmt.Errorf("load kubeconfig %s: %s and no bootstrap kubeconfig is configured", kubeconfig, reason)
		}
		log.Info("bootstrapping client credentials", "reason", reason, "bootstrapKubeconfig", bootstrapKubeconfig)
		if err := bootstrap(ctx, newClient, kubeconfig, bootstrapKubeconfig, certDir, nodeName, log); err != nil {
			return nil, fmt.Errorf("tls bootstrap: %w", err)
		}
		bootstrapped = true
	}
	cfg, err := loadInlinedConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	creds := &Credentials{Config: cfg, Bootstrapped: bootstrapped}
	if certs, err := certutil.ParseCertsPEM(cfg.CertData); err == nil && len(certs) > 0 {
		creds.Subject = certs[0].Subject.String()
		sum := sha256.Sum256(certs[0].Raw)
		creds.Fingerprint = hex.EncodeToString(sum[:])
		creds.NotAfter = certs[0].NotAfter
	}
	return creds, nil
}

// kubeconfigStillValid mirrors the kubelet's isClientConfigStillValid: the
// file exists, loads, and none of its client certificates has expired.
func kubeconfigStillValid(path string) (bool, string) {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, "kubeconfig does not exist"
		}
		return false, err.Error()
	}
	cfg, err := loadInlinedConfig(path)
	if err != nil {
		return false, fmt.Sprintf("kubeconfig unusable: %v", err)
	}
	certs, err := certutil.ParseCertsPEM(cfg.CertData)
	if err != nil || len(certs) == 0 {
		return false, "kubeconfig has no client certificate"
	}
	now := time.Now()
	for _, c := range certs {
		if now.After(c.NotAfter) {
			return false, fmt.Sprintf("client certificate expired at %s", c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return true, ""
}

// loadRESTConfig loads a kubeconfig file's current context.
func loadRESTConfig(path string) (*rest.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
	raw, err := rules.Load()
	if err != nil {
		return nil, err
	}
	return clientcmd.NewNonInteractiveClientConfig(*raw, raw.CurrentContext, &clientcmd.ConfigOverrides{}, rules).ClientConfig()
}

// loadInlinedConfig loads a kubeconfig and reads every file it refers to,
// so the result never touches the disk again.
func loadInlinedConfig(path string) (*rest.Config, error) {
	cfg, err := loadRESTConfig(path)
	if err != nil {
		return nil, err
	}
	if err := inlineTLSFiles(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

func inlineTLSFiles(cfg *rest.Config) error {
	read := func(file string, data *[]byte) error {
		if file == "" {
			return nil
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		*data = b
		return nil
	}
	if err := read(cfg.CAFile, &cfg.CAData); err != nil {
		return fmt.Errorf("read CA file: %w", err)
	}
	if err := read(cfg.CertFile, &cfg.CertData); err != nil {
		return fmt.Errorf("read client certificate: %w", err)
	}
	if err := read(cfg.KeyFile, &cfg.KeyData); err != nil {
		return fmt.Errorf("read client key: %w", err)
	}
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = "", "", ""
	return nil
}

// bootstrap is the kubelet's LoadClientCert.
func bootstrap(ctx context.Context, newClient clientFactory, kubeconfig, bootstrapKubeconfig, certDir, nodeName string, log *slog.Logger) error {
	bootCfg, err := loadRESTConfig(bootstrapKubeconfig)
	if err != nil {
		return fmt.Errorf("load bootstrap kubeconfig: %w", err)
	}
	if err := os.MkdirAll(certDir, 0o755); err != nil {
		return err
	}
	store := &certStore{dir: certDir, prefix: clientPairPrefix}

	// Reuse the current key if the current pair is readable, else the
	// cached temporary key, else a new ECDSA P-256 key.
	var keyPEM []byte
	if cur, err := store.current(); err == nil && cur.PrivateKey != nil {
		if k, err := keyutil.MarshalPrivateKeyToPEM(cur.PrivateKey); err == nil {
			keyPEM = k
		}
	}
	tmpKey := filepath.Join(certDir, tmpPrivateKeyFile)
	if keyPEM == nil {
		if keyPEM, _, err = keyutil.LoadOrGenerateKeyFile(tmpKey); err != nil {
			return fmt.Errorf("bootstrap key: %w", err)
		}
	}

	client, err := newClient(bootCfg)
	if err != nil {
		return err
	}
	certPEM, err := requestNodeCertificate(ctx, client, keyPEM, nodeName, log)
	if err != nil {
		return err
	}
	pairPath, err := store.update(certPEM, keyPEM, time.Now())
	if err != nil {
		return err
	}
	log.Info("client certificate issued", "pair", pairPath)
	if err := os.Remove(tmpKey); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("remove temporary key", "path", tmpKey, "err", err)
	}
	return writeBootstrappedKubeconfig(bootCfg, kubeconfig, store.currentPath())
}

// NodeCSR returns the kubelet's client CSR for nodeName and the usages it
// requests: CN system:node:NAME, O system:nodes, digital signature + client
// auth (key encipherment only for RSA keys).
func NodeCSR(key crypto.Signer, nodeName string) ([]byte, []certificatesv1.KeyUsage, error) {
	subject := &pkix.Name{Organization: []string{"system:nodes"}, CommonName: "system:node:" + nodeName}
	csrPEM, err := certutil.MakeCSR(key, subject, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	if _, ok := key.Public().(*ecdsa.PublicKey); !ok {
		usages = append(usages, certificatesv1.UsageKeyEncipherment)
	}
	return csrPEM, usages, nil
}

func requestNodeCertificate(ctx context.Context, client kubernetes.Interface, keyPEM []byte, nodeName string, log *slog.Logger) ([]byte, error) {
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse bootstrap key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("bootstrap key is not a crypto.Signer")
	}
	csrPEM, usages, err := NodeCSR(signer, nodeName)
	if err != nil {
		return nil, fmt.Errorf("make CSR: %w", err)
	}
	name, err := digestedName(signer.Public(), "system:node:"+nodeName, []string{"system:nodes"}, usages)
	if err != nil {
		return nil, err
	}
	// The apiserver may not be up yet: retry like the kubelet's restart
	// loop would, until ctx ends.
	for {
		reqName, reqUID, err := createCSR(ctx, client, name, csrPEM, usages, signer)
		if err == nil {
			log.Info("waiting for certificate signing request to be approved and signed", "csr", reqName)
			return waitForCertificate(ctx, client, reqName, reqUID)
		}
		if errors.Is(err, errCSRIncompatible) {
			return nil, err
		}
		log.Warn("create certificate signing request", "name", name, "err", err)
		if !sleep(ctx, 2*time.Second) {
			return nil, fmt.Errorf("create CSR %s: %w", name, err)
		}
	}
}

var errCSRIncompatible = errors.New("existing certificate signing request does not match")

// createCSR creates the CSR, or adopts an existing one of the same name
// when it carries the same public key, subject, signer and usages (the
// kubelet's ensureCompatible).
func createCSR(ctx context.Context, client kubernetes.Interface, name string, csrPEM []byte, usages []certificatesv1.KeyUsage, key crypto.Signer) (string, types.UID, error) {
	obj := &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    csrPEM,
			Usages:     usages,
			SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName,
		},
	}
	cctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	created, err := client.CertificatesV1().CertificateSigningRequests().Create(cctx, obj, metav1.CreateOptions{})
	if err == nil {
		return created.Name, created.UID, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return "", "", err
	}
	existing, err := client.CertificatesV1().CertificateSigningRequests().Get(cctx, name, metav1.GetOptions{})
	if err != nil {
		return "", "", err
	}
	if err := csrCompatible(existing, obj, key); err != nil {
		return "", "", fmt.Errorf("%w: %s: %v", errCSRIncompatible, name, err)
	}
	return existing.Name, existing.UID, nil
}

func csrCompatible(existing, want *certificatesv1.CertificateSigningRequest, key crypto.Signer) error {
	block, _ := pem.Decode(existing.Spec.Request)
	if block == nil {
		return errors.New("request is not PEM")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err
	}
	wantBlock, _ := pem.Decode(want.Spec.Request)
	wantReq, err := x509.ParseCertificateRequest(wantBlock.Bytes)
	if err != nil {
		return err
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := key.Public().(equaler); !ok || !pub.Equal(req.PublicKey) {
		return errors.New("different public key")
	}
	if req.Subject.String() != wantReq.Subject.String() {
		return fmt.Errorf("subject %q, want %q", req.Subject, wantReq.Subject)
	}
	if existing.Spec.SignerName != want.Spec.SignerName {
		return fmt.Errorf("signer %q, want %q", existing.Spec.SignerName, want.Spec.SignerName)
	}
	if fmt.Sprint(existing.Spec.Usages) != fmt.Sprint(want.Spec.Usages) {
		return fmt.Errorf("usages %v, want %v", existing.Spec.Usages, want.Spec.Usages)
	}
	return nil
}

// waitForCertificate polls the CSR until it is approved and carries a
// certificate, or is denied/failed, or ctx ends.
func waitForCertificate(ctx context.Context, client kubernetes.Interface, name string, uid types.UID) ([]byte, error) {
	var lastErr error
	for {
		gctx, cancel := context.WithTimeout(ctx, apiTimeout)
		obj, err := client.CertificatesV1().CertificateSigningRequests().Get(gctx, name, metav1.GetOptions{})
		cancel()
		switch {
		case err != nil:
			lastErr = err
		case obj.UID != uid:
			return nil, fmt.Errorf("certificate signing request %s was deleted and recreated", name)
		default:
			approved := false
			for _, c := range obj.Status.Conditions {
				switch c.Type {
				case certificatesv1.CertificateDenied:
					return nil, fmt.Errorf("certificate signing request %s is denied: %s %s", name, c.Reason, c.Message)
				case certificatesv1.CertificateFailed:
					return nil, fmt.Errorf("certificate signing request %s failed: %s %s", name, c.Reason, c.Message)
				case certificatesv1.CertificateApproved:
					approved = true
				}
			}
			if approved && len(obj.Status.Certificate) > 0 {
				return obj.Status.Certificate, nil
			}
			lastErr = fmt.Errorf("certificate signing request %s: approved=%v, issued=false", name, approved)
		}
		if !sleep(ctx, time.Second) {
			return nil, fmt.Errorf("wait for certificate: %w (last: %v)", ctx.Err(), lastErr)
		}
	}
}

// digestedName is the kubelet's CSR name: node-csr- plus a digest of the
// public key, subject and usages, so a retry reuses the same object.
func digestedName(pub crypto.PublicKey, cn string, orgs []string, usages []certificatesv1.KeyUsage) (string, error) {
	h := sha512.New512_256()
	encode := base64.RawURLEncoding.EncodeToString
	write := func(b []byte) {
		h.Write([]byte(encode(b)))
		h.Write([]byte{'|'})
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	write(der)
	write([]byte(cn))
	for _, o := range orgs {
		write([]byte(o))
	}
	for _, u := range usages {
		write([]byte(u))
	}
	return "node-csr-" + encode(h.Sum(nil)), nil
}

// writeBootstrappedKubeconfig writes kubelet.conf as the kubelet does after
// a bootstrap: the bootstrap kubeconfig's server and CA data, and a client
// certificate and key both referring to pemPath.
func writeBootstrappedKubeconfig(boot *rest.Config, kubeconfig, pemPath string) error {
	caData := boot.CAData
	if boot.CAFile != "" {
		b, err := os.ReadFile(boot.CAFile)
		if err != nil {
			return fmt.Errorf("read bootstrap CA file: %w", err)
		}
		caData = b
	}
	cfg := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{"default-cluster": {
			Server:                   boot.Host,
			InsecureSkipTLSVerify:    boot.Insecure,
			CertificateAuthorityData: caData,
		}},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{"default-auth": {
			ClientCertificate: pemPath,
			ClientKey:         pemPath,
		}},
		Contexts: map[string]*clientcmdapi.Context{"default-context": {
			Cluster:   "default-cluster",
			AuthInfo:  "default-auth",
			Namespace: "default",
		}},
		CurrentContext: "default-context",
	}
	data, err := clientcmd.Write(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(kubeconfig), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(kubeconfig, data, 0o600)
}

// certStore is the kubelet's client certificate file store:
// PREFIX-<YYYY-MM-DD-HH-MM-SS>.pem holding certificate(s) then key (0600),
// and the PREFIX-current.pem symlink, replaced atomically by renaming a
// fresh PREFIX-updated.pem symlink over it.
type certStore struct {
	dir    string
	prefix string
}

func (s *certStore) currentPath() string {
	return filepath.Join(s.dir, s.prefix+"-current.pem")
}

func (s *certStore) current() (*tls.Certificate, error) {
	data, err := os.ReadFile(s.currentPath())
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

func (s *certStore) update(certPEM, keyPEM []byte, now time.Time) (string, error) {
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil {
		return "", fmt.Errorf("invalid certificate data: %w", err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return "", errors.New("invalid key data")
	}
	var buf []byte
	for _, c := range certs {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	buf = append(buf, pem.EncodeToMemory(block)...)
	if _, err := tls.X509KeyPair(buf, buf); err != nil {
		return "", fmt.Errorf("certificate does not match key: %w", err)
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return "", err
	}
	dir, err := filepath.Abs(s.dir)
	if err != nil {
		return "", err
	}
	pairPath := filepath.Join(dir, s.prefix+"-"+now.Format("2006-01-02-15-04-05")+".pem")
	if err := writeFileAtomic(pairPath, buf, 0o600); err != nil {
		return "", err
	}
	updated := filepath.Join(dir, s.prefix+"-updated.pem")
	if err := os.Remove(updated); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := os.Symlink(pairPath, updated); err != nil {
		return "", err
	}
	if fi, err := os.Lstat(s.currentPath()); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		return "", fmt.Errorf("%s exists and is not a symlink", s.currentPath())
	}
	if err := os.Rename(updated, s.currentPath()); err != nil {
		return "", err
	}
	return pairPath, nil
}

// writeFileAtomic writes data to a temporary file in path's directory,
// syncs it and renames it over path.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	return certutil.ParseCertsPEM(data)
}
