package plans

import (
	"strings"
	"testing"
)

// The service-account key follows the invariant: every apiserver accepts
// both keys (apiserver-trust-both) and publishes them (service-account-keys)
// before any signs with the new one (switch-issuance); the kubelets restart
// after the switch (kubelet-client-*) and every pod's token is proven
// re-issued (service-account-tokens) before the old key is dropped
// (control-plane-canonical). In rollback order service-account-keys'
// revert comes after switch-issuance's and the kubelet-trust steps' (which
// restart the kubelets) and before apiserver-trust-both's.
func TestServiceAccountStepsOrdered(t *testing.T) {
	nodes := NodesSpec{ControlPlane: []NodeSpec{{Name: "cp1"}, {Name: "cp2"}}, Workers: []NodeSpec{{Name: "w1"}}}
	for _, ps := range Build(&Inventory{Nodes: nodes}, Options{}).Steps() {
		if strings.HasPrefix(ps.Step.Name(), "service-account-") {
			t.Errorf("step %s in a plan that does not rotate the service-account key", ps.Step.Name())
		}
	}
	inv := &Inventory{Nodes: nodes, Rotate: []string{RootCluster, RootFrontProxy, RootServiceAccount}}
	pos := map[string]int{}
	for i, ps := range Build(inv, Options{}).Steps() {
		pos[ps.Step.Name()] = i
	}
	before := [][2]string{
		{"new-cas", "distribute"},
		{"distribute", "apiserver-trust-both"},
		{"apiserver-trust-both", "service-account-keys"},
		{"service-account-keys", "switch-issuance"},
		// rollback: reverted in reverse order
		{"service-account-keys", "kubelet-trust-cp"},
		{"service-account-keys", "kubelet-trust-workers"},
		{"switch-issuance", "kubelet-client-cp"},
		{"kubelet-client-workers", "service-account-tokens"},
		{"verify", "service-account-tokens"},
		{"kcm-root-ca-new", "service-account-tokens"},
		{"service-account-tokens", "control-plane-canonical"},
		{"control-plane-canonical", "cleanup"},
	}
	stepsBefore(t, pos, before)
}
