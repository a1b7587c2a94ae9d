package steps

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// A preflight of many nodes reads kube-root-ca.crt once: every target
// compares with the same copy. A failed read is not kept, and a caller
// that gives up while another reads says so.
func TestPublishedRootCAReadOnce(t *testing.T) {
	c := fake.NewClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: "kube-root-ca.crt"},
		Data:       map[string]string{"ca.crt": "PEM"},
	})
	var gets, fail atomic.Int32
	fail.Store(1)
	c.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets.Add(1)
		if fail.Add(-1) >= 0 {
			return true, nil, errBoom
		}
		return false, nil, nil
	})
	p := NewPublished()
	ctx := context.Background()
	if _, err := p.rootCA(ctx, c); !errors.Is(err, errBoom) {
		t.Fatalf("first read: %v, want the API's error", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 33)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ca []byte
			ca, errs[i] = p.rootCA(ctx, c)
			if errs[i] == nil && string(ca) != "PEM" {
				errs[i] = errors.New("read " + string(ca))
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if n := gets.Load(); n != 2 {
		t.Fatalf("%d reads of kube-root-ca.crt for one failed and 33 concurrent callers, want 2", n)
	}

	// A caller whose context ends while another holds the read.
	p.sem <- struct{}{}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.rootCA(cctx, c); !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting caller with a cancelled context: %v", err)
	}
	<-p.sem

	// Without a Published (a Runtime built by hand) every call reads.
	var none *Published
	if _, err := none.rootCA(ctx, c); err != nil || gets.Load() != 3 {
		t.Fatalf("nil Published: %v, %d reads", err, gets.Load())
	}
}
