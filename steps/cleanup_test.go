package steps

import (
	"context"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes"
)

// TestCleanupRefusesFilesInUse: cleanup removes nothing while a static pod
// manifest (one rotate edits, or any other in the directory) or the
// kubelet's config names one of rotate's files, and says which and where.
func TestCleanupRefusesFilesInUse(t *testing.T) {
	ctx := context.Background()
	const bundle = "/etc/kubernetes/pki/rotate-ca-bundle.crt"
	tests := []struct {
		name    string
		extra   []string // the node's extra kubeconfigs
		setup   func(r *nodes.MemRunner)
		wantErr []string
	}{
		{name: "nothing names them"},
		{name: "a longer path is not the file",
			setup: func(r *nodes.MemRunner) {
				r.SetFile("/var/lib/kubelet/config.yaml", []byte("clientCAFile: "+bundle+".orig\n"), 0o644)
			}},
		{name: "the cloud-controller-manager still on the bundle",
			setup: func(r *nodes.MemRunner) {
				r.SetFile("/etc/kubernetes/manifests/cloud-controller-manager.yaml",
					[]byte(strings.Replace(ccmManifest, "/etc/kubernetes/pki/ca.crt", bundle, 1)), 0o600)
			},
			wantErr: []string{"cleanup on cp1: refusing to remove rotate's files while they are in use:\n  - /etc/kubernetes/manifests/cloud-controller-manager.yaml names " + bundle + " (- --root-ca-file=" + bundle + ")\n"}},
		{name: "the kubelet",
			setup: func(r *nodes.MemRunner) {
				r.SetFile("/var/lib/kubelet/config.yaml", []byte("authentication:\n  x509:\n    clientCAFile: "+bundle+"\n"), 0o644)
			},
			wantErr: []string{"/var/lib/kubelet/config.yaml names " + bundle + " (clientCAFile: " + bundle + ")"}},
		{name: "a kubeconfig naming the bundle as its CA file",
			setup: func(r *nodes.MemRunner) {
				r.SetFile("/etc/kubernetes/admin.conf", []byte("clusters:\n- cluster:\n    certificate-authority: "+bundle+"\n  name: k\n"), 0o600)
			},
			wantErr: []string{"/etc/kubernetes/admin.conf names " + bundle + " (certificate-authority: " + bundle + ")"}},
		{name: "an extra kubeconfig naming the bundle", extra: []string{"/root/.kube/config"},
			setup: func(r *nodes.MemRunner) {
				r.SetFile("/root/.kube/config", []byte("clusters:\n- cluster:\n    certificate-authority: "+bundle+"\n  name: k\n"), 0o600)
			},
			wantErr: []string{"/root/.kube/config names " + bundle}},
		{name: "another static pod, found by listing the directory",
			setup: func(r *nodes.MemRunner) {
				r.SetFile("/etc/kubernetes/manifests/custom.yaml", []byte("    - --ca=/etc/kubernetes/pki/rotate-front-proxy-ca-bundle.crt\n"), 0o600)
				r.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (nodes.Result, error) {
					if strings.Contains(cmd, "/etc/kubernetes/manifests") {
						return nodes.Result{Stdout: []byte("custom.yaml\nkube-controller-manager.yaml\n")}, nil
					}
					return nodes.Result{}, nil
				}
			},
			wantErr: []string{"/etc/kubernetes/manifests/custom.yaml names /etc/kubernetes/pki/rotate-front-proxy-ca-bundle.crt (- --ca=", "`rotate rollback`"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, r, _ := testRuntime(t)
			rt.Config.ExtraKubeconfigs = map[string][]string{"cp1": tt.extra}
			for _, f := range (&Config{}).rotateFiles() {
				r.SetFile(rt.Config.pki(f), []byte("x"), 0o600)
			}
			if tt.setup != nil {
				tt.setup(r)
			}
			s := Cleanup()
			err := s.Apply(ctx, rt, Target{Node: "cp1", Role: RoleControlPlane})
			_, still := r.File(bundle)
			if len(tt.wantErr) == 0 {
				if err != nil || still {
					t.Fatalf("Apply = %v; bundle still there: %v", err, still)
				}
				return
			}
			if err == nil || !still {
				t.Fatalf("Apply = %v; bundle still there: %v", err, still)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%s\nlacks %q", err, w)
				}
			}
			lines, derr := s.(Describer).Describe(ctx, rt, Target{Node: "cp1", Role: RoleControlPlane})
			if derr != nil || !strings.Contains(strings.Join(lines, "\n"), "would refuse (in use): ") {
				t.Errorf("Describe = %q, %v", lines, derr)
			}
		})
	}
}
