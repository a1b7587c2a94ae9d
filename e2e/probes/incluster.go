package probes

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// podIdentity is what a pod of the prober Deployment loaded when it
// started: the CA bundle from kube-root-ca.crt and a token bound to it.
type podIdentity struct {
	uid      types.UID
	name     string
	caPEM    []byte
	token    string
	issuedAt time.Time
	expires  time.Time
}

// inCluster emulates a client running in the prober pod. It loads its CA
// and token once per pod and reloads them only when the Deployment's
// current Ready pod is another one (after a rollout restart), and renews
// the token (not the CA) at 80% of its lifetime like the kubelet.
type inCluster struct {
	r    *Runner
	ns   string
	gen  int
	kube func() (kubernetes.Interface, error) // admin client (r.primaryKube)

	mu  sync.Mutex
	id  *podIdentity
	cs  clientSet
	err string
}

const tokenSeconds = 3607 // the kubelet's default projected token lifetime

func (r *Runner) startInCluster(ctx context.Context, _ kubernetes.Interface) {
	ic := &inCluster{r: r, ns: r.opts.Namespace, kube: r.primaryKube}
	r.goLoop(ctx, "in-cluster pod watch", r.opts.Interval, ic.refresh)
	for _, ep := range r.endpoints {
		pc := &podCheck{ic: ic}
		(&check{r: r, probe: ProbeInCluster, target: "pod -> " + ep.name, ep: ep,
			path:   "/api/v1/namespaces/" + ic.ns + "/configmaps",
			client: pc.client, interpret: pc.interpret}).run(ctx)
	}
}

// podCheck is the in-cluster client of one endpoint. It remembers the pod
// identity its last request used: the refresh loop may switch to a new pod
// while that request is in flight, and a 401 must be judged by the token
// that was sent. A check's ticks are sequential, so used needs no lock.
type podCheck struct {
	ic   *inCluster
	used *podIdentity
}

func (pc *podCheck) client(ctx context.Context, ep endpoint) (*http.Client, error) {
	c, id, err := pc.ic.client(ctx, ep)
	pc.used = id
	return c, err
}

func (pc *podCheck) interpret(ctx context.Context, class Class, _ int, _ []byte) (Class, string, bool) {
	return pc.ic.interpret(ctx, class, pc.used)
}

// refresh finds the Deployment's current Ready pod and reloads when it is
// a different pod.
func (ic *inCluster) refresh(ctx context.Context) {
	client, err := ic.kube()
	if err != nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, ic.r.opts.RequestTimeout)
	defer cancel()
	pod, err := currentReadyPod(rctx, client, ic.ns)
	if err != nil || pod == nil {
		return // the admin probe reports API trouble; keep the loaded identity
	}
	ic.mu.Lock()
	cur := ic.id
	ic.mu.Unlock()
	if cur != nil && cur.uid == pod.UID && time.Now().Before(cur.issuedAt.Add(time.Duration(float64(cur.expires.Sub(cur.issuedAt))*0.8))) {
		return
	}
	id := &podIdentity{uid: pod.UID, name: pod.Name}
	if cur != nil && cur.uid == pod.UID {
		id.caPEM = cur.caPEM // token renewal only: the CA was read at start
	} else {
		cm, err := client.CoreV1().ConfigMaps(ic.ns).Get(rctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			ic.note(fmt.Sprintf("pod %s: read kube-root-ca.crt: %v", pod.Name, err))
			return
		}
		id.caPEM = []byte(cm.Data["ca.crt"])
	}
	exp := int64(tokenSeconds)
	tr, err := client.CoreV1().ServiceAccounts(ic.ns).CreateToken(rctx, ProberName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		ic.note(fmt.Sprintf("pod %s: token request: %v", pod.Name, err))
		return
	}
	id.token = tr.Status.Token
	id.issuedAt = time.Now()
	id.expires = tr.Status.ExpirationTimestamp.Time
	if !id.expires.After(id.issuedAt) {
		id.expires = id.issuedAt.Add(time.Hour)
	}
	ic.mu.Lock()
	ic.id = id
	ic.gen++
	ic.mu.Unlock()
	if cur == nil || cur.uid != pod.UID {
		ic.r.rec.event(time.Now(), ProbeInCluster, "pod", fmt.Sprintf("pod %s (%s) started: loaded CA %s and a bound token", pod.Name, pod.UID, certIDs(id.caPEM)))
	}
}

func (ic *inCluster) note(msg string) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if msg != ic.err {
		ic.err = msg
		ic.r.rec.event(time.Now(), ProbeInCluster, "pod", msg)
	}
}

// client returns the pod's client for ep and the identity it carries
// (nil, nil before the pod started).
func (ic *inCluster) client(_ context.Context, ep endpoint) (*http.Client, *podIdentity, error) {
	ic.mu.Lock()
	id, gen := ic.id, ic.gen
	ic.mu.Unlock()
	if id == nil {
		return nil, nil, nil
	}
	cfg := &rest.Config{Host: ep.base, BearerToken: id.token, TLSClientConfig: rest.TLSClientConfig{CAData: id.caPEM}}
	c, err := ic.cs.get(cfg, gen, ep.base)
	return c, id, err
}

// interpret: a 401 for a token whose pod was deleted is the old pod's
// death, not a failure (the real process is gone by then). id is the
// identity the request carried.
func (ic *inCluster) interpret(ctx context.Context, class Class, id *podIdentity) (Class, string, bool) {
	if class != Unauthorized || id == nil {
		return class, "", false
	}
	client, err := ic.kube()
	if err != nil {
		return class, "", false
	}
	pod, err := client.CoreV1().Pods(ic.ns).Get(ctx, id.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err), err == nil && (pod.UID != id.uid || pod.DeletionTimestamp != nil):
		return class, fmt.Sprintf("token bound to pod %s which is gone", id.name), true
	case err != nil:
		return class, fmt.Sprintf("token of pod %s (%s, issued %s); its pod could not be read: %v", id.name, id.uid, id.issuedAt.Format("15:04:05.000"), err), false
	}
	return class, fmt.Sprintf("token of pod %s (%s, issued %s), which exists", id.name, id.uid, id.issuedAt.Format("15:04:05.000")), false
}

// currentReadyPod returns the newest Ready, not terminating pod of the
// prober Deployment (nil if none).
func currentReadyPod(ctx context.Context, client kubernetes.Interface, ns string) (*v1.Pod, error) {
	list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: proberSelector})
	if err != nil {
		return nil, err
	}
	var ready []v1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != v1.PodRunning {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == v1.PodReady && c.Status == v1.ConditionTrue {
				ready = append(ready, p)
			}
		}
	}
	if len(ready) == 0 {
		return nil, nil
	}
	sort.Slice(ready, func(i, j int) bool {
		return ready[i].CreationTimestamp.After(ready[j].CreationTimestamp.Time)
	})
	return &ready[0], nil
}
