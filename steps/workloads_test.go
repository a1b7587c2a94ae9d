package steps

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// The workloads of the classification tests, all in namespace "apps" with
// 3 replicas (or nodes), each selecting its pods by app=<name>.
func selected(name string, t *corev1.PodTemplateSpec) *metav1.LabelSelector {
	t.Labels = map[string]string{"app": name}
	return &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}
}

func wlDeployment(name string, mut func(*appsv1.Deployment)) *appsv1.Deployment {
	d := deployment("apps", name, "", ptr32(3), 1, depDone)
	d.Spec.Selector = selected(name, &d.Spec.Template)
	if mut != nil {
		mut(d)
	}
	return d
}

func wlDaemonSet(name string, mut func(*appsv1.DaemonSet)) *appsv1.DaemonSet {
	d := daemonSet("apps", name, "", 1, dsDone)
	d.Spec.Selector = selected(name, &d.Spec.Template)
	if mut != nil {
		mut(d)
	}
	return d
}

func wlStatefulSet(name string, mut func(*appsv1.StatefulSet)) *appsv1.StatefulSet {
	d := statefulSet("apps", name, "", ptr32(3), 1, stsDone)
	d.Spec.Selector = selected(name, &d.Spec.Template)
	if mut != nil {
		mut(d)
	}
	return d
}

func pod(name, app string, created time.Time) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: name, Labels: map[string]string{"app": app},
		CreationTimestamp: metav1.NewTime(created)}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

// workloadsCluster is one workload of every kind rotate treats apart,
// plus a healthy one of each kind.
func workloadsCluster() []runtime.Object {
	return []runtime.Object{
		wlDeployment("web", nil),
		wlDaemonSet("agent", nil),
		wlStatefulSet("db", nil),
		wlDeployment("paused", func(d *appsv1.Deployment) { d.Spec.Paused = true }),
		wlDaemonSet("ondelete-ds", func(d *appsv1.DaemonSet) {
			d.Spec.UpdateStrategy.Type = appsv1.OnDeleteDaemonSetStrategyType
		}),
		wlStatefulSet("ondelete-sts", func(d *appsv1.StatefulSet) {
			d.Spec.UpdateStrategy.Type = appsv1.OnDeleteStatefulSetStrategyType
		}),
		wlStatefulSet("canary", func(d *appsv1.StatefulSet) {
			d.Spec.UpdateStrategy = appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: ptr32(2)}}
		}),
		wlStatefulSet("partition-zero", func(d *appsv1.StatefulSet) {
			d.Spec.UpdateStrategy = appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: ptr32(0)}}
		}),
		wlDeployment("broken", func(d *appsv1.Deployment) {
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 1}
		}),
		wlDeployment("opted-out", func(d *appsv1.Deployment) {
			d.Annotations = map[string]string{skipAnnotation: "true"}
		}),
		wlDeployment("legacy", func(d *appsv1.Deployment) {
			d.Labels = map[string]string{"tier": "legacy"}
		}),
	}
}

// workloadsRuntime is kubeRuntime on objs where the phase 9 step selects
// every namespace and skips tier=legacy.
func workloadsRuntime(t *testing.T, objs ...runtime.Object) (*Runtime, *fake.Clientset, *fakeStore) {
	t.Helper()
	rt, c := kubeRuntime(t, objs...)
	rt.Config.Workloads = Workloads{Kinds: []string{"Deployment", "DaemonSet", "StatefulSet"}, SkipSelector: "tier=legacy", Timeout: 5 * time.Second}
	rt.Config.InClusterNamespaces = []string{"kube-system"}
	rt.Config.WorkloadConcurrency = 4
	return rt, c, rt.Store.(*fakeStore)
}

// recordBaseline runs preflight's workloads-baseline and commits what it
// recorded, as the engine does, for the restart steps to read.
func recordBaseline(t *testing.T, rt *Runtime, st *fakeStore) {
	t.Helper()
	if err := (WorkloadsBaseline{}).Apply(context.Background(), rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	st.Commit(rt.Out)
	rt.Out = &Outputs{}
}

// whys is each finding as "workload why detail".
func whys(fs []workloadFinding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, strings.TrimSpace(f.workload().String()+" "+f.Why+" "+f.Detail))
	}
	return out
}

func TestWorkloadsBaselineClassifies(t *testing.T) {
	ctx := context.Background()
	rt, _, st := workloadsRuntime(t, workloadsCluster()...)
	recordBaseline(t, rt, st)
	b, err := rt.loadWorkloadBaseline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"DaemonSet apps/ondelete-ds on-delete",
		"Deployment apps/broken unavailable-before 1/3 available",
		"Deployment apps/legacy skip-selector tier=legacy",
		"Deployment apps/opted-out skip-annotation",
		"Deployment apps/paused paused",
		"StatefulSet apps/canary partitioned rollingUpdate.partition 2 of 3 replicas",
		"StatefulSet apps/ondelete-sts on-delete",
	}
	if got := whys(b.Findings); !reflect.DeepEqual(got, want) {
		t.Errorf("findings:\n got %q\nwant %q", got, want)
	}
	if want := map[string]string{"Deployment apps/broken": "1/3 available"}; !reflect.DeepEqual(b.Unavailable, want) {
		t.Errorf("unavailable = %v, want %v", b.Unavailable, want)
	}
}

// TestRestartWorkloadsApply runs the phase 9 step after preflight's
// baseline: healthy workloads are restarted with this run's restartedAt
// and waited for, the broken one restarted without waiting, the others
// left alone, and every finding recorded for the hold.
func TestRestartWorkloadsApply(t *testing.T) {
	ctx := context.Background()
	rt, c, st := workloadsRuntime(t, workloadsCluster()...)
	rt.RunID = "20261130-034235-abc"
	recordBaseline(t, rt, st)
	var mu sync.Mutex
	var progress []string
	rt.Progress = func(m string) { mu.Lock(); progress = append(progress, m); mu.Unlock() }

	s := WorkloadsRestart()
	if done, err := s.Check(ctx, rt, ClusterTarget); err != nil || done {
		t.Fatalf("Check before = %v, %v", done, err)
	}
	if err := s.Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	const value = "2026-11-30T03:42:35Z" // the run's start, as kubectl writes it
	restarted := map[string]bool{"web": true, "agent": true, "db": true, "partition-zero": true, "broken": true}
	for _, o := range workloadsCluster() {
		m := o.(metav1.Object)
		kind := map[string]string{"*v1.Deployment": "Deployment", "*v1.DaemonSet": "DaemonSet", "*v1.StatefulSet": "StatefulSet"}[reflect.TypeOf(o).String()]
		got := templateAnnotations(t, c, workload{kind, "apps", m.GetName()})[workloadAnnotation]
		if restarted[m.GetName()] && got != value {
			t.Errorf("%s: restartedAt = %q, want %q", m.GetName(), got, value)
		}
		if !restarted[m.GetName()] && got != "" {
			t.Errorf("%s: restarted (%q), want it left alone", m.GetName(), got)
		}
	}
	if !contains(progress, "restarted Deployment apps/broken, not waiting for it") {
		t.Errorf("progress lacks the unwaited restart of apps/broken: %q", progress)
	}
	var recorded []workloadFinding
	if err := json.Unmarshal(rt.Out.Values[workloadReportKey(stepWorkloads)], &recorded); err != nil {
		t.Fatalf("recorded findings: %v", err)
	}
	if len(recorded) != 7 {
		t.Errorf("recorded %d findings, want the 7 of the baseline: %q", len(recorded), whys(recorded))
	}
	st.Commit(rt.Out)
	if done, err := s.Check(ctx, rt, ClusterTarget); err != nil || !done {
		t.Errorf("Check after = %v, %v", done, err)
	}
}

func contains(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

func TestRestartedAt(t *testing.T) {
	for _, tt := range []struct {
		id     string
		revert bool
		want   string
	}{
		{"20261130-034235-abc", false, "2026-11-30T03:42:35Z"},
		{"20261130-034235-abc", true, "2026-11-30T03:42:36Z"},
		{"20261231-235959", true, "2027-01-01T00:00:00Z"},
	} {
		if got := restartedAt(tt.id, tt.revert); got != tt.want {
			t.Errorf("restartedAt(%q, %v) = %q, want %q", tt.id, tt.revert, got, tt.want)
		}
	}
	// Not a run id: a fixed valid RFC 3339 time, the same every time.
	a, b := restartedAt("plan", false), restartedAt("plan", false)
	if _, err := time.Parse(time.RFC3339, a); err != nil || a != b {
		t.Errorf("restartedAt(plan) = %q, %q (%v)", a, b, err)
	}
}

func TestWorkloadTimeout(t *testing.T) {
	c := &Config{Workloads: Workloads{Timeout: 2 * time.Minute, Timeouts: map[string]time.Duration{"data/postgres": 20 * time.Minute}}}
	for _, tt := range []struct {
		w    workload
		want time.Duration
	}{
		{workload{"StatefulSet", "data", "postgres"}, 20 * time.Minute},
		{workload{"Deployment", "data", "api"}, 2 * time.Minute},
		{workload{"Deployment", "other", "postgres"}, 2 * time.Minute},
	} {
		if got := c.workloadTimeout(tt.w); got != tt.want {
			t.Errorf("timeout of %s = %s, want %s", tt.w, got, tt.want)
		}
	}
	if got := (&Config{}).workloadTimeout(workload{}); got != defaultWorkloadTimeout {
		t.Errorf("unset timeout = %s, want %s", got, defaultWorkloadTimeout)
	}
}

// stuckDeployment never finishes a rollout: its status stays at the old
// template's.
func stuckDeployment(name string) *appsv1.Deployment {
	return wlDeployment(name, func(d *appsv1.Deployment) {
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 4, UpdatedReplicas: 1, AvailableReplicas: 3}
	})
}

// A workload's own timeout bounds its wait: a healthy-before workload
// that does not finish in time fails the step naming it; the others are
// not held up by it.
func TestRestartWorkloadsPerWorkloadTimeoutRegression(t *testing.T) {
	ctx := context.Background()
	rt, c, st := workloadsRuntime(t, stuckDeployment("slow"), wlDeployment("web", nil))
	rt.Config.Workloads.Timeouts = map[string]time.Duration{"apps/slow": 300 * time.Millisecond}
	recordBaseline(t, rt, st)
	start := time.Now()
	err := WorkloadsRestart().Apply(ctx, rt, ClusterTarget)
	if err == nil {
		t.Fatal("Apply succeeded, want the regression of apps/slow")
	}
	for _, want := range []string{"1 workload(s) had all pods available before the run", "Deployment apps/slow: rollout not finished within 300ms (last: 1/3 updated, 4 total, 3 available)", "kubectl -n apps rollout status deployment/slow", "rotate resume"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Apply took %s: the 300ms timeout of apps/slow did not bound it", d)
	}
	if got := templateAnnotations(t, c, workload{"Deployment", "apps", "web"})[workloadAnnotation]; got == "" {
		t.Error("apps/web not restarted")
	}
}

// A workload unavailable before the run that recovered and then does not
// finish in time is a finding, not a failure.
func TestRestartWorkloadsTimeoutOfUnavailableBefore(t *testing.T) {
	ctx := context.Background()
	rt, _, st := workloadsRuntime(t, stuckDeployment("flaky"))
	rt.Config.Workloads.Timeout = 300 * time.Millisecond
	b := workloadBaseline{Unavailable: map[string]string{"Deployment apps/flaky": "0/3 available"}}
	raw, _ := json.Marshal(b)
	st.values[keyBaselineWorkloads] = raw
	if err := WorkloadsRestart().Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatalf("Apply: %v, want the timeout recorded, not an error", err)
	}
	var recorded []workloadFinding
	if err := json.Unmarshal(rt.Out.Values[workloadReportKey(stepWorkloads)], &recorded); err != nil {
		t.Fatal(err)
	}
	want := []string{"Deployment apps/flaky timed-out within 300ms (last: 1/3 updated, 4 total, 3 available)"}
	if got := whys(recorded); !reflect.DeepEqual(got, want) {
		t.Errorf("recorded %q, want %q", got, want)
	}
}

// The hold report names, for each workload rotate did not restart, its
// pods started before the bundle and the command to restart them.
func TestWorkloadHoldLines(t *testing.T) {
	ctx := context.Background()
	published := time.Date(2026, 11, 30, 4, 0, 0, 0, time.UTC)
	before, after := published.Add(-time.Hour), published.Add(time.Minute)
	objs := append(workloadsCluster(),
		pod("ondelete-ds-a", "ondelete-ds", before), pod("ondelete-ds-b", "ondelete-ds", after), pod("ondelete-ds-c", "ondelete-ds", before),
		pod("paused-x", "paused", before),
		pod("opted-out-x", "opted-out", after),
		pod("canary-0", "canary", before),
	)
	rt, _, st := workloadsRuntime(t, objs...)
	st.values[keyPublishedAt] = []byte(published.Format(time.RFC3339))
	recordBaseline(t, rt, st)
	if err := WorkloadsRestart().Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	st.Commit(rt.Out)
	lines, err := rt.workloadHoldLines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"DaemonSet apps/ondelete-ds: updateStrategy OnDelete, not restarted (a template change replaces no pod, and rotate does not delete the pods of a workload whose owner chose when they are replaced): still running pods started before the bundle (ondelete-ds-a, ondelete-ds-c), restart them yourself: kubectl -n apps delete pod ondelete-ds-a ondelete-ds-c (one at a time, each after its replacement is Ready)",
		"Deployment apps/broken: not all pods available before the run (1/3 available), restarted without waiting (its new pods may not become ready either): fix it, then check that its pods restarted: kubectl -n apps rollout status deployment/broken",
		"Deployment apps/legacy: matches rollout.workloads.skipSelector \"tier=legacy\", not restarted: all its pods started after the CA bundle was published, nothing to do",
		"Deployment apps/opted-out: opted out (annotation rotate.kubeca.io/skip=true), not restarted: all its pods started after the CA bundle was published, nothing to do",
		"Deployment apps/paused: paused, not restarted (a paused Deployment does not roll): still running pods started before the bundle (paused-x), restart them yourself: kubectl -n apps rollout resume deployment/paused && kubectl -n apps rollout restart deployment/paused",
		"StatefulSet apps/canary: rollingUpdate.partition 2 of 3 replicas, not restarted (the pods below the partition would keep running): still running pods started before the bundle (canary-0), restart them yourself: kubectl -n apps delete pod canary-0 (one at a time, each after its replacement is Ready)",
		"StatefulSet apps/ondelete-sts: updateStrategy OnDelete, not restarted (a template change replaces no pod, and rotate does not delete the pods of a workload whose owner chose when they are replaced): all its pods started after the CA bundle was published, nothing to do",
	}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("hold lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// Rollback re-rolls what the step restarted and has pods started after
// verify's check (they may have loaded only the new CA), with the second
// restartedAt value; it leaves alone what has only older pods, and names
// what it did not restart.
func TestRestartWorkloadsRevertReRolls(t *testing.T) {
	ctx := context.Background()
	checked := time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC)
	runID := "20261130-034235-abc"
	fwd, rev := restartedAt(runID, false), restartedAt(runID, true)
	restartedWith := func(d *appsv1.Deployment) { d.Spec.Template.Annotations[workloadAnnotation] = fwd }
	objs := []runtime.Object{
		wlDeployment("fresh", restartedWith), pod("fresh-1", "fresh", checked.Add(10*time.Minute)),
		wlDeployment("old", restartedWith), pod("old-1", "old", checked.Add(-time.Hour)),
		wlDeployment("opted-out", func(d *appsv1.Deployment) { d.Annotations = map[string]string{skipAnnotation: "true"} }),
		pod("opted-out-1", "opted-out", checked.Add(5*time.Minute)),
	}
	rt, c, st := workloadsRuntime(t, objs...)
	rt.RunID = runID
	var progress []string
	rt.Progress = func(m string) { progress = append(progress, m) }
	s := WorkloadsRestart()

	// A run that never reached verify: nothing to re-roll.
	if err := s.Revert(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	if got := templateAnnotations(t, c, workload{"Deployment", "apps", "fresh"})[workloadAnnotation]; got != fwd {
		t.Fatalf("before verify: fresh re-rolled to %q", got)
	}

	raw, _ := json.Marshal(HoldReport{CheckedAt: checked})
	st.values[KeyHoldReport] = raw
	for i := 0; i < 2; i++ { // idempotent: the second revert re-applies the same value
		if err := s.Revert(ctx, rt, ClusterTarget); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{"fresh": rev, "old": fwd, "opted-out": ""} {
			if got := templateAnnotations(t, c, workload{"Deployment", "apps", name})[workloadAnnotation]; got != want {
				t.Errorf("revert %d: %s restartedAt = %q, want %q", i+1, name, got, want)
			}
		}
	}
	if !contains(progress, "Deployment apps/opted-out was not restarted by this rollback and has pods started after trust may have narrowed (opted-out-1)") {
		t.Errorf("progress does not name apps/opted-out: %q", progress)
	}
}

// classify after preflight: whether a workload is waited for, and whether
// not finishing in time is a regression, depends on the baseline.
func TestClassifyAgainstBaseline(t *testing.T) {
	healthy := observed{workload{"Deployment", "apps", "web"}, deploymentView(wlDeployment("web", nil))}
	down := observed{workload{"Deployment", "apps", "web"}, deploymentView(wlDeployment("web", func(d *appsv1.Deployment) {
		d.Status.AvailableReplicas = 0
	}))}
	before := map[string]string{"Deployment apps/web": "0/3 available"}
	tests := []struct {
		name     string
		o        observed
		baseline map[string]string // nil: none recorded
		want     decision
		why      string // the finding's, "" for none
	}{
		{name: "healthy before and now", o: healthy, baseline: map[string]string{}, want: decision{restart: true, wait: true, healthyBefore: true}},
		{name: "healthy before, down now: waited for, a regression if late", o: down, baseline: map[string]string{}, want: decision{restart: true, wait: true, healthyBefore: true}},
		{name: "down before and now: not waited for", o: down, baseline: before, want: decision{restart: true}, why: whyUnavailable},
		{name: "down before, recovered: waited for, not a regression", o: healthy, baseline: before, want: decision{restart: true, wait: true}},
		{name: "no baseline recorded, down now: counts as down before", o: down, want: decision{restart: true}, why: whyUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, f := classifier{unavailableBefore: tt.baseline}.classify(tt.o)
			if d != tt.want {
				t.Errorf("decision = %+v, want %+v", d, tt.want)
			}
			why := ""
			if f != nil {
				why = f.Why
			}
			if why != tt.why {
				t.Errorf("finding %q, want %q", why, tt.why)
			}
		})
	}
}

// The in-cluster clients' restart does not wait: it restarts, records
// what to wait for, and is done while a rollout is still running; the
// wait step later fails on a workload healthy before the run that does
// not finish in time, waits for one that does, and records the restart's
// findings for the hold.
func TestDeferredRestartThenRolledOut(t *testing.T) {
	ctx := context.Background()
	objs := append(workloadsCluster(), stuckDeployment("slow"))
	rt, c, st := workloadsRuntime(t, objs...)
	rt.RunID = "20261130-034235-abc"
	rt.Config.Workloads.Timeouts = map[string]time.Duration{"apps/slow": 300 * time.Millisecond}
	recordBaseline(t, rt, st)
	var mu sync.Mutex
	var progress []string
	rt.Progress = func(m string) { mu.Lock(); progress = append(progress, m); mu.Unlock() }

	restart := &RestartWorkloads{StepName: stepSystemWorkloads, Deferred: true}
	wait := &RolledOut{StepName: stepSystemRolledOut, Restart: restart}
	if _, err := wait.Check(ctx, rt, ClusterTarget); err == nil || !strings.Contains(err.Error(), "step system-workloads recorded no rollouts") {
		t.Fatalf("wait before the restart: err = %v, want that the restart must run first", err)
	}
	if err := restart.Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatalf("deferred restart: %v (it must not wait for apps/slow)", err)
	}
	const value = "2026-11-30T03:42:35Z"
	if got := templateAnnotations(t, c, workload{"Deployment", "apps", "slow"})[workloadAnnotation]; got != value {
		t.Errorf("apps/slow restartedAt = %q, want %q", got, value)
	}
	if !contains(progress, "restarted Deployment apps/slow, its rollout is waited for later") {
		t.Errorf("progress lacks the deferred restart of apps/slow: %q", progress)
	}
	if _, ok := rt.Out.Values[workloadReportKey(stepSystemWorkloads)]; ok {
		t.Error("the deferred restart recorded the hold findings; the wait step records them")
	}
	st.Commit(rt.Out)
	rt.Out = &Outputs{}
	if done, err := restart.Check(ctx, rt, ClusterTarget); err != nil || !done {
		t.Errorf("restart Check with apps/slow still rolling = %v, %v, want done (restarts in place)", done, err)
	}
	if done, err := wait.Check(ctx, rt, ClusterTarget); err != nil || done {
		t.Errorf("wait Check with apps/slow still rolling = %v, %v, want not done", done, err)
	}
	lines, err := wait.Describe(ctx, rt, ClusterTarget)
	if err != nil || !contains(lines, "wait up to 300ms for Deployment apps/slow") {
		t.Errorf("Describe = %q, %v", lines, err)
	}

	err = wait.Apply(ctx, rt, ClusterTarget)
	if err == nil || !strings.Contains(err.Error(), "Deployment apps/slow: rollout not finished within 300ms") {
		t.Fatalf("wait: err = %v, want the regression of apps/slow", err)
	}

	// apps/slow finishes: the wait passes and records the findings.
	d, err := c.AppsV1().Deployments("apps").Get(ctx, "slow", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 3, UpdatedReplicas: 3, ReadyReplicas: 3, AvailableReplicas: 3}
	if _, err := c.AppsV1().Deployments("apps").UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rt.Out = &Outputs{}
	if err := wait.Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatalf("wait after apps/slow finished: %v", err)
	}
	var recorded []workloadFinding
	if err := json.Unmarshal(rt.Out.Values[workloadReportKey(stepSystemWorkloads)], &recorded); err != nil {
		t.Fatalf("recorded findings: %v", err)
	}
	if len(recorded) != 7 {
		t.Errorf("recorded %d findings, want the 7 of the baseline: %q", len(recorded), whys(recorded))
	}
	if done, err := wait.Check(ctx, rt, ClusterTarget); err != nil || !done {
		t.Errorf("wait Check after = %v, %v", done, err)
	}
}
