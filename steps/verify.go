package steps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
)

// KeyHoldReport is the value the verify step stores: what still presents
// or trusts only the old CAs, for the operator to review before narrowing.
const KeyHoldReport = "report/hold"

// HoldReport is the verify phase's finding.
type HoldReport struct {
	CheckedAt time.Time `json:"checkedAt"`
	// Verified lists what was proven.
	Verified []string `json:"verified"`
	// Attention lists what may still present or trust only the old CAs;
	// narrowing trust will break these unless they are handled.
	Attention []string `json:"attention"`
}

// Verify proves the cluster runs on the new CAs while still trusting both,
// and lists what the operator must look at before trust narrows.
type Verify struct{}

func (Verify) Name() string { return "verify" }

func (Verify) Check(context.Context, *Runtime, Target) (bool, error) { return false, nil }
func (Verify) Gate(context.Context, *Runtime, Target) error          { return nil }
func (Verify) Revert(context.Context, *Runtime, Target) error        { return nil }

func (Verify) Apply(ctx context.Context, rt *Runtime, t Target) error {
	rep := HoldReport{CheckedAt: rt.now().UTC()}
	var problems []string
	cl, fp, b, _, err := rt.caFiles(ctx)
	if err != nil {
		return err
	}
	newCA, err := pki.ParseCertsPEM(cl.NewCert)
	if err != nil {
		return err
	}
	oldCAs, err := pki.ParseCertsPEM(cl.OldCert)
	if err != nil {
		return err
	}
	oldFP, err := pki.ParseCertsPEM(fp.OldCert)
	if err != nil {
		return err
	}

	// 1. Every apiserver serves a certificate from the new CA and accepts a
	// client certificate from it.
	crt, _, _ := rt.Store.Value(ctx, keyRotateAdminCert)
	key, _, _ := rt.Store.Value(ctx, keyRotateAdminKey)
	onlyNew, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return fmt.Errorf("rotate's client certificate: %w", err)
	}
	for _, n := range rt.Config.ControlPlane {
		addr := rt.Config.Address(n)
		leaf, err := rt.servingCert(ctx, addr)
		if err != nil {
			problems = append(problems, fmt.Sprintf("apiserver %s: %v", n, err))
			continue
		}
		if !pki.IssuedBy(leaf, newCA[0]) {
			problems = append(problems, fmt.Sprintf("apiserver %s serves %s, not issued by the new CA", n, pki.Describe(leaf)))
		}
		if err := rt.getWithCert(ctx, addr, onlyNew); err != nil {
			problems = append(problems, fmt.Sprintf("apiserver %s rejects a client certificate from the new CA: %v", n, err))
		}
	}
	rep.Verified = append(rep.Verified, "every apiserver serves a certificate from the new CA and accepts client certificates from it")

	// 2. Every kubelet accepts the apiserver's new kubelet-client certificate
	// (apiserver → kubelet proxy) and runs with a new-CA client certificate.
	for _, n := range append(append([]string{}, rt.Config.ControlPlane...), rt.Config.Workers...) {
		res := rt.Kube.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes/" + n + "/proxy/healthz").Do(ctx)
		if err := res.Error(); err != nil {
			problems = append(problems, fmt.Sprintf("apiserver → kubelet %s: %v", n, err))
		}
		r, err := rt.node(ctx, Target{Node: n})
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		p := rt.Config.kubeletPKI(kubeletClientLink)
		raw, err := r.ReadFile(ctx, p)
		if errors.Is(err, fs.ErrNotExist) {
			raw, err = r.ReadFile(ctx, rt.Config.kubeDir(kubeconfigKubelet))
			if err == nil {
				raw, _, _, _, err = edit.KubeconfigClientCert(raw, "")
			}
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("kubelet client certificate on %s: %v", n, err))
			continue
		}
		if c, _, err := pki.ParseKubeletPEM(raw); err == nil && !pki.IssuedBy(c, newCA[0]) {
			problems = append(problems, fmt.Sprintf("kubelet on %s presents %s, not from the new CA", n, pki.Describe(c)))
		} else if err != nil {
			if cs, perr := pki.ParseCertsPEM(raw); perr == nil && !pki.IssuedBy(cs[0], newCA[0]) {
				problems = append(problems, fmt.Sprintf("kubelet on %s presents %s, not from the new CA", n, pki.Describe(cs[0])))
			}
		}
	}
	rep.Verified = append(rep.Verified, "every kubelet is reachable from the apiservers and has a client certificate from the new CA")

	// 3. Control-plane kubeconfigs and leaf certificates.
	for _, n := range rt.Config.ControlPlane {
		r, err := rt.node(ctx, Target{Node: n})
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		var srcs []pki.Source
		for _, kc := range controlPlaneKubeconfigs {
			raw, err := r.ReadFile(ctx, rt.Config.kubeDir(kc.name))
			if errors.Is(err, fs.ErrNotExist) && kc.optional {
				continue
			}
			if err != nil {
				problems = append(problems, err.Error())
				continue
			}
			c, _, _, _, err := edit.KubeconfigClientCert(raw, "")
			if err != nil {
				problems = append(problems, err.Error())
				continue
			}
			srcs = append(srcs, pki.Source{Where: n + ":" + rt.Config.kubeDir(kc.name), PEM: c})
		}
		for _, lf := range controlPlaneLeaves {
			raw, err := r.ReadFile(ctx, rt.Config.pki(lf.name+".crt"))
			if err != nil {
				problems = append(problems, err.Error())
				continue
			}
			srcs = append(srcs, pki.Source{Where: n + ":" + rt.Config.pki(lf.name+".crt"), PEM: raw})
		}
		for _, o := range append(append([]*x509.Certificate{}, oldCAs...), oldFP...) {
			found, err := pki.ScanIssuedBy(o, srcs)
			if err != nil {
				problems = append(problems, err.Error())
			}
			for _, f := range found {
				problems = append(problems, fmt.Sprintf("%s is still issued by the old CA (%s)", f.Where, f.Subject))
			}
		}
	}
	rep.Verified = append(rep.Verified, "no control-plane kubeconfig or leaf certificate is issued by the old CAs")

	// 4. Health and publication.
	nodes, err := rt.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range nodes.Items {
		if !nodeReady(&nodes.Items[i]) {
			problems = append(problems, "node "+nodes.Items[i].Name+" is not Ready")
		}
	}
	if un, err := rt.unavailableAPIServices(ctx); err != nil {
		return err
	} else {
		for _, a := range un {
			problems = append(problems, "APIService "+a+" is not Available")
		}
	}
	if ok, why, err := rt.rootCAPublished(ctx, b); err != nil || !ok {
		problems = append(problems, "kube-root-ca.crt: "+why+errOrNil(err))
	}
	rep.Verified = append(rep.Verified, "nodes Ready, APIServices Available, kube-root-ca.crt holds old+new everywhere")
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("verification failed:\n  - %s", strings.Join(problems, "\n  - "))
	}

	// Attention list for the hold.
	att, err := rt.oldOnlyBundles(ctx)
	if err != nil {
		return err
	}
	rep.Attention = append(rep.Attention, att...)
	podNotes, err := rt.stalePods(ctx)
	if err != nil {
		return err
	}
	rep.Attention = append(rep.Attention, podNotes...)
	rep.Attention = append(rep.Attention, "kubeconfigs outside the control plane (operators, CI, external tools) still trust and present the old CA: give them the new CA data and new client certificates before resuming")
	raw, _ := json.Marshal(rep)
	rt.Out.Put(KeyHoldReport, raw)
	for _, a := range rep.Attention {
		rt.Printf("attention: %s", a)
	}
	return nil
}

// getWithCert calls /api on one apiserver presenting only cert.
func (rt *Runtime) getWithCert(ctx context.Context, addr string, cert tls.Certificate) error {
	cfg := rt.Trust.TLSConfig()
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+joinHostPort(addr, rt.Config.APIServerPort)+"/api", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// stalePods lists pods that started before the CA bundle was published
// (they trust only the old CA until restarted) and pods no rollout
// restarts (Jobs, bare pods).
func (rt *Runtime) stalePods(ctx context.Context) ([]string, error) {
	pods, err := rt.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var published time.Time
	if v, ok, _ := rt.Store.Value(ctx, keyPublishedAt); ok {
		published, _ = time.Parse(time.RFC3339, string(v))
	}
	var before, unmanaged []string
	for _, p := range pods.Items {
		if p.Status.Phase == "Succeeded" || p.Status.Phase == "Failed" {
			continue
		}
		if _, mirror := p.Annotations["kubernetes.io/config.mirror"]; mirror {
			continue
		}
		owner := ""
		if len(p.OwnerReferences) > 0 {
			owner = p.OwnerReferences[0].Kind
		}
		if owner == "" || owner == "Job" {
			unmanaged = append(unmanaged, p.Namespace+"/"+p.Name)
		}
		if !published.IsZero() && p.CreationTimestamp.Time.Before(published) {
			before = append(before, p.Namespace+"/"+p.Name)
		}
	}
	var out []string
	if len(before) > 0 {
		out = append(out, fmt.Sprintf("%d pod(s) started before the CA bundle was published and may trust only the old CA: %s", len(before), short(before)))
	}
	if len(unmanaged) > 0 {
		out = append(out, fmt.Sprintf("%d pod(s) are Jobs or bare pods that no rollout restarts: %s", len(unmanaged), short(unmanaged)))
	}
	return out, nil
}

func short(s []string) string {
	sort.Strings(s)
	if len(s) > 8 {
		return strings.Join(s[:8], ", ") + fmt.Sprintf(" and %d more", len(s)-8)
	}
	return strings.Join(s, ", ")
}
