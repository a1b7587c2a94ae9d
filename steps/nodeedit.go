package steps

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/steps/fileedit"
)

// NodeEdit is the shape of most node steps: a set of idempotent file
// edits, then the restart of the components whose manifests the edits bump
// (the static pod restarts because its manifest content changed) and/or of
// the kubelet, then health gates for each. Revert restores this step's own
// backups, which restarts the same components, passing the same gates
// before it narrows any file those components read (see Revert).
type NodeEdit struct {
	StepName string
	// Edits computes the edits for a target from the run's state.
	Edits func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error)
	// Restart lists the static pods restarted by the step.
	Restart []Component
	// Kubelet restarts the kubelet after the edits.
	Kubelet bool
	// LeadersLast orders control-plane targets so the current holders of
	// these components' leader leases go last (standbys first), the
	// first component's holder very last.
	LeadersLast []Component
	Short       string
	// Reads, if set, names files the step reads besides those it edits,
	// read in the same round trip as them (Check's).
	Reads func(rt *Runtime, t Target) []string
	// Notes, if set, adds lines to Describe (`rotate plan --live`) that no
	// file edit says: what the step leaves alone, and why.
	Notes func(ctx context.Context, rt *Runtime, t Target) ([]string, error)
}

func (s *NodeEdit) Name() string { return s.StepName }

// allEdits adds the restart annotation bump of every restarted component.
func (s *NodeEdit) allEdits(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
	edits, err := s.Edits(ctx, rt, t)
	if err != nil {
		return nil, err
	}
	for _, c := range s.Restart {
		edits = append(edits, bumpManifest(rt, c))
	}
	return edits, nil
}

// prepare connects to the target and computes its edits.
func (s *NodeEdit) prepare(ctx context.Context, rt *Runtime, t Target) (nodes.Runner, []fileedit.Edit, error) {
	r, err := rt.node(ctx, t)
	if err != nil {
		return nil, nil, err
	}
	edits, err := s.allEdits(ctx, rt, t)
	return r, edits, err
}

// batched is prepare with the target's files read in one round trip: every
// edited path, the node copies of their backups, the kubelet marker and
// the step's other Reads.
// fresh starts from what the node has now (Check, Revert); otherwise the
// view Check left is reused (Apply right after Check). restore (Revert)
// reads in the same round trip what the backups' links pointed at
// (fileedit.RestoreReads).
func (s *NodeEdit) batched(ctx context.Context, rt *Runtime, t Target, fresh, restore bool) (*nodes.Batched, []fileedit.Edit, error) {
	if fresh || rt.files == nil || rt.files.Name() != t.Node {
		if err := rt.readAhead(ctx, t, nil); err != nil { // the edits' own reads go through it
			return nil, nil, err
		}
	}
	edits, err := s.allEdits(ctx, rt, t)
	if err != nil {
		return nil, nil, err
	}
	edited := fileedit.Paths(edits)
	paths := edited
	if restore {
		if paths, err = fileedit.RestoreReads(ctx, t.Node, rt.Store, edited); err != nil {
			return nil, nil, err
		}
	}
	for _, p := range edited {
		_, meta := nodes.NodeBackupPaths(rt.Config.Paths.BackupDir, nodes.Backup{RunID: rt.BackupID, Path: p})
		paths = append(paths, meta)
	}
	if s.Kubelet {
		paths = append(paths, rt.kubeletMarker())
	}
	if s.Reads != nil {
		paths = append(paths, s.Reads(rt, t)...)
	}
	if err := rt.files.Prefetch(ctx, paths...); err != nil {
		return nil, nil, err
	}
	return rt.files, edits, nil
}

// flushFiles sends what the step queued on its node and forgets the view:
// a gate or a later step reads the node afresh.
func (rt *Runtime) flushFiles(ctx context.Context) error {
	f := rt.files
	rt.files = nil
	if f == nil {
		return nil
	}
	return f.Flush(ctx)
}

// node is the connection to t's node: the step attempt's batched view
// when it has one for that node (NodeEdit.batched), so that the reads of
// its edits are served from the same round trip.
func (rt *Runtime) node(ctx context.Context, t Target) (nodes.Runner, error) {
	if t.Node == "" {
		return nil, errors.New("step needs a node target")
	}
	if rt.files != nil && rt.files.Name() == t.Node {
		return rt.files, nil
	}
	r, err := rt.Nodes.Node(ctx, t.Node)
	if err != nil {
		return nil, fmt.Errorf("connect to node %s: %w", t.Node, err)
	}
	return r, nil
}

// backups is where this step's edits keep what they change.
func (rt *Runtime) backups() fileedit.Backups {
	return fileedit.Backups{Store: rt.Store, Dir: rt.Config.Paths.BackupDir, ID: rt.BackupID}
}

func (rt *Runtime) kubeletMarker() string {
	return path.Join(rt.Config.kubeletMarkerDir(), rt.BackupID)
}

func (s *NodeEdit) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	r, edits, err := s.batched(ctx, rt, t, true, false)
	if err != nil {
		return false, err
	}
	done, err := fileedit.InPlace(ctx, r, edits)
	if err != nil || !done || !s.Kubelet {
		return done, err
	}
	st, err := r.Stat(ctx, rt.kubeletMarker())
	return err == nil && st.Exists, err
}

func (s *NodeEdit) Apply(ctx context.Context, rt *Runtime, t Target) (err error) {
	defer func() {
		if ferr := rt.flushFiles(context.WithoutCancel(ctx)); err == nil {
			err = ferr
		}
	}()
	r, edits, err := s.batched(ctx, rt, t, false, false)
	if err != nil {
		return err
	}
	if _, err := fileedit.Apply(ctx, r, rt.backups(), edits); err != nil {
		return err
	}
	if s.Kubelet {
		// The edits, the restart and then the marker: one round trip.
		return rt.restartKubelet(ctx, r, rt.kubeletMarkOps("kubelet restarted\n")...)
	}
	return nil
}

// kubeletMarkOps write the step's kubelet marker: Apply after restarting
// the kubelet (Check needs it), Revert before restoring anything (see
// there).
func (rt *Runtime) kubeletMarkOps(note string) []nodes.FileOp {
	return []nodes.FileOp{
		{Kind: nodes.OpMkdirPrivate, Path: rt.Config.kubeletMarkerDir()},
		{Kind: nodes.OpWrite, Path: rt.kubeletMarker(), Data: []byte(note), Mode: 0o600},
	}
}

func (s *NodeEdit) Gate(ctx context.Context, rt *Runtime, t Target) error {
	for _, c := range s.Restart {
		if err := rt.gateComponent(ctx, t, c); err != nil {
			return err
		}
	}
	if s.Kubelet {
		return rt.gateKubelet(ctx, t.Node)
	}
	return nil
}

// Revert restores this step's backups without ever narrowing, in place,
// a file that a component still running with the step's configuration
// reads dynamically (docs/rotation.md's invariant, held on the way back too):
//
//  1. early restorations (fileedit.PlanRestore): config files, kubeconfigs and
//     leaf certificates, then the manifests, whose change restarts the
//     static pods;
//  2. the kubelet restarts by its restart command; then, if late
//     restorations remain, the step's own gates (Gate) wait until every
//     restarted component runs from the restored configuration, so the
//     processes that read the step's files are gone;
//  3. late restorations: a CA certificate leaving a file, the key of such
//     a CA, a file removed.
//
// A kubelet step writes its marker before the first restoration and
// removes it last: while it exists the kubelet may run a configuration the
// files no longer say, so a Revert killed anywhere and run again restarts
// the kubelet and passes the gates again before it narrows anything. A
// kubelet whose marker is gone runs the restored files. Static pods need
// no marker: the gates find out whether they still run an older manifest.
func (s *NodeEdit) Revert(ctx context.Context, rt *Runtime, t Target) (err error) {
	defer func() {
		if ferr := rt.flushFiles(context.WithoutCancel(ctx)); err == nil {
			err = ferr
		}
	}()
	r, edits, err := s.batched(ctx, rt, t, true, true)
	if err != nil {
		return err
	}
	stages, err := fileedit.PlanRestore(ctx, r, rt.Store, rt.Config.Paths.ManifestsDir, fileedit.Paths(edits))
	if err != nil {
		return err
	}
	restartOwed := false // the kubelet may run other files than the node has
	if s.Kubelet {
		// The marker was read with the files: a revert killed after it
		// wrote it owes the restart even with nothing left to restore.
		st, err := r.Stat(ctx, rt.kubeletMarker())
		if err != nil {
			return err
		}
		restartOwed = st.Exists
		if len(stages.Early)+len(stages.Late) > 0 {
			if err := nodes.ApplyFiles(ctx, r, rt.kubeletMarkOps("kubelet restart owed by a revert\n")); err != nil {
				return err
			}
			restartOwed = true
		}
	}
	if err := fileedit.Restore(ctx, r, stages.Early); err != nil {
		return err
	}
	markerGone := false
	if restartOwed {
		// The restorations, the restart and, when nothing is left to
		// restore late, the marker's removal: one round trip.
		var after []nodes.FileOp
		if s.Kubelet && len(stages.Late) == 0 {
			after, markerGone = []nodes.FileOp{{Kind: nodes.OpRemove, Path: rt.kubeletMarker()}}, true
		}
		if err := rt.restartKubelet(ctx, r, after...); err != nil {
			return err
		}
	}
	if len(stages.Late) > 0 {
		if err := r.Flush(ctx); err != nil { // the gates see the restored manifests
			return err
		}
		if err := s.Gate(nodes.CountAsGate(ctx), rt, t); err != nil {
			return err
		}
		if err := fileedit.Restore(ctx, r, stages.Late); err != nil {
			return err
		}
	}
	if s.Kubelet && !markerGone {
		return r.Remove(ctx, rt.kubeletMarker())
	}
	return nil
}

func (s *NodeEdit) RevertGate(ctx context.Context, rt *Runtime, t Target) error {
	return s.Gate(ctx, rt, t)
}

func (s *NodeEdit) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	r, edits, err := s.prepare(ctx, rt, t)
	if err != nil {
		return nil, err
	}
	out, err := fileedit.Describe(ctx, r, edits)
	if err != nil {
		return nil, err
	}
	for _, c := range s.Restart {
		out = append(out, "restart "+c.Name+" (static pod) and wait until healthy")
	}
	if s.Kubelet {
		out = append(out, "run `"+rt.Config.KubeletRestartCommand+"` and wait for Ready + lease renewal")
	}
	if s.Notes != nil {
		notes, err := s.Notes(ctx, rt, t)
		if err != nil {
			return nil, err
		}
		out = append(out, notes...)
	}
	return out, nil
}

// Ordering implements Orderer: with LeadersLast, the current leaders go
// last.
func (s *NodeEdit) Ordering() *Ordering {
	if len(s.LeadersLast) == 0 {
		return nil
	}
	return &Ordering{Leaders: s.LeadersLast}
}

// bumpManifest sets the restart annotation to a value unique to this step
// and target, so the static pod restarts exactly once for it.
func bumpManifest(rt *Runtime, c Component) fileedit.Edit {
	return fileedit.Edit{Path: rt.Config.manifest(c), Fn: func(cur []byte, exists bool) ([]byte, bool, error) {
		if !exists {
			return nil, false, fmt.Errorf("manifest %s is missing", rt.Config.manifest(c))
		}
		b, err := edit.SetPodAnnotation(cur, restartAnnotation, rt.BackupID)
		return b, false, err
	}}
}

// setFlags is a manifest edit that sets command flags of the component's
// container. Flags in onlyIfSet are changed only when already present.
func setFlags(rt *Runtime, c Component, flags map[string]string, onlyIfSet ...string) fileedit.Edit {
	only := map[string]bool{}
	for _, f := range onlyIfSet {
		only[f] = true
	}
	names := make([]string, 0, len(flags))
	for f := range flags {
		names = append(names, f)
	}
	sort.Strings(names)
	p := rt.Config.manifest(c)
	return fileedit.Edit{Path: p, Fn: func(cur []byte, exists bool) ([]byte, bool, error) {
		if !exists {
			return nil, false, fmt.Errorf("manifest %s is missing", p)
		}
		out := cur
		for _, f := range names {
			if only[f] {
				if _, ok, err := edit.ManifestFlag(out, c.Name, f); err != nil || !ok {
					if err != nil {
						return nil, false, err
					}
					continue
				}
			}
			var err error
			if out, err = edit.SetManifestFlag(out, c.Name, f, flags[f]); err != nil {
				return nil, false, err
			}
		}
		return out, false, nil
	}}
}

// kubeconfigCA is an edit setting a kubeconfig's CA data.
func kubeconfigCA(path string, ca []byte, optional bool) fileedit.Edit {
	return fileedit.Edit{Path: path, Optional: optional, Mode: 0o600, Fn: func(cur []byte, exists bool) ([]byte, bool, error) {
		if !exists {
			return nil, false, fmt.Errorf("%s is missing", path)
		}
		b, err := edit.SetKubeconfigCA(cur, ca)
		return b, false, err
	}}
}

// kubeconfigCAAndCert sets CA data and the current user's client cert.
func kubeconfigCAAndCert(path string, ca, cert, key []byte, optional bool) fileedit.Edit {
	return fileedit.Edit{Path: path, Optional: optional, Mode: 0o600, Fn: func(cur []byte, exists bool) ([]byte, bool, error) {
		if !exists {
			return nil, false, fmt.Errorf("%s is missing", path)
		}
		b, err := edit.SetKubeconfigCA(cur, ca)
		if err != nil {
			return nil, false, err
		}
		b, err = edit.SetKubeconfigClientCert(b, "", cert, key)
		return b, false, err
	}}
}

// kubeletClientCA sets the kubelet config's authentication.x509.clientCAFile.
func kubeletClientCA(rt *Runtime, file string) fileedit.Edit {
	p := rt.Config.Paths.KubeletConfig
	return fileedit.Edit{Path: p, Fn: func(cur []byte, exists bool) ([]byte, bool, error) {
		if !exists {
			return nil, false, fmt.Errorf("%s is missing", p)
		}
		b, err := edit.SetKubeletConfigClientCAFile(cur, file)
		return b, false, err
	}}
}
