package steps

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

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

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
