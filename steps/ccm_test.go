package steps

import (
	"context"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes"
)

const ccmManifest = `apiVersion: v1
kind: Pod
metadata:
  name: cloud-controller-manager
  namespace: kube-system
spec:
  containers:
  - command:
    - /bin/aws-cloud-controller-manager
    - --cloud-provider=aws
    - --root-ca-file=/etc/kubernetes/pki/ca.crt
    - --secure-port=10300
    image: registry.k8s.io/provider-aws/cloud-controller-manager:v1.37.0
    name: cloud-controller-manager
  hostNetwork: true
`

// TestCCMWidenedAndNarrowed: ccm-trust-both points the
// cloud-controller-manager at the bundle and ccm-narrow back at ca.crt, each
// gated on the restarted process its command names, on its secure port;
// without a manifest both have nothing to do and gate nothing.
func TestCCMWidenedAndNarrowed(t *testing.T) {
	ctx := context.Background()
	cp1 := Target{Node: "cp1", Role: RoleControlPlane}
	const p = "/etc/kubernetes/manifests/cloud-controller-manager.yaml"
	for _, present := range []bool{true, false} {
		rt, r, _ := testRuntime(t)
		if present {
			r.SetFile(p, []byte(ccmManifest), 0o600)
		}
		var gated []string
		rt.Gates = gateFunc(func(node, c string) error { gated = append(gated, node+"/"+c); return nil })
		for _, tc := range []struct {
			s    Step
			flag string
		}{
			{CCMTrustBoth(), "--root-ca-file=/etc/kubernetes/pki/rotate-ca-bundle.crt"},
			{CCMNarrow(), "--root-ca-file=/etc/kubernetes/pki/ca.crt"},
		} {
			gated = nil
			if err := tc.s.Apply(ctx, rt, cp1); err != nil {
				t.Fatalf("%s: %v", tc.s.Name(), err)
			}
			if err := tc.s.Gate(ctx, rt, cp1); err != nil {
				t.Fatal(err)
			}
			done, err := tc.s.Check(ctx, rt, cp1)
			if err != nil || !done {
				t.Errorf("%s: Check after Apply = %v, %v", tc.s.Name(), done, err)
			}
			got, _ := r.File(p)
			if !present {
				if got != nil || len(gated) != 0 {
					t.Errorf("%s without a manifest wrote %q, gated %q", tc.s.Name(), got, gated)
				}
				continue
			}
			if !strings.Contains(string(got), "- "+tc.flag+"\n") || !strings.Contains(string(got), restartAnnotation) {
				t.Errorf("%s: manifest\n%s\nlacks %s or the restart annotation", tc.s.Name(), got, tc.flag)
			}
			if strings.Join(gated, ",") != "cp1/aws-cloud-controller-manager" {
				t.Errorf("%s gated %q", tc.s.Name(), gated)
			}
		}
		if present {
			c, ok, err := rt.ccmGate(ctx, cp1)
			if err != nil || !ok || c.HealthPort != 10300 || c.Manifest != ccm.Manifest {
				t.Errorf("ccmGate = %+v, %v, %v", c, ok, err)
			}
		}
	}
}

// TestCleanupRefusesFilesInUse: cleanup removes nothing while a static pod
// manifest (one rotate edits, or any other in the directory) or the
// kubelet's config names one of rotate's files, and says which and where.
func TestCleanupRefusesFilesInUse(t *testing.T) {
	ctx := context.Background()
	const bundle = "/etc/kubernetes/pki/rotate-ca-bundle.crt"
	tests := []struct {
		name    string
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
			for _, f := range rotateFiles {
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
