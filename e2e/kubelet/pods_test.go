package kubelet

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func testPod(name, node string, mutate ...func(*v1.Pod)) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name), Generation: 1},
		Spec: v1.PodSpec{
			NodeName:   node,
			Containers: []v1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}, {Name: "side", Image: "busybox"}},
		},
		Status: v1.PodStatus{
			Phase:    v1.PodPending,
			QOSClass: v1.PodQOSBestEffort,
			Conditions: []v1.PodCondition{
				{Type: v1.PodScheduled, Status: v1.ConditionTrue, LastTransitionTime: metav1.NewTime(time.Unix(100, 0))},
			},
		},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func TestDecide(t *testing.T) {
	now := metav1.Now()
	running := runningStatus(testPod("p", "n1"), "10.0.0.2", "10.244.2.2", time.Now())
	tests := []struct {
		name string
		pod  *v1.Pod
		want podAction
	}{
		{"pending pod on this node", testPod("p", "n1"), actionSetRunning},
		{"pod on another node", testPod("p", "n2"), actionNone},
		{"unscheduled pod", testPod("p", ""), actionNone},
		{"mirror pod", testPod("p", "n1", func(p *v1.Pod) { p.Annotations = map[string]string{mirrorPodAnnotation: "abc"} }), actionNone},
		{"terminating pod", testPod("p", "n1", func(p *v1.Pod) { p.DeletionTimestamp = &now }), actionDelete},
		{"terminating mirror pod", testPod("p", "n1", func(p *v1.Pod) {
			p.DeletionTimestamp = &now
			p.Annotations = map[string]string{mirrorPodAnnotation: "abc"}
		}), actionNone},
		{"succeeded pod", testPod("p", "n1", func(p *v1.Pod) { p.Status.Phase = v1.PodSucceeded }), actionNone},
		{"failed pod", testPod("p", "n1", func(p *v1.Pod) { p.Status.Phase = v1.PodFailed }), actionNone},
		{"running and ready", testPod("p", "n1", func(p *v1.Pod) { p.Status = running }), actionNone},
		{"running but one container not ready", testPod("p", "n1", func(p *v1.Pod) {
			p.Status = *running.DeepCopy()
			p.Status.ContainerStatuses[1].Ready = false
		}), actionSetRunning},
		{"running, container added to spec", testPod("p", "n1", func(p *v1.Pod) {
			p.Status = running
			p.Spec.Containers = append(p.Spec.Containers, v1.Container{Name: "third", Image: "x"})
		}), actionSetRunning},
		{"running without pod IP", testPod("p", "n1", func(p *v1.Pod) {
			p.Status = *running.DeepCopy()
			p.Status.PodIP = ""
		}), actionSetRunning},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decide(tt.pod, "n1"); got != tt.want {
				t.Errorf("decide = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRunningStatus(t *testing.T) {
	always := v1.ContainerRestartPolicyAlways
	pod := testPod("p", "n1", func(p *v1.Pod) {
		p.Generation = 3
		p.Spec.InitContainers = []v1.Container{
			{Name: "init", Image: "busybox"},
			{Name: "sidecar", Image: "envoy", RestartPolicy: &always},
		}
		p.Status.Conditions = append(p.Status.Conditions, v1.PodCondition{Type: "example.com/gate", Status: v1.ConditionFalse})
	})
	now := time.Unix(1000, 0)
	st := runningStatus(pod, "10.0.0.2", "10.244.2.7", now)

	if st.Phase != v1.PodRunning {
		t.Errorf("phase %s", st.Phase)
	}
	if st.HostIP != "10.0.0.2" || len(st.HostIPs) != 1 || st.HostIPs[0].IP != "10.0.0.2" {
		t.Errorf("host IPs %s %v", st.HostIP, st.HostIPs)
	}
	if st.PodIP != "10.244.2.7" || len(st.PodIPs) != 1 || st.PodIPs[0].IP != "10.244.2.7" {
		t.Errorf("pod IPs %s %v", st.PodIP, st.PodIPs)
	}
	if st.StartTime == nil || !st.StartTime.Time.Equal(now) {
		t.Errorf("start time %v", st.StartTime)
	}
	if st.QOSClass != v1.PodQOSBestEffort {
		t.Error("QOS class not kept")
	}
	if st.ObservedGeneration != 3 {
		t.Errorf("observedGeneration %d", st.ObservedGeneration)
	}
	for _, typ := range []v1.PodConditionType{v1.PodScheduled, v1.PodInitialized, v1.ContainersReady, v1.PodReady, v1.PodReadyToStartContainers} {
		if !conditionTrue(st.Conditions, typ) {
			t.Errorf("condition %s not True", typ)
		}
	}
	for _, c := range st.Conditions {
		if c.Type == v1.PodScheduled && !c.LastTransitionTime.Time.Equal(time.Unix(100, 0)) {
			t.Error("PodScheduled transition time not kept")
		}
		if c.Type == "example.com/gate" && c.Status != v1.ConditionFalse {
			t.Error("foreign condition changed")
		}
	}
	if len(st.ContainerStatuses) != 2 {
		t.Fatalf("%d container statuses", len(st.ContainerStatuses))
	}
	for i, cs := range st.ContainerStatuses {
		if cs.Name != pod.Spec.Containers[i].Name || cs.Image != pod.Spec.Containers[i].Image {
			t.Errorf("status %d is for %s/%s", i, cs.Name, cs.Image)
		}
		if !cs.Ready || cs.State.Running == nil || cs.Started == nil || !*cs.Started || cs.ContainerID == "" || cs.ImageID == "" {
			t.Errorf("container %s not running and ready: %+v", cs.Name, cs)
		}
	}
	if len(st.InitContainerStatuses) != 2 {
		t.Fatalf("%d init container statuses", len(st.InitContainerStatuses))
	}
	if term := st.InitContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 0 || term.Reason != "Completed" {
		t.Errorf("init container state %+v", st.InitContainerStatuses[0].State)
	}
	if st.InitContainerStatuses[1].State.Running == nil || !st.InitContainerStatuses[1].Ready {
		t.Errorf("sidecar state %+v", st.InitContainerStatuses[1].State)
	}

	// Idempotent: a second pass keeps start and transition times.
	pod.Status = st
	again := runningStatus(pod, "10.0.0.2", "10.244.2.7", now.Add(time.Minute))
	if !again.StartTime.Time.Equal(now) || !again.ContainerStatuses[0].State.Running.StartedAt.Time.Equal(now) {
		t.Error("start times moved on a second pass")
	}
	if !isRunningAndReady(pod) {
		t.Error("isRunningAndReady false for the agent's own status")
	}
}

func TestIPAllocator(t *testing.T) {
	prefix := defaultPodCIDR(netip.MustParseAddr("10.50.0.7"))
	if prefix.String() != "10.244.7.0/24" {
		t.Fatalf("default pod CIDR %s", prefix)
	}
	if p := defaultPodCIDR(netip.MustParseAddr("fd00::1:2")); p.Bits() != 112 {
		t.Errorf("IPv6 pod CIDR %s", p)
	}
	a := newIPAllocator(prefix)
	existing := testPod("old", "n1", func(p *v1.Pod) { p.Status.PodIP = "10.244.7.2" })
	p1 := testPod("p1", "n1")
	ip1, err := a.assign(p1, []*v1.Pod{existing, p1})
	if err != nil || ip1 != "10.244.7.3" {
		t.Fatalf("first IP %s, %v (10.244.7.2 is taken)", ip1, err)
	}
	if again, _ := a.assign(p1, nil); again != ip1 {
		t.Error("reassigned a different IP to the same pod")
	}
	ip2, _ := a.assign(testPod("p2", "n1"), []*v1.Pod{existing})
	if ip2 == ip1 || ip2 == "10.244.7.2" {
		t.Errorf("duplicate IP %s", ip2)
	}
	if kept, _ := a.assign(existing, nil); kept != "10.244.7.2" {
		t.Errorf("existing pod IP not kept: %s", kept)
	}
	a.release(p1.UID)
	if ip3, _ := a.assign(testPod("p3", "n1"), []*v1.Pod{existing}); ip3 != ip1 {
		t.Errorf("released IP not reused: %s", ip3)
	}

	small := newIPAllocator(netip.MustParsePrefix("10.9.9.0/30")) // .2 only
	if ip, err := small.assign(testPod("a", "n1"), nil); err != nil || ip != "10.9.9.2" {
		t.Fatalf("small range: %s %v", ip, err)
	}
	if _, err := small.assign(testPod("b", "n1"), nil); err == nil {
		t.Error("exhausted range still assigned")
	}
}

func newTestSyncer(objs ...runtime.Object) (*podSyncer, *fake.Clientset) {
	client := fake.NewClientset(objs...)
	return &podSyncer{
		client:   client,
		nodeName: "n1",
		nodeIP:   "10.0.0.2",
		ips:      newIPAllocator(defaultPodCIDR(netip.MustParseAddr("10.0.0.2"))),
		now:      func() time.Time { return time.Unix(5000, 0) },
		log:      slog.New(slog.DiscardHandler),
	}, client
}

func TestSyncPod(t *testing.T) {
	ctx := context.Background()
	now := metav1.Now()
	tests := []struct {
		name       string
		pod        *v1.Pod
		wantVerb   string // "" = no API call
		wantPodIP  string
		wantHostIP string
	}{
		{name: "pending pod set running", pod: testPod("p", "n1"), wantVerb: "update", wantPodIP: "10.244.2.2", wantHostIP: "10.0.0.2"},
		{name: "host network pod gets the node IP", pod: testPod("h", "n1", func(p *v1.Pod) { p.Spec.HostNetwork = true }),
			wantVerb: "update", wantPodIP: "10.0.0.2", wantHostIP: "10.0.0.2"},
		{name: "terminating pod deleted", pod: testPod("d", "n1", func(p *v1.Pod) { p.DeletionTimestamp = &now }), wantVerb: "delete"},
		{name: "other node untouched", pod: testPod("o", "n2")},
		{name: "mirror pod untouched", pod: testPod("m", "n1", func(p *v1.Pod) { p.Annotations = map[string]string{mirrorPodAnnotation: "x"} })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, client := newTestSyncer(tt.pod)
			client.ClearActions()
			if err := s.syncPod(ctx, tt.pod, []*v1.Pod{tt.pod}); err != nil {
				t.Fatal(err)
			}
			actions := client.Actions()
			if tt.wantVerb == "" {
				if len(actions) != 0 {
					t.Fatalf("unexpected API calls: %v", actions)
				}
				return
			}
			if len(actions) != 1 || actions[0].GetVerb() != tt.wantVerb {
				t.Fatalf("actions %v, want one %s", actions, tt.wantVerb)
			}
			switch a := actions[0].(type) {
			case k8stesting.UpdateAction:
				if a.GetSubresource() != "status" {
					t.Errorf("update of %q, want the status subresource", a.GetSubresource())
				}
				p := a.GetObject().(*v1.Pod)
				if p.Status.Phase != v1.PodRunning || p.Status.PodIP != tt.wantPodIP || p.Status.HostIP != tt.wantHostIP {
					t.Errorf("status phase=%s podIP=%s hostIP=%s", p.Status.Phase, p.Status.PodIP, p.Status.HostIP)
				}
			case k8stesting.DeleteAction:
				opts := a.GetDeleteOptions()
				if opts.GracePeriodSeconds == nil || *opts.GracePeriodSeconds != 0 {
					t.Error("delete without grace period 0")
				}
				if opts.Preconditions == nil || opts.Preconditions.UID == nil || *opts.Preconditions.UID != tt.pod.UID {
					t.Error("delete without a UID precondition")
				}
			}
		})
	}
}

func TestPodControllerWithFakeClientset(t *testing.T) {
	pending := testPod("web", "n1")
	other := testPod("elsewhere", "n2")
	s, client := newTestSyncer(pending, other)
	c := newPodController(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "pod running", func() bool {
		p, err := client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && isRunningAndReady(p)
	})
	if p, _ := client.CoreV1().Pods("default").Get(ctx, "elsewhere", metav1.GetOptions{}); p.Status.Phase != v1.PodPending {
		t.Error("pod of another node was touched")
	}

	// A pod created later is picked up by the watch.
	late := testPod("late", "n1")
	if _, err := client.CoreV1().Pods("default").Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "late pod running", func() bool {
		p, err := client.CoreV1().Pods("default").Get(ctx, "late", metav1.GetOptions{})
		return err == nil && isRunningAndReady(p)
	})
	ipWeb := getPod(t, client, "web").Status.PodIP
	if ipLate := getPod(t, client, "late").Status.PodIP; ipLate == ipWeb {
		t.Errorf("two pods share IP %s", ipLate)
	}

	// Graceful deletion: the apiserver sets deletionTimestamp, the agent
	// finishes it.
	p := getPod(t, client, "web")
	now := metav1.Now()
	p.DeletionTimestamp = &now
	if _, err := client.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod deleted", func() bool {
		_, err := client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
		return err != nil
	})
	if got := len(c.store.list()); got != 2 {
		t.Errorf("store holds %d pods, want 2 (late + elsewhere from the unfiltered fake watch)", got)
	}
}

func getPod(t *testing.T, c *fake.Clientset, name string) *v1.Pod {
	t.Helper()
	p, err := c.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
