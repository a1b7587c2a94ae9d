package probes

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Names of the probe's resources.
const (
	DefaultNamespace = "rotate-probe"
	// ProberName is the prober Deployment, its ServiceAccount and Role.
	ProberName     = "prober"
	proberLabel    = "app.kubernetes.io/name"
	proberValue    = "rotate-probe-prober"
	proberSelector = proberLabel + "=" + proberValue
	proberImage    = "registry.k8s.io/pause:3.10"
	managedBy      = "rotate-probe.e2e"
)

var apiServiceGVR = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

func dynamicFor(cfg *rest.Config, host string) (dynamic.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.Host = host
	return dynamic.NewForConfig(c)
}

// Setup creates (idempotently, with admin credentials) the probe
// namespace, the prober ServiceAccount with read access to ConfigMaps in
// it, and the prober Deployment (one replica; the node agents run it),
// and waits for a Ready prober pod.
func Setup(ctx context.Context, client kubernetes.Interface, ns string) error {
	labels := map[string]string{proberLabel: proberValue}
	objs := []func() error{
		func() error { return ensureNamespace(ctx, client, ns) },
		func() error {
			_, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: ProberName}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
				ObjectMeta: metav1.ObjectMeta{Name: ProberName},
				Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"}}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: ProberName},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: ProberName},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: ProberName, Namespace: ns}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			one := int32(1)
			grace := int64(1)
			_, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Name: ProberName, Labels: labels},
				Spec: appsv1.DeploymentSpec{
					Replicas: &one,
					Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: v1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: v1.PodSpec{
							ServiceAccountName:            ProberName,
							TerminationGracePeriodSeconds: &grace,
							Containers:                    []v1.Container{{Name: "prober", Image: proberImage}},
							// Control-plane nodes may run it; NotReady nodes not.
							Tolerations: []v1.Toleration{{Key: "node-role.kubernetes.io/control-plane", Operator: v1.TolerationOpExists, Effect: v1.TaintEffectNoSchedule}},
						},
					},
				},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for _, create := range objs {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("probe setup: %w", err)
		}
	}
	for {
		pod, err := currentReadyPod(ctx, client, ns)
		if err == nil && pod != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("probe setup: no Ready pod of deployment %s/%s: %w (last error: %v)", ns, ProberName, ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

func ensureNamespace(ctx context.Context, client kubernetes.Interface, ns string) error {
	_, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"app.kubernetes.io/managed-by": managedBy}}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return nil
}

// Teardown removes the APIService registration and the probe namespace.
func Teardown(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, ns string) error {
	err := unregisterAPIService(ctx, client, dyn, ns)
	if derr := client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); derr != nil && !apierrors.IsNotFound(derr) {
		err = errors.Join(err, fmt.Errorf("delete namespace %s: %w", ns, derr))
	}
	return err
}

// registerAPIService points a selector-less Service and its EndpointSlice
// at the aggregated server (host:port) and registers the APIService with
// the server's CA as caBundle. Existing objects are updated (the port and
// CA change with every run).
func registerAPIService(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, ns, host string, port int, caPEM []byte) error {
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("aggregated server host %q is not an IP address", host)
	}
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: aggServiceName, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/managed-by": managedBy}},
		Spec: v1.ServiceSpec{
			Type:  v1.ServiceTypeClusterIP,
			Ports: []v1.ServicePort{{Name: "https", Port: 443, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(port))}},
		},
	}
	if cur, err := client.CoreV1().Services(ns).Get(ctx, aggServiceName, metav1.GetOptions{}); err == nil {
		cur.Spec.Ports = svc.Spec.Ports
		cur.Spec.Selector = nil
		if _, err := client.CoreV1().Services(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update Service %s/%s: %w", ns, aggServiceName, err)
		}
	} else if _, err := client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %s/%s: %w", ns, aggServiceName, err)
	}

	addrType := discoveryv1.AddressTypeIPv4
	if ip.To4() == nil {
		addrType = discoveryv1.AddressTypeIPv6
	}
	ready := true
	portName, proto, p32 := "https", v1.ProtocolTCP, int32(port)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: aggServiceName, Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: aggServiceName,
			discoveryv1.LabelManagedBy:   managedBy,
		}},
		AddressType: addrType,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &p32}},
	}
	if cur, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, aggServiceName, metav1.GetOptions{}); err == nil {
		slice.ResourceVersion = cur.ResourceVersion
		if _, err := client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update EndpointSlice %s/%s: %w", ns, aggServiceName, err)
		}
	} else if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create EndpointSlice %s/%s: %w", ns, aggServiceName, err)
	}

	spec := map[string]any{
		"group":                APIGroup,
		"version":              APIVersion,
		"service":              map[string]any{"namespace": ns, "name": aggServiceName, "port": int64(443)},
		"caBundle":             base64.StdEncoding.EncodeToString(caPEM),
		"groupPriorityMinimum": int64(1000),
		"versionPriority":      int64(15),
	}
	apisvc := dyn.Resource(apiServiceGVR)
	if cur, err := apisvc.Get(ctx, apiServiceName, metav1.GetOptions{}); err == nil {
		cur.Object["spec"] = spec
		if _, err := apisvc.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update APIService %s: %w", apiServiceName, err)
		}
		return nil
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": apiServiceName, "labels": map[string]any{"app.kubernetes.io/managed-by": managedBy}},
		"spec":       spec,
	}}
	if _, err := apisvc.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create APIService %s: %w", apiServiceName, err)
	}
	return nil
}

// waitAPIServiceAvailable waits (at most a minute) for the APIService's
// Available condition.
func waitAPIServiceAvailable(ctx context.Context, dyn dynamic.Interface) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	last := ""
	for {
		obj, err := dyn.Resource(apiServiceGVR).Get(ctx, apiServiceName, metav1.GetOptions{})
		if err == nil {
			status, reason, msg := availableCondition(obj)
			if status == "True" {
				return nil
			}
			last = fmt.Sprintf("Available=%s %s: %s", status, reason, msg)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("APIService %s not available: %s", apiServiceName, last)
		case <-time.After(time.Second):
		}
	}
}

// unregisterAPIService deletes the APIService, EndpointSlice and Service.
func unregisterAPIService(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, ns string) error {
	var errs []error
	if err := dyn.Resource(apiServiceGVR).Delete(ctx, apiServiceName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete APIService %s: %w", apiServiceName, err))
	}
	if err := client.DiscoveryV1().EndpointSlices(ns).Delete(ctx, aggServiceName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete EndpointSlice %s/%s: %w", ns, aggServiceName, err))
	}
	if err := client.CoreV1().Services(ns).Delete(ctx, aggServiceName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete Service %s/%s: %w", ns, aggServiceName, err))
	}
	return errors.Join(errs...)
}
