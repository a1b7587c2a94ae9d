package edit

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// KubeletConfigClientCAFile returns authentication.x509.clientCAFile of a
// KubeletConfiguration, or "" when it is not set (x509 client
// authentication off).
func KubeletConfigClientCAFile(cfg []byte) (string, error) {
	doc, _, err := parse(cfg, "kubelet config")
	if err != nil {
		return "", err
	}
	if err := checkKind(doc.Content[0], "KubeletConfiguration"); err != nil {
		return "", err
	}
	v := path(doc.Content[0], "authentication", "x509", "clientCAFile")
	if v == nil || v.Kind != yaml.ScalarNode {
		return "", nil
	}
	return v.Value, nil
}

// SetKubeletConfigClientCAFile sets authentication.x509.clientCAFile,
// creating the enclosing mappings if needed. Setting the current value
// returns the input unchanged.
func SetKubeletConfigClientCAFile(cfg []byte, file string) ([]byte, error) {
	if file == "" {
		return nil, fmt.Errorf("empty clientCAFile")
	}
	doc, st, err := parse(cfg, "kubelet config")
	if err != nil {
		return nil, err
	}
	root := doc.Content[0]
	if err := checkKind(root, "KubeletConfiguration"); err != nil {
		return nil, err
	}
	authn, err := ensureMap(root, "authentication")
	if err != nil {
		return nil, err
	}
	x509, err := ensureMap(authn, "x509")
	if err != nil {
		return nil, fmt.Errorf("authentication: %w", err)
	}
	changed, err := setScalar(x509, "clientCAFile", file)
	if err != nil {
		return nil, fmt.Errorf("authentication.x509: %w", err)
	}
	return finish(cfg, doc, st, changed)
}

func checkKind(root *yaml.Node, want string) error {
	if k := get(root, "kind"); k != nil && k.Value != want {
		return fmt.Errorf("kind is %s, want %s", k.Value, want)
	}
	return nil
}

// KubeletCerts is how a kubelet gets its certificates, from its
// KubeletConfiguration.
type KubeletCerts struct {
	// RotateCertificates: the kubelet renews its client certificate
	// through the CSR API (kubeadm writes true; the API default is false).
	RotateCertificates bool
	// ServerTLSBootstrap: its serving certificate comes from the CSR API
	// (signer kubelet-serving); otherwise it is self-signed or TLSCertFile.
	ServerTLSBootstrap bool
	// TLSCertFile is a serving certificate the operator manages.
	TLSCertFile string
}

// KubeletCertConfig reads rotateCertificates, serverTLSBootstrap and
// tlsCertFile of a KubeletConfiguration.
func KubeletCertConfig(cfg []byte) (KubeletCerts, error) {
	doc, _, err := parse(cfg, "kubelet config")
	if err != nil {
		return KubeletCerts{}, err
	}
	root := doc.Content[0]
	if err := checkKind(root, "KubeletConfiguration"); err != nil {
		return KubeletCerts{}, err
	}
	var kc KubeletCerts
	for key, dst := range map[string]*bool{"rotateCertificates": &kc.RotateCertificates, "serverTLSBootstrap": &kc.ServerTLSBootstrap} {
		v := get(root, key)
		if v == nil {
			continue
		}
		if v.Kind != yaml.ScalarNode || (v.Value != "true" && v.Value != "false") {
			return KubeletCerts{}, fmt.Errorf("%s is %q, not a boolean", key, v.Value)
		}
		*dst = v.Value == "true"
	}
	if v := get(root, "tlsCertFile"); v != nil && v.Kind == yaml.ScalarNode {
		kc.TLSCertFile = v.Value
	}
	return kc, nil
}
