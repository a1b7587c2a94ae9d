package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The cluster lock: one rotation per cluster at a time, whichever machine
// and state file it runs from. The state file's own lock (bbolt's) only
// keeps two processes off one file; two operators with two state files
// would each mint a CA and fight over the same files and flags.
//
// The lock is a coordination.k8s.io/v1 Lease, kube-system/rotate-lock,
// held for the whole run: taken by `start` (and by `resume` and `rollback`
// when absent, e.g. after --break-lock or a lost cluster object), renewed
// while rotate runs, and released (deleted) only when the run ends —
// completed, or rolled back fully. A run on hold or failed, whose process
// has exited, still holds it: its renew time gets old, but unlike a leader
// election lease it does not expire, because the run is not over. A run
// with another run ID is refused, naming the holder and its last renewal;
// --break-lock takes the lock over. The same run ID (the same run resumed
// from another machine with --recover-from) is the same holder.

// Where the lock lives.
const (
	LockNamespace = "kube-system"
	LockName      = "rotate-lock"
)

// Annotations on the Lease that say who holds it; holderIdentity says the
// same in one line for `kubectl get lease`.
const (
	lockAnnRunID    = "rotate.kubeca.io/run-id"
	lockAnnOperator = "rotate.kubeca.io/operator"
	lockAnnState    = "rotate.kubeca.io/state-file"
)

// lockLeaseSeconds is the Lease's leaseDurationSeconds: how often a
// running rotate renews it, times three. Informational only (see above).
const lockLeaseSeconds = 60

// ErrLocked: another run holds the cluster lock.
var ErrLocked = errors.New("the cluster is locked by another rotate run")

// errLockLost: someone took the lock over (--break-lock) while this run
// held it.
var errLockLost = errors.New("the cluster lock was taken over by another rotate run")

// LockHolder is who holds the cluster lock.
type LockHolder struct {
	RunID     string `json:"runID"`
	Operator  string `json:"operator"`  // user@host
	StateFile string `json:"stateFile"` // absolute path on the operator's machine
}

// identity is the Lease's holderIdentity.
func (h LockHolder) identity() string {
	return fmt.Sprintf("rotate run %s by %s, state file %s", h.RunID, h.Operator, h.StateFile)
}

// LockStatus is the cluster lock as `rotate status` shows it.
type LockStatus struct {
	Lease string `json:"lease"` // namespace/name
	// Held is false when no run holds the lock.
	Held bool `json:"held"`
	LockHolder
	AcquiredAt time.Time `json:"acquiredAt,omitzero"`
	RenewedAt  time.Time `json:"renewedAt,omitzero"`
	// Source is where status read it: lockFromCluster or lockRecorded.
	Source string `json:"source,omitempty"`
	// Error is why the lock could not be read from the cluster ("" when
	// it was).
	Error string `json:"error,omitempty"`
}

// Where `rotate status` read the lock.
const (
	lockFromCluster = "cluster"
	lockRecorded    = "recorded by this run"
)

// String is the holder, when it took the lock and when it last renewed it.
func (s LockStatus) String() string {
	out := fmt.Sprintf("lease %s not held", s.Lease)
	if s.Held {
		out = fmt.Sprintf("lease %s held by %s since %s, last renewed %s", s.Lease, s.identity(),
			s.AcquiredAt.UTC().Format(time.RFC3339), s.RenewedAt.UTC().Format(time.RFC3339))
	}
	if s.Source == lockRecorded {
		out += " (as this run last recorded it"
		if s.Error != "" {
			out += "; " + s.Error
		}
		out += ")"
	}
	return out
}

// ThisOperator is user@host of this process.
func ThisOperator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return name + "@" + host
}

// holderFor is the lock holder of run id from state file path.
func holderFor(runID, statePath string) LockHolder {
	abs, err := filepath.Abs(statePath)
	if err != nil {
		abs = statePath
	}
	return LockHolder{RunID: runID, Operator: ThisOperator(), StateFile: abs}
}

// ClusterLock is a held cluster lock.
type ClusterLock struct {
	kube   kubernetes.Interface
	holder LockHolder
	now    func() time.Time
}

func leaseStatus(l *coordinationv1.Lease) LockStatus {
	s := LockStatus{Lease: LockNamespace + "/" + LockName}
	if l == nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		return s
	}
	s.Held = true
	s.LockHolder = LockHolder{RunID: l.Annotations[lockAnnRunID], Operator: l.Annotations[lockAnnOperator], StateFile: l.Annotations[lockAnnState]}
	if s.RunID == "" { // not written by rotate: show the identity as is
		s.Operator = *l.Spec.HolderIdentity
	}
	if t := l.Spec.AcquireTime; t != nil {
		s.AcquiredAt = t.Time
	}
	if t := l.Spec.RenewTime; t != nil {
		s.RenewedAt = t.Time
	}
	return s
}

// ReadLock reads the cluster lock.
func ReadLock(ctx context.Context, kube kubernetes.Interface) (LockStatus, error) {
	l, err := kube.CoordinationV1().Leases(LockNamespace).Get(ctx, LockName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return leaseStatus(nil), nil
	}
	if err != nil {
		return LockStatus{}, fmt.Errorf("read lease %s/%s: %w", LockNamespace, LockName, err)
	}
	return leaseStatus(l), nil
}

// AcquireLock takes the cluster lock for h: creates the Lease, or takes
// it when nobody or h's run holds it; another run's lock is refused with
// ErrLocked unless breakLock, which takes it over.
func AcquireLock(ctx context.Context, kube kubernetes.Interface, h LockHolder, breakLock bool, now func() time.Time) (*ClusterLock, LockStatus, error) {
	if now == nil {
		now = time.Now
	}
	l := &ClusterLock{kube: kube, holder: h, now: now}
	leases := kube.CoordinationV1().Leases(LockNamespace)
	cur, err := leases.Get(ctx, LockName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, l.lease(nil), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil, LockStatus{}, fmt.Errorf("take lease %s/%s: created meanwhile by another rotate; run again to see who holds it", LockNamespace, LockName)
		}
		if err != nil {
			return nil, LockStatus{}, fmt.Errorf("take lease %s/%s: %w", LockNamespace, LockName, err)
		}
		return l, LockStatus{}, nil
	}
	if err != nil {
		return nil, LockStatus{}, fmt.Errorf("read lease %s/%s: %w", LockNamespace, LockName, err)
	}
	prev := leaseStatus(cur)
	if prev.Held && prev.RunID != h.RunID && !breakLock {
		return nil, prev, fmt.Errorf("%w: %s, taken %s, last renewed %s (%s ago). A run on hold or failed keeps the lock until it completes or is rolled back; finish it from its state file (`rotate resume`/`rotate rollback --state %s`), or, only if that run is abandoned, take the lock over with --break-lock",
			ErrLocked, prev.identity(), prev.AcquiredAt.UTC().Format(time.RFC3339), prev.RenewedAt.UTC().Format(time.RFC3339),
			now().Sub(prev.RenewedAt).Round(time.Second), prev.StateFile)
	}
	if _, err := leases.Update(ctx, l.lease(cur), metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			return nil, prev, fmt.Errorf("take lease %s/%s: changed meanwhile by another rotate; run again to see who holds it", LockNamespace, LockName)
		}
		return nil, prev, fmt.Errorf("take lease %s/%s: %w", LockNamespace, LockName, err)
	}
	return l, prev, nil
}

// lease is cur (nil: a new Lease) held by l's holder, renewed now. A new
// holder (another run) gets a new acquire time and a transition counted.
func (l *ClusterLock) lease(cur *coordinationv1.Lease) *coordinationv1.Lease {
	now := metav1.NewMicroTime(l.now())
	out := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: LockNamespace, Name: LockName}}
	if cur != nil {
		out = cur.DeepCopy()
	}
	same := out.Annotations[lockAnnRunID] == l.holder.RunID && out.Spec.HolderIdentity != nil && *out.Spec.HolderIdentity != ""
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[lockAnnRunID] = l.holder.RunID
	out.Annotations[lockAnnOperator] = l.holder.Operator
	out.Annotations[lockAnnState] = l.holder.StateFile
	id := l.holder.identity()
	secs := int32(lockLeaseSeconds)
	out.Spec.HolderIdentity, out.Spec.LeaseDurationSeconds, out.Spec.RenewTime = &id, &secs, &now
	if !same {
		out.Spec.AcquireTime = &now
		if cur != nil {
			n := int32(1)
			if out.Spec.LeaseTransitions != nil {
				n = *out.Spec.LeaseTransitions + 1
			}
			out.Spec.LeaseTransitions = &n
		}
	}
	return out
}

// Renew sets the renew time; errLockLost when another run holds the lock
// now (it was broken), a plain error when the Lease could not be written.
// A Lease deleted meanwhile is created again.
func (l *ClusterLock) Renew(ctx context.Context) error {
	leases := l.kube.CoordinationV1().Leases(LockNamespace)
	cur, err := leases.Get(ctx, LockName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, l.lease(nil), metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if s := leaseStatus(cur); s.Held && s.RunID != l.holder.RunID {
		return fmt.Errorf("%w: %s", errLockLost, s.identity())
	}
	_, err = leases.Update(ctx, l.lease(cur), metav1.UpdateOptions{})
	return err
}

// Release deletes the Lease if this run still holds it.
func (l *ClusterLock) Release(ctx context.Context) error {
	leases := l.kube.CoordinationV1().Leases(LockNamespace)
	cur, err := leases.Get(ctx, LockName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release lease %s/%s: %w", LockNamespace, LockName, err)
	}
	if s := leaseStatus(cur); s.Held && s.RunID != l.holder.RunID {
		return nil // taken over: not ours to release
	}
	uid, rv := cur.UID, cur.ResourceVersion
	err = leases.Delete(ctx, LockName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release lease %s/%s: %w", LockNamespace, LockName, err)
	}
	return nil
}

// keepRenewed renews the lock every interval until the returned stop is
// called. When the lock is taken over, ctx's cause is errLockLost and the
// run stops; a failed write (the apiserver restarting during the
// rotation) is logged and retried at the next tick.
func (l *ClusterLock) keepRenewed(ctx context.Context, interval time.Duration, log *slog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rctx, rcancel := context.WithTimeout(ctx, interval)
			err := l.Renew(rctx)
			rcancel()
			switch {
			case errors.Is(err, errLockLost):
				cancel(err)
				return
			case err != nil && ctx.Err() == nil && log != nil:
				log.Warn("cluster lock not renewed; retrying", "lease", LockNamespace+"/"+LockName, "err", err)
			}
		}
	}()
	return ctx, func() {
		once.Do(func() {
			cancel(nil)
			<-done
		})
	}
}

// lockRenewInterval is how often a running rotate renews the lock.
const lockRenewInterval = lockLeaseSeconds * time.Second / 3

// runEnded reports whether a run in state st is over: the lock is
// released then, and kept otherwise (held, failed, rolling back).
func runEnded(st string) bool { return st == StateCompleted || st == StateRolledBack }

// LockOptions say how a command takes the cluster lock.
type LockOptions struct {
	Holder    LockHolder
	BreakLock bool
	Interval  time.Duration // renew interval; 0: lockRenewInterval
	Out       func(format string, args ...any)
	Log       *slog.Logger
	Now       func() time.Time
	// Record, if set, keeps the lock's state with the run (taken,
	// released) for `rotate status`; its error ends the command.
	Record func(ctx context.Context, s LockStatus) error
}

// withLock runs fn holding the cluster lock: taken first, renewed while fn
// runs, released when fn returns a state in which the run is over
// (runEnded), with or without an error. fn's context ends when the lock is
// taken over.
func withLock(ctx context.Context, kube kubernetes.Interface, o LockOptions, fn func(ctx context.Context) (state string, err error)) error {
	l, prev, err := AcquireLock(ctx, kube, o.Holder, o.BreakLock, o.Now)
	if err != nil {
		return err
	}
	if o.Out != nil && prev.Held && prev.RunID != o.Holder.RunID {
		o.Out("WARNING: took the cluster lock over from %s (--break-lock)", prev.identity())
	}
	if o.Record != nil {
		s, err := ReadLock(ctx, kube)
		if err == nil {
			err = o.Record(ctx, s)
		}
		if err != nil {
			return fmt.Errorf("record the cluster lock: %w", err)
		}
	}
	interval := o.Interval
	if interval <= 0 {
		interval = lockRenewInterval
	}
	rctx, stop := l.keepRenewed(ctx, interval, o.Log)
	st, err := fn(rctx)
	stop()
	if cause := context.Cause(rctx); errors.Is(cause, errLockLost) {
		return fmt.Errorf("%w; this run stopped (its state file still records where it is)", cause)
	}
	if !runEnded(st) {
		return err
	}
	if rerr := l.Release(ctx); rerr != nil {
		return errors.Join(err, fmt.Errorf("run %s is %s, but %w (delete it with kubectl -n %s delete lease %s)", o.Holder.RunID, st, rerr, LockNamespace, LockName))
	}
	if o.Record != nil {
		if rerr := o.Record(ctx, leaseStatus(nil)); rerr != nil {
			return errors.Join(err, rerr)
		}
	}
	return err
}
