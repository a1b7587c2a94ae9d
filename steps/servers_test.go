package steps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"net"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubeca/rotate/pki"
)

// tlsServer serves TLS with is on a local port and returns its address
// and the SNI names it was asked for.
func tlsServer(t *testing.T, is *pki.Issued) (string, *[]string) {
	t.Helper()
	crt, err := tls.X509KeyPair(is.CertPEM, is.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	var snis []string
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{crt},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) { snis = append(snis, h.ServerName); return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return ln.Addr().String(), &snis
}

// TestOldCAServers: every server behind a caBundle is dialed from the
// first control-plane node, a Service at its cluster IP with its DNS name
// as SNI; one presenting an old-CA certificate is listed under each
// caBundle that names it, one that cannot be reached is listed as not
// checked, and one from the new CA is not listed.
func TestOldCAServers(t *testing.T) {
	ctx := context.Background()
	rt, _, st := testRuntime(t)
	newCA, err := rt.newCA(ctx, CACluster)
	if err != nil {
		t.Fatal(err)
	}
	serving := func(ca *pki.CA, cn string) *pki.Issued {
		is, err := pki.Reissue(&x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, pki.ReissueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	oldSrv := serving(oldTestCA(t, st, CACluster), "policy.security.svc")
	oldAddr, oldSNI := tlsServer(t, oldSrv)
	newAddr, _ := tlsServer(t, serving(newCA, "metrics.kube-system.svc"))
	urlAddr, urlSNI := tlsServer(t, serving(oldTestCA(t, st, CAFrontProxy), "hooks.example.com"))
	routes := map[string]string{"10.96.0.50:443": oldAddr, "10.96.0.60:8443": newAddr, "hooks.example.com:9443": urlAddr}
	var via []string
	rt.NodeDial = func(ctx context.Context, node, addr string) (net.Conn, error) {
		via = append(via, node)
		if a, ok := routes[addr]; ok {
			addr = a
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	rt.Kube = fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "security", Name: "policy"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.50"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "metrics"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.60"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "gone", Name: "headless"}, Spec: corev1.ServiceSpec{ClusterIP: "None"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "down", Name: "down"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.70"}},
	)
	cl := b64(st.cas[CACluster].OldCert)
	svc := func(ns, name string, port int64) map[string]any {
		m := map[string]any{"namespace": ns, "name": name}
		if port != 0 {
			m["port"] = port
		}
		return m
	}
	hook := func(name string, cc map[string]any) any {
		cc["caBundle"] = cl
		return map[string]any{"name": name, "clientConfig": cc}
	}
	obj := func(apiVersion, kind, name string, rest map[string]any) *unstructured.Unstructured {
		o := map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": map[string]any{"name": name}}
		for k, v := range rest {
			o[k] = v
		}
		return &unstructured.Unstructured{Object: o}
	}
	rt.Dynamic = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		gvrAPIService: "APIServiceList", gvrValidating: "ValidatingWebhookConfigurationList",
		gvrMutating: "MutatingWebhookConfigurationList", gvrCRD: "CustomResourceDefinitionList",
	},
		obj("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "policy", map[string]any{"webhooks": []any{
			hook("a.policy", map[string]any{"service": svc("security", "policy", 0)}),
			hook("b.policy", map[string]any{"service": svc("security", "policy", 0)}),
			hook("c.policy", map[string]any{"url": "https://hooks.example.com:9443/validate"}),
			hook("d.policy", map[string]any{"service": svc("gone", "headless", 443)}),
			hook("e.policy", map[string]any{"service": svc("down", "down", 443)}),
		}}),
		obj("apiregistration.k8s.io/v1", "APIService", "v1beta1.metrics.k8s.io", map[string]any{
			"spec": map[string]any{"caBundle": cl, "service": svc("kube-system", "metrics", 8443)}}),
	)
	routes["10.96.0.70:443"] = "127.0.0.1:1" // nothing listens there

	got, err := rt.oldCAServers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const fix = ": re-issue it from the new CA (and put the new CA in this caBundle) before resuming"
	want := []string{
		"ValidatingWebhookConfiguration/policy/webhooks[0]: service security/policy:443 presents " + pki.Describe(oldSrv.Cert) + ", issued by the old cluster CA" + fix,
		"ValidatingWebhookConfiguration/policy/webhooks[1]: service security/policy:443 presents " + pki.Describe(oldSrv.Cert) + ", issued by the old cluster CA" + fix,
		"ValidatingWebhookConfiguration/policy/webhooks[2]: hooks.example.com:9443 presents CN=hooks.example.com",
		"ValidatingWebhookConfiguration/policy/webhooks[3]: service gone/headless:443 not checked: the Service has no cluster IP",
		"ValidatingWebhookConfiguration/policy/webhooks[4]: service down/down:443 not checked: ",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("line %d:\n%s\nwant prefix\n%s", i, got[i], want[i])
		}
	}
	if !strings.Contains(got[2], "issued by the old front-proxy CA") {
		t.Errorf("URL server: %s", got[2])
	}
	if !reflect.DeepEqual(*oldSNI, []string{"policy.security.svc"}) || !reflect.DeepEqual(*urlSNI, []string{"hooks.example.com"}) {
		t.Errorf("SNI = %q, %q; want the Service's DNS name, dialed once, and the URL's host", *oldSNI, *urlSNI)
	}
	for _, n := range via {
		if n != "cp1" {
			t.Errorf("dialed from %s, want the first control-plane node", n)
		}
	}

	// Narrowing after widening keeps the old CA where the server still
	// presents a chain from it, and drops it elsewhere.
	var progress []string
	rt.Progress = func(m string) { progress = append(progress, m) }
	if err := WebhookCABundles().Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	narrow := WebhookCABundlesNarrowed()
	if err := narrow.Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	if done, err := narrow.Check(ctx, rt, ClusterTarget); err != nil || !done {
		t.Errorf("Check after narrowing = %v, %v", done, err)
	}
	refs, err := rt.caBundleRefs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	holdsOld := map[string]bool{}
	for _, r := range refs {
		holdsOld[r.id()] = bundleHas(string(mustB64(t, r.value)), st.cas[CACluster].OldCert)
	}
	wantOld := map[string]bool{"APIService/v1beta1.metrics.k8s.io": false,
		"ValidatingWebhookConfiguration/policy/webhooks[0]": true, "ValidatingWebhookConfiguration/policy/webhooks[1]": true,
		"ValidatingWebhookConfiguration/policy/webhooks[2]": true, "ValidatingWebhookConfiguration/policy/webhooks[3]": false,
		"ValidatingWebhookConfiguration/policy/webhooks[4]": false}
	if !reflect.DeepEqual(holdsOld, wantOld) {
		t.Errorf("old CA still in the caBundle: %v\nwant %v", holdsOld, wantOld)
	}
	if p := strings.Join(progress, "\n"); !strings.Contains(p, "kept the old CA in ValidatingWebhookConfiguration/policy/webhooks[0]: service security/policy:443 presents ") {
		t.Errorf("narrowing does not say what it kept:\n%s", p)
	}

	rt.NodeDial = nil
	got, err = rt.oldCAServers(ctx)
	if err != nil || len(got) != 6 || !strings.Contains(got[1], "not checked: no node to dial 10.96.0.50:443 from") {
		t.Errorf("without a node dialer: %q, %v", got, err)
	}
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
