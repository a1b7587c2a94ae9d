package steps

import (
	"context"
	"strings"
	"testing"
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
