package steps

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/kubeca/rotate/nodes"
)

// The baseline is what verify's checks found before the run changed
// anything, so that verify (phase 11) fails only on what the rotation broke
// and lists what was already broken as pre-existing. Preflight records it,
// check by check, in the form each check can take while the cluster still
// runs on the old CAs:
//
//  1. apiserver serves and accepts the new CA → the apiserver on each
//     control-plane node completes a TLS handshake rotate trusts and, where
//     the operator's kubeconfig has a client certificate, accepts it on /api
//     (checkAPIServer; nodes-reachable). Its serving certificate's issuer
//     has no baseline.
//  2. apiserver → kubelet and kubelet client certificates → /healthz
//     through the node proxy (checkNodeProxy) and the kubelet's client
//     certificate readable (checkKubeletClientCert), per node
//     (nodes-reachable). The issuer has no baseline.
//  3. control-plane kubeconfigs and leaf certificates: no baseline;
//     prepare-certs reads and parses every one of them, so a run that
//     reached verify had them all.
//  4. nodes Ready, APIServices Available (checkNodeReady, checkAPIService;
//     cluster-healthy, which also requires them, so they are recorded as
//     passed); kube-root-ca.crt: no baseline, the publication phase
//     already required it everywhere.
//
// What preflight requires stays fatal there; everything else is recorded,
// not fatal. A finding whose check has no baseline entry (a check about the
// new CAs, or a run whose preflight ran under a rotate that recorded no
// baseline) is always a regression, as before baselines existed.
type baseline map[string]string // check id → "" if it passed, else why not

// Check ids name what one verify check proves about one target, so that a
// finding at verify can be compared with the same check before the run
// (the baseline). They are stored in state files: do not rename them.
func checkAPIServer(node string) string         { return "apiserver/" + node }
func checkNodeProxy(node string) string         { return "node-proxy/" + node }
func checkKubeletClientCert(node string) string { return "kubelet-client-cert/" + node }
func checkNodeReady(node string) string         { return "node-ready/" + node }
func checkAPIService(name string) string        { return "apiservice/" + name }

// State keys of the baseline: one per node (written by nodes-reachable on
// that node) and one for the cluster (written by cluster-healthy).
const keyBaselineCluster = "baseline/cluster"

func baselineNodeKey(node string) string { return "baseline/node/" + node }

// record sets check's outcome.
func (b baseline) record(check string, err error) {
	b[check] = ""
	if err != nil {
		b[check] = err.Error()
	}
}

// put stores b under key with the step's checkpoint and tells the operator
// about every check that failed: recorded, not fatal.
func (b baseline) put(rt *Runtime, key string) error {
	raw, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("baseline %s: %w", key, err)
	}
	rt.Out.Put(key, raw)
	for _, check := range slices.Sorted(maps.Keys(b)) {
		if why := b[check]; why != "" {
			rt.Printf("baseline: %s already fails before the rotation (%s); recorded, not fatal: verify lists it as pre-existing if it still fails", check, why)
		}
	}
	return nil
}

// pendingBaseline is a node's baseline of verify's checks 1 and 2 (see
// baseline) in the making: the checks that need no SSH started.
type pendingBaseline struct {
	done             chan struct{}
	proxy, apiserver error
}

// startBaseline starts, on node t before anything changes, the checks of
// its baseline that go over the API and TLS (the kubelet through the node
// proxy, a control-plane node's apiserver): NodesReachable runs them
// while it dials and reads the node. finish, or wait, must follow.
func (rt *Runtime) startBaseline(ctx context.Context, t Target) *pendingBaseline {
	p := &pendingBaseline{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		_ = together(
			func() error { p.proxy = rt.kubeletHealthz(ctx, t.Node); return nil },
			func() error {
				if t.Role == RoleControlPlane {
					p.apiserver = rt.apiServerReachable(ctx, t.Node)
				}
				return nil
			})
	}()
	return p
}

// wait returns once the checks started are over.
func (p *pendingBaseline) wait() { <-p.done }

// finish reads the kubelet's client certificate through r and, with the
// checks started, makes the baseline, to be put under
// baselineNodeKey(t.Node).
func (p *pendingBaseline) finish(ctx context.Context, rt *Runtime, t Target, r nodes.Runner) (baseline, error) {
	_, cert := rt.readKubeletClientCert(ctx, r, t.Node)
	p.wait()
	b := baseline{}
	b.record(checkNodeProxy(t.Node), p.proxy)
	b.record(checkKubeletClientCert(t.Node), cert)
	if t.Role == RoleControlPlane {
		b.record(checkAPIServer(t.Node), p.apiserver)
	}
	if err := ctx.Err(); err != nil {
		// Cut short: what failed may have failed for that reason alone.
		return nil, fmt.Errorf("baseline of %s: %w", t.Node, err)
	}
	return b, nil
}

// apiServerReachable is check 1 as it can be made before the rotation.
func (rt *Runtime) apiServerReachable(ctx context.Context, node string) error {
	addr := rt.Config.APIServerEndpoint(node)
	if _, err := rt.servingCert(ctx, addr); err != nil {
		return fmt.Errorf("apiserver %s: %w", node, err)
	}
	if rt.AdminCert == nil {
		// Token or exec credentials: no client certificate to offer, and
		// /api would answer 401 although nothing is wrong.
		return nil
	}
	if err := rt.getAPI(ctx, rt.Trust.HTTPClient(), addr); err != nil {
		return fmt.Errorf("apiserver %s rejects the kubeconfig's client certificate: %w", node, err)
	}
	return nil
}

// loadBaseline reads what preflight recorded for the cluster and every
// node. State written by a rotate that recorded no baseline (a run started
// by an older binary and resumed by this one) has none of these keys: the
// baseline is then empty and every finding is a regression, exactly as
// verify behaved before baselines.
func (rt *Runtime) loadBaseline(ctx context.Context) (baseline, error) {
	b := baseline{}
	keys := []string{keyBaselineCluster}
	for _, n := range rt.Config.nodeNames() {
		keys = append(keys, baselineNodeKey(n))
	}
	for _, k := range keys {
		raw, ok, err := rt.Store.Value(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", k, err)
		}
		if !ok {
			continue
		}
		var part baseline
		if err := json.Unmarshal(raw, &part); err != nil {
			return nil, fmt.Errorf("read %s: %w", k, err)
		}
		maps.Copy(b, part)
	}
	return b, nil
}

// baselineFailure says why check already failed before the run ("" if it
// passed, or if preflight recorded no baseline for it).
func (rt *Runtime) baselineFailure(ctx context.Context, check string) (string, error) {
	b, err := rt.loadBaseline(ctx)
	if err != nil {
		return "", err
	}
	return b[check], nil
}

// split sorts findings into regressions (the check passed at baseline, or
// has no baseline) and pre-existing problems (it failed at baseline too).
func (b baseline) split(found []finding) (regressions, preExisting []string) {
	for _, f := range found {
		if why := b[f.check]; f.check != "" && why != "" {
			preExisting = append(preExisting, f.problem+" (already failing before the rotation)")
		} else {
			regressions = append(regressions, f.problem)
		}
	}
	return regressions, preExisting
}
