// Package steps defines what a rotation step is and implements the phases of
// docs/rotation.md as such steps. A step acts on one target — the cluster (API
// objects) or one node — and is idempotent: Check says whether its effect is
// already in place, Apply makes it so, Gate waits until the cluster is
// healthy again, and Revert puts back exactly what was there before Apply.
// Fan-out over nodes, checkpoints and retries belong to the orchestrator.
package steps

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kubeca/rotate/nodes"
)

// Role is what a node is in the cluster.
type Role string

const (
	RoleControlPlane Role = "control-plane"
	RoleWorker       Role = "worker"
)

// Target is what one execution of a step acts on.
type Target struct {
	Node string // "" for the cluster (API objects only)
	Role Role
}

// ClusterTarget is the target of steps that act only through the API.
var ClusterTarget = Target{}

// String is the target as it appears in step keys, progress and errors.
func (t Target) String() string {
	if t.Node == "" {
		return "cluster"
	}
	return t.Node
}

// Step is one idempotent unit of a phase.
type Step interface {
	// Name is the step's name within its phase, e.g. "kcm-flags".
	Name() string
	// Check reports whether the step's effect is already in place on t.
	Check(ctx context.Context, rt *Runtime, t Target) (bool, error)
	// Apply makes the effect so. It must not draw randomness or read the
	// clock for anything it writes: that is prepared earlier and read from
	// the store, so a retried Apply writes the same bytes.
	Apply(ctx context.Context, rt *Runtime, t Target) error
	// Gate waits until the target is healthy after Apply (or after a
	// skipped Apply whose effect was found in place).
	Gate(ctx context.Context, rt *Runtime, t Target) error
	// Revert restores the state from before Apply. It is idempotent and
	// safe after a partial Apply.
	Revert(ctx context.Context, rt *Runtime, t Target) error
}

// Describer is implemented by steps that can say, without changing
// anything, what Apply would change on t. `rotate plan` prints it.
type Describer interface {
	Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error)
}

// CAPair is one CA before and after rotation, PEM encoded.
type CAPair struct {
	Name            string
	OldCert, OldKey []byte
	NewCert, NewKey []byte
}

// String never prints key material.
func (c CAPair) String() string { return "CAPair(" + c.Name + ")" }

// GoString keeps %#v from dumping keys.
func (c CAPair) GoString() string { return c.String() }

// Store is what steps read from the run's state.
type Store interface {
	Value(ctx context.Context, key string) ([]byte, bool, error)
	CA(ctx context.Context, name string) (CAPair, bool, error)
	nodes.BackupStore
}

// NodeSource hands out the connection to a node by name.
type NodeSource interface {
	Node(ctx context.Context, name string) (nodes.Runner, error)
}

// Runtime is what a step works with. The orchestrator builds one per step
// execution; Out is committed together with the step's "done" checkpoint.
type Runtime struct {
	RunID string
	// BackupID names this step's backup directory on nodes.
	BackupID string
	Store    Store
	Nodes    NodeSource
	Kube     kubernetes.Interface
	Dynamic  dynamic.Interface
	Trust    *Trust
	// AdminCert is the client certificate of the operator's kubeconfig, if
	// it has one; rotate's own new-CA certificate copies its identity.
	AdminCert *x509.Certificate
	// Now is the clock for gates and preparation (never for Apply output).
	Now func() time.Time
	Log *slog.Logger
	// Progress prints one operator-facing line (not a log record).
	Progress func(msg string)
	Out      *Outputs
	// Config is the inventory-derived configuration the real phases read.
	Config *Config
	// KubeletStarts is when the kubelets rotate restarted started, for
	// their gates; nil: not recorded (the gates then wait for a renewal).
	KubeletStarts *KubeletStarts
	// Published reads cluster-wide API objects that every target's step
	// compares with once per run, not once per target; nil: each read goes
	// to the API.
	Published *Published
	// Gates waits for restarted components; nil means the live gates
	// (process start and health on the node, readiness in the API).
	Gates Gates
	// NodeProxy GETs path from node's kubelet through the apiserver's node
	// proxy (/api/v1/nodes/<node>/proxy<path>). Nil is that real call; tests
	// set it because client-go's fake clientset has no REST client.
	NodeProxy func(ctx context.Context, node, path string) error
	// NodeDial opens a TCP connection to addr from node (an SSH
	// direct-tcpip channel; see nodes.TCPDialer). Nil: no server is
	// dialed, and verify says so.
	NodeDial func(ctx context.Context, node, addr string) (net.Conn, error)

	// files is this step attempt's batched view of its node (see
	// Runtime.files).
	files *nodes.Batched
}

// Outputs collects what a step produces; the orchestrator commits it in the
// same transaction as the step's "done" record.
type Outputs struct {
	Values map[string][]byte
	CAs    []CAPair
}

// Put records a value to commit with the step.
func (o *Outputs) Put(key string, v []byte) {
	if o.Values == nil {
		o.Values = map[string][]byte{}
	}
	o.Values[key] = v
}

// PutCA records CA material to commit with the step.
func (o *Outputs) PutCA(c CAPair) { o.CAs = append(o.CAs, c) }

// Printf is a convenience for operator progress.
func (rt *Runtime) Printf(format string, args ...any) {
	if rt.Progress != nil {
		rt.Progress(fmt.Sprintf(format, args...))
	}
}

// RevertGater is implemented by steps whose revert needs a health gate too
// (a component restarted by the revert must be healthy before the next).
type RevertGater interface {
	RevertGate(ctx context.Context, rt *Runtime, t Target) error
}

func (rt *Runtime) now() time.Time {
	if rt.Now != nil {
		return rt.Now()
	}
	return time.Now()
}

// Looker is implemented by steps that change nothing on the nodes or in
// the cluster: they look or wait (what they find goes to the run's state
// only) and their Revert does nothing. A phase of only such steps needs
// no copy of the state at its start (orchestrator/mirror.go).
type Looker interface {
	OnlyLooks()
}

// EarlyBackup is implemented by steps that back up API objects (which,
// unlike node files, have no copy on the nodes: orchestrator/mirror.go).
// TakeBackups saves, changing nothing, the backups Apply would take, when
// Apply would change anything. The engine calls it at the start of a phase
// whose first step it is, before the phase's copy of the state, which then
// carries the backups: Apply finds them saved and copied, and costs no
// second copy.
type EarlyBackup interface {
	TakeBackups(ctx context.Context, rt *Runtime, t Target) error
}

// SelfTimed is implemented by steps that bound each of their waits
// themselves (a workload restart: each workload its own timeout). The
// engine does not apply the phase timeout to them, which bounds one step on
// one target and would cut short a step that is still making progress.
type SelfTimed interface {
	SelfTimed()
}

// Explainer is implemented by steps whose handling depends on settings or
// on what they find in ways their name does not say. `rotate plan` prints
// Explain under the step, static or live.
type Explainer interface {
	Explain(c *Config) []string
}
