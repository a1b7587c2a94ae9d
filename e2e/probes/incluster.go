package probes

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubeca/rotate/pki"
)

// podIdentity is what a pod of the prober Deployment uses: the CA bundle
// from kube-root-ca.crt, loaded when it started, and the service-account
// token the kubelet mounted for it, as last read.
type podIdentity struct {
	uid      types.UID
	name     string
	node     string
	caPEM    []byte
	token    string
	keyID    string    // the token's signing key
	issuedAt time.Time // the token's iat
	readAt   time.Time
}

// inCluster emulates a client-go client running in the prober pod: it
// loads its CA once per pod (rest.InClusterConfig) and reads the token the
// kubelet wrote into the pod's projected volume, re-reading it every
// tokenReread (client-go's cached file token source) — so it sees what
// the real kubelet does with the pod's token (re-issues it at 80 % of its
// lifetime and whenever the kubelet restarts) no sooner than a real pod
// would. It switches to another pod only when the Deployment's current
// Ready pod is another one (after a rollout restart).
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

// tokenReread is how often a client re-reads its token file: client-go
// re-reads every minute less a 10 s leeway; the probe takes the full
// minute, the slower of the two.
const tokenReread = time.Minute

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

// refresh finds the Deployment's current Ready pod: for another pod it
// loads the CA and the token; for the same pod it re-reads the token file
// once tokenReread has passed.
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
	samePod := cur != nil && cur.uid == pod.UID
	if samePod && time.Since(cur.readAt) < tokenReread {
		return
	}
	id := &podIdentity{uid: pod.UID, name: pod.Name, node: pod.Spec.NodeName}
	if samePod {
		id.caPEM = cur.caPEM // the CA was read at start
	} else {
		cm, err := client.CoreV1().ConfigMaps(ic.ns).Get(rctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			ic.note(fmt.Sprintf("pod %s: read kube-root-ca.crt: %v", pod.Name, err))
			return
		}
		id.caPEM = []byte(cm.Data["ca.crt"])
	}
	tok, err := ic.r.podToken(rctx, pod)
	if err != nil {
		ic.note(fmt.Sprintf("pod %s: read its token on %s: %v", pod.Name, pod.Spec.NodeName, err))
		return
	}
	id.token, id.readAt = tok.token, time.Now()
	id.keyID, id.issuedAt = tok.keyID, tok.issuedAt
	ic.mu.Lock()
	changed := !samePod || cur.token != id.token
	if changed {
		ic.gen++
	}
	ic.id = id
	ic.mu.Unlock()
	switch {
	case !samePod:
		ic.r.rec.event(time.Now(), ProbeInCluster, "pod", fmt.Sprintf("pod %s (%s) on %s started: loaded CA %s and its token (key %s, issued %s)",
			pod.Name, pod.UID, id.node, certIDs(id.caPEM), id.keyID, id.issuedAt.Format("15:04:05")))
	case changed:
		ic.r.rec.event(time.Now(), ProbeInCluster, "pod", fmt.Sprintf("pod %s: the kubelet re-issued its token (key %s, issued %s); re-read",
			pod.Name, id.keyID, id.issuedAt.Format("15:04:05")))
	}
}

// mountedToken is a pod's service-account token as the kubelet wrote it.
type mountedToken struct {
	token    string
	keyID    string
	issuedAt time.Time
}

// podToken reads the token of pod's default service-account volume
// (kube-api-access-*) inside its node's mount namespace, where the kubelet
// mounted the volume's tmpfs.
func (r *Runner) podToken(ctx context.Context, pod *v1.Pod) (mountedToken, error) {
	if pod.Spec.NodeName == "" {
		return mountedToken{}, fmt.Errorf("pod %s is not on a node", pod.Name)
	}
	script := `cat "/var/lib/kubelet/pods/$1/volumes/kubernetes.io~projected/"kube-api-access-*/token`
	out, err := exec.CommandContext(ctx, "nsenter", "--mount="+r.cluster.MountNS(pod.Spec.NodeName), "--",
		"sh", "-c", script, "sh", string(pod.UID)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return mountedToken{}, err
	}
	t := mountedToken{token: strings.TrimSpace(string(out))}
	if t.keyID, err = pki.TokenKeyID(t.token); err != nil {
		return mountedToken{}, err
	}
	t.issuedAt = tokenIssuedAt(t.token)
	return t, nil
}

// tokenIssuedAt is a JWT's iat claim (zero when it has none).
func tokenIssuedAt(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var c struct {
		Iat int64 `json:"iat"`
	}
	if json.Unmarshal(raw, &c) != nil || c.Iat == 0 {
		return time.Time{}
	}
	return time.Unix(c.Iat, 0)
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
		return class, fmt.Sprintf("token of pod %s (%s, key %s, issued %s); its pod could not be read: %v", id.name, id.uid, id.keyID, id.issuedAt.Format("15:04:05"), err), false
	}
	return class, fmt.Sprintf("token of pod %s (%s, key %s, issued %s, read %s), which exists", id.name, id.uid, id.keyID, id.issuedAt.Format("15:04:05"), id.readAt.Format("15:04:05.000")), false
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
