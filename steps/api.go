package steps

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	typedappsv1 "k8s.io/client-go/kubernetes/typed/apps/v1"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/pki"
)

var (
	gvrAPIService = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}
	gvrValidating = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingwebhookconfigurations"}
	gvrMutating   = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"}
	gvrCRD        = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// apiBackupNode is the pseudo node name API object backups are stored
// under, next to the file backups of real nodes.
const apiBackupNode = "api"

// apiService is one APIService and whether it is Available.
type apiService struct {
	name      string
	available bool
}

// apiServices lists every APIService with its availability.
func (rt *Runtime) apiServices(ctx context.Context) ([]apiService, error) {
	list, err := rt.Dynamic.Resource(gvrAPIService).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list APIServices: %w", err)
	}
	var out []apiService
	for _, it := range list.Items {
		conds, _, _ := unstructured.NestedSlice(it.Object, "status", "conditions")
		ok := false
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Available" && m["status"] == "True" {
				ok = true
			}
		}
		out = append(out, apiService{name: it.GetName(), available: ok})
	}
	return out, nil
}

func (rt *Runtime) unavailableAPIServices(ctx context.Context) ([]string, error) {
	all, err := rt.apiServices(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range all {
		if !a.available {
			out = append(out, a.name)
		}
	}
	return out, nil
}

// backupAPIData saves an API object's data (first copy wins, scoped to
// the step) before the step changes it.
func (rt *Runtime) backupAPIData(ctx context.Context, id string, data any) error {
	raw, err := json.Marshal(data)
	if err != nil {
		return err
	}
	b := nodes.Backup{RunID: rt.RunID, Node: apiBackupNode, Path: id, Exists: true, Content: raw, Digest: sha256hex(raw), TakenAt: rt.now()}
	_, err = rt.Store.SaveBackupIfAbsent(ctx, b)
	return err
}

func (rt *Runtime) loadAPIBackup(ctx context.Context, id string, into any) (bool, error) {
	b, ok, err := rt.Store.LoadBackup(ctx, apiBackupNode, id)
	if err != nil || !ok {
		return false, err
	}
	return true, json.Unmarshal(b.Content, into)
}

// bundleIs reports whether a PEM bundle holds exactly the certificates of want.
func bundleIs(have string, want []byte) bool {
	eq, err := pki.BundleEqual([]byte(have), want)
	return err == nil && eq
}

// waitRootCAPublished waits until kube-root-ca.crt in every namespace and
// every legacy service-account token Secret's ca.crt hold exactly want.
func (rt *Runtime) waitRootCAPublished(ctx context.Context, want []byte) error {
	return rt.waitFor(ctx, "kube-root-ca.crt and token Secrets to be republished", func(ctx context.Context) (bool, string, error) {
		ok, why, err := rt.rootCAPublished(ctx, want)
		return ok, why, err
	})
}

func (rt *Runtime) rootCAPublished(ctx context.Context, want []byte) (bool, string, error) {
	nss, err := rt.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, "list namespaces: " + err.Error(), nil
	}
	cms, err := rt.Kube.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=kube-root-ca.crt"})
	if err != nil {
		return false, "list kube-root-ca.crt: " + err.Error(), nil
	}
	have := map[string]string{}
	for _, cm := range cms.Items {
		if cm.Name == "kube-root-ca.crt" {
			have[cm.Namespace] = cm.Data["ca.crt"]
		}
	}
	var stale []string
	for _, ns := range nss.Items {
		if ns.Status.Phase == corev1.NamespaceTerminating {
			continue
		}
		if !bundleIs(have[ns.Name], want) {
			stale = append(stale, ns.Name)
		}
	}
	secrets, err := rt.Kube.CoreV1().Secrets("").List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretTypeServiceAccountToken)})
	if err != nil {
		return false, "list token secrets: " + err.Error(), nil
	}
	for _, s := range secrets.Items {
		// The type is checked again for a server (or fake) that ignores
		// the field selector: another Secret's ca.crt is not the
		// controller-manager's to republish.
		if s.Type == corev1.SecretTypeServiceAccountToken && !bundleIs(string(s.Data["ca.crt"]), want) {
			stale = append(stale, "secret "+s.Namespace+"/"+s.Name)
		}
	}
	if len(stale) > 0 {
		sort.Strings(stale)
		if len(stale) > 5 {
			stale = append(stale[:5], fmt.Sprintf("and %d more", len(stale)-5))
		}
		return false, "not yet republished: " + strings.Join(stale, ", "), nil
	}
	return true, "", nil
}

// workload is one Deployment, DaemonSet or StatefulSet.
type workload struct {
	kind, namespace, name string
}

func (w workload) String() string { return w.kind + " " + w.namespace + "/" + w.name }

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
	list(ctx context.Context, apps typedappsv1.AppsV1Interface, ns string) ([]metav1.ObjectMeta, error)
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
	pending  string // why the rollout is not complete; "" once it is
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

func (k appsKind[E, L, C]) list(ctx context.Context, apps typedappsv1.AppsV1Interface, ns string) ([]metav1.ObjectMeta, error) {
	l, err := k.client(apps, ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", k.plural, err)
	}
	items := k.items(l)
	out := make([]metav1.ObjectMeta, 0, len(items))
	for i := range items {
		out = append(out, *k.view(&items[i]).meta)
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

// replicasOr1 is spec.replicas with the API default of 1.
func replicasOr1(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

func deploymentView(d *appsv1.Deployment) workloadView {
	v := workloadView{meta: &d.ObjectMeta, template: &d.Spec.Template}
	s, want := d.Status, replicasOr1(d.Spec.Replicas)
	if d.Generation > s.ObservedGeneration {
		v.pending = "generation not observed"
	} else if s.UpdatedReplicas < want || s.Replicas > s.UpdatedReplicas || s.AvailableReplicas < want {
		v.pending = fmt.Sprintf("%d/%d updated, %d total, %d available", s.UpdatedReplicas, want, s.Replicas, s.AvailableReplicas)
	}
	return v
}

func daemonSetView(d *appsv1.DaemonSet) workloadView {
	v := workloadView{meta: &d.ObjectMeta, template: &d.Spec.Template}
	s := d.Status
	if d.Generation > s.ObservedGeneration || s.UpdatedNumberScheduled < s.DesiredNumberScheduled || s.NumberAvailable < s.DesiredNumberScheduled {
		v.pending = fmt.Sprintf("%d/%d updated, %d available", s.UpdatedNumberScheduled, s.DesiredNumberScheduled, s.NumberAvailable)
	}
	return v
}

func statefulSetView(d *appsv1.StatefulSet) workloadView {
	v := workloadView{meta: &d.ObjectMeta, template: &d.Spec.Template}
	s, want := d.Status, replicasOr1(d.Spec.Replicas)
	if d.Generation > s.ObservedGeneration || s.UpdateRevision != s.CurrentRevision || s.UpdatedReplicas < want || s.ReadyReplicas < want {
		v.pending = fmt.Sprintf("%d/%d updated, %d ready", s.UpdatedReplicas, want, s.ReadyReplicas)
	}
	return v
}

// listWorkloads returns the selected workloads, sorted. Kinds rotate does
// not know select nothing (the inventory rejects them).
func (rt *Runtime) listWorkloads(ctx context.Context, namespaces, exclude, kinds []string) ([]workload, error) {
	excl := map[string]bool{}
	for _, n := range exclude {
		excl[n] = true
	}
	nsList := namespaces
	if len(nsList) == 0 {
		nsList = []string{metav1.NamespaceAll}
	}
	var out []workload
	for _, ns := range nsList {
		for _, k := range kinds {
			kind, ok := workloadKinds[k]
			if !ok {
				continue
			}
			items, err := kind.list(ctx, rt.Kube.AppsV1(), ns)
			if err != nil {
				return nil, err
			}
			for _, m := range items {
				if !excl[m.Namespace] {
					out = append(out, workload{kind: k, namespace: m.Namespace, name: m.Name})
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// restartWorkload sets the restart annotation on the pod template (a
// rollout restart, with a deterministic value) unless already set. An
// unknown kind is left to rolledOut to report.
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

// rollWorkloads restarts every workload and waits for all, with at most
// limit rollouts in flight.
func (rt *Runtime) rollWorkloads(ctx context.Context, ws []workload, value string, limit int) error {
	if limit < 1 {
		limit = 1
	}
	sem := make(chan struct{}, limit)
	var mu sync.Mutex
	var errs []string
	var wg sync.WaitGroup
	done := 0
	for _, w := range ws {
		sem <- struct{}{}
		wg.Add(1)
		go func(w workload) {
			defer wg.Done()
			defer func() { <-sem }()
			err := rt.restartWorkload(ctx, w, value)
			if err == nil {
				err = rt.waitFor(ctx, "rollout of "+w.String(), func(ctx context.Context) (bool, string, error) {
					return rt.rolledOut(ctx, w, value)
				})
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err.Error())
				return
			}
			done++
			rt.Printf("rolled out %s (%d/%d)", w, done, len(ws))
		}(w)
	}
	wg.Wait()
	if len(errs) > 0 {
		sort.Strings(errs)
		return fmt.Errorf("%d of %d rollouts failed:\n  - %s", len(errs), len(ws), strings.Join(errs, "\n  - "))
	}
	return nil
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
