package steps

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubeca/rotate/pki"
)

// caBundleRef is one caBundle field in an API object.
type caBundleRef struct {
	gvr  schema.GroupVersionResource
	kind string
	name string
	// webhook index for webhook configurations, -1 otherwise
	index int
	value string // base64 as stored
}

func (r caBundleRef) id() string {
	if r.index >= 0 {
		return fmt.Sprintf("%s/%s/webhooks[%d]", r.kind, r.name, r.index)
	}
	return r.kind + "/" + r.name
}

func (rt *Runtime) caBundleRefs(ctx context.Context) ([]caBundleRef, error) {
	var refs []caBundleRef
	list := func(gvr schema.GroupVersionResource) ([]unstructured.Unstructured, error) {
		l, err := rt.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", gvr.Resource, err)
		}
		return l.Items, nil
	}
	items, err := list(gvrAPIService)
	if err != nil {
		return nil, err
	}
	for _, u := range items {
		if v, ok, _ := unstructured.NestedString(u.Object, "spec", "caBundle"); ok && v != "" {
			refs = append(refs, caBundleRef{gvr: gvrAPIService, kind: "APIService", name: u.GetName(), index: -1, value: v})
		}
	}
	for _, w := range []struct {
		gvr  schema.GroupVersionResource
		kind string
	}{{gvrValidating, "ValidatingWebhookConfiguration"}, {gvrMutating, "MutatingWebhookConfiguration"}} {
		items, err := list(w.gvr)
		if err != nil {
			return nil, err
		}
		for _, u := range items {
			hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
			for i, h := range hooks {
				m, _ := h.(map[string]any)
				if v, ok, _ := unstructured.NestedString(m, "clientConfig", "caBundle"); ok && v != "" {
					refs = append(refs, caBundleRef{gvr: w.gvr, kind: w.kind, name: u.GetName(), index: i, value: v})
				}
			}
		}
	}
	items, err = list(gvrCRD)
	if err != nil {
		return nil, err
	}
	for _, u := range items {
		if v, ok, _ := unstructured.NestedString(u.Object, "spec", "conversion", "webhook", "clientConfig", "caBundle"); ok && v != "" {
			refs = append(refs, caBundleRef{gvr: gvrCRD, kind: "CustomResourceDefinition", name: u.GetName(), index: -1, value: v})
		}
	}
	return refs, nil
}

// widenedBundle returns the bundle with new added wherever old is in it,
// and whether that changes it.
func widenedBundle(b64 string, pairs []CAPair) (string, bool, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", false, err
	}
	out := raw
	for _, p := range pairs {
		if !bundleHas(string(out), p.OldCert) || bundleHas(string(out), p.NewCert) {
			continue
		}
		nc, err := pki.ParseCertsPEM(p.NewCert)
		if err != nil {
			return "", false, err
		}
		if out, err = pki.BundleAdd(out, nc...); err != nil {
			return "", false, err
		}
	}
	if string(out) == string(raw) {
		return b64, false, nil
	}
	return base64.StdEncoding.EncodeToString(out), true, nil
}

// WebhookCABundles adds the new CA to every caBundle (webhooks,
// APIServices, CRD conversion) that holds the old one, so servers whose
// certificates a user re-issues from the new CA stay trusted.
type WebhookCABundles struct{}

func (WebhookCABundles) Name() string { return "webhook-cabundles" }

func (WebhookCABundles) pending(ctx context.Context, rt *Runtime) ([]caBundleRef, []string, error) {
	cas, err := rt.runCAs(ctx)
	if err != nil {
		return nil, nil, err
	}
	cl, fp := cas.cluster, cas.frontProxy
	refs, err := rt.caBundleRefs(ctx)
	if err != nil {
		return nil, nil, err
	}
	var todo []caBundleRef
	var values []string
	for _, r := range refs {
		v, changed, err := widenedBundle(r.value, []CAPair{cl, fp})
		if err != nil {
			return nil, nil, fmt.Errorf("%s caBundle: %w", r.id(), err)
		}
		if changed {
			todo = append(todo, r)
			values = append(values, v)
		}
	}
	return todo, values, nil
}

func (s WebhookCABundles) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	todo, _, err := s.pending(ctx, rt)
	return len(todo) == 0, err
}

func (s WebhookCABundles) Apply(ctx context.Context, rt *Runtime, t Target) error {
	todo, values, err := s.pending(ctx, rt)
	if err != nil {
		return err
	}
	if len(todo) == 0 {
		rt.Printf("no caBundle holds the old CAs: nothing to do")
	}
	for i, r := range todo {
		if err := rt.backupAPIData(ctx, "cabundle/"+r.id(), r.value); err != nil {
			return err
		}
		if err := rt.setCABundle(ctx, r, values[i]); err != nil {
			return err
		}
		rt.Printf("extended caBundle of %s", r.id())
	}
	return nil
}

func (rt *Runtime) setCABundle(ctx context.Context, r caBundleRef, value string) error {
	var patch string
	switch {
	case r.kind == "APIService":
		patch = `[{"op":"replace","path":"/spec/caBundle","value":` + strconv.Quote(value) + `}]`
	case r.kind == "CustomResourceDefinition":
		patch = `[{"op":"replace","path":"/spec/conversion/webhook/clientConfig/caBundle","value":` + strconv.Quote(value) + `}]`
	default:
		patch = fmt.Sprintf(`[{"op":"replace","path":"/webhooks/%d/clientConfig/caBundle","value":%s}]`, r.index, strconv.Quote(value))
	}
	if _, err := rt.Dynamic.Resource(r.gvr).Patch(ctx, r.name, "application/json-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch caBundle of %s: %w", r.id(), err)
	}
	return nil
}

func (WebhookCABundles) Gate(context.Context, *Runtime, Target) error { return nil }

func (WebhookCABundles) Revert(ctx context.Context, rt *Runtime, t Target) error {
	refs, err := rt.caBundleRefs(ctx)
	if err != nil {
		return err
	}
	for _, r := range refs {
		var old string
		ok, err := rt.loadAPIBackup(ctx, "cabundle/"+r.id(), &old)
		if err != nil {
			return err
		}
		if ok && old != r.value {
			if err := rt.setCABundle(ctx, r, old); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s WebhookCABundles) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	todo, _, err := s.pending(ctx, rt)
	if err != nil {
		return nil, err
	}
	if len(todo) == 0 {
		return []string{"no caBundle holds the old CAs: nothing to change"}, nil
	}
	var out []string
	for _, r := range todo {
		out = append(out, "add the new CA to the caBundle of "+r.id())
	}
	return out, nil
}

// oldOnlyBundles lists caBundles that trust an old CA but not its successor.
func (rt *Runtime) oldOnlyBundles(ctx context.Context) ([]string, error) {
	cas, err := rt.runCAs(ctx)
	if err != nil {
		return nil, err
	}
	cl, fp := cas.cluster, cas.frontProxy
	refs, err := rt.caBundleRefs(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range refs {
		raw, _ := base64.StdEncoding.DecodeString(r.value)
		for _, p := range []CAPair{cl, fp} {
			if bundleHas(string(raw), p.OldCert) && !bundleHas(string(raw), p.NewCert) {
				out = append(out, fmt.Sprintf("%s caBundle trusts the old %s CA only", r.id(), p.Name))
			}
		}
	}
	return out, nil
}
