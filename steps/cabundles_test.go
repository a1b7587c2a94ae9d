package steps

import (
	"context"
	"encoding/base64"
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/kubeca/rotate/pki"
)

// TestCABundlesWidenedAndNarrowed walks webhook-cabundles and
// webhook-cabundles-narrowed forward and back on every kind of caBundle:
// widening adds the new CA where the old one is, narrowing drops the old
// one where the new one is too and leaves (and names) one that trusts the
// old CA alone, each is idempotent, and the reverts restore each value.
func TestCABundlesWidenedAndNarrowed(t *testing.T) {
	ctx := context.Background()
	rt, _, st := testRuntime(t)
	var progress []string
	rt.Progress = func(m string) { progress = append(progress, m) }
	cl, fp := st.cas[CACluster], st.cas[CAFrontProxy]
	other, err := pki.NewCA(pki.CAOptions{CommonName: "cert-manager-ca"})
	if err != nil {
		t.Fatal(err)
	}
	b64 := func(pems ...[]byte) string {
		var all []byte
		for _, p := range pems {
			all = append(all, p...)
		}
		return base64.StdEncoding.EncodeToString(all)
	}
	obj := func(apiVersion, kind, name string, rest map[string]any) *unstructured.Unstructured {
		o := map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": map[string]any{"name": name}}
		for k, v := range rest {
			o[k] = v
		}
		return &unstructured.Unstructured{Object: o}
	}
	hook := func(name, ca string) any {
		return map[string]any{"name": name, "clientConfig": map[string]any{"caBundle": ca}}
	}
	rt.Dynamic = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		gvrAPIService: "APIServiceList", gvrValidating: "ValidatingWebhookConfigurationList",
		gvrMutating: "MutatingWebhookConfigurationList", gvrCRD: "CustomResourceDefinitionList",
	},
		obj("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "policy", map[string]any{
			"webhooks": []any{hook("a.policy", b64(other.CertPEM)), hook("b.policy", b64(cl.OldCert))}}),
		obj("apiregistration.k8s.io/v1", "APIService", "v1beta1.metrics.k8s.io", map[string]any{
			"spec": map[string]any{"caBundle": b64(fp.OldCert, other.CertPEM)}}),
		obj("apiextensions.k8s.io/v1", "CustomResourceDefinition", "widgets.example.com", map[string]any{
			"spec": map[string]any{"conversion": map[string]any{"webhook": map[string]any{"clientConfig": map[string]any{"caBundle": b64(cl.OldCert)}}}}}),
	)
	// values reads every caBundle as the set of CA common names in it.
	values := func() map[string]string {
		refs, err := rt.caBundleRefs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, r := range refs {
			raw, _ := base64.StdEncoding.DecodeString(r.value)
			certs, err := pki.ParseCertsPEM(raw)
			if err != nil {
				t.Fatalf("%s: %v", r.id(), err)
			}
			var cns []string
			for _, c := range certs {
				cns = append(cns, c.Subject.CommonName)
			}
			out[r.id()] = strings.Join(cns, "+")
		}
		return out
	}
	step := func(s Step, wantBefore bool) {
		t.Helper()
		if done, err := s.Check(ctx, rt, ClusterTarget); err != nil || done != wantBefore {
			t.Fatalf("%s: Check before Apply = %v, %v; want %v", s.Name(), done, err, wantBefore)
		}
		for range 2 {
			if err := s.Apply(ctx, rt, ClusterTarget); err != nil {
				t.Fatalf("%s: %v", s.Name(), err)
			}
		}
		if done, err := s.Check(ctx, rt, ClusterTarget); err != nil || !done {
			t.Fatalf("%s: Check after Apply = %v, %v", s.Name(), done, err)
		}
	}
	want := func(when string, w map[string]string) {
		t.Helper()
		if got := values(); !reflect.DeepEqual(got, w) {
			t.Fatalf("%s:\n got %v\nwant %v", when, got, w)
		}
	}
	const (
		hookA = "ValidatingWebhookConfiguration/policy/webhooks[0]"
		hookB = "ValidatingWebhookConfiguration/policy/webhooks[1]"
		apis  = "APIService/v1beta1.metrics.k8s.io"
		crd   = "CustomResourceDefinition/widgets.example.com"
	)
	before := map[string]string{hookA: "cert-manager-ca", hookB: "kubernetes", apis: "front-proxy-ca+cert-manager-ca", crd: "kubernetes"}
	want("before", before)

	widen, narrow := WebhookCABundles(), WebhookCABundlesNarrowed()
	if done, err := narrow.Check(ctx, rt, ClusterTarget); err != nil || !done {
		t.Fatalf("narrow before widening: Check = %v, %v", done, err)
	}
	step(widen, false)
	widened := map[string]string{hookA: "cert-manager-ca", hookB: "kubernetes+kubernetes-new",
		apis: "front-proxy-ca+cert-manager-ca+front-proxy-ca-new", crd: "kubernetes+kubernetes-new"}
	want("widened", widened)

	// A CRD whose conversion webhook came after widening, still on the
	// old CA alone: narrowing must not lock the apiserver out of it.
	late := obj("apiextensions.k8s.io/v1", "CustomResourceDefinition", "late.example.com", map[string]any{
		"spec": map[string]any{"conversion": map[string]any{"webhook": map[string]any{"clientConfig": map[string]any{"caBundle": b64(cl.OldCert)}}}}})
	if _, err := rt.Dynamic.Resource(gvrCRD).Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	widened["CustomResourceDefinition/late.example.com"] = "kubernetes"
	lines, err := narrow.(Describer).Describe(ctx, rt, ClusterTarget)
	if err != nil || len(lines) != 3 || lines[0] != "remove the old CA from the caBundle of "+apis {
		t.Errorf("narrow Describe = %q, %v", lines, err)
	}
	progress = nil
	step(narrow, false)
	want("narrowed", map[string]string{hookA: "cert-manager-ca", hookB: "kubernetes-new", apis: "cert-manager-ca+front-proxy-ca-new",
		crd: "kubernetes-new", "CustomResourceDefinition/late.example.com": "kubernetes"})
	if p := strings.Join(progress, "\n"); !strings.Contains(p, "left as is: CustomResourceDefinition/late.example.com caBundle trusts the old cluster CA only") {
		t.Errorf("narrow progress does not name the old-only caBundle:\n%s", p)
	}

	for range 2 {
		if err := narrow.Revert(ctx, rt, ClusterTarget); err != nil {
			t.Fatal(err)
		}
	}
	want("narrowing reverted", widened)
	if err := widen.Revert(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	before["CustomResourceDefinition/late.example.com"] = "kubernetes"
	want("widening reverted", before)
}
