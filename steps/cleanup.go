package steps

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
)

// cleanupStep removes rotate's files, but refuses while a static pod
// manifest, the kubelet's config or a kubeconfig still names one of them:
// the component would fail at its next restart (a safety net; every step of phase 12
// points its component back at kubeadm's files before cleanup runs).
type cleanupStep struct{ *NodeEdit }

func (s *cleanupStep) Apply(ctx context.Context, rt *Runtime, t Target) error {
	users, err := rt.rotateFileUsers(ctx, t)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("cleanup on %s: refusing to remove rotate's files while they are in use:\n  - %s\npoint these at kubeadm's files (ca.crt, front-proxy-ca.crt), then run `rotate resume`; or `rotate rollback`",
			t.Node, strings.Join(users, "\n  - "))
	}
	return s.NodeEdit.Apply(ctx, rt, t)
}

func (s *cleanupStep) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	out, err := s.NodeEdit.Describe(ctx, rt, t)
	if err != nil {
		return nil, err
	}
	users, err := rt.rotateFileUsers(ctx, t)
	if err != nil {
		return nil, err
	}
	for _, u := range users {
		out = append(out, "would refuse (in use): "+u)
	}
	return out, nil
}

// rotateFileUsers reads every static pod manifest on t (those rotate
// edits and every other file in the manifests dir), the kubelet's config
// and kubeadm's and the extra kubeconfigs (a certificate-authority
// path), and lists each line that names one of rotate's files, as
// "<file> names <rotate file> (<line>)". Through the step's view of the
// node (Cleanup reads rotateFileCandidates with its own files) only the
// listing and the manifests no candidate names go to the node.
func (rt *Runtime) rotateFileUsers(ctx context.Context, t Target) ([]string, error) {
	r, err := rt.node(ctx, t)
	if err != nil {
		return nil, err
	}
	listed, err := nodes.ListFiles(ctx, r, rt.Config.Paths.ManifestsDir)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var files []string
	for _, p := range append(listed, rt.rotateFileCandidates(t)...) {
		if !seen[p] {
			seen[p] = true
			files = append(files, p)
		}
	}
	states, err := nodes.ReadFiles(ctx, r, files) // at most one round trip
	if err != nil {
		return nil, err
	}
	c := rt.Config
	var out []string
	for i, p := range files {
		st := states[i]
		if st.Err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", p, t.Node, st.Err)
		}
		if !st.HasContent {
			continue
		}
		raw := st.Content
		for _, f := range c.rotateFiles() {
			for _, line := range linesNaming(raw, c.pki(f)) {
				out = append(out, fmt.Sprintf("%s names %s (%s)", p, c.pki(f), line))
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// rotateFileCandidates are the files rotateFileUsers reads whatever the
// manifests dir holds: the static pods' manifests, the kubelet's config
// and kubeconfig, the control-plane kubeconfigs and t's extra ones.
func (rt *Runtime) rotateFileCandidates(t Target) []string {
	c := rt.Config
	out := []string{c.manifest(APIServer), c.manifest(ControllerManager), c.manifest(Scheduler), c.manifest(ccm), c.manifest(Etcd),
		c.Paths.KubeletConfig, c.kubeDir(kubeconfigKubelet)}
	for _, kc := range edit.ControlPlaneKubeconfigs {
		out = append(out, c.kubeDir(kc.Name))
	}
	return append(out, c.ExtraKubeconfigs[t.Node]...)
}

// linesNaming returns the trimmed lines of b that hold path p as a whole
// path (not a prefix of a longer one).
func linesNaming(b []byte, p string) []string {
	var out []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		for rest := line; ; {
			i := bytes.Index(rest, []byte(p))
			if i < 0 {
				break
			}
			rest = rest[i+len(p):]
			if len(rest) == 0 || !isPathByte(rest[0]) {
				out = append(out, strings.TrimSpace(string(line)))
				break
			}
		}
	}
	return out
}

func isPathByte(b byte) bool {
	return b == '.' || b == '-' || b == '_' || b == '/' || b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z'
}
