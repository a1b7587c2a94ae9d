package plans

import (
	"strings"
	"testing"
)

// The etcd CA's steps follow the invariant with the other roots: every
// member and every apiserver trusts both etcd CAs before any certificate of
// the new one is presented (member certificates in etcd-certs, the
// apiserver's client certificate in switch-issuance); every such
// certificate is in place before any member or apiserver stops trusting
// the old one (etcd-narrow, control-plane-canonical); the cleanup removes
// the bundle last. Without etcd in the rotate list the plan has none of
// these steps.
func TestEtcdStepsOrdered(t *testing.T) {
	nodes := NodesSpec{ControlPlane: []NodeSpec{{Name: "cp1"}, {Name: "cp2"}}, Workers: []NodeSpec{{Name: "w1"}}}
	for _, ps := range Build(&Inventory{Nodes: nodes}, Options{}).Steps() {
		if n := ps.Step.Name(); strings.HasPrefix(n, "etcd-") {
			t.Errorf("etcd step %s in a plan that does not rotate the etcd CA", n)
		}
	}

	inv := &Inventory{Nodes: nodes, Rotate: []string{RootCluster, RootFrontProxy, RootEtcd}}
	pos := map[string]int{}
	for i, ps := range Build(inv, Options{}).Steps() {
		pos[ps.Step.Name()] = i
		if strings.HasPrefix(ps.Step.Name(), "etcd-") && ps.Step.Name() != "etcd-members" {
			if ps.Concurrency != 1 || len(ps.Targets) != 2 {
				t.Errorf("%s: %d targets, %d at a time; want every control-plane node, one at a time (quorum)", ps.Step.Name(), len(ps.Targets), ps.Concurrency)
			}
		}
	}
	before := [][2]string{
		{"etcd-members", "new-cas"},
		{"distribute", "etcd-trust-both"},
		{"etcd-trust-both", "etcd-certs"},
		{"apiserver-trust-both", "etcd-certs"},
		{"etcd-trust-both", "switch-issuance"},
		{"etcd-certs", "etcd-narrow"},
		{"switch-issuance", "etcd-narrow"},
		{"etcd-narrow", "control-plane-canonical"},
		{"control-plane-canonical", "cleanup"},
	}
	stepsBefore(t, pos, before)
}

// stepsBefore checks that each pair's first step comes before its second
// in the plan (pos: step name → index).
func stepsBefore(t *testing.T, pos map[string]int, before [][2]string) {
	t.Helper()
	for _, b := range before {
		i, ok1 := pos[b[0]]
		j, ok2 := pos[b[1]]
		if !ok1 || !ok2 {
			t.Errorf("plan lacks %s or %s", b[0], b[1])
			continue
		}
		if i >= j {
			t.Errorf("%s must come before %s", b[0], b[1])
		}
	}
}
