package orchestrator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

var (
	holderA = LockHolder{RunID: "20261130-010000-aaaa", Operator: "alice@laptop", StateFile: "/home/alice/rotate.db"}
	holderB = LockHolder{RunID: "20261130-040000-bbbb", Operator: "bob@desk", StateFile: "/home/bob/rotate.db"}
)

// clock is a settable time.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newClock() *clock { return &clock{t: time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)} }

func getLease(t *testing.T, c *fake.Clientset) *coordinationv1.Lease {
	t.Helper()
	l, err := c.CoordinationV1().Leases(LockNamespace).Get(context.Background(), LockName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get lease: %v", err)
	}
	return l
}

func mustAcquire(t *testing.T, c *fake.Clientset, h LockHolder, breakLock bool, clk *clock) *ClusterLock {
	t.Helper()
	l, _, err := AcquireLock(context.Background(), c, h, breakLock, clk.now)
	if err != nil {
		t.Fatalf("acquire as %s: %v", h.RunID, err)
	}
	return l
}

func TestLockTakeAndRenew(t *testing.T) {
	c, clk := fake.NewClientset(), newClock()
	l := mustAcquire(t, c, holderA, false, clk)
	lease := getLease(t, c)
	if got := *lease.Spec.HolderIdentity; got != "rotate run 20261130-010000-aaaa by alice@laptop, state file /home/alice/rotate.db" {
		t.Errorf("holderIdentity = %q", got)
	}
	s := leaseStatus(lease)
	if !s.Held || s.LockHolder != holderA || !s.AcquiredAt.Equal(clk.t) || !s.RenewedAt.Equal(clk.t) {
		t.Errorf("status after take = %+v", s)
	}
	clk.t = clk.t.Add(20 * time.Second)
	if err := l.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = leaseStatus(getLease(t, c))
	if !s.RenewedAt.Equal(clk.t) || s.AcquiredAt.Equal(clk.t) {
		t.Errorf("after renew: acquired %s renewed %s, want renewed %s and acquired unchanged", s.AcquiredAt, s.RenewedAt, clk.t)
	}
}

// A run on hold whose process exited holds the lock however old its
// renewal: another run is refused, with who holds it and since when.
func TestLockRefusesAnotherRun(t *testing.T) {
	c, clk := fake.NewClientset(), newClock()
	mustAcquire(t, c, holderA, false, clk)
	clk.t = clk.t.Add(3 * time.Hour)
	_, prev, err := AcquireLock(context.Background(), c, holderB, false, clk.now)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("acquire as another run = %v, want ErrLocked", err)
	}
	for _, want := range []string{
		"rotate run 20261130-010000-aaaa by alice@laptop, state file /home/alice/rotate.db",
		"last renewed 2026-11-30T01:00:00Z (3h0m0s ago)",
		"--break-lock",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if prev.LockHolder != holderA {
		t.Errorf("reported holder %+v", prev.LockHolder)
	}
	if s := leaseStatus(getLease(t, c)); s.LockHolder != holderA {
		t.Errorf("refused acquire changed the lease: %+v", s)
	}
}

// The same run resumed from another machine (--recover-from) is the same
// holder: it takes the lock without --break-lock and keeps its acquire
// time.
func TestLockSameRunRetakes(t *testing.T) {
	c, clk := fake.NewClientset(), newClock()
	mustAcquire(t, c, holderA, false, clk)
	took := clk.t
	clk.t = clk.t.Add(time.Hour)
	elsewhere := LockHolder{RunID: holderA.RunID, Operator: "alice@cp1", StateFile: "/root/rotate.db"}
	mustAcquire(t, c, elsewhere, false, clk)
	s := leaseStatus(getLease(t, c))
	if s.LockHolder != elsewhere || !s.AcquiredAt.Equal(took) || !s.RenewedAt.Equal(clk.t) {
		t.Errorf("after re-take = %+v", s)
	}
	if n := getLease(t, c).Spec.LeaseTransitions; n != nil && *n != 0 {
		t.Errorf("leaseTransitions = %d, want 0 for the same run", *n)
	}
}

// --break-lock takes another run's lock over; that run, if still running,
// sees the lock lost at its next renewal and stops, and does not release
// the new holder's lock.
func TestLockBreak(t *testing.T) {
	c, clk := fake.NewClientset(), newClock()
	a := mustAcquire(t, c, holderA, false, clk)
	clk.t = clk.t.Add(time.Minute)
	_, prev, err := AcquireLock(context.Background(), c, holderB, true, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	if prev.LockHolder != holderA {
		t.Errorf("previous holder %+v", prev.LockHolder)
	}
	lease := getLease(t, c)
	if s := leaseStatus(lease); s.LockHolder != holderB || !s.AcquiredAt.Equal(clk.t) {
		t.Errorf("after break = %+v", s)
	}
	if n := lease.Spec.LeaseTransitions; n == nil || *n != 1 {
		t.Errorf("leaseTransitions = %v, want 1", n)
	}
	if err := a.Renew(context.Background()); !errors.Is(err, errLockLost) || !strings.Contains(err.Error(), holderB.RunID) {
		t.Errorf("old holder's renew = %v, want errLockLost naming %s", err, holderB.RunID)
	}
	if err := a.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := leaseStatus(getLease(t, c)); s.LockHolder != holderB {
		t.Errorf("old holder's release removed the new holder's lock: %+v", s)
	}
}

// withLock releases the lock when the run is over (completed, rolled back)
// and keeps it while it is held or failed.
func TestWithLockReleasesWhenTheRunEnds(t *testing.T) {
	tests := []struct {
		name     string
		state    string
		err      error
		wantHeld bool
	}{
		{name: "completed", state: StateCompleted},
		{name: "rolled back", state: StateRolledBack},
		{name: "held", state: StateHeld, wantHeld: true},
		{name: "failed", state: StateFailed, err: errors.New("step failed"), wantHeld: true},
		{name: "rollback failed", state: StateRollingBack, err: errors.New("revert failed"), wantHeld: true},
		// An error after the run ended (say, the kubeconfig check) still
		// releases the lock of a run that is over.
		{name: "completed, then an error", state: StateCompleted, err: errors.New("after the end")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, clk := fake.NewClientset(), newClock()
			var recorded []LockStatus
			o := LockOptions{Holder: holderA, Now: clk.now, Record: func(ctx context.Context, s LockStatus) error {
				recorded = append(recorded, s)
				return nil
			}}
			err := withLock(context.Background(), c, o, func(ctx context.Context) (string, error) {
				if s := leaseStatus(getLease(t, c)); s.LockHolder != holderA {
					t.Errorf("during the run the lock is %+v", s)
				}
				return tt.state, tt.err
			})
			if !errors.Is(err, tt.err) {
				t.Fatalf("withLock = %v, want %v", err, tt.err)
			}
			_, gerr := c.CoordinationV1().Leases(LockNamespace).Get(context.Background(), LockName, metav1.GetOptions{})
			if held := gerr == nil; held != tt.wantHeld {
				t.Errorf("lease present = %v (%v), want %v", held, gerr, tt.wantHeld)
			}
			if !tt.wantHeld && !apierrors.IsNotFound(gerr) {
				t.Errorf("get after release = %v, want not found", gerr)
			}
			if len(recorded) == 0 || !recorded[0].Held || recorded[0].LockHolder != holderA {
				t.Errorf("recorded %+v, want the lock taken first", recorded)
			}
			if last := recorded[len(recorded)-1]; last.Held != tt.wantHeld {
				t.Errorf("last recorded %+v, want held=%v", last, tt.wantHeld)
			}
		})
	}
}

// withLock renews while the run goes on, and stops the run when another
// run breaks the lock.
func TestWithLockRenewsAndStopsWhenBroken(t *testing.T) {
	c := fake.NewClientset()
	start := time.Now()
	o := LockOptions{Holder: holderA, Interval: 20 * time.Millisecond}
	err := withLock(context.Background(), c, o, func(ctx context.Context) (string, error) {
		took := leaseStatus(getLease(t, c)).RenewedAt
		deadline := time.After(30 * time.Second) // generous: the machine may be busy
		for leaseStatus(getLease(t, c)).RenewedAt.Equal(took) {
			select {
			case <-deadline:
				t.Fatal("the lock was not renewed while the run went on")
			case <-time.After(10 * time.Millisecond):
			}
		}
		if _, _, err := AcquireLock(context.Background(), c, holderB, true, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-deadline:
			t.Fatal("the run was not stopped when its lock was broken")
		}
		return StateCompleted, nil
	})
	if !errors.Is(err, errLockLost) || !strings.Contains(err.Error(), holderB.RunID) {
		t.Fatalf("withLock = %v, want errLockLost naming %s", err, holderB.RunID)
	}
	if s := leaseStatus(getLease(t, c)); s.LockHolder != holderB {
		t.Errorf("the broken run released the new holder's lock: %+v", s)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("took %s", time.Since(start))
	}
}

func TestLockStatusString(t *testing.T) {
	at := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	held := LockStatus{Lease: "kube-system/rotate-lock", Held: true, LockHolder: holderA, AcquiredAt: at, RenewedAt: at.Add(time.Minute), Source: lockFromCluster}
	if got, want := held.String(), "lease kube-system/rotate-lock held by rotate run 20261130-010000-aaaa by alice@laptop, state file /home/alice/rotate.db since 2026-11-30T01:00:00Z, last renewed 2026-11-30T01:01:00Z"; got != want {
		t.Errorf("held:\n got %q\nwant %q", got, want)
	}
	rec := LockStatus{Lease: "kube-system/rotate-lock", Source: lockRecorded, Error: "not read from the cluster: dial tcp: refused"}
	if got, want := rec.String(), "lease kube-system/rotate-lock not held (as this run last recorded it; not read from the cluster: dial tcp: refused)"; got != want {
		t.Errorf("recorded:\n got %q\nwant %q", got, want)
	}
}

func TestExplainCredentialsNamesTheKubeconfig(t *testing.T) {
	t.Parallel()
	unknown := fmt.Errorf("Get \"https://lb:6443/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/rotate-lock\": %w",
		&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}})
	unauthorized := apierrors.NewUnauthorized("Unauthorized")
	other := errors.New("connection refused")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{unknown, "does not trust the certificate the apiserver serves"},
		{unauthorized, "does not accept (401)"},
	} {
		got := explainCredentials(tc.err, "/home/op/admin.conf")
		if got == nil || !strings.Contains(got.Error(), "/home/op/admin.conf") || !strings.Contains(got.Error(), tc.want) ||
			!strings.Contains(got.Error(), "/etc/kubernetes/admin.conf") || !errors.Is(got, tc.err) {
			t.Errorf("explainCredentials(%v) = %v", tc.err, got)
		}
	}
	if got := explainCredentials(other, "/k"); got != other {
		t.Errorf("an unrelated error was rewritten: %v", got)
	}
	if explainCredentials(nil, "/k") != nil {
		t.Error("nil became an error")
	}
}
