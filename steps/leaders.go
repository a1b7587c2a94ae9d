package steps

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Orderer is implemented by steps that may choose the order of their
// targets at run time.
type Orderer interface {
	// Ordering is how the step orders its targets, or nil when it keeps
	// the planned order.
	Ordering() *Ordering
}

// OrderingOf is s's Ordering, or nil when s keeps the planned order.
func OrderingOf(s Step) *Ordering {
	if o, ok := s.(Orderer); ok {
		return o.Ordering()
	}
	return nil
}

// Ordering puts the nodes that hold the components' leader leases last,
// so that standbys go first and each leadership moves once: a standby
// just restarted must watch the lease for a whole lease duration before
// it may take it, so restarting a new leader soon after the old one
// would leave the lease unheld for longer.
//
// For the same reason it first waits until each lease has a live holder.
// A controller-manager does not release its lease when it stops (the
// ControllerManagerReleaseLeaderElectionLockOnExit gate is alpha and off
// in v1.37), so after a step restarted the leader the lease stays held by
// the stopped process until a standby has watched it for a lease
// duration. Restarting that standby meanwhile, as the next step's first
// target, starts its watch over: a run killed right after
// `switch-issuance` restarted the leader, then rolled back, had the
// revert of `switch-issuance` restart the standbys first, and the lease
// went 54 s without renewal (26 s in CI, killed a little later). Order
// waits for the handover instead; with a live leader it waits for one
// renewal (the retry period, 2 s by default).
type Ordering struct {
	Leaders []Component // the first one's holder goes very last
}

// String is the ordering as `rotate plan` shows it.
func (o *Ordering) String() string { return "current leader last" }

// leaderWaitLeases is how many lease durations Order waits for a live
// holder: a standby takes an abandoned lease one lease duration after
// the last renewal it saw, plus its retry period, and one restarted just
// before needs its start-up on top.
const leaderWaitLeases = 3

// Order waits until each component's leader lease is held by a live
// process (renewed, or taken over, since Order first read it; at most
// leaderWaitLeases lease durations, then it says so and goes on), then
// returns targets with the holders last: a permutation of targets. A
// lease that cannot be read orders nothing; one without a renewal time is
// not waited for.
func (o *Ordering) Order(ctx context.Context, rt *Runtime, targets []Target) []Target {
	holders := o.liveHolders(ctx, rt)
	rank := map[string]int{} // node -> how late it goes
	for i, c := range o.Leaders {
		if h, ok := holders[c.Name]; ok {
			rank[h] = max(rank[h], len(o.Leaders)-i)
		}
	}
	out := append([]Target(nil), targets...)
	sort.SliceStable(out, func(i, j int) bool { return rank[out[i].Node] < rank[out[j].Node] })
	return out
}

// leaderLease is one component's lease as Order follows it.
type leaderLease struct {
	name        string
	firstHolder string
	firstRenew  metav1.MicroTime
	last        *coordinationv1.Lease
	live        bool   // renewed or taken over since first read
	readErr     string // the last read's error, if it failed
}

// holderNode is the node part of a leader election identity
// (<hostname>_<uuid>).
func holderNode(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	h := *l.Spec.HolderIdentity
	if j := strings.IndexByte(h, '_'); j >= 0 {
		h = h[:j]
	}
	return h
}

// liveHolders reads the leases, waits until each has a live holder, and
// returns the holder node of each lease it could read (live or, after the
// wait, the last one seen).
func (o *Ordering) liveHolders(ctx context.Context, rt *Runtime) map[string]string {
	var read, follow []*leaderLease
	budget := time.Duration(0)
	for _, c := range o.Leaders {
		l, err := rt.Kube.CoordinationV1().Leases(metav1.NamespaceSystem).Get(ctx, c.Name, metav1.GetOptions{})
		if err != nil {
			continue
		}
		ll := &leaderLease{name: c.Name, last: l}
		read = append(read, ll)
		if l.Spec.RenewTime == nil {
			continue // never renewed: ordered by its holder, not waited for
		}
		ll.firstRenew = *l.Spec.RenewTime
		if l.Spec.HolderIdentity != nil {
			ll.firstHolder = *l.Spec.HolderIdentity
		}
		follow = append(follow, ll)
		d := 15 * time.Second // client-go's and the components' default
		if l.Spec.LeaseDurationSeconds != nil && *l.Spec.LeaseDurationSeconds > 0 {
			d = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
		}
		budget = max(budget, leaderWaitLeases*d)
	}
	if len(follow) > 0 {
		wctx, cancel := context.WithTimeout(ctx, budget)
		err := rt.waitFor(wctx, "a live leader of "+leaseNames(follow), func(ctx context.Context) (bool, string, error) {
			var why []string
			for _, ll := range follow {
				if w := ll.poll(ctx, rt); w != "" {
					why = append(why, w)
				}
			}
			return len(why) == 0, strings.Join(why, "; "), nil
		})
		cancel()
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			for _, ll := range follow {
				if !ll.live {
					rt.Printf("%s; going on", ll.missed(budget))
				}
			}
		}
	}
	holders := map[string]string{}
	for _, ll := range read {
		if h := holderNode(ll.last); h != "" {
			holders[ll.name] = h
		}
	}
	return holders
}

// poll reads the lease again, unless it is live already; it says why it
// is not live ("" once it is).
func (ll *leaderLease) poll(ctx context.Context, rt *Runtime) string {
	if ll.live {
		return ""
	}
	l, err := rt.Kube.CoordinationV1().Leases(metav1.NamespaceSystem).Get(ctx, ll.name, metav1.GetOptions{})
	if err != nil {
		ll.readErr = err.Error()
		return "lease " + ll.name + ": " + ll.readErr
	}
	ll.last, ll.readErr = l, ""
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	renewed := l.Spec.RenewTime != nil && !l.Spec.RenewTime.Equal(&ll.firstRenew)
	if holder != "" && (holder != ll.firstHolder || renewed) {
		ll.live = true
		return ""
	}
	return "lease " + ll.name + " not renewed since " + ll.firstRenew.UTC().Format(time.RFC3339)
}

// missed says that no live holder came within budget.
func (ll *leaderLease) missed(budget time.Duration) string {
	msg := fmt.Sprintf("no live %s leader within %s: lease kube-system/%s not renewed since %s",
		ll.name, budget, ll.name, ll.firstRenew.UTC().Format(time.RFC3339))
	if ll.readErr != "" {
		return msg + ", and its last read failed: " + ll.readErr
	}
	return fmt.Sprintf("%s (holder %q)", msg, holderNode(ll.last))
}

func leaseNames(ls []*leaderLease) string {
	var names []string
	for _, l := range ls {
		names = append(names, l.name)
	}
	return strings.Join(names, " and ")
}
