package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	typedappsv1 "k8s.io/client-go/kubernetes/typed/apps/v1"
)

// Workloads load the CA bundle only when their pods restart. rotate
// restarts them the way `kubectl rollout restart` does (a
// kubectl.kubernetes.io/restartedAt annotation on the pod template) in two
// steps: the in-cluster clients of phase 4 (kube-system by default) and
// every other workload in phase 9. Some workloads never finish such a
// rollout, and rotate neither waits for them nor restarts them behind the
// operator's back:
//
//   - opted out: annotation rotate.kubeca.io/skip=true on the object, or
//     labels matching rollout.workloads.skipSelector — not restarted;
//   - paused Deployments — not restarted (kubectl refuses to restart them
//     too; resuming one later rolls it);
//   - OnDelete DaemonSets and StatefulSets — not restarted: a template
//     change replaces no pod, and their owners replace pods on their own
//     terms (some run controllers that do so whenever the template
//     changes);
//   - StatefulSets with a rollingUpdate partition above 0 — not restarted:
//     only the pods above the partition would roll, a canary the operator
//     did not ask for;
//   - workloads not all available before the run (preflight's
//     workloads-baseline) and still not — restarted, so every pod that
//     does run loads the bundle, but not waited for: their new pods would
//     not become ready either. The rollout controllers keep such a restart
//     from taking down more pods (Deployments and DaemonSets respect
//     maxUnavailable, an OrderedReady StatefulSet waits for its broken pod).
//
// Every other workload is waited for, each up to its own timeout
// (rollout.workloads.timeout, or its entry in rollout.workloads.timeouts),
// counted from its own restart. One whose pods were all available before
// the run and that does not finish in time is a regression: the step fails
// naming it. One that was not (and recovered since) is recorded and the run
// goes on. Everything not restarted or not waited for is recorded with the
// step and listed in the hold report with what the operator should do
// before trust narrows: for workloads rotate did not restart, their pods
// that started before the CA bundle was published and the kubectl command
// that restarts them.

// Annotations rotate reads or writes on workloads.
const (
	// workloadAnnotation is what `kubectl rollout restart` sets on the pod
	// template; rotate's value is restartedAt(run id).
	workloadAnnotation = "kubectl.kubernetes.io/restartedAt"
	// skipAnnotation "true" on a Deployment, DaemonSet or StatefulSet keeps
	// rotate from restarting it.
	skipAnnotation = "rotate.kubeca.io/skip"
)

// Names of the two restart steps and of the wait for the first
// (checkpoint keys; the hold report reads the restart steps' records).
const (
	stepSystemWorkloads = "system-workloads"
	stepSystemRolledOut = "system-workloads-rolled-out"
	stepWorkloads       = "workloads"
)

// InClusterClientsRestart restarts the in-cluster clients (phase 4)
// without waiting: their rollouts run while trust widens (phases 5-8),
// the longest wait of a rotation on a cluster with many nodes (a
// DaemonSet rolls one node at a time). InClusterClientsRolledOut waits
// for them before any server presents a certificate of the new CA.
func InClusterClientsRestart() *RestartWorkloads {
	return &RestartWorkloads{StepName: stepSystemWorkloads, InCluster: true, Deferred: true}
}

// InClusterClientsRolledOut waits for the rollouts system-workloads
// started (phase 9, before the kubelets and issuance change): a workload
// all available before the run that does not finish in time fails the
// step.
func InClusterClientsRolledOut() *RolledOut {
	return &RolledOut{StepName: stepSystemRolledOut, Restart: InClusterClientsRestart()}
}

// WorkloadsRestart restarts every other selected workload (phase 9): a
// rollout that does not finish in time is listed at the hold.
func WorkloadsRestart() *RestartWorkloads { return &RestartWorkloads{StepName: stepWorkloads} }

// restartedAt is the value of rotate's restarts in this run: an RFC 3339
// time, as `kubectl rollout restart` writes, derived from the run id (the
// time the run started) rather than read from the clock, so that every
// attempt writes the same value and Check recognizes rotate's own restart.
// A rollback's re-roll is one second later. An id that is not a run id
// (tests, `plan --live`) gets a fixed time derived from it.
func restartedAt(runID string, revert bool) string {
	t, err := time.Parse("20060102-150405", runStamp(runID))
	if err != nil {
		h := fnv.New32a()
		h.Write([]byte(runID))
		t = time.Unix(int64(h.Sum32()), 0)
	}
	if revert {
		t = t.Add(time.Second)
	}
	return t.UTC().Format(time.RFC3339)
}

// Why rotate does not restart a workload, or does not wait for it. They are
// stored in state files: do not rename them.
const (
	whySkipAnnotation = "skip-annotation"
	whySkipSelector   = "skip-selector"
	whyPaused         = "paused"
	whyOnDelete       = "on-delete"
	whyPartitioned    = "partitioned"
	whyUnavailable    = "unavailable-before"
	whyTimedOut       = "timed-out"
)

// workloadFinding is a workload rotate does not restart, does not wait for,
// or whose rollout did not finish in time.
type workloadFinding struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Selector is the workload's pod selector (labels.Selector syntax),
	// for the hold report to name its pods; "" when it selects nothing.
	Selector string `json:"selector,omitempty"`
	Why      string `json:"why"`
	Detail   string `json:"detail,omitempty"`
}

func (f workloadFinding) workload() workload { return workload{f.Kind, f.Namespace, f.Name} }

// restarted says whether rotate restarted the workload (it only did not
// wait for it, or saw it not finish).
func (f workloadFinding) restarted() bool {
	return f.Why == whyUnavailable || f.Why == whyTimedOut
}

// String is the finding as `rotate plan`, the progress and the hold report
// show it: the workload, why, what rotate does and what the operator
// should do.
func (f workloadFinding) String() string { return f.line(nil, false) }

// line is String with, for a workload rotate did not restart, its pods
// that started before the CA bundle was published (old, when known):
// those trust only the old CA until they restart.
func (f workloadFinding) line(old []string, known bool) string {
	w := f.workload()
	var why string
	switch f.Why {
	case whySkipAnnotation:
		why = fmt.Sprintf("opted out (annotation %s=true), not restarted", skipAnnotation)
	case whySkipSelector:
		why = fmt.Sprintf("matches rollout.workloads.skipSelector %q, not restarted", f.Detail)
	case whyPaused:
		why = "paused, not restarted (a paused Deployment does not roll)"
	case whyOnDelete:
		why = "updateStrategy OnDelete, not restarted (a template change replaces no pod, and rotate does not delete the pods of a workload whose owner chose when they are replaced)"
	case whyPartitioned:
		why = fmt.Sprintf("%s, not restarted (the pods below the partition would keep running)", f.Detail)
	case whyUnavailable:
		return fmt.Sprintf("%s: not all pods available before the run (%s), restarted without waiting (its new pods may not become ready either): fix it, then check that its pods restarted: %s", w, f.Detail, w.kubectl("rollout status"))
	case whyTimedOut:
		return fmt.Sprintf("%s: not all available before the run, restarted, rollout not finished %s: check it before narrowing trust: %s", w, f.Detail, w.kubectl("rollout status"))
	default:
		return w.String() + ": " + f.Why
	}
	fix := w.restartCommand(f.Why, old)
	switch {
	case !known:
		return fmt.Sprintf("%s: %s: restart its pods started before the CA bundle yourself before narrowing trust: %s", w, why, fix)
	case len(old) == 0:
		return fmt.Sprintf("%s: %s: all its pods started after the CA bundle was published, nothing to do", w, why)
	}
	return fmt.Sprintf("%s: %s: still running pods started before the bundle (%s), restart them yourself: %s", w, why, short(old), fix)
}

// kubectl is `kubectl -n <ns> <verb> <kind>/<name>`.
func (w workload) kubectl(verb string) string {
	return fmt.Sprintf("kubectl -n %s %s %s/%s", w.namespace, verb, strings.ToLower(w.kind), w.name)
}

// restartCommand is what the operator runs to restart the pods of a
// workload rotate did not restart: a rollout restart where one completes,
// else deleting the old pods one at a time (the controller replaces each).
func (w workload) restartCommand(why string, old []string) string {
	switch why {
	case whyPaused:
		return w.kubectl("rollout resume") + " && " + w.kubectl("rollout restart")
	case whyOnDelete, whyPartitioned:
		pods := "<pod>"
		if len(old) > 0 {
			pods = strings.Join(old, " ")
		}
		return fmt.Sprintf("kubectl -n %s delete pod %s (one at a time, each after its replacement is Ready)", w.namespace, pods)
	}
	return w.kubectl("rollout restart")
}

// workload is one Deployment, DaemonSet or StatefulSet.
type workload struct {
	kind, namespace, name string
}

func (w workload) String() string { return w.kind + " " + w.namespace + "/" + w.name }

// observed is one workload as listed: who it is and what rotate read of it.
type observed struct {
	workload
	view workloadView
}

// workloadKinds are the kinds of workload rotate restarts, by Kind; adding
// a kind is one entry.
var workloadKinds = map[string]workloadKind{
	"Deployment": newAppsKind("deployments", typedappsv1.AppsV1Interface.Deployments,
		func(l *appsv1.DeploymentList) []appsv1.Deployment { return l.Items }, deploymentView),
	"DaemonSet": newAppsKind("daemonsets", typedappsv1.AppsV1Interface.DaemonSets,
		func(l *appsv1.DaemonSetList) []appsv1.DaemonSet { return l.Items }, daemonSetView),
	"StatefulSet": newAppsKind("statefulsets", typedappsv1.AppsV1Interface.StatefulSets,
		func(l *appsv1.StatefulSetList) []appsv1.StatefulSet { return l.Items }, statefulSetView),
}

// workloadKind lists, restarts and reads the rollout of one kind.
type workloadKind interface {
	list(ctx context.Context, apps typedappsv1.AppsV1Interface, ns string) ([]workloadView, error)
	patch(ctx context.Context, apps typedappsv1.AppsV1Interface, ns, name string, patch []byte) error
	// status reports whether the object rolled out the template carrying
	// the annotation value; a read error is "not yet", not a failure.
	status(ctx context.Context, apps typedappsv1.AppsV1Interface, ns, name, value string) (done bool, why string, err error)
}

// appsClient is what workloads use of a typed apps/v1 client such as
// DeploymentInterface, for object type E and list type L.
type appsClient[E, L any] interface {
	List(ctx context.Context, opts metav1.ListOptions) (*L, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*E, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*E, error)
}

// workloadView is what rotate reads of one workload object.
type workloadView struct {
	meta     *metav1.ObjectMeta
	template *corev1.PodTemplateSpec
	// selector selects the workload's pods (labels.Selector syntax); ""
	// when it selects none or is invalid.
	selector string
	pending  string // why the rollout is not complete; "" once it is
	// unavailable says how many pods are available when not all are
	// ("1/3 available"); "" when all are.
	unavailable string
	// stuck is why a template change would not replace every pod
	// (whyPaused, whyOnDelete, whyPartitioned), with stuckDetail; "" when
	// a restart rolls them all.
	stuck, stuckDetail string
}

// appsKind is the workloadKind of apps/v1 type E, listed as L through C.
type appsKind[E, L any, C appsClient[E, L]] struct {
	plural string // as in "list deployments: ..."
	client func(typedappsv1.AppsV1Interface, string) C
	items  func(*L) []E
	view   func(*E) workloadView
}

func newAppsKind[E, L any, C appsClient[E, L]](plural string, client func(typedappsv1.AppsV1Interface, string) C, items func(*L) []E, view func(*E) workloadView) workloadKind {
	return appsKind[E, L, C]{plural: plural, client: client, items: items, view: view}
}

func (k appsKind[E, L, C]) list(ctx context.Context, apps typedappsv1.AppsV1Interface, ns string) ([]workloadView, error) {
	l, err := k.client(apps, ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", k.plural, err)
	}
	items := k.items(l)
	out := make([]workloadView, 0, len(items))
	for i := range items {
		out = append(out, k.view(&items[i]))
	}
	return out, nil
}

func (k appsKind[E, L, C]) patch(ctx context.Context, apps typedappsv1.AppsV1Interface, ns, name string, patch []byte) error {
	_, err := k.client(apps, ns).Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
	return err
}

func (k appsKind[E, L, C]) status(ctx context.Context, apps typedappsv1.AppsV1Interface, ns, name, value string) (bool, string, error) {
	o, err := k.client(apps, ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, "", nil // deleted: nothing left to roll out
	}
	if err != nil {
		return false, err.Error(), nil
	}
	v := k.view(o)
	if v.template.Annotations[workloadAnnotation] != value {
		return false, "not restarted", nil
	}
	return v.pending == "", v.pending, nil
}

// selectorString is s in labels.Selector syntax; "" for a selector that
// selects nothing or everything (rotate never lists all of a namespace's
// pods as one workload's).
func selectorString(s *metav1.LabelSelector) string {
	if s == nil || len(s.MatchLabels)+len(s.MatchExpressions) == 0 {
		return ""
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return ""
	}
	return sel.String()
}

// replicasOr1 is spec.replicas with the API default of 1.
func replicasOr1(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

func deploymentView(d *appsv1.Deployment) workloadView {
	v := workloadView{meta: &d.ObjectMeta, template: &d.Spec.Template, selector: selectorString(d.Spec.Selector)}
	s, want := d.Status, replicasOr1(d.Spec.Replicas)
	if d.Generation > s.ObservedGeneration {
		v.pending = "generation not observed"
	} else if s.UpdatedReplicas < want || s.Replicas > s.UpdatedReplicas || s.AvailableReplicas < want {
		v.pending = fmt.Sprintf("%d/%d updated, %d total, %d available", s.UpdatedReplicas, want, s.Replicas, s.AvailableReplicas)
	}
	if s.AvailableReplicas < want {
		v.unavailable = fmt.Sprintf("%d/%d available", s.AvailableReplicas, want)
	}
	if d.Spec.Paused {
		v.stuck = whyPaused
	}
	return v
}

func daemonSetView(d *appsv1.DaemonSet) workloadView {
	v := workloadView{meta: &d.ObjectMeta, template: &d.Spec.Template, selector: selectorString(d.Spec.Selector)}
	s := d.Status
	if d.Generation > s.ObservedGeneration || s.UpdatedNumberScheduled < s.DesiredNumberScheduled || s.NumberAvailable < s.DesiredNumberScheduled {
		v.pending = fmt.Sprintf("%d/%d updated, %d available", s.UpdatedNumberScheduled, s.DesiredNumberScheduled, s.NumberAvailable)
	}
	if s.NumberAvailable < s.DesiredNumberScheduled {
		v.unavailable = fmt.Sprintf("%d/%d available", s.NumberAvailable, s.DesiredNumberScheduled)
	}
	if d.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType {
		v.stuck = whyOnDelete
	}
	return v
}

func statefulSetView(d *appsv1.StatefulSet) workloadView {
	v := workloadView{meta: &d.ObjectMeta, template: &d.Spec.Template, selector: selectorString(d.Spec.Selector)}
	s, want := d.Status, replicasOr1(d.Spec.Replicas)
	if d.Generation > s.ObservedGeneration || s.UpdateRevision != s.CurrentRevision || s.UpdatedReplicas < want || s.ReadyReplicas < want {
		v.pending = fmt.Sprintf("%d/%d updated, %d ready", s.UpdatedReplicas, want, s.ReadyReplicas)
	}
	if s.ReadyReplicas < want {
		v.unavailable = fmt.Sprintf("%d/%d ready", s.ReadyReplicas, want)
	}
	u := d.Spec.UpdateStrategy
	switch {
	case u.Type == appsv1.OnDeleteStatefulSetStrategyType:
		v.stuck = whyOnDelete
	case u.RollingUpdate != nil && u.RollingUpdate.Partition != nil && *u.RollingUpdate.Partition > 0:
		v.stuck = whyPartitioned
		v.stuckDetail = fmt.Sprintf("rollingUpdate.partition %d of %d replicas", *u.RollingUpdate.Partition, want)
	}
	return v
}

// listConcurrency bounds the API lists a step runs at once.
const listConcurrency = 8

// listWorkloads returns the selected workloads, sorted. Kinds rotate does
// not know select nothing (the inventory rejects them).
func (rt *Runtime) listWorkloads(ctx context.Context, namespaces, exclude, kinds []string) ([]observed, error) {
	excl := map[string]bool{}
	for _, n := range exclude {
		excl[n] = true
	}
	nsList := namespaces
	if len(nsList) == 0 {
		nsList = []string{metav1.NamespaceAll}
	}
	// One list per namespace and kind, a few at a time: through a slow
	// link each is a round trip of its own.
	type list struct {
		ns, kind string
		items    []workloadView
		err      error
	}
	var lists []*list
	for _, ns := range nsList {
		for _, k := range kinds {
			if _, ok := workloadKinds[k]; ok {
				lists = append(lists, &list{ns: ns, kind: k})
			}
		}
	}
	sem := make(chan struct{}, listConcurrency)
	var wg sync.WaitGroup
	for _, l := range lists {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			l.items, l.err = workloadKinds[l.kind].list(ctx, rt.Kube.AppsV1(), l.ns)
		}()
	}
	wg.Wait()
	var out []observed
	for _, l := range lists {
		if l.err != nil {
			return nil, l.err
		}
		for _, v := range l.items {
			if !excl[v.meta.Namespace] {
				out = append(out, observed{workload{kind: l.kind, namespace: v.meta.Namespace, name: v.meta.Name}, v})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// workloadSelection is what one of the two restart steps selects: the
// in-cluster clients' namespaces, or the configured selection without
// them (they already load the bundle from phase 4).
func (rt *Runtime) workloadSelection(ctx context.Context, inCluster bool) ([]observed, error) {
	c := rt.Config
	if inCluster {
		return rt.listWorkloads(ctx, c.InClusterNamespaces, nil, c.Workloads.Kinds)
	}
	excl := append(append([]string{}, c.Workloads.ExcludeNamespaces...), c.InClusterNamespaces...)
	return rt.listWorkloads(ctx, c.Workloads.Namespaces, excl, c.Workloads.Kinds)
}

// skipSelector is rollout.workloads.skipSelector parsed; nil when unset.
func (c *Config) skipSelector() (labels.Selector, error) {
	if c.Workloads.SkipSelector == "" {
		return nil, nil
	}
	sel, err := labels.Parse(c.Workloads.SkipSelector)
	if err != nil {
		return nil, fmt.Errorf("rollout.workloads.skipSelector: %w", err)
	}
	return sel, nil
}

// defaultWorkloadTimeout is rollout.workloads.timeout's default.
const defaultWorkloadTimeout = 5 * time.Minute

// workloadTimeout is how long a restart step waits for w's rollout:
// rollout.workloads.timeouts["<namespace>/<name>"] if set, else
// rollout.workloads.timeout, else defaultWorkloadTimeout. Each workload's
// wait starts when it is restarted.
func (c *Config) workloadTimeout(w workload) time.Duration {
	if d := c.Workloads.Timeouts[w.namespace+"/"+w.name]; d > 0 {
		return d
	}
	if c.Workloads.Timeout > 0 {
		return c.Workloads.Timeout
	}
	return defaultWorkloadTimeout
}

// classifier decides, for each listed workload, whether rotate restarts it
// and waits for its rollout (see the comment at the top of this file).
type classifier struct {
	skip     labels.Selector
	skipText string
	// unavailableBefore is preflight's record: workload → how many pods
	// were available; nil in preflight itself, where "now" is "before".
	unavailableBefore map[string]string
}

func (rt *Runtime) newClassifier(ctx context.Context, baseline bool) (classifier, error) {
	sel, err := rt.Config.skipSelector()
	if err != nil {
		return classifier{}, err
	}
	c := classifier{skip: sel, skipText: rt.Config.Workloads.SkipSelector}
	if baseline {
		b, err := rt.loadWorkloadBaseline(ctx)
		if err != nil {
			return classifier{}, err
		}
		c.unavailableBefore = b.Unavailable
	}
	return c, nil
}

// decision is what a restart step does with one workload.
type decision struct {
	restart, wait bool
	// healthyBefore: all its pods were available before the run, so a
	// rollout that does not finish in time is a regression, which fails
	// the step, rather than a finding.
	healthyBefore bool
}

// classify decides what happens to o; f says why it is not restarted or
// not waited for, nil when it is both.
func (c classifier) classify(o observed) (d decision, f *workloadFinding) {
	m := o.view.meta
	find := func(why, detail string) *workloadFinding {
		return &workloadFinding{Kind: o.kind, Namespace: o.namespace, Name: o.name, Selector: o.view.selector, Why: why, Detail: detail}
	}
	before, wasUnavailable := c.unavailableBefore[o.String()]
	switch {
	case strings.EqualFold(m.Annotations[skipAnnotation], "true"):
		return d, find(whySkipAnnotation, "")
	case c.skip != nil && c.skip.Matches(labels.Set(m.Labels)):
		return d, find(whySkipSelector, c.skipText)
	case o.view.stuck != "":
		return d, find(o.view.stuck, o.view.stuckDetail)
	case c.unavailableBefore == nil && o.view.unavailable != "":
		// Preflight: unavailable now is unavailable before the run.
		return decision{restart: true}, find(whyUnavailable, o.view.unavailable)
	case wasUnavailable && o.view.unavailable != "":
		return decision{restart: true}, find(whyUnavailable, before)
	case wasUnavailable:
		// Recovered since preflight: waited for, but not finishing in
		// time is what it did before the run, not a regression.
		return decision{restart: true, wait: true}, nil
	}
	// Healthy before the run: waited for, whatever it looks like now (a
	// rollout in progress, or something the rotation broke).
	return decision{restart: true, wait: true, healthyBefore: true}, nil
}

// keyBaselineWorkloads is preflight's record of the workloads (state key).
const keyBaselineWorkloads = "baseline/workloads"

// workloadBaseline is what preflight found of the workloads the two
// restart steps select, before anything changed.
type workloadBaseline struct {
	// Unavailable: workload → how many of its pods were available, for
	// each one not all available.
	Unavailable map[string]string `json:"unavailable,omitempty"`
	// Findings: every workload a rollout restart would not complete for.
	Findings []workloadFinding `json:"findings,omitempty"`
}

// loadWorkloadBaseline reads preflight's record. None (a run whose
// preflight predates it) leaves Unavailable nil: a workload not all
// available at the restart then counts as unavailable before the run.
func (rt *Runtime) loadWorkloadBaseline(ctx context.Context) (workloadBaseline, error) {
	var b workloadBaseline
	raw, ok, err := rt.Store.Value(ctx, keyBaselineWorkloads)
	if err != nil || !ok {
		return b, err
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		return b, fmt.Errorf("read %s: %w", keyBaselineWorkloads, err)
	}
	if b.Unavailable == nil {
		b.Unavailable = map[string]string{}
	}
	return b, nil
}

// WorkloadsBaseline (preflight) lists the workloads both restart steps
// select, finds those a rollout restart would not complete for and tells
// the operator, and records which are not all available: the restart steps
// restart those without waiting if they still are not. Read only; nothing
// found is fatal.
type WorkloadsBaseline struct{ readOnly }

func (WorkloadsBaseline) Name() string { return "workloads-baseline" }

func (WorkloadsBaseline) Apply(ctx context.Context, rt *Runtime, t Target) error {
	b, err := WorkloadsBaseline{}.find(ctx, rt)
	if err != nil {
		return err
	}
	for _, f := range b.Findings {
		rt.Printf("workload %s", f)
	}
	return putJSON(rt, keyBaselineWorkloads, b)
}

// Preview records the baseline for `plan --live`, so the restart steps
// describe what they would do with unavailable workloads.
func (WorkloadsBaseline) Preview(ctx context.Context, rt *Runtime, t Target) error {
	b, err := WorkloadsBaseline{}.find(ctx, rt)
	if err != nil {
		return err
	}
	return putJSON(rt, keyBaselineWorkloads, b)
}

func (WorkloadsBaseline) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	b, err := WorkloadsBaseline{}.find(ctx, rt)
	if err != nil {
		return nil, err
	}
	out := []string{fmt.Sprintf("record the workloads a rollout restart would not complete for: %d now", len(b.Findings))}
	for _, f := range b.Findings {
		out = append(out, "workload "+f.String())
	}
	return out, nil
}

func (WorkloadsBaseline) Explain(c *Config) []string {
	return []string{"read only: lists every workload that is opted out, paused, OnDelete, partitioned or not all available, and what to do about it (see steps system-workloads and workloads)"}
}

func (WorkloadsBaseline) find(ctx context.Context, rt *Runtime) (workloadBaseline, error) {
	b := workloadBaseline{Unavailable: map[string]string{}}
	cl, err := rt.newClassifier(ctx, false)
	if err != nil {
		return b, err
	}
	for _, inCluster := range []bool{true, false} {
		obs, err := rt.workloadSelection(ctx, inCluster)
		if err != nil {
			return b, err
		}
		for _, o := range obs {
			if o.view.unavailable != "" {
				b.Unavailable[o.String()] = o.view.unavailable
			}
			if _, f := cl.classify(o); f != nil {
				b.Findings = append(b.Findings, *f)
			}
		}
	}
	return b, nil
}

func putJSON(rt *Runtime, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("record %s: %w", key, err)
	}
	rt.Out.Put(key, raw)
	return nil
}

// RestartWorkloads restarts the selected Deployments, DaemonSets and
// StatefulSets so their pods load the CA bundle, with bounded concurrency,
// each waited for up to its own timeout (see the top of this file for what
// is not restarted or not waited for). It records what it did not restart,
// did not wait for, or saw not finish in time (the hold report lists
// them); a workload healthy before the run that does not finish in time
// fails the step. It bounds its waits itself (SelfTimed).
//
// Its revert re-rolls, after a run that may have narrowed trust, the
// workloads it restarted whose pods started after verify's check: those
// may have loaded kube-root-ca.crt with only the new CA, which the
// rolled-back cluster does not serve.
type RestartWorkloads struct {
	StepName string
	// InCluster: the in-cluster clients' namespaces (phase 4); otherwise
	// the configured selection without them (phase 9).
	InCluster bool
	// Deferred: restart only, and record what to wait for (rolloutsKey);
	// a RolledOut step waits and records the findings. Check then asks
	// only that every restart is in place.
	Deferred bool
}

func (s *RestartWorkloads) Name() string { return s.StepName }

// SelfTimed: each workload has its own timeout; the phase timeout would
// cut a step short that is still making progress.
func (s *RestartWorkloads) SelfTimed() {}

// workloadReportKey is where a restart step records its findings (state
// key).
func workloadReportKey(step string) string { return "report/workloads/" + step }

// rolloutsKey is where a deferred restart step records its rollouts and
// findings for the step that waits (state key).
func rolloutsKey(step string) string { return "rollouts/" + step }

// rollTask is one workload a restart step restarts, and how it waits.
type rollTask struct {
	observed
	decision
	timeout time.Duration
}

// rollout is a rollTask as rollWorkloads needs it, and as a deferred
// restart records it (state JSON).
type rollout struct {
	Kind          string        `json:"kind"`
	Namespace     string        `json:"namespace"`
	Name          string        `json:"name"`
	Selector      string        `json:"selector,omitempty"`
	Wait          bool          `json:"wait,omitempty"`
	HealthyBefore bool          `json:"healthyBefore,omitempty"`
	Timeout       time.Duration `json:"timeout"`
}

func (r rollout) workload() workload { return workload{r.Kind, r.Namespace, r.Name} }

func rollouts(tasks []rollTask) []rollout {
	out := make([]rollout, 0, len(tasks))
	for _, t := range tasks {
		out = append(out, rollout{Kind: t.kind, Namespace: t.namespace, Name: t.name, Selector: t.view.selector,
			Wait: t.wait, HealthyBefore: t.healthyBefore, Timeout: t.timeout})
	}
	return out
}

// recordedRollouts is what a deferred restart step leaves for its wait.
type recordedRollouts struct {
	Value    string            `json:"value"` // the restartedAt value
	Rollouts []rollout         `json:"rollouts,omitempty"`
	Findings []workloadFinding `json:"findings,omitempty"`
}

// restartPlan is what the step does with the selected workloads.
type restartPlan struct {
	tasks    []rollTask
	findings []workloadFinding // not restarted or not waited for
}

func (s *RestartWorkloads) plan(ctx context.Context, rt *Runtime) (restartPlan, error) {
	var p restartPlan
	cl, err := rt.newClassifier(ctx, true)
	if err != nil {
		return p, err
	}
	obs, err := rt.workloadSelection(ctx, s.InCluster)
	if err != nil {
		return p, err
	}
	for _, o := range obs {
		d, f := cl.classify(o)
		if d.restart {
			p.tasks = append(p.tasks, rollTask{o, d, rt.Config.workloadTimeout(o.workload)})
		}
		if f != nil {
			p.findings = append(p.findings, *f)
		}
	}
	return p, nil
}

// Check: every workload the step restarts carries this run's value, and
// every one it waits for has rolled out.
func (s *RestartWorkloads) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	p, err := s.plan(ctx, rt)
	if err != nil {
		return false, err
	}
	v := restartedAt(rt.RunID, false)
	for _, task := range p.tasks {
		if task.view.template.Annotations[workloadAnnotation] != v || !s.Deferred && task.wait && task.view.pending != "" {
			return false, nil
		}
	}
	return true, nil
}

func (s *RestartWorkloads) Apply(ctx context.Context, rt *Runtime, t Target) error {
	p, err := s.plan(ctx, rt)
	if err != nil {
		return err
	}
	if len(p.tasks)+len(p.findings) == 0 {
		rt.Printf("no workloads selected: nothing to restart")
	}
	for _, f := range p.findings {
		rt.Printf("workload %s", f)
	}
	v := restartedAt(rt.RunID, false)
	if s.Deferred {
		if _, _, err := rt.rollWorkloads(ctx, rollouts(p.tasks), v, rt.Config.WorkloadConcurrency, restartOnly); err != nil {
			return err
		}
		return s.record(rt, p)
	}
	late, regressed, err := rt.rollWorkloads(ctx, rollouts(p.tasks), v, rt.Config.WorkloadConcurrency, restartAndWait)
	if err != nil {
		return err
	}
	if err := regressionError(regressed); err != nil {
		return err
	}
	return putJSON(rt, workloadReportKey(s.StepName), append(p.findings, late...))
}

// record keeps a deferred restart's rollouts and findings for its wait.
func (s *RestartWorkloads) record(rt *Runtime, p restartPlan) error {
	return putJSON(rt, rolloutsKey(s.StepName), recordedRollouts{Value: restartedAt(rt.RunID, false), Rollouts: rollouts(p.tasks), Findings: p.findings})
}

// regressionError names the workloads, healthy before the run, whose
// rollout did not finish in time: the rotation may have broken them, so
// the step fails rather than narrow trust over them.
func regressionError(regressed []workloadFinding) error {
	if len(regressed) == 0 {
		return nil
	}
	var ws []string
	for _, f := range regressed {
		w := f.workload()
		ws = append(ws, fmt.Sprintf("%s: rollout not finished %s; see %s", w, f.Detail, w.kubectl("rollout status")))
	}
	return fmt.Errorf("%d workload(s) had all pods available before the run and did not finish rolling out after the restart (a regression, so the run stops here): fix them, or opt one out with the annotation %s=true, then `rotate resume`:\n  - %s",
		len(regressed), skipAnnotation, strings.Join(ws, "\n  - "))
}

// Gate records the findings when Check found the restart in place (Apply
// records them otherwise).
func (s *RestartWorkloads) Gate(ctx context.Context, rt *Runtime, t Target) error {
	key := workloadReportKey(s.StepName)
	if s.Deferred {
		key = rolloutsKey(s.StepName)
	}
	if _, ok := rt.Out.Values[key]; ok {
		return nil
	}
	p, err := s.plan(ctx, rt)
	if err != nil {
		return err
	}
	if s.Deferred {
		return s.record(rt, p)
	}
	return putJSON(rt, key, p.findings)
}

// narrowingSkew is how much earlier than verify's check (the operator
// machine's clock) a pod's creation (the apiserver's clock) counts as
// "after": it covers clock skew between the two.
const narrowingSkew = time.Minute

// Revert: see RestartWorkloads. Nothing to do for a run that never
// reached verify (no pod can have loaded the new CA alone); otherwise it
// waits until kube-root-ca.crt holds old+new again (the narrowing steps
// were reverted before this one), then re-rolls (a second restartedAt
// value) what it restarted and what it re-rolled before, with each
// workload's timeout. A rollout that does not finish in time is reported,
// not an error: the restart is in place, and failing would leave the rest
// of the rollback undone. Workloads it does not restart but whose pods
// started after the check are named for the operator.
func (s *RestartWorkloads) Revert(ctx context.Context, rt *Runtime, t Target) error {
	since, ok, err := rt.narrowingSince(ctx)
	if err != nil || !ok {
		return err
	}
	cl, err := rt.newClassifier(ctx, true)
	if err != nil {
		return err
	}
	obs, err := rt.workloadSelection(ctx, s.InCluster)
	if err != nil {
		return err
	}
	fwd, rev := restartedAt(rt.RunID, false), restartedAt(rt.RunID, true)
	var tasks []rollTask
	for _, o := range obs {
		v := o.view.template.Annotations[workloadAnnotation]
		newer, err := rt.workloadPods(ctx, o.namespace, o.view.selector, func(created time.Time) bool { return created.After(since) })
		if err != nil {
			return fmt.Errorf("%s: %w", o, err)
		}
		d, _ := cl.classify(o)
		switch {
		case v == rev || v == fwd && len(newer) > 0 && d.restart:
			tasks = append(tasks, rollTask{o, d, rt.Config.workloadTimeout(o.workload)})
		case len(newer) > 0:
			rt.Printf("%s was not restarted by this rollback and has pods started after trust may have narrowed (%s): they may trust only the new CA; restart them: %s",
				o, short(newer), o.restartCommand(o.view.stuck, newer))
		}
	}
	if len(tasks) == 0 {
		return nil
	}
	bundle, _, err := rt.bundles(ctx)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, rt.Config.Timeout("publication"))
	err = rt.waitRootCAPublished(pctx, bundle)
	cancel()
	if err != nil {
		return fmt.Errorf("before re-rolling workloads: %w", err)
	}
	late, regressed, err := rt.rollWorkloads(ctx, rollouts(tasks), rev, rt.Config.WorkloadConcurrency, restartAndWait)
	if err != nil {
		return err
	}
	for _, f := range append(late, regressed...) {
		rt.Printf("workload %s: re-rolled, rollout not finished %s: check it: %s", f.workload(), f.Detail, f.workload().kubectl("rollout status"))
	}
	return nil
}

// narrowingSince is the time after which pods may have loaded only the
// new CA: verify's check (every narrowing comes after it), less
// narrowingSkew. ok is false when the run never reached verify.
func (rt *Runtime) narrowingSince(ctx context.Context) (time.Time, bool, error) {
	raw, ok, err := rt.Store.Value(ctx, KeyHoldReport)
	if err != nil || !ok {
		return time.Time{}, false, err
	}
	var rep HoldReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		return time.Time{}, false, fmt.Errorf("read %s: %w", KeyHoldReport, err)
	}
	return rep.CheckedAt.Add(-narrowingSkew), true, nil
}

// workloadPods names the running pods of ns matching selector whose
// creation time keep accepts; none for an empty selector.
func (rt *Runtime) workloadPods(ctx context.Context, ns, selector string, keep func(created time.Time) bool) ([]string, error) {
	if selector == "" {
		return nil, nil
	}
	pods, err := rt.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("list pods in %s (%s): %w", ns, selector, err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil {
			continue
		}
		if keep(p.CreationTimestamp.Time) {
			out = append(out, p.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (s *RestartWorkloads) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	p, err := s.plan(ctx, rt)
	if err != nil {
		return nil, err
	}
	out := []string{fmt.Sprintf("rollout restart of %d workload(s), %d at a time", len(p.tasks), rt.Config.WorkloadConcurrency)}
	if s.Deferred {
		out[0] += ", not waiting here: step " + stepSystemRolledOut + " waits for them"
	}
	for _, task := range p.tasks {
		if task.wait && !s.Deferred {
			out = append(out, fmt.Sprintf("restart %s, wait up to %s", task, task.timeout))
		}
	}
	for _, f := range p.findings {
		out = append(out, "workload "+f.String())
	}
	return out, nil
}

// Explain is how the step treats workloads, from the configuration.
func (s *RestartWorkloads) Explain(c *Config) []string {
	wait := fmt.Sprintf("waits for each up to rollout.workloads.timeout (%s)", c.workloadTimeout(workload{}))
	if len(c.Workloads.Timeouts) > 0 {
		wait += fmt.Sprintf(", or its entry in rollout.workloads.timeouts (%d set)", len(c.Workloads.Timeouts))
	}
	skip := "not restarted, listed at the hold with the pods to restart: paused Deployments, OnDelete DaemonSets and StatefulSets, StatefulSets with a rollingUpdate partition, objects annotated " + skipAnnotation + "=true"
	if c.Workloads.SkipSelector != "" {
		skip += fmt.Sprintf(", objects matching rollout.workloads.skipSelector %q", c.Workloads.SkipSelector)
	}
	return []string{
		fmt.Sprintf("restarts like `kubectl rollout restart` (pod template annotation %s), %d at a time; %s", workloadAnnotation, c.WorkloadConcurrency, wait),
		skip,
		"restarted without waiting, listed at the hold: workloads not all available before the run and still not (one that recovered since is waited for, and listed at the hold if it does not finish in time)",
		"a workload all available before the run that does not finish in time stops the run: a regression, named in the error",
		"rollback re-rolls those it restarted that have pods started after verify (they may trust only the new CA)",
	}
}

// workloadHoldLines are the findings both restart steps recorded, for the
// hold report: for each workload rotate did not restart, its pods that
// started before the CA bundle was published, which the operator restarts.
func (rt *Runtime) workloadHoldLines(ctx context.Context) ([]string, error) {
	var published time.Time
	if v, ok, err := rt.Store.Value(ctx, keyPublishedAt); err != nil {
		return nil, err
	} else if ok {
		published, _ = time.Parse(time.RFC3339, string(v))
	}
	var out []string
	for _, step := range []string{stepSystemWorkloads, stepWorkloads} {
		raw, ok, err := rt.Store.Value(ctx, workloadReportKey(step))
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		var fs []workloadFinding
		if err := json.Unmarshal(raw, &fs); err != nil {
			return nil, fmt.Errorf("read %s: %w", workloadReportKey(step), err)
		}
		for _, f := range fs {
			if f.restarted() || published.IsZero() || f.Selector == "" {
				out = append(out, f.String())
				continue
			}
			old, err := rt.workloadPods(ctx, f.Namespace, f.Selector, func(created time.Time) bool { return created.Before(published) })
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.workload(), err)
			}
			out = append(out, f.line(old, true))
		}
	}
	return out, nil
}

// restartWorkload sets the restart annotation on the pod template (a
// rollout restart, with a deterministic value). An unknown kind is left to
// rolledOut to report.
func (rt *Runtime) restartWorkload(ctx context.Context, w workload, value string) error {
	kind, ok := workloadKinds[w.kind]
	if !ok {
		return nil
	}
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{%q:%q}}}}}`, workloadAnnotation, value)
	err := kind.patch(ctx, rt.Kube.AppsV1(), w.namespace, w.name, []byte(patch))
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile: nothing to restart
	}
	if err != nil {
		return fmt.Errorf("restart %s: %w", w, err)
	}
	return nil
}

// rolledOut reports whether the workload finished rolling out the template
// that carries the annotation value.
func (rt *Runtime) rolledOut(ctx context.Context, w workload, value string) (bool, string, error) {
	kind, ok := workloadKinds[w.kind]
	if !ok {
		return false, "", fmt.Errorf("unknown kind %s", w.kind)
	}
	return kind.status(ctx, rt.Kube.AppsV1(), w.namespace, w.name, value)
}

// rollMode is what rollWorkloads does with each rollout.
type rollMode int

const (
	restartAndWait rollMode = iota
	restartOnly             // a deferred restart: RolledOut waits
	waitOnly                // RolledOut
)

// rollWorkloads restarts every rollout's workload (unless waitOnly), with
// at most limit in flight, and waits up to its timeout for each that
// waits (unless restartOnly). It returns the rollouts that did not finish
// in time (whyTimedOut findings): late for workloads not all available
// before the run, regressed for those that were. An error is a restart
// that failed or a wait cut short by ctx.
func (rt *Runtime) rollWorkloads(ctx context.Context, rs []rollout, value string, limit int, mode rollMode) (late, regressed []workloadFinding, err error) {
	var mu sync.Mutex
	var errs []string
	finished := 0
	forEachBounded(len(rs), limit, func(i int) {
		r := rs[i]
		w := r.workload()
		var err error
		if mode != waitOnly {
			err = rt.restartWorkload(ctx, w, value)
		}
		wait := r.Wait && mode != restartOnly
		var last string
		if err == nil && wait {
			wctx, cancel := context.WithTimeout(ctx, r.Timeout)
			err = rt.waitFor(wctx, "rollout of "+w.String(), func(ctx context.Context) (bool, string, error) {
				done, why, err := rt.rolledOut(ctx, w, value)
				if ctx.Err() == nil {
					last = why // not the read cut short by the deadline
				}
				return done, why, err
			})
			cancel()
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			f := workloadFinding{Kind: w.kind, Namespace: w.namespace, Name: w.name, Selector: r.Selector,
				Why: whyTimedOut, Detail: fmt.Sprintf("within %s (last: %s)", r.Timeout, last)}
			if r.HealthyBefore {
				regressed = append(regressed, f)
			} else {
				late = append(late, f)
			}
			finished++
			rt.Printf("%s: rollout not finished within %s (last: %s) (%d/%d)", w, r.Timeout, last, finished, len(rs))
		case err != nil:
			errs = append(errs, err.Error())
		case wait:
			finished++
			rt.Printf("rolled out %s (%d/%d)", w, finished, len(rs))
		case mode == restartOnly && r.Wait:
			finished++
			rt.Printf("restarted %s, its rollout is waited for later (%d/%d)", w, finished, len(rs))
		default:
			finished++
			rt.Printf("restarted %s, not waiting for it (%d/%d)", w, finished, len(rs))
		}
	})
	byName := func(fs []workloadFinding) {
		sort.Slice(fs, func(i, j int) bool { return fs[i].workload().String() < fs[j].workload().String() })
	}
	byName(late)
	byName(regressed)
	if len(errs) > 0 {
		sort.Strings(errs)
		return late, regressed, fmt.Errorf("%d of %d rollouts failed:\n  - %s", len(errs), len(rs), strings.Join(errs, "\n  - "))
	}
	return late, regressed, nil
}
