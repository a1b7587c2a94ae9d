package steps

import (
	"context"
	"testing"

	"github.com/kubeca/rotate/nodes"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestConfigMapEarlyBackup: TakeBackups saves what Apply would back up,
// changing nothing, and only when Apply would change something; Apply
// then keeps that backup (the first wins) and Revert restores it.
func TestConfigMapEarlyBackup(t *testing.T) {
	ctx := context.Background()
	rt, _, st := testRuntime(t)
	rt.Kube = fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "cm"},
		Data: map[string]string{"a": "old", "b": "kept"}})
	s := &configMapDataStep{name: "cm-step", short: "cm holds new", namespace: "kube-system", cmName: "cm",
		want: func(context.Context, *Runtime, map[string]string) (map[string]string, error) {
			return map[string]string{"a": "new"}, nil
		}}
	var _ EarlyBackup = s
	get := func() map[string]string {
		cm, err := rt.Kube.CoreV1().ConfigMaps("kube-system").Get(ctx, "cm", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm.Data
	}
	if err := s.TakeBackups(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	if d := get(); d["a"] != "old" {
		t.Fatalf("TakeBackups changed the object: %v", d)
	}
	var saved map[string]string
	if ok, err := rt.loadAPIBackup(ctx, s.id(), &saved); err != nil || !ok || saved["a"] != "old" || len(saved) != 1 {
		t.Fatalf("backup = %v %v %v", saved, ok, err)
	}
	if err := s.Apply(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	if d := get(); d["a"] != "new" || d["b"] != "kept" {
		t.Fatalf("after Apply: %v", d)
	}
	if ok, _ := rt.loadAPIBackup(ctx, s.id(), &saved); !ok || saved["a"] != "old" {
		t.Fatalf("Apply replaced the early backup: %v", saved)
	}
	if err := s.Revert(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	if d := get(); d["a"] != "old" || d["b"] != "kept" {
		t.Fatalf("after Revert: %v", d)
	}

	// Nothing to change: no backup.
	st.MemBackupStore = nodes.NewMemBackupStore()
	rt.Kube = fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "cm"},
		Data: map[string]string{"a": "new"}})
	if err := s.TakeBackups(ctx, rt, ClusterTarget); err != nil {
		t.Fatal(err)
	}
	if ok, _ := rt.loadAPIBackup(ctx, s.id(), &saved); ok {
		t.Error("a backup was taken of an object Apply would not change")
	}
}
