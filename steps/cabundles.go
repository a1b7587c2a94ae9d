package steps

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
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
	// server is where the apiserver sends the requests this caBundle
	// verifies: the service (namespace/name:port) or the URL's host:port.
	server serverRef
}

// serverRef is a webhook or aggregated API server.
type serverRef struct {
	namespace, name string // a Service
	port            int64
	hostPort        string // a URL's host:port instead
}

func (s serverRef) String() string {
	if s.hostPort != "" {
		return s.hostPort
	}
	return fmt.Sprintf("service %s/%s:%d", s.namespace, s.name, s.port)
}

// serverOf reads a clientConfig (or an APIService spec): its service
// (port 443 when unset) or its url.
func serverOf(m map[string]any) serverRef {
	if svc, ok, _ := unstructured.NestedMap(m, "service"); ok {
		r := serverRef{port: 443}
		r.namespace, _, _ = unstructured.NestedString(svc, "namespace")
		r.name, _, _ = unstructured.NestedString(svc, "name")
		if p, ok, _ := unstructured.NestedInt64(svc, "port"); ok {
			r.port = p
		}
		return r
	}
	if raw, ok, _ := unstructured.NestedString(m, "url"); ok {
		if u, err := url.Parse(raw); err == nil {
			port := u.Port()
			if port == "" {
				port = "443"
			}
			return serverRef{hostPort: net.JoinHostPort(u.Hostname(), port)}
		}
	}
	return serverRef{}
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
			spec, _, _ := unstructured.NestedMap(u.Object, "spec")
			refs = append(refs, caBundleRef{gvr: gvrAPIService, kind: "APIService", name: u.GetName(), index: -1, value: v, server: serverOf(spec)})
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
					cc, _, _ := unstructured.NestedMap(m, "clientConfig")
					refs = append(refs, caBundleRef{gvr: w.gvr, kind: w.kind, name: u.GetName(), index: i, value: v, server: serverOf(cc)})
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
			cc, _, _ := unstructured.NestedMap(u.Object, "spec", "conversion", "webhook", "clientConfig")
			refs = append(refs, caBundleRef{gvr: gvrCRD, kind: "CustomResourceDefinition", name: u.GetName(), index: -1, value: v, server: serverOf(cc)})
		}
	}
	return refs, nil
}

// widenedBundle returns the bundle with new added wherever old is in it,
// and whether that changes it.
func widenedBundle(b64 string, pairs []CAPair) (string, bool, error) {
	return editBundle(b64, pairs, widenPEM)
}

// narrowedBundle returns the bundle without the old CA wherever its
// successor is in it too, and whether that changes it. A bundle that holds
// the old CA alone is left as it is: its server has not moved to the new
// CA, and taking the old one out would lock the apiserver out of it.
func narrowedBundle(b64 string, pairs []CAPair) (string, bool, error) {
	return editBundle(b64, pairs, narrowPEM)
}

// widenPEM adds p's new CA to a PEM bundle that holds its old CA.
func widenPEM(bundle []byte, p CAPair) ([]byte, error) {
	if !bundleHas(string(bundle), p.OldCert) || bundleHas(string(bundle), p.NewCert) {
		return bundle, nil
	}
	nc, err := pki.ParseCertsPEM(p.NewCert)
	if err != nil {
		return nil, err
	}
	return pki.BundleAdd(bundle, nc...)
}

// narrowPEM takes p's old CA out of a PEM bundle that holds its new CA too.
func narrowPEM(bundle []byte, p CAPair) ([]byte, error) {
	if !bundleHas(string(bundle), p.OldCert) || !bundleHas(string(bundle), p.NewCert) {
		return bundle, nil
	}
	oc, err := pki.ParseCertsPEM(p.OldCert)
	if err != nil {
		return nil, err
	}
	return pki.BundleRemove(bundle, oc...)
}

// editBundle applies fn for each pair to the base64 bundle b64 and
// returns the result, and whether it differs.
func editBundle(b64 string, pairs []CAPair, fn func(bundle []byte, p CAPair) ([]byte, error)) (string, bool, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", false, err
	}
	out := raw
	for _, p := range pairs {
		if out, err = fn(out, p); err != nil {
			return "", false, err
		}
	}
	if string(out) == string(raw) {
		return b64, false, nil
	}
	return base64.StdEncoding.EncodeToString(out), true, nil
}

// caBundleStep rewrites every caBundle (admission webhooks, APIServices,
// CRD conversion) that change alters, backing each value up first under
// backup+id; Revert puts the backed-up values back.
type caBundleStep struct {
	name    string
	backup  string
	change  func(b64 string, pairs []CAPair) (string, bool, error)
	done    string // progress line for one caBundle, before its id
	plan    string // Describe line for one caBundle, before its id
	nothing string // when no caBundle needs the change
	// narrowing: the old CA stays in a caBundle whose server still
	// presents a chain from it (dialed as verify does, see servers.go),
	// and Apply names it and each caBundle that trusts only an old CA.
	narrowing bool
}

// WebhookCABundles adds the new CA to every caBundle that holds the old
// one, so servers whose certificates a user re-issues from the new CA stay
// trusted.
func WebhookCABundles() Step {
	return &caBundleStep{name: "webhook-cabundles", backup: "cabundle/", change: widenedBundle,
		done: "extended caBundle of ", plan: "add the new CA to the caBundle of ",
		nothing: "no caBundle holds the old CAs"}
}

// WebhookCABundlesNarrowed takes the old CA out of every caBundle that
// holds the new one too, once the control plane has dropped the old CAs.
// A caBundle that trusts only the old CA is left (see narrowedBundle), and
// so is one whose server, dialed as verify dials it (servers.go), still
// presents a chain from the old CA; both are named in the progress, and
// verify's hold report lists them beforehand.
func WebhookCABundlesNarrowed() Step {
	return &caBundleStep{name: "webhook-cabundles-narrowed", backup: "cabundle-narrowed/", change: narrowedBundle,
		done: "narrowed caBundle of ", plan: "remove the old CA from the caBundle of ",
		nothing: "no caBundle holds both the old and the new CAs", narrowing: true}
}

func (s *caBundleStep) Name() string { return s.name }

// pending is every caBundle the step changes, its new value, and (when
// narrowing) what it leaves because the server still presents an old-CA
// chain.
func (s *caBundleStep) pending(ctx context.Context, rt *Runtime) (todo []caBundleRef, values, kept []string, err error) {
	cas, err := rt.runCAs(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	refs, err := rt.caBundleRefs(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	var olds []oldCA
	if s.narrowing {
		if olds, err = rt.oldCAs(ctx); err != nil {
			return nil, nil, nil, err
		}
	}
	probed := map[serverRef]string{} // server → finding, when an old CA issued its chain
	for _, r := range refs {
		v, changed, err := s.change(r.value, []CAPair{cas.cluster, cas.frontProxy})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s caBundle: %w", r.id(), err)
		}
		if !changed {
			continue
		}
		if s.narrowing && r.server != (serverRef{}) {
			f, ok := probed[r.server]
			if !ok {
				if line, old := rt.probeServer(ctx, rt.probeNode(), r.server, olds); old {
					f = line
				}
				probed[r.server] = f
			}
			if f != "" {
				kept = append(kept, fmt.Sprintf("%s: %s %s", r.id(), r.server, f))
				continue
			}
		}
		todo = append(todo, r)
		values = append(values, v)
	}
	return todo, values, kept, nil
}

func (s *caBundleStep) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	todo, _, _, err := s.pending(ctx, rt)
	return len(todo) == 0, err
}

func (s *caBundleStep) Apply(ctx context.Context, rt *Runtime, t Target) error {
	todo, values, kept, err := s.pending(ctx, rt)
	if err != nil {
		return err
	}
	if len(todo) == 0 && len(kept) == 0 {
		rt.Printf("%s: nothing to do", s.nothing)
	}
	for i, r := range todo {
		if err := rt.backupAPIData(ctx, s.backup+r.id(), r.value); err != nil {
			return err
		}
		if err := rt.setCABundle(ctx, r, values[i]); err != nil {
			return err
		}
		rt.Printf("%s%s", s.done, r.id())
	}
	if !s.narrowing {
		return nil
	}
	for _, k := range kept {
		rt.Printf("kept the old CA in %s", k)
	}
	left, err := rt.oldOnlyBundles(ctx)
	if err != nil {
		return err
	}
	for _, l := range left {
		rt.Printf("left as is: %s; the old CA is gone from the control plane, so re-issue its server's certificate from the new CA and put the new CA in it", l)
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

func (s *caBundleStep) Gate(context.Context, *Runtime, Target) error { return nil }

func (s *caBundleStep) Revert(ctx context.Context, rt *Runtime, t Target) error {
	refs, err := rt.caBundleRefs(ctx)
	if err != nil {
		return err
	}
	for _, r := range refs {
		var old string
		ok, err := rt.loadAPIBackup(ctx, s.backup+r.id(), &old)
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

func (s *caBundleStep) Describe(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
	todo, _, kept, err := s.pending(ctx, rt)
	if err != nil {
		return nil, err
	}
	if len(todo) == 0 && len(kept) == 0 {
		return []string{s.nothing + ": nothing to change"}, nil
	}
	var out []string
	for _, r := range todo {
		out = append(out, s.plan+r.id())
	}
	for _, k := range kept {
		out = append(out, "keep the old CA in "+k)
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
