package kubelet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// KubeletVersion is what the agent reports as its kubelet version.
const KubeletVersion = "v1.37.2"

// nodeCapacity is the fixed capacity every agent reports.
func nodeCapacity() v1.ResourceList {
	return v1.ResourceList{
		v1.ResourceCPU:              resource.MustParse("4"),
		v1.ResourceMemory:           resource.MustParse("8Gi"),
		v1.ResourcePods:             resource.MustParse("110"),
		v1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
}

// initialNode is the Node the agent registers, like the kubelet's
// initialNode: default labels, --node-labels, --register-with-taints, the
// controller-managed attach/detach annotation, and a first status.
func initialNode(o *Options, port int, now time.Time) *v1.Node {
	labels := map[string]string{
		v1.LabelHostname:          o.NodeName,
		v1.LabelOSStable:          runtime.GOOS,
		v1.LabelArchStable:        runtime.GOARCH,
		"beta.kubernetes.io/os":   runtime.GOOS,
		"beta.kubernetes.io/arch": runtime.GOARCH,
	}
	for k, v := range o.NodeLabels {
		labels[k] = v
	}
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        o.NodeName,
			Labels:      labels,
			Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
		},
		Spec: v1.NodeSpec{Taints: append([]v1.Taint(nil), o.RegisterWithTaints...)},
	}
	setNodeStatus(n, o, port, now)
	return n
}

// setNodeStatus fills the status the agent owns: conditions with fresh
// heartbeats (transition times kept when the status did not change),
// addresses, capacity, node info and the kubelet endpoint.
func setNodeStatus(n *v1.Node, o *Options, port int, now time.Time) {
	t := metav1.NewTime(now)
	want := []v1.NodeCondition{
		{Type: v1.NodeMemoryPressure, Status: v1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
		{Type: v1.NodeDiskPressure, Status: v1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
		{Type: v1.NodePIDPressure, Status: v1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
		{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status"},
	}
	conds := make([]v1.NodeCondition, 0, len(want)+len(n.Status.Conditions))
	for _, w := range want {
		w.LastHeartbeatTime = t
		w.LastTransitionTime = t
		for _, old := range n.Status.Conditions {
			if old.Type == w.Type && old.Status == w.Status && !old.LastTransitionTime.IsZero() {
				w.LastTransitionTime = old.LastTransitionTime
			}
		}
		conds = append(conds, w)
	}
	// Keep conditions owned by others (e.g. NetworkUnavailable).
	for _, old := range n.Status.Conditions {
		owned := false
		for _, w := range want {
			owned = owned || old.Type == w.Type
		}
		if !owned {
			conds = append(conds, old)
		}
	}
	n.Status.Conditions = conds
	n.Status.Addresses = []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: o.NodeIP.String()},
		{Type: v1.NodeHostName, Address: o.NodeName},
	}
	n.Status.Capacity = nodeCapacity()
	n.Status.Allocatable = nodeCapacity()
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	id := stableID(o.NodeName)
	n.Status.NodeInfo = v1.NodeSystemInfo{
		MachineID:               id,
		SystemUUID:              id,
		BootID:                  id,
		KernelVersion:           "e2e",
		OSImage:                 "rotate e2e node agent",
		ContainerRuntimeVersion: "fake://0.0.0",
		KubeletVersion:          KubeletVersion,
		OperatingSystem:         runtime.GOOS,
		Architecture:            runtime.GOARCH,
	}
}

func stableID(name string) string {
	sum := sha256.Sum256([]byte("rotate-e2e-node/" + name))
	return hex.EncodeToString(sum[:16])
}

// registerNode creates the Node, or adopts the existing one (a restart or
// a node registered before), and returns it.
func registerNode(ctx context.Context, c kubernetes.Interface, o *Options, port int) (*v1.Node, error) {
	created, err := c.CoreV1().Nodes().Create(ctx, initialNode(o, port, time.Now()), metav1.CreateOptions{})
	if err == nil {
		return created, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create node %s: %w", o.NodeName, err)
	}
	existing, err := c.CoreV1().Nodes().Get(ctx, o.NodeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get node %s: %w", o.NodeName, err)
	}
	return existing, nil
}

// updateNodeStatus writes a fresh status (get + update of nodes/status,
// retried on conflict like the kubelet's nodeStatusUpdateRetry).
func updateNodeStatus(ctx context.Context, c kubernetes.Interface, o *Options, port int) (*v1.Node, error) {
	var lastErr error
	for range 5 {
		n, err := c.CoreV1().Nodes().Get(ctx, o.NodeName, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("get node %s: %w", o.NodeName, err)
		}
		setNodeStatus(n, o, port, time.Now())
		updated, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		if err == nil {
			return updated, nil
		}
		lastErr = err
		if !apierrors.IsConflict(err) {
			break
		}
	}
	return nil, fmt.Errorf("update node %s status: %w", o.NodeName, lastErr)
}

// renewLease creates or renews kube-node-lease/NAME, owned by the Node.
func renewLease(ctx context.Context, c kubernetes.Interface, node *v1.Node, durationSeconds int32, now time.Time) error {
	leases := c.CoordinationV1().Leases(v1.NamespaceNodeLease)
	holder := node.Name
	renew := metav1.NewMicroTime(now)
	lease, err := leases.Get(ctx, node.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name:      node.Name,
				Namespace: v1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1",
					Kind:       "Node",
					Name:       node.Name,
					UID:        node.UID,
				}},
			},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       &holder,
				LeaseDurationSeconds: &durationSeconds,
				RenewTime:            &renew,
			},
		}
		if _, err := leases.Create(ctx, l, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create lease %s: %w", node.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get lease %s: %w", node.Name, err)
	}
	lease.Spec.HolderIdentity = &holder
	lease.Spec.LeaseDurationSeconds = &durationSeconds
	lease.Spec.RenewTime = &renew
	if len(lease.OwnerReferences) == 0 && node.UID != "" {
		lease.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}
	}
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew lease %s: %w", node.Name, err)
	}
	return nil
}
