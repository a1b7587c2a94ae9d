package probes

import (
	"context"
	"net/http"
	"strings"
)

// credClient returns a check client function for a credential source.
func credClient(src *credSource) func(context.Context, endpoint) (*http.Client, error) {
	var cs clientSet
	return func(_ context.Context, ep endpoint) (*http.Client, error) {
		cfg, gen, err := src.current()
		if err != nil {
			return nil, err
		}
		return cs.get(cfg, gen, ep.base)
	}
}

func target(cred string, ep endpoint) string { return cred + " -> " + ep.name }

// startAdmin: every control-plane node's admin.conf against every
// apiserver and the LB: GET /api/v1/namespaces/default.
func (r *Runner) startAdmin(ctx context.Context) {
	for _, src := range r.admins {
		client := credClient(src)
		for _, ep := range r.endpoints {
			(&check{r: r, probe: ProbeAdmin, target: target(src.name, ep), ep: ep,
				path: "/api/v1/namespaces/default", client: client}).run(ctx)
		}
	}
}

// startNode: each node's kubelet credentials (kubelet.conf and the
// client certificate it refers to, re-read when they change) against the
// server in kubelet.conf and every apiserver: GET /api/v1/nodes/NAME.
func (r *Runner) startNode(ctx context.Context) {
	for _, n := range r.cluster.Nodes {
		src := r.newSource(ProbeNode, "kubelet.conf("+n.Name+")", kubeconfigLoader(nodeFSOf(n), nodeEtcKubernetes+"/kubelet.conf"))
		client := credClient(src)
		eps := append([]endpoint(nil), r.endpoints...)
		// The kubelet itself talks to the server in kubelet.conf; if that
		// is not one of the known endpoints, probe it too.
		if cfg, _, err := src.current(); err == nil && !knownEndpoint(eps, cfg.Host) {
			eps = append(eps, endpoint{name: "kubelet.conf server " + hostOf(cfg.Host), base: strings.TrimRight(cfg.Host, "/")})
		}
		for _, ep := range eps {
			(&check{r: r, probe: ProbeNode, target: target(src.name, ep), ep: ep,
				path: "/api/v1/nodes/" + n.Name, client: client}).run(ctx)
		}
	}
}

func knownEndpoint(eps []endpoint, host string) bool {
	host = strings.TrimRight(host, "/")
	for _, ep := range eps {
		if ep.base == host {
			return true
		}
	}
	return false
}

// startNodeProxy: through every apiserver and the LB with the primary
// admin credentials, GET /api/v1/nodes/NAME/proxy/healthz: the apiserver
// dials the node agent with its apiserver-kubelet-client certificate,
// which the agent verifies against its clientCAFile.
func (r *Runner) startNodeProxy(ctx context.Context) {
	client := credClient(r.primary)
	for _, n := range r.cluster.Nodes {
		for _, ep := range r.endpoints {
			(&check{r: r, probe: ProbeNodeProxy, target: "apiserver " + ep.name + " -> kubelet " + n.Name, ep: ep,
				path: "/api/v1/nodes/" + n.Name + "/proxy/healthz", client: client}).run(ctx)
			if !ep.direct {
				continue
			}
			// /pods is served by the kubelet's authenticated and
			// authorized API (nodes/proxy), not only its health handler.
			(&check{r: r, probe: ProbeNodeProxy, target: "apiserver " + ep.name + " -> kubelet " + n.Name + " /pods", ep: ep,
				path: "/api/v1/nodes/" + n.Name + "/proxy/pods", client: client}).run(ctx)
		}
	}
}
