package kubelet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"
)

// mirrorPodAnnotation marks the API object of a static pod.
const mirrorPodAnnotation = "kubernetes.io/config.mirror"

// podAction is what the agent does with one pod.
type podAction int

const (
	actionNone       podAction = iota
	actionSetRunning           // write a Running/Ready status
	actionDelete               // finish a graceful deletion (grace 0, UID precondition)
)

func (a podAction) String() string {
	switch a {
	case actionSetRunning:
		return "set-running"
	case actionDelete:
		return "delete"
	default:
		return "none"
	}
}

// decide returns the action for pod on node nodeName. Pods bound elsewhere
// (NodeRestriction would refuse), mirror pods and terminated pods are left
// alone.
func decide(pod *v1.Pod, nodeName string) podAction {
	switch {
	case pod.Spec.NodeName != nodeName:
		return actionNone
	case pod.Annotations[mirrorPodAnnotation] != "":
		return actionNone
	case pod.DeletionTimestamp != nil:
		return actionDelete
	case pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed:
		return actionNone
	case isRunningAndReady(pod):
		return actionNone
	default:
		return actionSetRunning
	}
}

// isRunningAndReady reports whether pod already has the status the agent
// would write: Running, Ready, a pod IP, and a ready running status for
// every container.
func isRunningAndReady(pod *v1.Pod) bool {
	if pod.Status.Phase != v1.PodRunning || pod.Status.PodIP == "" || pod.Status.HostIP == "" {
		return false
	}
	for _, t := range []v1.PodConditionType{v1.PodReady, v1.ContainersReady, v1.PodInitialized} {
		if !conditionTrue(pod.Status.Conditions, t) {
			return false
		}
	}
	if len(pod.Status.ContainerStatuses) != len(pod.Spec.Containers) {
		return false
	}
	for _, c := range pod.Spec.Containers {
		s, ok := findStatus(pod.Status.ContainerStatuses, c.Name)
		if !ok || !s.Ready || s.State.Running == nil {
			return false
		}
	}
	return true
}

func conditionTrue(conds []v1.PodCondition, t v1.PodConditionType) bool {
	for _, c := range conds {
		if c.Type == t {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func findStatus(statuses []v1.ContainerStatus, name string) (v1.ContainerStatus, bool) {
	for _, s := range statuses {
		if s.Name == name {
			return s, true
		}
	}
	return v1.ContainerStatus{}, false
}

// runningStatus is the status the agent writes for a pod it "runs": phase
// Running, conditions PodReadyToStartContainers/Initialized/
// ContainersReady/Ready/PodScheduled True, every container running and
// ready (init containers completed, sidecar init containers running),
// host and pod IPs and a start time. Fields the agent does not own (QOS
// class, other conditions, nominated node) are kept.
func runningStatus(pod *v1.Pod, hostIP, podIP string, now time.Time) v1.PodStatus {
	t := metav1.NewTime(now)
	st := *pod.Status.DeepCopy()
	st.Phase = v1.PodRunning
	st.Reason, st.Message = "", ""
	st.ObservedGeneration = pod.Generation
	st.HostIP = hostIP
	st.HostIPs = []v1.HostIP{{IP: hostIP}}
	st.PodIP = podIP
	st.PodIPs = []v1.PodIP{{IP: podIP}}
	if st.StartTime == nil {
		st.StartTime = &t
	}

	owned := []v1.PodConditionType{v1.PodReadyToStartContainers, v1.PodInitialized, v1.ContainersReady, v1.PodReady, v1.PodScheduled}
	conds := make([]v1.PodCondition, 0, len(owned)+len(st.Conditions))
	for _, typ := range owned {
		c := v1.PodCondition{Type: typ, Status: v1.ConditionTrue, LastTransitionTime: t, ObservedGeneration: pod.Generation}
		for _, old := range st.Conditions {
			if old.Type == typ && old.Status == v1.ConditionTrue && !old.LastTransitionTime.IsZero() {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		conds = append(conds, c)
	}
	for _, old := range st.Conditions {
		isOwned := false
		for _, typ := range owned {
			isOwned = isOwned || old.Type == typ
		}
		if !isOwned {
			conds = append(conds, old)
		}
	}
	st.Conditions = conds

	st.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		old, _ := findStatus(pod.Status.InitContainerStatuses, c.Name)
		s := containerStatus(pod, c, old, t)
		if c.RestartPolicy == nil || *c.RestartPolicy != v1.ContainerRestartPolicyAlways {
			started := false
			s.Started = &started
			s.State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: s.State.Running.StartedAt, FinishedAt: t, ContainerID: s.ContainerID,
			}}
		}
		st.InitContainerStatuses = append(st.InitContainerStatuses, s)
	}
	st.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		old, _ := findStatus(pod.Status.ContainerStatuses, c.Name)
		st.ContainerStatuses = append(st.ContainerStatuses, containerStatus(pod, c, old, t))
	}
	return st
}

func containerStatus(pod *v1.Pod, c v1.Container, old v1.ContainerStatus, now metav1.Time) v1.ContainerStatus {
	started := true
	startedAt := now
	if old.State.Running != nil && !old.State.Running.StartedAt.IsZero() {
		startedAt = old.State.Running.StartedAt
	}
	return v1.ContainerStatus{
		Name:         c.Name,
		Image:        c.Image,
		ImageID:      "fake://sha256:" + digest(c.Image),
		ContainerID:  "fake://" + digest(string(pod.UID)+"/"+c.Name),
		Ready:        true,
		Started:      &started,
		RestartCount: old.RestartCount,
		State:        v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: startedAt}},
	}
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// defaultPodCIDR is the node's fake pod range when the Node has no
// spec.podCIDR: 10.244.<last octet of the node IP>.0/24 (IPv6:
// fd00:244::<last two bytes>:0/112).
func defaultPodCIDR(nodeIP netip.Addr) netip.Prefix {
	if nodeIP.Is4() || nodeIP.Is4In6() {
		b := nodeIP.Unmap().As4()
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, b[3], 0}), 24)
	}
	b := nodeIP.As16()
	p := netip.MustParseAddr("fd00:244::").As16()
	p[12], p[13] = b[14], b[15]
	return netip.PrefixFrom(netip.AddrFrom16(p), 112)
}

// ipAllocator hands out fake pod IPs from one prefix, skipping the
// network address and .1 (the "gateway").
type ipAllocator struct {
	mu     sync.Mutex
	prefix netip.Prefix
	byUID  map[types.UID]netip.Addr
}

func newIPAllocator(prefix netip.Prefix) *ipAllocator {
	return &ipAllocator{prefix: prefix.Masked(), byUID: map[types.UID]netip.Addr{}}
}

// assign returns pod's IP: the one already in its status or assigned
// earlier, else the first address not used by any of the given pods.
func (a *ipAllocator) assign(pod *v1.Pod, others []*v1.Pod) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.byUID[pod.UID]; ok {
		return ip.String(), nil
	}
	if ip, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
		a.byUID[pod.UID] = ip
		return ip.String(), nil
	}
	used := map[netip.Addr]bool{}
	for _, ip := range a.byUID {
		used[ip] = true
	}
	for _, p := range others {
		if ip, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			used[ip] = true
		}
	}
	ip := a.prefix.Addr().Next().Next()
	for n := 0; n < 65534 && a.prefix.Contains(ip); n++ {
		if !used[ip] && a.prefix.Contains(ip.Next()) { // not the broadcast address
			a.byUID[pod.UID] = ip
			return ip.String(), nil
		}
		ip = ip.Next()
	}
	return "", fmt.Errorf("pod range %s exhausted", a.prefix)
}

func (a *ipAllocator) release(uid types.UID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.byUID, uid)
}

// podSyncer applies decide's actions through the API, as the node.
type podSyncer struct {
	client   kubernetes.Interface
	nodeName string
	nodeIP   string
	ips      *ipAllocator
	now      func() time.Time
	log      *slog.Logger
}

// syncPod acts on one pod. others are the pods bound to the node (for IP
// allocation).
func (s *podSyncer) syncPod(ctx context.Context, pod *v1.Pod, others []*v1.Pod) error {
	action := decide(pod, s.nodeName)
	switch action {
	case actionDelete:
		zero := int64(0)
		uid := pod.UID
		err := s.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &uid},
		})
		switch {
		case err == nil:
			s.log.Info("deleted pod", "pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID)
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
			// Gone already, or replaced by a pod with another UID.
		default:
			return fmt.Errorf("delete pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		s.ips.release(pod.UID)
		return nil
	case actionSetRunning:
		podIP := s.nodeIP
		if !pod.Spec.HostNetwork {
			ip, err := s.ips.assign(pod, others)
			if err != nil {
				return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
			}
			podIP = ip
		}
		p := pod.DeepCopy()
		p.Status = runningStatus(pod, s.nodeIP, podIP, s.now())
		if _, err := s.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("update pod %s/%s status: %w", pod.Namespace, pod.Name, err)
		}
		s.log.Info("pod running", "pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID, "podIP", podIP)
		return nil
	default:
		return nil
	}
}

// podStore is the node's view of its pods, kept by podController's
// list+watch (a minimal reflector: client-go's informers would need a
// module the project does not require).
type podStore struct {
	mu   sync.RWMutex
	pods map[string]*v1.Pod
}

func podKey(p *v1.Pod) string { return p.Namespace + "/" + p.Name }

func (s *podStore) get(key string) (*v1.Pod, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.pods[key]
	return p, ok
}

func (s *podStore) list() []*v1.Pod {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*v1.Pod, 0, len(s.pods))
	for _, p := range s.pods {
		out = append(out, p)
	}
	return out
}

// podController watches the pods bound to the node and feeds them
// through a work queue into a podSyncer.
type podController struct {
	syncer *podSyncer
	store  *podStore
	queue  workqueue.TypedRateLimitingInterface[string]
	synced atomic.Bool
}

func newPodController(s *podSyncer) *podController {
	return &podController{
		syncer: s,
		store:  &podStore{pods: map[string]*v1.Pod{}},
		queue:  workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
}

// run watches and processes pods until ctx ends.
func (c *podController) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.watch(ctx)
	}()
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for {
		key, shutdown := c.queue.Get()
		if shutdown {
			break
		}
		err := c.process(ctx, key)
		switch {
		case err == nil:
			c.queue.Forget(key)
		case ctx.Err() != nil:
		default:
			c.syncer.log.Warn("pod sync failed, will retry", "pod", key, "err", err)
			c.queue.AddRateLimited(key)
		}
		c.queue.Done(key)
	}
	wg.Wait()
}

// watch lists the node's pods (field selector spec.nodeName=NAME, the only
// form the Node authorizer allows) and follows them with a watch,
// relisting when the watch cannot resume.
func (c *podController) watch(ctx context.Context) {
	pods := c.syncer.client.CoreV1().Pods(metav1.NamespaceAll)
	selector := "spec.nodeName=" + c.syncer.nodeName
	for ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, apiTimeout)
		list, err := pods.List(lctx, metav1.ListOptions{FieldSelector: selector})
		cancel()
		if err != nil {
			c.syncer.log.Warn("list pods", "err", err)
			if !sleep(ctx, 2*time.Second) {
				return
			}
			continue
		}
		fresh := make(map[string]*v1.Pod, len(list.Items))
		for i := range list.Items {
			p := &list.Items[i]
			fresh[podKey(p)] = p
		}
		c.store.mu.Lock()
		for k, old := range c.store.pods {
			if _, ok := fresh[k]; !ok {
				c.syncer.ips.release(old.UID)
			}
		}
		c.store.pods = fresh
		c.store.mu.Unlock()
		c.synced.Store(true)
		for k := range fresh {
			c.queue.Add(k)
		}
		rv := list.ResourceVersion
		for ctx.Err() == nil {
			next, relist := c.follow(ctx, pods, selector, rv)
			if relist {
				break
			}
			rv = next
			if !sleep(ctx, time.Second) {
				return
			}
		}
	}
}

type podWatcher interface {
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// follow consumes one watch from rv. It returns the last resource version
// seen and whether a relist is needed.
func (c *podController) follow(ctx context.Context, pods podWatcher, selector, rv string) (string, bool) {
	timeout := int64(300)
	w, err := pods.Watch(ctx, metav1.ListOptions{
		FieldSelector:       selector,
		ResourceVersion:     rv,
		AllowWatchBookmarks: true,
		TimeoutSeconds:      &timeout,
	})
	if err != nil {
		if ctx.Err() == nil {
			c.syncer.log.Warn("watch pods", "err", err)
		}
		return rv, apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return rv, false
		case ev, ok := <-w.ResultChan():
			if !ok {
				return rv, false
			}
			switch ev.Type {
			case watch.Error:
				err := apierrors.FromObject(ev.Object)
				switch {
				case ctx.Err() != nil:
				case apierrors.IsResourceExpired(err) || apierrors.IsGone(err):
					c.syncer.log.Info("pod watch expired, relisting", "err", err)
				default:
					c.syncer.log.Warn("watch pods", "err", err)
				}
				return rv, true
			case watch.Bookmark:
				if p, ok := ev.Object.(*v1.Pod); ok {
					rv = p.ResourceVersion
				}
			case watch.Added, watch.Modified:
				p, ok := ev.Object.(*v1.Pod)
				if !ok {
					continue
				}
				rv = p.ResourceVersion
				c.store.mu.Lock()
				c.store.pods[podKey(p)] = p
				c.store.mu.Unlock()
				c.queue.Add(podKey(p))
			case watch.Deleted:
				p, ok := ev.Object.(*v1.Pod)
				if !ok {
					continue
				}
				rv = p.ResourceVersion
				c.store.mu.Lock()
				delete(c.store.pods, podKey(p))
				c.store.mu.Unlock()
				c.syncer.ips.release(p.UID)
			}
		}
	}
}

func (c *podController) process(ctx context.Context, key string) error {
	pod, ok := c.store.get(key)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return c.syncer.syncPod(ctx, pod, c.store.list())
}
