package steps_test

import (
	"context"
	"io/fs"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/steps"
)

// TestNodeSteps runs every node-editing step of the plan, in plan order, on
// a control-plane node and a worker, and holds each to the contract of a
// step (steps.Step) on the files the real kubeadm writes (and on
// hand-written ones, which need no kubeadm binary):
//
//   - Check is false before Apply (true only where the step has nothing
//     to do on that node);
//   - after Apply and Gate, Check is true, and every file Apply rewrote
//     kept its mode and owner;
//   - a second Apply writes, links and removes nothing outside rotate's
//     own directory;
//   - Revert (and RevertGate) puts back every file byte for byte, with its
//     mode and owner, every link with its target, and removes what Apply
//     created; Check is then as it was before Apply;
//   - Apply once more writes the same bytes as the first time, and the run
//     goes on from there to the next step, as after a rollback and a new
//     start.
//
// Some files have other owners and modes than kubeadm gives them, as an
// operator may have set them, and a cloud-controller-manager manifest is
// added, so that every step has something to do.
func TestNodeSteps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layout func(t *testing.T) (cp, worker layout)
	}{
		{"hand-written", handWrittenLayout},
		{"kubeadm", kubeadmLayout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp, worker := tc.layout(t)
			runNodeSteps(t, withOperatorChanges(cp), withOperatorChanges(worker), true)
		})
	}
	t.Run("hand-written/no-cloud-controller-manager", func(t *testing.T) {
		cp, worker := handWrittenLayout(t)
		runNodeSteps(t, cp, worker, false)
	})
}

// withOperatorChanges is l with some files owned by others than root, at
// other modes, and a cloud-controller-manager static pod on a
// control-plane node.
func withOperatorChanges(l layout) layout {
	out := layout{}
	for p, f := range l {
		out[p] = f
	}
	set := func(p string, mode fs.FileMode, uid, gid int) {
		if f, ok := out[p]; ok && f.link == "" {
			f.mode, f.uid, f.gid = mode, uid, gid
			out[p] = f
		}
	}
	set("/etc/kubernetes/admin.conf", 0o640, 1000, 1000)
	set("/etc/kubernetes/pki/ca.crt", 0o640, 0, 1001)
	set(kubeletCfg, 0o600, 0, 1001)
	set(kubeletKC, 0o640, 0, 1001)
	return withCCM(out)
}

// withCCM is l with a cloud-controller-manager static pod if l is a
// control-plane node's.
func withCCM(l layout) layout {
	if _, ok := l[manifests+"/kube-apiserver.yaml"]; !ok {
		return l
	}
	out := layout{}
	for p, f := range l {
		out[p] = f
	}
	out[manifests+"/cloud-controller-manager.yaml"] = staticPod("cloud-controller-manager",
		"--cloud-provider=external", "--kubeconfig=/etc/kubernetes/cloud-controller-manager.conf",
		"--root-ca-file=/etc/kubernetes/pki/ca.crt")
	return out
}

// maxTripsPerStep is the most round trips a node step's Check and Apply
// may make to its node (gates aside): one read of every file, one write of
// every backup and change (the backups are read from the first: a write
// queued before a backup's read would cost a read of its own), the
// restart, the kubelet marker, and one read of what a restart may have
// changed. (The budget is 8; the steps take at most 5.)
const maxTripsPerStep = 5

// maxTripsPerKubeletStep is a kubelet step's budget within it: one read,
// then its edits, the restart and the marker in one round trip
// (nodes.ApplyRunApply).
const maxTripsPerKubeletStep = 2

// maxTripsCleanup is cleanup's: one read of rotate's files with every
// file that could name them, the manifests dir's listing (a manifest no
// candidate names would cost one more read), the removals.
const maxTripsCleanup = 3

// maxTripsPerRevert is the most round trips a node step's Revert may make
// to its node outside its gates: one read of every file, backup and link
// target, one write of the early restorations with the kubelet marker, the
// restart, one read of what the restart may have changed, one write of the
// late restorations with the marker's removal, and the kubelet client
// certificate's check. (The budget is 8, as for the forward step;
// a restoration that looked at its file on its own made 11 to 17; the
// restart carries the restorations before it and, when nothing is left
// to restore late, the marker's removal after it.)
const maxTripsPerRevert = 5

func runNodeSteps(t *testing.T, cp, worker layout, withCCM bool) {
	ctx := context.Background()
	ns := steps.MemNodes{cpNode: memNode(cpNode, cp), workerNode: memNode(workerNode, worker)}
	st := steps.NewTestStore()
	runtime := modelRuntime(ns, steps.GateFunc(func(string, string) error { return nil }), nil)
	prepare(t, st, runtime)

	for _, tc := range planNodeSteps(t, nil) {
		name := tc.key + "@" + tc.t.Node
		r := ns[tc.t.Node].(*nodes.MemRunner)
		// Where the step has nothing to do, Check is true from the start.
		nothingToDo := (tc.s.Name() == "ccm-trust-both" || tc.s.Name() == "ccm-narrow") && !withCCM
		ok := t.Run(name, func(t *testing.T) {
			rt := runtime(st.ForStep(), backupID(name))
			check := func(when string, want bool) {
				t.Helper()
				if done, err := tc.s.Check(ctx, rt, tc.t); err != nil || done != want {
					t.Fatalf("Check %s = %v, %v; want %v", when, done, err, want)
				}
			}
			apply := func() {
				t.Helper()
				if err := tc.s.Apply(ctx, rt, tc.t); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if err := tc.s.Gate(ctx, rt, tc.t); err != nil {
					t.Fatalf("Gate: %v", err)
				}
			}
			before := nodeFiles(r)
			trips := nodes.NewRoundTrips()
			r.Trips = trips
			check("before Apply", nothingToDo)
			apply()
			r.Trips = nil
			t.Logf("round trips: %d", trips.Counts().Nodes[tc.t.Node])
			if n := trips.Counts().Nodes[tc.t.Node]; n > maxTripsPerStep {
				t.Errorf("Check and Apply took %d round trips to %s, want at most %d", n, tc.t.Node, maxTripsPerStep)
			}
			if strings.HasPrefix(tc.s.Name(), "kubelet-") { // trust, client, narrow
				if n := trips.Counts().Nodes[tc.t.Node]; n > maxTripsPerKubeletStep {
					t.Errorf("kubelet step: Check and Apply took %d round trips to %s, want at most %d", n, tc.t.Node, maxTripsPerKubeletStep)
				}
			}
			if n := trips.Counts().Nodes[tc.t.Node]; tc.s.Name() == "cleanup" && n > maxTripsCleanup {
				t.Errorf("cleanup: Check and Apply took %d round trips to %s, want at most %d", n, tc.t.Node, maxTripsCleanup)
			}
			check("after Apply", true)
			applied := nodeFiles(r)
			if !nothingToDo && equalFiles(before, applied) {
				t.Fatal("Apply changed no file")
			}
			for p, was := range before {
				if now, ok := applied[p]; ok && modeOwner(now) != modeOwner(was) {
					t.Errorf("Apply changes the mode or owner of %s from %s to %s", p, modeOwner(was), modeOwner(now))
				}
			}

			n := len(r.Ops())
			apply()
			for _, op := range r.Ops()[n:] {
				verb, p, _ := strings.Cut(op, " ")
				if (verb == "write" || verb == "symlink" || verb == "remove") && !strings.HasPrefix(p, rotateDir) {
					t.Errorf("a second Apply changes a file: %s", op)
				}
			}
			expectFiles(t, "after a second Apply", r, applied)

			trips = nodes.NewRoundTrips()
			r.Trips = trips
			if err := tc.s.Revert(nodes.CountAs(ctx, "revert"), rt, tc.t); err != nil {
				t.Fatalf("Revert: %v", err)
			}
			r.Trips = nil
			t.Logf("revert round trips: %d", trips.Counts().Steps["revert"][tc.t.Node])
			if n := trips.Counts().Steps["revert"][tc.t.Node]; n > maxTripsPerRevert {
				t.Errorf("Revert took %d round trips to %s outside its gates, want at most %d", n, tc.t.Node, maxTripsPerRevert)
			}
			if err := tc.s.RevertGate(ctx, rt, tc.t); err != nil {
				t.Fatalf("RevertGate: %v", err)
			}
			expectFiles(t, "after Revert", r, before)
			check("after Revert", nothingToDo)

			apply()
			check("after Apply again", true)
			expectFiles(t, "after Apply again", r, applied)
		})
		if !ok {
			t.Fatalf("%s failed; the steps after it would run on other files than in a real run", name)
		}
	}
}

// modeOwner is the mode and owner of a nodeFiles entry ("" for a link).
func modeOwner(f string) string {
	if strings.HasPrefix(f, "-> ") {
		return ""
	}
	m, rest, _ := strings.Cut(f, " ")
	owner, _, _ := strings.Cut(rest, " ")
	return m + " " + owner
}

func equalFiles(a, b map[string]string) bool {
	for _, p := range sortedKeys(a, b) {
		if a[p] != b[p] {
			return false
		}
	}
	return true
}

// expectFiles fails t for every path whose state on r is not want's.
func expectFiles(t *testing.T, when string, r *nodes.MemRunner, want map[string]string) {
	t.Helper()
	got := nodeFiles(r)
	for _, p := range sortedKeys(want, got) {
		if want[p] != got[p] {
			t.Errorf("%s, %s is %s; want %s", when, p, describeDiff(got[p], want[p]), describe(want[p]))
		}
	}
}

// describeDiff describes got, saying whether only its mode or owner differ
// from want.
func describeDiff(got, want string) string {
	gm, grest, _ := strings.Cut(got, " ")
	wm, wrest, _ := strings.Cut(want, " ")
	gown, gc, _ := strings.Cut(grest, " ")
	wown, wc, _ := strings.Cut(wrest, " ")
	if got != "" && want != "" && gc == wc && !strings.HasPrefix(got, "-> ") {
		return "the same content at " + gm + " " + gown + " (not " + wm + " " + wown + ")"
	}
	return describe(got)
}
