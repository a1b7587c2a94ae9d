package steps

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

var errBoom = errors.New("boom")

// kubeRuntime is testRuntime talking to a fake API server holding objs.
func kubeRuntime(t *testing.T, objs ...runtime.Object) (*Runtime, *fake.Clientset) {
	t.Helper()
	rt, _, _ := testRuntime(t)
	c := fake.NewClientset(objs...)
	rt.Kube = c
	return rt, c
}

// failOn makes every verb on resource fail with errBoom.
func failOn(c *fake.Clientset, verb, resource string) {
	c.PrependReactor(verb, resource, func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errBoom
	})
}

// objRuntime is kubeRuntime holding obj (nothing if nil), where verb on
// failResource (if not "") fails with errBoom.
func objRuntime(t *testing.T, obj runtime.Object, verb, failResource string) (*Runtime, *fake.Clientset) {
	t.Helper()
	var objs []runtime.Object
	if obj != nil {
		objs = append(objs, obj)
	}
	rt, c := kubeRuntime(t, objs...)
	if failResource != "" {
		failOn(c, verb, failResource)
	}
	return rt, c
}

func ptr32(n int32) *int32 { return &n }

func meta(ns, name string, generation int64) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, Generation: generation}
}

// template is a pod template carrying the restart annotation value
// ("" for none) next to an unrelated annotation.
func template(value string) corev1.PodTemplateSpec {
	ann := map[string]string{"keep": "me"}
	if value != "" {
		ann[workloadAnnotation] = value
	}
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: ann}}
}

func deployment(ns, name, value string, replicas *int32, gen int64, s appsv1.DeploymentStatus) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: meta(ns, name, gen), Spec: appsv1.DeploymentSpec{Replicas: replicas, Template: template(value)}, Status: s}
}

func daemonSet(ns, name, value string, gen int64, s appsv1.DaemonSetStatus) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{ObjectMeta: meta(ns, name, gen), Spec: appsv1.DaemonSetSpec{Template: template(value)}, Status: s}
}

func statefulSet(ns, name, value string, replicas *int32, gen int64, s appsv1.StatefulSetStatus) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{ObjectMeta: meta(ns, name, gen), Spec: appsv1.StatefulSetSpec{Replicas: replicas, Template: template(value)}, Status: s}
}

// Rolled-out statuses for 3 replicas (or nodes), generation 1.
var (
	depDone = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 3}
	dsDone  = appsv1.DaemonSetStatus{ObservedGeneration: 1, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 3}
	stsDone = appsv1.StatefulSetStatus{ObservedGeneration: 1, UpdatedReplicas: 3, ReadyReplicas: 3, CurrentRevision: "r1", UpdateRevision: "r1"}
)

func wlNames(ws []observed) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.String())
	}
	return out
}

func TestListWorkloads(t *testing.T) {
	objs := []runtime.Object{
		deployment("b", "api", "", nil, 1, depDone),
		deployment("a", "web", "", nil, 1, depDone),
		deployment("skip", "x", "", nil, 1, depDone),
		daemonSet("kube-system", "proxy", "", 1, dsDone),
		daemonSet("skip", "y", "", 1, dsDone),
		statefulSet("b", "db", "", nil, 1, stsDone),
	}
	all := []string{"Deployment", "DaemonSet", "StatefulSet"}
	tests := []struct {
		name                      string
		namespaces, exclude, kind []string
		failVerb, failResource    string
		want                      []string
		wantErr                   string
	}{
		{name: "all namespaces, sorted, excluded left out", exclude: []string{"skip"}, kind: all,
			want: []string{"DaemonSet kube-system/proxy", "Deployment a/web", "Deployment b/api", "StatefulSet b/db"}},
		{name: "all namespaces, nothing excluded", kind: all,
			want: []string{"DaemonSet kube-system/proxy", "DaemonSet skip/y", "Deployment a/web", "Deployment b/api", "Deployment skip/x", "StatefulSet b/db"}},
		{name: "named namespaces and kinds, in any order", namespaces: []string{"b", "a"}, kind: []string{"StatefulSet", "Deployment"},
			want: []string{"Deployment a/web", "Deployment b/api", "StatefulSet b/db"}},
		{name: "one kind", kind: []string{"DaemonSet"}, exclude: []string{"a"},
			want: []string{"DaemonSet kube-system/proxy", "DaemonSet skip/y"}},
		{name: "named namespace excluded", namespaces: []string{"b"}, exclude: []string{"b"}, kind: all},
		{name: "namespace without workloads", namespaces: []string{"empty"}, kind: all},
		{name: "unknown kind selects nothing", kind: []string{"CronJob"}},
		{name: "deployments fail", kind: all, failVerb: "list", failResource: "deployments", wantErr: "list deployments: boom"},
		{name: "daemonsets fail", kind: all, failVerb: "list", failResource: "daemonsets", wantErr: "list daemonsets: boom"},
		{name: "statefulsets fail", kind: all, failVerb: "list", failResource: "statefulsets", wantErr: "list statefulsets: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, c := kubeRuntime(t, objs...)
			if tt.failVerb != "" {
				failOn(c, tt.failVerb, tt.failResource)
			}
			ws, err := rt.listWorkloads(context.Background(), tt.namespaces, tt.exclude, tt.kind)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr || !errors.Is(err, errBoom) {
					t.Fatalf("err = %v, want %q wrapping errBoom", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := wlNames(ws); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// templateAnnotations reads back the pod template annotations of w.
func templateAnnotations(t *testing.T, c *fake.Clientset, w workload) map[string]string {
	t.Helper()
	obj, err := c.Tracker().Get(appsv1.SchemeGroupVersion.WithResource(strings.ToLower(w.kind)+"s"), w.namespace, w.name)
	if err != nil {
		t.Fatalf("get %s: %v", w, err)
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.Spec.Template.Annotations
	case *appsv1.DaemonSet:
		return o.Spec.Template.Annotations
	case *appsv1.StatefulSet:
		return o.Spec.Template.Annotations
	}
	t.Fatalf("get %s: unexpected %T", w, obj)
	return nil
}

func TestRestartWorkload(t *testing.T) {
	tests := []struct {
		name     string
		obj      runtime.Object // nil: the workload does not exist
		w        workload
		failPath string // resource whose patch fails
		wantErr  string
	}{
		{name: "deployment", obj: deployment("a", "web", "", nil, 1, depDone), w: workload{"Deployment", "a", "web"}},
		{name: "daemonset", obj: daemonSet("a", "agent", "", 1, dsDone), w: workload{"DaemonSet", "a", "agent"}},
		{name: "statefulset", obj: statefulSet("a", "db", "", nil, 1, stsDone), w: workload{"StatefulSet", "a", "db"}},
		{name: "earlier value replaced", obj: deployment("a", "web", "old", nil, 1, depDone), w: workload{"Deployment", "a", "web"}},
		{name: "missing deployment", w: workload{"Deployment", "a", "gone"}},
		{name: "missing daemonset", w: workload{"DaemonSet", "a", "gone"}},
		{name: "missing statefulset", w: workload{"StatefulSet", "a", "gone"}},
		{name: "patch fails", obj: daemonSet("a", "agent", "", 1, dsDone), w: workload{"DaemonSet", "a", "agent"},
			failPath: "daemonsets", wantErr: "restart DaemonSet a/agent: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, c := objRuntime(t, tt.obj, "patch", tt.failPath)
			err := rt.restartWorkload(context.Background(), tt.w, "v1")
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr || !errors.Is(err, errBoom) {
					t.Fatalf("err = %v, want %q wrapping errBoom", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("restart: %v", err)
			}
			var patches []k8stesting.PatchAction
			for _, a := range c.Actions() {
				if p, ok := a.(k8stesting.PatchAction); ok {
					patches = append(patches, p)
				}
			}
			if len(patches) != 1 || patches[0].GetPatchType() != types.StrategicMergePatchType || patches[0].GetName() != tt.w.name {
				t.Fatalf("want one strategic merge patch of %s, got %v", tt.w.name, patches)
			}
			if tt.obj == nil {
				if n := len(c.Actions()); n != 1 {
					t.Errorf("missing workload: want only the patch, got %d actions", n)
				}
				return
			}
			ann := templateAnnotations(t, c, tt.w)
			if ann[workloadAnnotation] != "v1" || ann["keep"] != "me" {
				t.Errorf("template annotations = %v, want %s=v1 and keep=me", ann, workloadAnnotation)
			}
		})
	}
}

func TestRolledOut(t *testing.T) {
	dep := workload{"Deployment", "a", "web"}
	ds := workload{"DaemonSet", "a", "agent"}
	sts := workload{"StatefulSet", "a", "db"}
	tests := []struct {
		name     string
		obj      runtime.Object // nil: deleted
		w        workload
		failGet  string // resource whose get fails
		wantDone bool
		wantWhy  string
		wantErr  string
	}{
		// Deployment
		{name: "deployment not restarted", obj: deployment("a", "web", "", ptr32(3), 1, depDone), w: dep, wantWhy: "not restarted"},
		{name: "deployment restarted by another run", obj: deployment("a", "web", "v0", ptr32(3), 1, depDone), w: dep, wantWhy: "not restarted"},
		{name: "deployment generation not observed", obj: deployment("a", "web", "v1", ptr32(3), 2, depDone), w: dep, wantWhy: "generation not observed"},
		{name: "deployment not all updated", w: dep, wantWhy: "2/3 updated, 3 total, 3 available",
			obj: deployment("a", "web", "v1", ptr32(3), 1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 3, UpdatedReplicas: 2, AvailableReplicas: 3})},
		{name: "deployment old pods left", w: dep, wantWhy: "3/3 updated, 4 total, 3 available",
			obj: deployment("a", "web", "v1", ptr32(3), 1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 4, UpdatedReplicas: 3, AvailableReplicas: 3})},
		{name: "deployment not all available", w: dep, wantWhy: "3/3 updated, 3 total, 2 available",
			obj: deployment("a", "web", "v1", ptr32(3), 1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 2})},
		{name: "deployment replicas default to 1", w: dep, wantWhy: "0/1 updated, 0 total, 0 available",
			obj: deployment("a", "web", "v1", nil, 1, appsv1.DeploymentStatus{ObservedGeneration: 1})},
		{name: "deployment done", obj: deployment("a", "web", "v1", ptr32(3), 1, depDone), w: dep, wantDone: true},
		{name: "deployment scaled to 0 done", obj: deployment("a", "web", "v1", ptr32(0), 1, appsv1.DeploymentStatus{ObservedGeneration: 1}), w: dep, wantDone: true},
		{name: "deployment deleted", w: dep, wantDone: true},
		{name: "deployment get fails", obj: deployment("a", "web", "v1", ptr32(3), 1, depDone), w: dep, failGet: "deployments", wantWhy: "boom"},
		// DaemonSet
		{name: "daemonset not restarted", obj: daemonSet("a", "agent", "", 1, dsDone), w: ds, wantWhy: "not restarted"},
		{name: "daemonset generation not observed", obj: daemonSet("a", "agent", "v1", 2, dsDone), w: ds, wantWhy: "3/3 updated, 3 available"},
		{name: "daemonset not all updated", w: ds, wantWhy: "2/3 updated, 3 available",
			obj: daemonSet("a", "agent", "v1", 1, appsv1.DaemonSetStatus{ObservedGeneration: 1, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 2, NumberAvailable: 3})},
		{name: "daemonset not all available", w: ds, wantWhy: "3/3 updated, 2 available",
			obj: daemonSet("a", "agent", "v1", 1, appsv1.DaemonSetStatus{ObservedGeneration: 1, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 2})},
		{name: "daemonset done", obj: daemonSet("a", "agent", "v1", 1, dsDone), w: ds, wantDone: true},
		{name: "daemonset on no nodes done", obj: daemonSet("a", "agent", "v1", 1, appsv1.DaemonSetStatus{ObservedGeneration: 1}), w: ds, wantDone: true},
		{name: "daemonset deleted", w: ds, wantDone: true},
		{name: "daemonset get fails", obj: daemonSet("a", "agent", "v1", 1, dsDone), w: ds, failGet: "daemonsets", wantWhy: "boom"},
		// StatefulSet
		{name: "statefulset not restarted", obj: statefulSet("a", "db", "", ptr32(3), 1, stsDone), w: sts, wantWhy: "not restarted"},
		{name: "statefulset generation not observed", obj: statefulSet("a", "db", "v1", ptr32(3), 2, stsDone), w: sts, wantWhy: "3/3 updated, 3 ready"},
		{name: "statefulset revision not current", w: sts, wantWhy: "3/3 updated, 3 ready",
			obj: statefulSet("a", "db", "v1", ptr32(3), 1, appsv1.StatefulSetStatus{ObservedGeneration: 1, UpdatedReplicas: 3, ReadyReplicas: 3, CurrentRevision: "r1", UpdateRevision: "r2"})},
		{name: "statefulset not all updated", w: sts, wantWhy: "2/3 updated, 3 ready",
			obj: statefulSet("a", "db", "v1", ptr32(3), 1, appsv1.StatefulSetStatus{ObservedGeneration: 1, UpdatedReplicas: 2, ReadyReplicas: 3, CurrentRevision: "r1", UpdateRevision: "r1"})},
		{name: "statefulset not all ready", w: sts, wantWhy: "3/3 updated, 2 ready",
			obj: statefulSet("a", "db", "v1", ptr32(3), 1, appsv1.StatefulSetStatus{ObservedGeneration: 1, UpdatedReplicas: 3, ReadyReplicas: 2, CurrentRevision: "r1", UpdateRevision: "r1"})},
		{name: "statefulset replicas default to 1", w: sts, wantWhy: "0/1 updated, 0 ready",
			obj: statefulSet("a", "db", "v1", nil, 1, appsv1.StatefulSetStatus{ObservedGeneration: 1})},
		{name: "statefulset done", obj: statefulSet("a", "db", "v1", ptr32(3), 1, stsDone), w: sts, wantDone: true},
		{name: "statefulset deleted", w: sts, wantDone: true},
		{name: "statefulset get fails", obj: statefulSet("a", "db", "v1", ptr32(3), 1, stsDone), w: sts, failGet: "statefulsets", wantWhy: "boom"},
		// other
		{name: "unknown kind", w: workload{"CronJob", "a", "job"}, wantErr: "unknown kind CronJob"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, _ := objRuntime(t, tt.obj, "get", tt.failGet)
			done, why, err := rt.rolledOut(context.Background(), tt.w, "v1")
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("rolledOut: %v", err)
			}
			if done != tt.wantDone || why != tt.wantWhy {
				t.Errorf("rolledOut = (%v, %q), want (%v, %q)", done, why, tt.wantDone, tt.wantWhy)
			}
		})
	}
}

func TestRollWorkloads(t *testing.T) {
	// Statuses are already complete, so each rollout is done as soon as the
	// patch has put the annotation on the template.
	objs := func() []runtime.Object {
		return []runtime.Object{
			deployment("a", "web", "", ptr32(3), 1, depDone),
			daemonSet("a", "agent", "", 1, dsDone),
			statefulSet("b", "db", "", ptr32(3), 1, stsDone),
		}
	}
	web, agent, db := workload{"Deployment", "a", "web"}, workload{"DaemonSet", "a", "agent"}, workload{"StatefulSet", "b", "db"}
	gone := workload{"Deployment", "a", "gone"}
	stuckDB := func(t *testing.T, c *fake.Clientset) {
		stuck := statefulSet("b", "db", "", ptr32(3), 1, appsv1.StatefulSetStatus{ObservedGeneration: 1, UpdatedReplicas: 1, ReadyReplicas: 3, CurrentRevision: "r1", UpdateRevision: "r2"})
		if err := c.Tracker().Update(appsv1.SchemeGroupVersion.WithResource("statefulsets"), stuck, "b"); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name          string
		ws            []workload
		limit         int
		timeout       time.Duration // each workload's
		healthyBefore bool
		setup         func(t *testing.T, c *fake.Clientset)
		wantErr       string     // the whole error, "" for none
		rolled        []workload // reported rolled out
		late          []string   // whyTimedOut findings, as shown
		regressed     []string
	}{
		{name: "all done", ws: []workload{web, agent, db}, limit: 2, timeout: 10 * time.Second,
			rolled: []workload{agent, web, db}},
		{name: "limit below 1 is one at a time", ws: []workload{web, agent, db}, limit: 0, timeout: 10 * time.Second,
			rolled: []workload{agent, web, db}},
		{name: "deleted workload is done", ws: []workload{gone, web}, limit: 2, timeout: 10 * time.Second,
			rolled: []workload{gone, web}},
		{name: "patch fails", ws: []workload{web, agent, db}, limit: 3, timeout: 10 * time.Second,
			setup:   func(t *testing.T, c *fake.Clientset) { failOn(c, "patch", "daemonsets") },
			wantErr: "1 of 3 rollouts failed:\n  - restart DaemonSet a/agent: boom",
			rolled:  []workload{web, db}},
		{name: "timeout of a workload unavailable before the run is a finding", ws: []workload{web, db}, limit: 2, timeout: 300 * time.Millisecond,
			setup:  stuckDB,
			rolled: []workload{web},
			late:   []string{"StatefulSet b/db: not all available before the run, restarted, rollout not finished within 300ms (last: 1/3 updated, 3 ready): check it before narrowing trust: kubectl -n b rollout status statefulset/db"}},
		{name: "timeout of a healthy workload is a regression, beside a failed patch", ws: []workload{web, agent, db}, limit: 3, timeout: 300 * time.Millisecond, healthyBefore: true,
			setup: func(t *testing.T, c *fake.Clientset) {
				failOn(c, "patch", "daemonsets")
				stuckDB(t, c)
			},
			wantErr:   "1 of 3 rollouts failed:\n  - restart DaemonSet a/agent: boom",
			rolled:    []workload{web},
			regressed: []string{"StatefulSet b/db within 300ms (last: 1/3 updated, 3 ready)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, c := kubeRuntime(t, objs()...)
			if tt.setup != nil {
				tt.setup(t, c)
			}
			var mu sync.Mutex
			var lines []string
			rt.Progress = func(msg string) {
				mu.Lock()
				defer mu.Unlock()
				lines = append(lines, msg)
			}
			var rs []rollout
			for _, w := range tt.ws {
				rs = append(rs, rollout{Kind: w.kind, Namespace: w.namespace, Name: w.name, Wait: true, HealthyBefore: tt.healthyBefore, Timeout: tt.timeout})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			late, regressed, err := rt.rollWorkloads(ctx, rs, "v1", tt.limit, restartAndWait)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("rollWorkloads: %v", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			shown := func(fs []workloadFinding) []string {
				var out []string
				for _, f := range fs {
					out = append(out, f.String())
				}
				return out
			}
			if got := shown(late); !reflect.DeepEqual(got, tt.late) {
				t.Errorf("late = %q, want %q", got, tt.late)
			}
			var gotRegressed []string
			for _, f := range regressed {
				gotRegressed = append(gotRegressed, f.workload().String()+" "+f.Detail)
			}
			if !reflect.DeepEqual(gotRegressed, tt.regressed) {
				t.Errorf("regressed = %q, want %q", gotRegressed, tt.regressed)
			}
			// One progress line per finished workload, counting up to len(ws).
			var rolled []string
			for i, l := range lines {
				if !strings.HasSuffix(l, fmt.Sprintf(" (%d/%d)", i+1, len(tt.ws))) {
					t.Errorf("progress line %q, want it to end (%d/%d)", l, i+1, len(tt.ws))
				}
				if name, ok := strings.CutPrefix(l, "rolled out "); ok {
					rolled = append(rolled, strings.TrimSuffix(name, fmt.Sprintf(" (%d/%d)", i+1, len(tt.ws))))
				}
			}
			var want []string
			for _, w := range tt.rolled {
				want = append(want, w.String())
			}
			sort.Strings(rolled)
			sort.Strings(want)
			if !reflect.DeepEqual(rolled, want) {
				t.Errorf("rolled out %q, want %q", rolled, want)
			}
			for _, w := range tt.rolled {
				if w == gone {
					if _, err := c.Tracker().Get(appsv1.SchemeGroupVersion.WithResource("deployments"), w.namespace, w.name); err == nil {
						t.Errorf("%s: restart created it", w)
					}
					continue
				}
				if ann := templateAnnotations(t, c, w); ann[workloadAnnotation] != "v1" {
					t.Errorf("%s: template annotations %v, want %s=v1", w, ann, workloadAnnotation)
				}
			}
		})
	}
}

// A rollback ends once the controller-managers have republished the old
// CA alone: until then a new start would refuse the cluster.
func TestClusterHealthyRevertGateWaitsForOldCAPublished(t *testing.T) {
	ctx := context.Background()
	rt, _, st := testRuntime(t)
	pair := st.cas[CACluster]
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kube-root-ca.crt"},
		Data: map[string]string{"ca.crt": string(pair.OldCert) + string(pair.NewCert)}}
	c := fake.NewClientset(ns, cm)
	rt.Kube = c
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err := (ClusterHealthy{}).RevertGate(short, rt, Target{})
	if err == nil || !strings.Contains(err.Error(), "old CA again") {
		t.Fatalf("RevertGate with old+new still published = %v, want it to wait", err)
	}
	cm.Data["ca.crt"] = string(pair.OldCert)
	if _, err := c.CoreV1().ConfigMaps("default").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := (ClusterHealthy{}).RevertGate(ctx, rt, Target{}); err != nil {
		t.Fatalf("RevertGate with the old CA published = %v", err)
	}
	// A run that made no CA has nothing to wait for.
	delete(st.cas, CACluster)
	if err := (ClusterHealthy{}).RevertGate(short, rt, Target{}); err != nil {
		t.Fatalf("RevertGate without CA material = %v", err)
	}
}
