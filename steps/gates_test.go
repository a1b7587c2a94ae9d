package steps

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func nodeLease(name string, renew time.Time) *coordinationv1.Lease {
	r := metav1.NewMicroTime(renew)
	return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: corev1.NamespaceNodeLease},
		Spec: coordinationv1.LeaseSpec{RenewTime: &r}}
}

func renewLease(t *testing.T, c *fake.Clientset, name string, at time.Time) {
	t.Helper()
	if _, err := c.CoordinationV1().Leases(corev1.NamespaceNodeLease).Update(context.Background(), nodeLease(name, at), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// The kubelet gate takes a renewal as the restarted kubelet's when it is
// later than that kubelet's start (node clock) plus the margin: at once
// when it renewed on starting, never for the previous kubelet's renewal.
// Without a recorded start it waits for a renewal after it began.
func TestKubeletGate(t *testing.T) {
	started := time.Date(2026, 11, 30, 20, 0, 0, 0, time.UTC)
	rt, c := kubeRuntime(t, readyNode("w1", true), nodeLease("w1", started.Add(-time.Second)))
	rt.KubeletStarts = NewKubeletStarts()
	gate := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return liveGates{}.Kubelet(ctx, rt, "w1")
	}

	// The previous kubelet's renewal, and one within the margin, are not
	// the restarted one's.
	for _, renew := range []time.Time{started.Add(-time.Second), started.Add(kubeletStartMargin / 2)} {
		renewLease(t, c, "w1", renew)
		rt.KubeletStarts.record("w1", started, true)
		if err := gate(700 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "lease not renewed since the restarted kubelet started") {
			t.Errorf("renewed at %s: err = %v, want a wait for the restarted kubelet", renew.Format(time.RFC3339Nano), err)
		}
	}

	// Renewed after it started: passes on the first look.
	renewLease(t, c, "w1", started.Add(300*time.Millisecond))
	rt.KubeletStarts.record("w1", started, true)
	t0 := time.Now()
	if err := gate(10 * time.Second); err != nil {
		t.Fatalf("renewed by the restarted kubelet: %v", err)
	}
	if d := time.Since(t0); d >= pollInterval {
		t.Errorf("took %s, want the first look (under %s)", d, pollInterval)
	}

	// The record serves the gates after the restart (a revert's second
	// gate) until a restart whose kubelet rotate could not find clears it;
	// a gate without a record waits for a renewal after it began.
	if err := gate(10 * time.Second); err != nil {
		t.Errorf("second gate after the same restart: %v", err)
	}
	rt.KubeletStarts.record("w1", time.Time{}, false)
	if err := gate(700 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "lease not renewed since") {
		t.Errorf("no recorded start: err = %v, want a wait for the next renewal", err)
	}
	looked := make(chan struct{})
	var once sync.Once
	c.PrependReactor("get", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		once.Do(func() { close(looked) })
		return false, nil, nil
	})
	done := make(chan error, 1)
	go func() { done <- gate(time.Minute) }()
	<-looked // the gate took its first look
	renewLease(t, c, "w1", started.Add(10*time.Second))
	if err := <-done; err != nil {
		t.Errorf("renewed after the gate began: %v", err)
	}
}
