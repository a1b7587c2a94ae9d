package steps

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
)

// TestLeadersLast: the holders of the leader leases go last, the first
// component's holder very last; nodes holding none keep their order; an
// unreadable lease orders nothing.
func TestLeadersLast(t *testing.T) {
	lease := func(name, holder string) runtime.Object {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceSystem},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}
	}
	targets := []Target{{Node: "cp1"}, {Node: "cp2"}, {Node: "cp3"}}
	for _, tc := range []struct {
		name   string
		leases []runtime.Object
		want   string
	}{
		{"both on cp1", []runtime.Object{lease(ControllerManager.Name, "cp1_a"), lease(Scheduler.Name, "cp1_b")}, "cp2,cp3,cp1"},
		{"controller-manager on cp1, scheduler on cp2", []runtime.Object{lease(ControllerManager.Name, "cp1_a"), lease(Scheduler.Name, "cp2_b")}, "cp3,cp2,cp1"},
		{"scheduler only, on cp1", []runtime.Object{lease(Scheduler.Name, "cp1_b")}, "cp2,cp3,cp1"},
		{"no leases", nil, "cp1,cp2,cp3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, _ := kubeRuntime(t, tc.leases...)
			o := (&NodeEdit{LeadersLast: []Component{ControllerManager, Scheduler}}).Ordering()
			var got []string
			for _, tg := range o.Order(context.Background(), rt, targets) {
				got = append(got, tg.Node)
			}
			if strings.Join(got, ",") != tc.want {
				t.Errorf("order = %v, want %s", got, tc.want)
			}
		})
	}
}

// leaseServer answers GETs of the controller-manager's lease from a
// script: the lease each call sees is next(call), counted from 1.
type leaseServer struct {
	mu    sync.Mutex
	calls int
	next  func(call int) (holder string, renew time.Time)
}

// leaseRuntime is a runtime whose API serves the controller-manager's
// lease from next (with the given duration), and the progress lines
// Order printed.
func leaseRuntime(t *testing.T, durationSeconds int32, next func(call int) (string, time.Time)) (*Runtime, *leaseServer, *[]string) {
	rt, c := kubeRuntime(t)
	lines := &[]string{}
	rt.Progress = func(s string) { *lines = append(*lines, s) }
	ls := &leaseServer{next: next}
	c.PrependReactor("get", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.GetAction).GetName() != ControllerManager.Name {
			return false, nil, nil
		}
		ls.mu.Lock()
		ls.calls++
		holder, renew := ls.next(ls.calls)
		ls.mu.Unlock()
		at := metav1.NewMicroTime(renew)
		return true, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: ControllerManager.Name, Namespace: metav1.NamespaceSystem},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &at, LeaseDurationSeconds: &durationSeconds}}, nil
	})
	return rt, ls, lines
}

func (ls *leaseServer) count() int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.calls
}

var kcmLast = &Ordering{Leaders: []Component{ControllerManager}}

// orderNodes is Order's result for the controller-manager, as
// "cp2,cp3,cp1".
func orderNodes(ctx context.Context, rt *Runtime, targets ...string) string {
	var ts []Target
	for _, n := range targets {
		ts = append(ts, Target{Node: n})
	}
	var got []string
	for _, tg := range kcmLast.Order(ctx, rt, ts) {
		got = append(got, tg.Node)
	}
	return strings.Join(got, ",")
}

// TestOrderWaitsForHandover: the lease is still held by a controller-
// manager the previous step stopped (never renewed again); Order waits
// until a standby takes it over, and that standby, not the stopped
// holder's node, goes last.
func TestOrderWaitsForHandover(t *testing.T) {
	stopped := time.Now().Add(-5 * time.Second)
	rt, ls, lines := leaseRuntime(t, 15, func(call int) (string, time.Time) {
		if call < 4 {
			return "cp3_stopped", stopped
		}
		return "cp1_standby", time.Now()
	})
	got := orderNodes(context.Background(), rt, "cp1", "cp2", "cp3")
	if got != "cp2,cp3,cp1" {
		t.Errorf("order = %s, want the new leader cp1 last", got)
	}
	if n := ls.count(); n < 4 {
		t.Errorf("Order read the lease %d times: it did not wait for the handover", n)
	}
	if len(*lines) != 0 {
		t.Errorf("progress %q, want none: the handover came in time", *lines)
	}
}

// TestOrderLiveLeader: a leader that renews is seen at its next renewal,
// without waiting for anything else.
func TestOrderLiveLeader(t *testing.T) {
	start := time.Now()
	rt, ls, _ := leaseRuntime(t, 15, func(call int) (string, time.Time) {
		return "cp2_live", start.Add(time.Duration(call) * time.Second) // renewed between any two reads
	})
	if got := orderNodes(context.Background(), rt, "cp1", "cp2", "cp3"); got != "cp1,cp3,cp2" {
		t.Errorf("order = %s, want the leader cp2 last", got)
	}
	if n := ls.count(); n != 2 {
		t.Errorf("Order read the lease %d times, want 2 (first read, then the renewal)", n)
	}
}

// TestOrderNoLeader: nobody takes the lease over within three lease
// durations; Order says so and goes on, the last holder's node last.
func TestOrderNoLeader(t *testing.T) {
	stopped := time.Now().Add(-time.Minute)
	rt, _, lines := leaseRuntime(t, 1, func(int) (string, time.Time) { return "cp1_stopped", stopped })
	begin := time.Now()
	got := orderNodes(context.Background(), rt, "cp1", "cp2", "cp3")
	if waited := time.Since(begin); waited < 3*time.Second {
		t.Errorf("Order gave up after %s, want three lease durations (3s)", waited)
	}
	if got != "cp2,cp3,cp1" {
		t.Errorf("order = %s, want the last holder cp1 last", got)
	}
	if l := *lines; len(l) != 1 || !strings.Contains(l[0], "no live kube-controller-manager leader within 3s") || !strings.Contains(l[0], `holder "cp1"`) {
		t.Errorf("progress %q, want one line saying no leader renewed within 3s", l)
	}
}

// TestOrderCanceled: a canceled run does not wait out the lease.
func TestOrderCanceled(t *testing.T) {
	stopped := time.Now().Add(-time.Minute)
	rt, _, lines := leaseRuntime(t, 15, func(int) (string, time.Time) { return "cp1_stopped", stopped })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	begin := time.Now()
	orderNodes(ctx, rt, "cp1", "cp2")
	if waited := time.Since(begin); waited > 5*time.Second {
		t.Errorf("Order waited %s after its context ended", waited)
	}
	if len(*lines) != 0 {
		t.Errorf("progress %q, want none: the run was canceled, no leader was missed", *lines)
	}
}
