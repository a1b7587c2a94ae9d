//go:build deps

// Package deps pins the module's direct dependencies while packages are
// being written; it is removed once every dependency has a real importer.
package deps

import (
	_ "github.com/hashicorp/go-multierror"
	_ "github.com/looplab/fsm"
	_ "github.com/spf13/pflag"
	_ "go.etcd.io/bbolt"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/crypto/ssh"
	_ "golang.org/x/crypto/ssh/agent"
	_ "golang.org/x/crypto/ssh/knownhosts"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/apimachinery/pkg/apis/meta/v1"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/client-go/kubernetes/fake"
	_ "k8s.io/client-go/tools/clientcmd"
	_ "k8s.io/client-go/util/cert"
	_ "k8s.io/cluster-bootstrap/token/jws"
	_ "sigs.k8s.io/yaml"
)
