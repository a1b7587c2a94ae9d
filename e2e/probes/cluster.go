package probes

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/kubeca/rotate/e2e/clusterinfo"
)

// Node paths as seen inside a node.
const (
	nodeEtcKubernetes = "/etc/kubernetes"
	nodeVarLibKubelet = "/var/lib/kubelet"
)

// nodeFS maps paths as seen inside a node (what kubeconfigs and symlinks
// hold) to host paths. Paths outside the two mounted directories are used
// as they are.
type nodeFS struct {
	etc, varlib string
}

func nodeFSOf(n clusterinfo.Node) nodeFS {
	return nodeFS{etc: n.EtcKubernetes, varlib: n.VarLibKubelet}
}

func (f nodeFS) hostPath(p string) string {
	p = path.Clean(p)
	for _, m := range []struct{ node, host string }{{nodeEtcKubernetes, f.etc}, {nodeVarLibKubelet, f.varlib}} {
		if m.host == "" {
			continue
		}
		if p == m.node {
			return m.host
		}
		if rest, ok := strings.CutPrefix(p, m.node+"/"); ok {
			return filepath.Join(m.host, rest)
		}
	}
	return p
}

// readFile reads a node path, following symlinks with node semantics (an
// absolute link target is a node path, as the kubelet writes
// kubelet-client-current.pem).
func (f nodeFS) readFile(p string) ([]byte, error) {
	for range 16 {
		hp := f.hostPath(p)
		fi, err := os.Lstat(hp)
		if err != nil {
			return nil, err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return os.ReadFile(hp)
		}
		target, err := os.Readlink(hp)
		if err != nil {
			return nil, err
		}
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(p), target)
		}
		p = target
	}
	return nil, fmt.Errorf("%s: too many levels of symbolic links", p)
}
