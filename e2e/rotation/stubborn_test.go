//go:build e2e

package rotation

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kubeca/rotate/e2e/verify"
	"github.com/kubeca/rotate/pki"
)

// stubbornNS holds workloads a restart cannot roll, as operators' clusters
// have them: rotate must list them and never hang on them.
const stubbornNS = "stubborn"

// Names of the stubborn workloads, as the hold report names them.
const (
	stubbornPaused     = "Deployment " + stubbornNS + "/paused"
	stubbornOnDelete   = "DaemonSet " + stubbornNS + "/on-delete"
	stubbornNeverReady = "Deployment " + stubbornNS + "/never-ready"
	stubbornSecret     = "Secret " + stubbornNS + "/legacy-ca"
	// stubbornToken is a legacy service-account token Secret: the
	// controller-manager signed its token with the old key, and nobody
	// re-signs it.
	stubbornToken = stubbornNS + "/legacy-token"
)

// createStubbornWorkloads creates, before the run: a Deployment that is
// available and then paused (a template change never rolls it), a
// DaemonSet with the OnDelete strategy (its pods are replaced only when
// someone deletes them), and a Deployment whose pods never become Ready
// (an HTTP readiness probe nothing answers on the fake runtime); and a
// Secret holding the cluster's CA (old by the end of the run), as other
// tools keep it; and a legacy service-account token Secret.
func (e *env) createStubbornWorkloads(t *testing.T, ctx context.Context, ca *pki.CA) {
	t.Helper()
	cs := e.client(t)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: stubbornNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets(stubbornNS).Create(ctx, &v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "legacy-ca"},
		Data: map[string][]byte{"ca.crt": pki.EncodeCertsPEM(ca.Cert)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets(stubbornNS).Create(ctx, &v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "legacy-token",
		Annotations: map[string]string{v1.ServiceAccountNameKey: "default"}}, Type: v1.SecretTypeServiceAccountToken}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	podSpec := func(name string, probe *v1.Probe) v1.PodTemplateSpec {
		grace := int64(1)
		return v1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
			Spec: v1.PodSpec{
				TerminationGracePeriodSeconds: &grace,
				Containers:                    []v1.Container{{Name: name, Image: "registry.k8s.io/pause:3.10", ReadinessProbe: probe}},
				Tolerations:                   []v1.Toleration{{Key: "node-role.kubernetes.io/control-plane", Operator: v1.TolerationOpExists, Effect: v1.TaintEffectNoSchedule}},
			},
		}
	}
	deployment := func(name string, probe *v1.Probe) *appsv1.Deployment {
		one := int32(1)
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
				Template: podSpec(name, probe)},
		}
	}
	apps := cs.AppsV1()
	if _, err := apps.Deployments(stubbornNS).Create(ctx, deployment("paused", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	never := &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 5}
	if _, err := apps.Deployments(stubbornNS).Create(ctx, deployment("never-ready", never), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := apps.DaemonSets(stubbornNS).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "on-delete"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "on-delete"}},
			Template:       podSpec("on-delete", nil),
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The paused one is available first, then paused, as an operator
	// pauses a Deployment mid-change; the DaemonSet runs on every node.
	if err := verify.Eventually(ctx, 2*time.Minute, func(ctx context.Context) error { return stubbornRunning(ctx, cs) }); err != nil {
		t.Fatalf("stubborn workloads: %v", err)
	}
	if _, err := apps.Deployments(stubbornNS).Patch(ctx, "paused", types.MergePatchType, []byte(`{"spec":{"paused":true}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	// The controller-manager's tokens controller fills the token in.
	if err := verify.Eventually(ctx, time.Minute, func(ctx context.Context) error {
		sec, err := cs.CoreV1().Secrets(stubbornNS).Get(ctx, "legacy-token", metav1.GetOptions{})
		if err == nil && len(sec.Data["token"]) == 0 {
			err = fmt.Errorf("Secret %s has no token yet", stubbornToken)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("e2e: stubborn workloads: %s, %s, %s", stubbornPaused, stubbornOnDelete, stubbornNeverReady)
}

// stubbornRunning: the paused-to-be Deployment is available and the
// DaemonSet's pods are ready on every node it schedules to.
func stubbornRunning(ctx context.Context, cs kubernetes.Interface) error {
	d, err := cs.AppsV1().Deployments(stubbornNS).Get(ctx, "paused", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if d.Status.AvailableReplicas < 1 {
		return fmt.Errorf("%s: %d available", stubbornPaused, d.Status.AvailableReplicas)
	}
	ds, err := cs.AppsV1().DaemonSets(stubbornNS).Get(ctx, "on-delete", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if ds.Status.DesiredNumberScheduled == 0 || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled {
		return fmt.Errorf("%s: %d of %d ready", stubbornOnDelete, ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
	}
	return nil
}
