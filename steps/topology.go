package steps

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Nodes the run does not rotate: a Node in the API that is not in the
// run's node list (an autoscaler's, a late join). Its kubelet keeps the
// client certificate it has; once trust narrows (phase 12) an old-CA one
// is refused by every apiserver and the node goes NotReady.

// UnlistedFail is Config.UnlistedNodes that makes preflight refuse them.
const UnlistedFail = "fail"

// unlistedAdvice is what to do about unlisted node n, and why.
func unlistedAdvice(n string) string {
	return fmt.Sprintf("node %s is in the cluster but not in the inventory: rotate does not touch it, and once trust narrows (phase 12) "+
		"its kubelet, holding a client certificate from the old CA, is locked out and the node goes NotReady; "+
		"add it to the inventory (nodes.workers or nodes.discoverWorkers), or drain and delete it (kubectl drain %s; kubectl delete node %s)", n, n, n)
}

// unlisted is the names of the Nodes in list that the run does not
// rotate, sorted.
func (c *Config) unlisted(list []corev1.Node) []string {
	in := map[string]bool{}
	for _, n := range c.nodeNames() {
		in[n] = true
	}
	var out []string
	for i := range list {
		if !in[list[i].Name] {
			out = append(out, list[i].Name)
		}
	}
	sort.Strings(out)
	return out
}

// UnlistedNodes is, for each Node in the cluster the run does not rotate,
// what to do about it (`rotate plan --live` prints them).
func UnlistedNodes(ctx context.Context, rt *Runtime) ([]string, error) {
	list, err := rt.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []string
	for _, n := range rt.Config.unlisted(list.Items) {
		out = append(out, unlistedAdvice(n))
	}
	return out, nil
}
