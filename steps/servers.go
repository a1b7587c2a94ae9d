package steps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sort"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeca/rotate/pki"
)

// Webhook and aggregated API servers whose serving certificate chains to
// an old CA: their caBundle must keep the old CA until they are
// re-issued, and narrowing leaves it (see narrowedBundle), but the
// operator should re-issue them. Verify finds them by dialing each server
// behind a caBundle the way the apiserver reaches it: a Service by its
// cluster IP and port, a URL by its host and port, through an SSH
// direct-tcpip channel from the first control-plane node (the operator's
// machine usually cannot reach cluster IPs; the control-plane nodes run
// the apiserver that calls these servers, so what they reach is what
// matters). The TLS handshake sends the Service's DNS name as SNI, as the
// apiserver does, and trusts nothing: the chain is read, not verified.

// serverProbeTimeout bounds one server's dial and handshake.
const serverProbeTimeout = 10 * time.Second

// oldCAServers lists every server behind a caBundle that presents a
// certificate chain an old CA issued, and every one that could not be
// checked, as hold report lines.
func (rt *Runtime) oldCAServers(ctx context.Context) ([]string, error) {
	refs, err := rt.caBundleRefs(ctx)
	if err != nil {
		return nil, err
	}
	olds, err := rt.oldCAs(ctx)
	if err != nil {
		return nil, err
	}
	via := rt.probeNode()
	seen := map[serverRef]string{} // server → its finding ("" for none)
	var out []string
	for _, r := range refs {
		if r.server == (serverRef{}) {
			continue
		}
		finding, ok := seen[r.server]
		if !ok {
			finding, _ = rt.probeServer(ctx, via, r.server, olds)
			seen[r.server] = finding
		}
		if finding != "" {
			out = append(out, fmt.Sprintf("%s: %s %s", r.id(), r.server, finding))
		}
	}
	sort.Strings(out)
	return out, nil
}

// probeServer dials s from node via and says what an old CA has to do
// with its certificate chain ("" for nothing); old reports that an old CA
// issued part of the chain.
func (rt *Runtime) probeServer(ctx context.Context, via string, s serverRef, olds []oldCA) (finding string, old bool) {
	addr, sni := s.hostPort, ""
	if addr == "" {
		svc, err := rt.Kube.CoreV1().Services(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
		if err != nil {
			return fmt.Sprintf("not checked: %v", err), false
		}
		ip := svc.Spec.ClusterIP
		if ip == "" || ip == "None" {
			return "not checked: the Service has no cluster IP", false
		}
		addr, sni = net.JoinHostPort(ip, strconv.FormatInt(s.port, 10)), s.name+"."+s.namespace+".svc"
	} else if h, _, err := net.SplitHostPort(addr); err == nil && net.ParseIP(h) == nil {
		sni = h
	}
	chain, err := rt.serverChain(ctx, via, addr, sni)
	if err != nil {
		return fmt.Sprintf("not checked: %v", err), false
	}
	for _, ca := range olds {
		for _, c := range chain {
			if issuedByAny(c, ca.old) {
				return fmt.Sprintf("presents %s, issued by the old %s CA: re-issue it from the new CA (and put the new CA in this caBundle) before resuming", pki.Describe(chain[0]), ca.name), true
			}
		}
	}
	return "", false
}

// serverChain is the certificate chain the TLS server at addr presents to
// a client dialing from node via, sending sni.
func (rt *Runtime) serverChain(ctx context.Context, via, addr, sni string) ([]*x509.Certificate, error) {
	if rt.NodeDial == nil || via == "" {
		return nil, fmt.Errorf("no node to dial %s from", addr)
	}
	ctx, cancel := context.WithTimeout(ctx, serverProbeTimeout)
	defer cancel()
	conn, err := rt.NodeDial(ctx, via, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	// Nothing is trusted or sent: the chain is only read.
	tc := tls.Client(conn, &tls.Config{ServerName: sni, InsecureSkipVerify: true}) // read, never trusted
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake with %s (from %s): %w", addr, via, err)
	}
	chain := tc.ConnectionState().PeerCertificates
	_ = tc.Close()
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s presents no certificate", addr)
	}
	return chain, nil
}

// probeNode is the node servers are dialed from: the first control-plane
// node ("" for none).
func (rt *Runtime) probeNode() string {
	if len(rt.Config.ControlPlane) == 0 {
		return ""
	}
	return rt.Config.ControlPlane[0]
}
