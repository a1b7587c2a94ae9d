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
