// Package kubeconfig loads a kubeconfig file the way kubectl does: the one
// loader of rotate (its API client, its check of the operator's
// kubeconfig) and of the e2e harness and tests.
package kubeconfig

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Load returns the client configuration of context (or, for "", the
// current context) of the kubeconfig at path. Errors name the file.
func Load(path, context string) (*rest.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// TLS is what a kubeconfig context trusts (CA) and presents (client
// certificate and key), with file references read the way kubectl reads
// them.
type TLS struct {
	Config        *rest.Config
	CA, Cert, Key []byte
}

// LoadTLS is Load with the CA, client certificate and key read into TLS
// (CAData, CertData and KeyData filled from their files where only a file
// is named).
func LoadTLS(path, context string) (TLS, error) {
	cfg, err := Load(path, context)
	if err != nil {
		return TLS{}, err
	}
	if err := rest.LoadTLSFiles(cfg); err != nil {
		return TLS{}, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	t := cfg.TLSClientConfig
	return TLS{Config: cfg, CA: t.CAData, Cert: t.CertData, Key: t.KeyData}, nil
}
