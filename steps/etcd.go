package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/kubeca/rotate/nodes"
	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/steps/fileedit"
)

// The etcd CA of a stacked etcd (kubeadm's `etcd local`: one member per
// control-plane node, a static pod with --client-cert-auth and
// --peer-client-cert-auth), rotated when the inventory lists etcd. Its
// steps ride in the phases of the cluster CA, in the same order:
//
//   - distribute: the new etcd CA and the bundle old+new next to kubeadm's
//     etcd/ca.crt on every control-plane node;
//   - apiserver-trust: etcd-trust-both, member by member: --trusted-ca-file
//     and --peer-trusted-ca-file name the bundle (etcd reads them only at
//     start: each member restarts, and its gate waits until it runs from
//     the new manifest, answers /health and the cluster has every member it
//     had, all healthy); then apiserver-trust-both also points the
//     apiserver's --etcd-cafile at the bundle;
//   - servers: etcd-certs re-issues each member's server, peer and
//     healthcheck-client certificates from the new CA (etcd reads its own
//     certificate at every handshake: no restart; the gate proves the
//     member presents the new one) and switch-issuance the apiserver's
//     apiserver-etcd-client;
//   - narrow-trust: etcd-narrow makes etcd/ca.crt the new CA and points
//     the members back at it, member by member; control-plane-canonical
//     does the same for --etcd-cafile; cleanup removes the added files.
//
// Members go one at a time and each gate waits for a quorate cluster with
// all its members healthy, so at most one member is ever down. External
// etcd (no etcd manifest on a control-plane node) is out of scope: the
// run refuses it at preflight.

// CAEtcd names the etcd CA's material in the state file.
const CAEtcd = "etcd"

// Etcd is the stacked etcd member's static pod. Its health is asked by
// etcdHealthy, not on a healthz port.
var Etcd = Component{Name: "etcd", Manifest: "etcd.yaml"}

// Files of the etcd CA, relative to the pki dir.
const (
	fileEtcdCACert     = "etcd/ca.crt"
	fileEtcdCAKey      = "etcd/ca.key"
	fileNewEtcdCACert  = "etcd/rotate-ca.crt"
	fileNewEtcdCAKey   = "etcd/rotate-ca.key"
	fileEtcdCABundle   = "etcd/rotate-ca-bundle.crt"
	fileEtcdHealthCert = "etcd/healthcheck-client.crt"
	fileEtcdHealthKey  = "etcd/healthcheck-client.key"
	keyEtcdMembers     = "prep/etcd-members"
)

// The certificates the etcd CA issues on each control-plane node (pki
// dir, without extension): the member's own, re-issued by etcd-certs, and
// the apiserver's client certificate, re-issued by switch-issuance.
var (
	etcdMemberLeaves  = []string{"etcd/server", "etcd/peer", "etcd/healthcheck-client"}
	etcdAPIServerLeaf = "apiserver-etcd-client"
)

// leaves are the certificates a control-plane node serves or presents
// that the run re-issues from its new CAs.
func (c *Config) leaves() []leafFile {
	out := append([]leafFile(nil), controlPlaneLeaves...)
	if c.Etcd {
		for _, n := range append(etcdMemberLeaves, etcdAPIServerLeaf) {
			out = append(out, leafFile{n, CAEtcd})
		}
	}
	return out
}

// ReissuedCerts is how many certificates preflight re-issues on the
// control-plane nodes, each with a new key like its old one.
func (c *Config) ReissuedCerts() int {
	return len(c.ControlPlane) * (len(c.leaves()) + len(edit.ControlPlaneKubeconfigs))
}

// rotateFiles are the files rotate adds next to kubeadm's in the pki dir
// (see layout.go) for this run; cleanup removes them.
func (c *Config) rotateFiles() []string {
	out := []string{fileNewCACert, fileNewCAKey, fileNewFPCACert, fileNewFPCAKey, fileCABundle, fileFPCABundle}
	if c.Etcd {
		out = append(out, fileNewEtcdCACert, fileNewEtcdCAKey, fileEtcdCABundle)
	}
	if c.ServiceAccount {
		out = append(out, fileNewSAKey, fileNewSAPub, fileSABundle)
	}
	return out
}

// etcdDistribute is what distribute adds on a control-plane node when the
// run rotates the etcd CA.
func (rt *Runtime) etcdDistribute(ctx context.Context) ([]fileedit.Edit, error) {
	if !rt.Config.Etcd {
		return nil, nil
	}
	pair, bundle, err := rt.caBundle(ctx, CAEtcd)
	if err != nil {
		return nil, err
	}
	c := rt.Config
	return []fileedit.Edit{
		fileedit.SetContent(c.pki(fileNewEtcdCACert), pair.NewCert, 0o644),
		fileedit.SetContent(c.pki(fileNewEtcdCAKey), pair.NewKey, 0o600),
		fileedit.SetContent(c.pki(fileEtcdCABundle), bundle, 0o644),
	}, nil
}

// etcdStep is a NodeEdit of the etcd member whose gates ask etcd itself
// (etcdHealthy) after the restart, if any.
type etcdStep struct {
	*NodeEdit
	// presentsNew: the gate also requires the member to serve a
	// certificate of the new etcd CA.
	presentsNew bool
}

func (s *etcdStep) Gate(ctx context.Context, rt *Runtime, t Target) error {
	return s.gate(ctx, rt, t, s.presentsNew)
}

// RevertGate waits for the restored member: restarted where the revert
// restarts it, healthy in a quorate cluster either way.
func (s *etcdStep) RevertGate(ctx context.Context, rt *Runtime, t Target) error {
	return s.gate(ctx, rt, t, false)
}

// gate is the step's restart gate (none without a restart), then etcd's.
func (s *etcdStep) gate(ctx context.Context, rt *Runtime, t Target, servesNew bool) error {
	if err := s.NodeEdit.Gate(ctx, rt, t); err != nil {
		return err
	}
	return rt.gates().Etcd(ctx, rt, t, servesNew)
}

// EtcdTrustBoth makes the member accept client and peer certificates of
// both etcd CAs.
func EtcdTrustBoth() Step {
	return &etcdStep{NodeEdit: &NodeEdit{StepName: "etcd-trust-both", Short: "etcd member trusts old+new etcd CAs",
		Restart: []Component{Etcd},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			b := rt.Config.pki(fileEtcdCABundle)
			return []fileedit.Edit{setFlags(rt, Etcd, map[string]string{"trusted-ca-file": b, "peer-trusted-ca-file": b})}, nil
		}}}
}

// EtcdCerts replaces the member's server, peer and healthcheck-client
// certificates by the prepared ones of the new etcd CA.
func EtcdCerts() Step {
	return &etcdStep{presentsNew: true, NodeEdit: &NodeEdit{StepName: "etcd-certs", Short: "etcd member's certificates from the new etcd CA",
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			return rt.preparedLeaves(ctx, t, etcdMemberLeaves...)
		},
		Notes: func(context.Context, *Runtime, Target) ([]string, error) {
			return []string{"etcd reads its certificates at every handshake: no restart; wait until the member serves the new one and the cluster is healthy"}, nil
		}}}
}

// EtcdNarrow makes etcd/ca.crt (and ca.key) the new etcd CA and points the
// member's trust back at it.
func EtcdNarrow() Step {
	return &etcdStep{NodeEdit: &NodeEdit{StepName: "etcd-narrow", Short: "etcd member trusts only the new etcd CA, at kubeadm's paths",
		Restart: []Component{Etcd},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			pair, err := rt.caPair(ctx, CAEtcd)
			if err != nil {
				return nil, err
			}
			c := rt.Config
			ca := c.pki(fileEtcdCACert)
			return []fileedit.Edit{
				fileedit.SetContent(ca, pair.NewCert, 0o644),
				fileedit.SetContent(c.pki(fileEtcdCAKey), pair.NewKey, 0o600),
				setFlags(rt, Etcd, map[string]string{"trusted-ca-file": ca, "peer-trusted-ca-file": ca}),
			}, nil
		}}}
}

// preparedLeaves writes the prepared certificate and key of each named
// leaf (pki-relative, without extension) on t.
func (rt *Runtime) preparedLeaves(ctx context.Context, t Target, names ...string) ([]fileedit.Edit, error) {
	var edits []fileedit.Edit
	for _, name := range names {
		for _, ext := range []string{".crt", ".key"} {
			v, ok, err := rt.Store.Value(ctx, prepKey(t.Node, name+ext))
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, fmt.Errorf("no prepared %s%s for %s", name, ext, t.Node)
			}
			mode := fs.FileMode(0o644)
			if ext == ".key" {
				mode = 0o600
			}
			edits = append(edits, fileedit.SetContent(rt.Config.pki(name+ext), v, mode))
		}
	}
	return edits, nil
}

// errExternalEtcd: the run lists etcd but a control-plane node runs no
// etcd member.
var errExternalEtcd = errors.New("external etcd: rotating its CA is out of scope (rotate rotates a stacked etcd, kubeadm's `etcd local`); remove etcd from the inventory's rotate list")

// etcdMember is what rotate needs of a node's etcd manifest.
type etcdMember struct {
	name      string // --name
	trustedCA string // --trusted-ca-file
	clientURL string // the first --listen-client-urls, as a local URL
}

// stackedEtcd reads the member's manifest on t, or fails with
// errExternalEtcd where there is none.
func (rt *Runtime) stackedEtcd(ctx context.Context, r nodes.Runner, t Target) (etcdMember, error) {
	p := rt.Config.manifest(Etcd)
	raw, err := r.ReadFile(ctx, p)
	if errors.Is(err, fs.ErrNotExist) {
		return etcdMember{}, fmt.Errorf("%s: no %s: %w", t.Node, p, errExternalEtcd)
	}
	if err != nil {
		return etcdMember{}, fmt.Errorf("read %s on %s: %w", p, t.Node, err)
	}
	flag := func(f string) (string, error) {
		v, ok, err := edit.ManifestFlag(raw, Etcd.Name, f)
		if err != nil {
			return "", fmt.Errorf("%s on %s: %w", p, t.Node, err)
		}
		if !ok || v == "" {
			return "", fmt.Errorf("%s on %s: etcd has no --%s (rotate rotates an etcd with client certificate authentication)", p, t.Node, f)
		}
		return v, nil
	}
	m := etcdMember{}
	for _, f := range []string{"client-cert-auth", "peer-client-cert-auth"} {
		v, err := flag(f)
		if err != nil {
			return m, err
		}
		if v != "true" {
			return m, fmt.Errorf("%s on %s: --%s=%s; rotate rotates an etcd with client certificate authentication", p, t.Node, f, v)
		}
	}
	if m.name, err = flag("name"); err != nil {
		return m, err
	}
	if m.trustedCA, err = flag("trusted-ca-file"); err != nil {
		return m, err
	}
	urls, err := flag("listen-client-urls")
	if err != nil {
		return m, err
	}
	for _, u := range strings.Split(urls, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil || pu.Scheme != "https" {
			continue
		}
		host := pu.Hostname()
		if host == "0.0.0.0" || host == "::" || host == "" {
			host = "127.0.0.1"
		}
		port, err := strconv.Atoi(pu.Port())
		if err != nil {
			port = 2379 // no port in the URL: etcd's client port
		}
		m.clientURL = "https://" + joinHostPort(host, port)
		break
	}
	if m.clientURL == "" {
		return m, fmt.Errorf("%s on %s: --listen-client-urls=%s has no https URL", p, t.Node, urls)
	}
	return m, nil
}

// etcdScript asks, on the node, with the node's healthcheck-client
// certificate: the local member's /health (trusting $localca), the member
// list, and the /health of every client URL given (trusting $ca). Each
// answer is one line: "<what> <body>" or "<what> curl exit N: <error>".
const etcdScript = `set -u
ca=$1; cert=$2; key=$3; localca=$4; local=$5; shift 5
q() {
  if [ $# -gt 2 ]; then
    out=$(curl -sS --max-time 5 --cacert "$1" --cert "$cert" --key "$key" -X POST -d "$3" "$2" 2>&1) || out="curl exit $?: $out"
  else
    out=$(curl -sS --max-time 5 --cacert "$1" --cert "$cert" --key "$key" "$2" 2>&1) || out="curl exit $?: $out"
  fi
  printf '%s\n' "$out" | tr '\n' ' '
  echo
}
printf 'local '; q "$localca" "$local/health"
printf 'members '; q "$ca" "$local/v3/cluster/member/list" '{}'
for u in "$@"; do printf 'health %s ' "$u"; q "$ca" "$u/health"; done
`

// etcdMemberList is the part of etcd's MemberListResponse (JSON of the
// gRPC gateway) the gate reads.
type etcdMemberList struct {
	Members []struct {
		ID         json.RawMessage `json:"ID"`
		Name       string          `json:"name"`
		ClientURLs []string        `json:"clientURLs"`
		IsLearner  bool            `json:"isLearner"`
	} `json:"members"`
}

// etcdView is one look at the etcd cluster from a member's node.
type etcdView struct {
	local   string            // the local member's /health answer
	members []string          // "id name", sorted
	urls    []string          // every member's first client URL
	health  map[string]string // client URL → /health answer
}

// etcdLook runs etcdScript on t's node.
func (rt *Runtime) etcdLook(ctx context.Context, r nodes.Runner, m etcdMember, localCA string, urls []string) (etcdView, error) {
	c := rt.Config
	args := append([]string{m.trustedCA, c.pki(fileEtcdHealthCert), c.pki(fileEtcdHealthKey), localCA, m.clientURL}, urls...)
	res, err := r.Run(ctx, nodes.ShCommand(etcdScript, args...), nil)
	if err != nil {
		return etcdView{}, err
	}
	v := etcdView{health: map[string]string{}}
	for _, line := range strings.Split(strings.TrimRight(string(res.Stdout), "\n"), "\n") {
		what, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch what {
		case "local":
			v.local = rest
		case "members":
			var l etcdMemberList
			if err := json.Unmarshal([]byte(rest), &l); err != nil {
				v.members = nil
				v.local += " (member list: " + firstLine([]byte(rest)) + ")"
				continue
			}
			for _, mem := range l.Members {
				v.members = append(v.members, strings.Trim(string(mem.ID), `"`)+" "+mem.Name)
				if len(mem.ClientURLs) > 0 {
					v.urls = append(v.urls, mem.ClientURLs[0])
				} else {
					v.urls = append(v.urls, "")
				}
			}
			sort.Strings(v.members)
		case "health":
			u, body, _ := strings.Cut(rest, " ")
			v.health[u] = strings.TrimSpace(body)
		}
	}
	return v, nil
}

// healthTrue: an etcd /health answer that says healthy.
func healthTrue(body string) bool {
	var h struct {
		Health string `json:"health"`
	}
	return json.Unmarshal([]byte(body), &h) == nil && h.Health == "true"
}

// etcdHealthy waits until, seen from t's node, the local member answers
// /health (serving a certificate of the new etcd CA when presentsNew), the
// cluster has exactly the members preflight recorded, each started and
// answering /health: a quorate cluster with every member healthy.
func (rt *Runtime) etcdHealthy(ctx context.Context, t Target, presentsNew bool) error {
	r, err := rt.node(ctx, t)
	if err != nil {
		return err
	}
	m, err := rt.stackedEtcd(ctx, r, t)
	if err != nil {
		return err
	}
	want, ok, err := rt.Store.Value(ctx, keyEtcdMembers)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("no etcd member list in the state file (phase preflight did not complete)")
	}
	localCA := m.trustedCA
	if presentsNew {
		localCA = rt.Config.pki(fileNewEtcdCACert)
	}
	var urls []string
	last := ""
	return rt.waitFor(ctx, "etcd on "+t.Node+" healthy, with every member", func(ctx context.Context) (bool, string, error) {
		v, err := rt.etcdLook(ctx, r, m, localCA, urls)
		if err != nil {
			if ctx.Err() != nil { // the deadline, not the node: say why it waited
				return false, last, nil
			}
			return false, "", err
		}
		prev := urls
		urls = v.urls
		done, why := etcdVerdict(v, string(want), prev, presentsNew)
		last = why
		return done, why, nil
	})
}

// etcdVerdict judges one etcdView: done, or why not yet. prev are the
// client URLs the look asked (those of the look before).
func etcdVerdict(v etcdView, want string, prev []string, presentsNew bool) (bool, string) {
	switch {
	case !healthTrue(v.local):
		what := "local member /health"
		if presentsNew {
			what += " (trusting only the new etcd CA)"
		}
		return false, what + ": " + v.local
	case strings.Join(v.members, ",") != want:
		return false, fmt.Sprintf("members %v, want those of preflight %v", v.members, strings.Split(want, ","))
	}
	for i, u := range v.urls {
		if u == "" {
			return false, "member " + v.members[i] + " has not started"
		}
	}
	if strings.Join(prev, ",") != strings.Join(v.urls, ",") {
		return false, "asking every member"
	}
	for _, u := range v.urls {
		if !healthTrue(v.health[u]) {
			return false, fmt.Sprintf("member at %s: /health %s", u, v.health[u])
		}
	}
	return true, ""
}

// EtcdMembers records, in preflight, the etcd members seen from the first
// control-plane node: every etcd gate wants exactly these members, each
// healthy. It refuses an external etcd, an unhealthy one, and one whose
// members are not one per control-plane node.
type EtcdMembers struct{ readOnly }

func (EtcdMembers) Name() string { return "etcd-members" }

func (EtcdMembers) Check(ctx context.Context, rt *Runtime, t Target) (bool, error) {
	_, ok, err := rt.Store.Value(ctx, keyEtcdMembers)
	return ok, err
}

// Preview is Apply: `rotate plan --live` refuses an external or unhealthy
// etcd as the run would, before it describes any etcd step.
func (s EtcdMembers) Preview(ctx context.Context, rt *Runtime, t Target) error {
	return s.Apply(ctx, rt, t)
}

func (EtcdMembers) Apply(ctx context.Context, rt *Runtime, t Target) error {
	first := Target{Node: rt.Config.ControlPlane[0], Role: RoleControlPlane}
	r, err := rt.node(ctx, first)
	if err != nil {
		return err
	}
	m, err := rt.stackedEtcd(ctx, r, first)
	if err != nil {
		return err
	}
	v, err := rt.etcdLook(ctx, r, m, m.trustedCA, nil)
	if err != nil {
		return err
	}
	if !healthTrue(v.local) || len(v.members) == 0 {
		return fmt.Errorf("etcd on %s: /health %s; the etcd CA is rotated only on a healthy cluster", first.Node, v.local)
	}
	if len(v.members) != len(rt.Config.ControlPlane) {
		return fmt.Errorf("etcd has %d members (%s), the inventory %d control-plane nodes: rotate rotates a stacked etcd with one member per control-plane node", len(v.members), strings.Join(v.members, ", "), len(rt.Config.ControlPlane))
	}
	rt.Out.Put(keyEtcdMembers, []byte(strings.Join(v.members, ",")))
	return nil
}

// etcdPreflight checks, on a control-plane node, that it runs a stacked
// etcd member and holds the old etcd CA the run recorded, and returns the
// new etcd CA.
func (rt *Runtime) etcdPreflight(ctx context.Context, r nodes.Runner, t Target) (*pki.CA, error) {
	if _, err := rt.stackedEtcd(ctx, r, t); err != nil {
		return nil, err
	}
	pair, err := rt.caPair(ctx, CAEtcd)
	if err != nil {
		return nil, err
	}
	p := rt.Config.pki(fileEtcdCACert)
	cur, err := r.ReadFile(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", p, t.Node, err)
	}
	if same, err := pki.BundleEqual(cur, pair.OldCert); err != nil || !same {
		return nil, fmt.Errorf("%s on %s is not the etcd CA of %s, where the run read it: every control-plane node must hold the same etcd CA", p, t.Node, rt.Config.ControlPlane[0])
	}
	return rt.newCA(ctx, CAEtcd)
}
