package plans

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kubeca/rotate/nodes"
)

var knownPhases = map[string]bool{}

// validator collects the problems of a defaulted inventory, one method per
// section of the file, each going through its fields in a fixed order.
type validator struct {
	inv  *Inventory
	root *yaml.Node
	// checkLocal enables the checks of this machine: referenced files,
	// the ssh-agent.
	checkLocal bool
	// problems starts with the decoder's (wrong types, unknown fields).
	problems []Problem
	decoded  int
}

func (v *validator) add(field, format string, args ...any) {
	if v.undecoded(field) {
		return
	}
	v.problems = append(v.problems, Problem{Field: field, Line: lineOf(v.root, field), Msg: fmt.Sprintf(format, args...)})
}

// undecoded reports whether field already has a problem from decoding (a
// wrong type), so its zero value is not reported again.
func (v *validator) undecoded(field string) bool {
	for _, p := range v.problems[:v.decoded] {
		if p.Field == field {
			return true
		}
	}
	return false
}

// addLocal records a problem of this machine (see Problem.Local).
func (v *validator) addLocal(field string, err error) {
	v.problems = append(v.problems, Problem{Field: field, Line: lineOf(v.root, field), Msg: err.Error(), Local: true})
}

func (v *validator) validate() {
	v.decoded = len(v.problems)
	v.header()
	v.cluster()
	v.kubernetes()
	v.ssh()
	v.nodes()
	v.paths()
	v.kubelet()
	v.rotate()
	v.newCA()
	v.rollout()
	v.topology()
	v.discover()
	v.extraKubeconfigs()
}

func (v *validator) header() {
	if v.inv.APIVersion != APIVersion {
		v.add("apiVersion", "must be %q, got %q", APIVersion, v.inv.APIVersion)
	}
	if v.inv.Kind != Kind {
		v.add("kind", "must be %q, got %q", Kind, v.inv.Kind)
	}
}

func (v *validator) cluster() {
	if v.inv.Cluster.Name == "" {
		v.add("cluster.name", "required")
	}
}

func (v *validator) kubernetes() {
	if v.inv.Kubernetes.Kubeconfig == "" {
		v.add("kubernetes.kubeconfig", "required: path of an admin kubeconfig")
		return
	}
	v.localFile("kubernetes.kubeconfig", v.inv.Kubernetes.Kubeconfig, "")
}

// ssh checks the values the global section sets; what a node uses of them
// is checked per node (node, nodeAuth).
func (v *validator) ssh() {
	v.sshValues("ssh", v.inv.SSH)
}

// sshValues checks the values set at one level (ssh, or a node).
func (v *validator) sshValues(field string, s SSHSpec) {
	if s.Port != nil && (*s.Port < 1 || *s.Port > 65535) {
		v.add(field+".port", "%d is not a TCP port (1-65535)", *s.Port)
	}
	for _, d := range []struct {
		key string
		d   time.Duration
	}{{"dialTimeout", s.DialTimeout}, {"commandTimeout", s.CommandTimeout}} {
		if d.d < 0 {
			v.add(field+"."+d.key, "must be positive, got %s", d.d)
		}
	}
	if j := s.JumpHost; j != nil {
		switch {
		case j.Address == "":
			v.add(field+".jumpHost.address", "required")
		case !validHost(j.Address):
			v.add(field+".jumpHost.address", "%q is neither an IP address nor a valid DNS name", j.Address)
		}
		if j.Port != nil && !validPort(*j.Port) {
			v.add(field+".jumpHost.port", "%d is not a TCP port (1-65535)", *j.Port)
		}
		if j.IdentityFile != "" {
			v.localFile(field+".jumpHost.identityFile", j.IdentityFile, "")
		}
	}
}

func (v *validator) nodes() {
	ns := v.inv.Nodes
	if len(ns.ControlPlane) == 0 {
		v.add("nodes.controlPlane", "at least one control-plane node is required")
	}
	names := map[string]string{}     // name -> field
	endpoints := map[string]string{} // address:port -> field
	for _, n := range nodeFields(ns) {
		v.node(n.field, n.spec, names, endpoints)
	}
}

func (v *validator) node(field string, n NodeSpec, names, endpoints map[string]string) {
	switch {
	case n.Name == "":
		v.add(field+".name", "required")
	case net.ParseIP(n.Name) != nil:
		v.add(field+".name", "%q is an IP address: name is the Kubernetes Node name (kubectl get nodes); the IP goes under address", n.Name)
	case !validNodeName(n.Name):
		v.add(field+".name", "%q is not a valid Kubernetes node name (lower case RFC 1123)", n.Name)
	case names[n.Name] != "":
		v.add(field+".name", "duplicate node name %q (also %s)", n.Name, names[n.Name])
	default:
		names[n.Name] = field
	}
	addressOK := false
	switch {
	case n.Address == "":
		v.add(field+".address", "required")
	case !validHost(n.Address):
		why := ""
		if allDigits(lastLabel(n.Address)) {
			why = " (a name ending in a number is read as an IPv4 address)"
		}
		v.add(field+".address", "%q is neither an IP address nor a valid DNS name%s", n.Address, why)
	default:
		addressOK = true
	}
	v.sshValues(field, n.SSHSpec)
	c := v.inv.mergeSSH(n)
	if addressOK && c.Port >= 1 && c.Port <= 65535 {
		ep := net.JoinHostPort(canonicalHost(n.Address), strconv.Itoa(c.Port))
		if prev := endpoints[ep]; prev != "" {
			v.add(field+".address", "duplicate SSH endpoint %s (also %s): each node needs its own address or port", ep, prev)
		} else {
			endpoints[ep] = field
		}
	}
	v.nodeAuth(field, n, c)
}

// nodeAuth checks what the node authenticates and verifies with, naming
// the field the setting came from: the node's own or the global ssh one.
func (v *validator) nodeAuth(field string, n NodeSpec, c nodes.Config) {
	from := func(set bool, key string) string {
		if set {
			return field + "." + key
		}
		return "ssh." + key
	}
	if !c.UseAgent && c.IdentityFile == "" {
		v.add(field+".identityFile", "required unless useAgent is true (set ssh.identityFile or the node's)")
	}
	if c.IdentityFile != "" {
		v.localFile(from(n.IdentityFile != "", "identityFile"), c.IdentityFile, "")
	}
	if c.UseAgent && v.checkLocal {
		if err := nodes.CheckAgentSocket(); err != nil {
			v.addLocal(from(n.UseAgent != nil, "useAgent"), fmt.Errorf("useAgent is true but %w", err))
		}
	}
	khField := from(n.KnownHostsFile != "", "knownHostsFile")
	if v.localFile(khField, c.KnownHostsFile, " (host keys are always verified; see --insecure-ignore-host-keys)") {
		if err := nodes.CheckKnownHosts(c.KnownHostsFile); err != nil {
			v.addLocal(khField, fmt.Errorf("not a usable known_hosts file: %w", err))
		}
	}
}

// localFile checks that a file of this machine (p as written, or already
// resolved) can be read, and reports whether it can. Without checkLocal it
// only resolves p.
func (v *validator) localFile(field, p, hint string) bool {
	abs, err := v.inv.resolvePath(p)
	if err != nil {
		v.add(field, "%v", err)
		return false
	}
	if !v.checkLocal {
		return false
	}
	if err := fileReadable(abs); err != nil {
		v.addLocal(field, fmt.Errorf("%w%s", err, hint))
		return false
	}
	return true
}

func fileReadable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("file %s does not exist", p)
		}
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory, not a file", p)
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", p, err)
	}
	f.Close()
	return nil
}

func (v *validator) paths() {
	p := v.inv.Paths
	for _, f := range []struct{ field, value string }{
		{"paths.kubernetesDir", p.KubernetesDir},
		{"paths.pkiDir", p.PKIDir},
		{"paths.manifestsDir", p.ManifestsDir},
		{"paths.kubeletConfig", p.KubeletConfig},
		{"paths.kubeletPKIDir", p.KubeletPKIDir},
		{"paths.backupDir", p.BackupDir},
	} {
		if !strings.HasPrefix(f.value, "/") {
			v.add(f.field, "must be an absolute path on the node, got %q", f.value)
		}
	}
	if path.Clean(p.BackupDir) == "/" {
		v.add("paths.backupDir", "must be a directory below / (the kubelet markers go next to it)")
	}
}

func (v *validator) kubelet() {
	if strings.TrimSpace(v.inv.Kubelet.RestartCommand) == "" {
		v.add("kubelet.restartCommand", "must not be empty")
	}
}

func (v *validator) newCA() {
	ca := v.inv.NewCA
	switch {
	case ca.Generate != nil && ca.Files != nil:
		v.add("newCA", "set either generate or files, not both")
	case ca.Files != nil:
		for _, f := range v.caFiles(ca.Files) {
			if f.value == "" {
				v.add("newCA.files."+f.key, "required")
			} else {
				v.localFile("newCA.files."+f.key, f.value, "")
			}
		}
		switch k := ca.Files.ServiceAccountKey; {
		case k != "" && !v.inv.rotates(RootServiceAccount):
			v.add("newCA.files.serviceAccountKey", "set, but rotate does not list service-account")
		case k != "":
			v.localFile("newCA.files.serviceAccountKey", k, "")
		}
	default:
		g := ca.Generate
		switch g.Algorithm {
		case "ECDSA-P256", "RSA-2048", "RSA-3072", "RSA-4096":
		default:
			v.add("newCA.generate.algorithm", "%q is not one of ECDSA-P256, RSA-2048, RSA-3072, RSA-4096", g.Algorithm)
		}
		if g.Validity < 24*time.Hour {
			v.add("newCA.generate.validity", "%s is too short for a CA (at least 24h)", g.Validity)
		}
		if g.ClusterCommonName == g.FrontProxyCommonName {
			v.add("newCA.generate.frontProxyCommonName", "must differ from clusterCommonName %q", g.ClusterCommonName)
		}
		if v.inv.rotates(RootEtcd) && (g.EtcdCommonName == g.ClusterCommonName || g.EtcdCommonName == g.FrontProxyCommonName) {
			v.add("newCA.generate.etcdCommonName", "must differ from clusterCommonName and frontProxyCommonName")
		}
	}
}

// caFiles is newCA.files in the documented order: the etcd CA's only
// when the run rotates it (and then they are required like the others).
func (v *validator) caFiles(f *CAFilesSpec) []struct{ key, value string } {
	out := []struct{ key, value string }{
		{"clusterCert", f.ClusterCert},
		{"clusterKey", f.ClusterKey},
		{"frontProxyCert", f.FrontProxyCert},
		{"frontProxyKey", f.FrontProxyKey},
	}
	if v.inv.rotates(RootEtcd) {
		out = append(out, []struct{ key, value string }{{"etcdCert", f.EtcdCert}, {"etcdKey", f.EtcdKey}}...)
	} else if f.EtcdCert != "" || f.EtcdKey != "" {
		v.add("newCA.files.etcdCert", "set, but rotate does not list etcd")
	}
	return out
}

// The trust roots a run can rotate (the inventory's rotate list).
const (
	RootCluster        = "cluster"
	RootFrontProxy     = "front-proxy"
	RootEtcd           = "etcd"
	RootServiceAccount = "service-account"
)

// rotate checks the rotate list: known roots, each once. The cluster and
// front-proxy CAs are always rotated together (the twelve phases are
// theirs); etcd adds its CA to them.
func (v *validator) rotate() {
	seen := map[string]bool{}
	for i, r := range v.inv.Rotate {
		field := fmt.Sprintf("rotate[%d]", i)
		switch r {
		case RootCluster, RootFrontProxy, RootEtcd, RootServiceAccount:
		default:
			v.add(field, "%q is not a trust root rotate knows (%s, %s, %s, %s)", r, RootCluster, RootFrontProxy, RootEtcd, RootServiceAccount)
			continue
		}
		if seen[r] {
			v.add(field, "%q listed twice", r)
		}
		seen[r] = true
	}
	if len(v.inv.Rotate) > 0 && (!seen[RootCluster] || !seen[RootFrontProxy]) {
		v.add("rotate", "must list %s and %s: they are rotated together, %s and %s in addition to them", RootCluster, RootFrontProxy, RootEtcd, RootServiceAccount)
	}
}

// rotates says whether the inventory's rotate list names root.
func (inv *Inventory) rotates(root string) bool {
	for _, r := range inv.Rotate {
		if r == root {
			return true
		}
	}
	return false
}

func (v *validator) rollout() {
	r := v.inv.Rollout
	if r.WorkerBatchSize != 0 && r.WorkerBatchPercent != 0 {
		v.add("rollout.workerBatchPercent", "set either workerBatchSize or workerBatchPercent, not both")
	}
	if r.WorkerBatchSize < 0 {
		v.add("rollout.workerBatchSize", "must be at least 1, got %d", r.WorkerBatchSize)
	}
	if r.WorkerBatchPercent < 0 || r.WorkerBatchPercent > 100 {
		v.add("rollout.workerBatchPercent", "must be 1-100, got %d", r.WorkerBatchPercent)
	}
	if r.WorkloadConcurrency < 1 {
		v.add("rollout.workloadConcurrency", "must be at least 1, got %d", r.WorkloadConcurrency)
	}
	for i, k := range r.Workloads.Kinds {
		if k != "Deployment" && k != "DaemonSet" && k != "StatefulSet" {
			v.add(fmt.Sprintf("rollout.workloads.kinds[%d]", i), "%q is not Deployment, DaemonSet or StatefulSet", k)
		}
	}
	if sel := r.Workloads.SkipSelector; sel != "" {
		if _, err := labels.Parse(sel); err != nil {
			v.add("rollout.workloads.skipSelector", "not a label selector: %v", err)
		}
	}
	if r.Workloads.Timeout < 0 {
		v.add("rollout.workloads.timeout", "must be positive, got %s", r.Workloads.Timeout)
	}
	for _, name := range sortedKeys(r.Workloads.Timeouts) {
		field := fmt.Sprintf("rollout.workloads.timeouts[%q]", name)
		if ns, n, ok := strings.Cut(name, "/"); !ok || ns == "" || n == "" || strings.Contains(n, "/") {
			v.add(field, "key must be <namespace>/<name> of a workload, got %q", name)
		} else if d := r.Workloads.Timeouts[name]; d <= 0 {
			v.add(field, "must be positive, got %s", d)
		}
	}
	if r.Timeouts.Default < 0 {
		v.add("rollout.timeouts.default", "must be positive, got %s", r.Timeouts.Default)
	}
	for _, name := range sortedKeys(r.Timeouts.Phases) {
		field := "rollout.timeouts.phases." + name
		if d := r.Timeouts.Phases[name]; !knownPhases[name] {
			v.add(field, "unknown phase %q (see `rotate plan` for phase names)", name)
		} else if d <= 0 {
			v.add(field, "must be positive, got %s", d)
		}
	}
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// validHost accepts an IP address or a DNS name. A name whose last label
// is all digits (10.0.0.256, 1.2.3) is a mistyped IPv4 address, not a name.
func validHost(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	return validDNSName(strings.ToLower(s)) && !allDigits(lastLabel(s))
}

// validNodeName is a Kubernetes Node name: a lower-case RFC 1123
// subdomain.
func validNodeName(s string) bool { return validDNSName(s) }

func validDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if len(l) > 63 || !dnsLabel.MatchString(l) {
			return false
		}
	}
	return true
}

func lastLabel(s string) string { return s[strings.LastIndexByte(s, '.')+1:] }

func allDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// canonicalHost is the form of an address two nodes would share: an IP in
// its normal form, a name in lower case.
func canonicalHost(s string) string {
	if ip := net.ParseIP(s); ip != nil {
		return ip.String()
	}
	return strings.ToLower(s)
}

// sortedKeys are m's keys in order, so problems come out in a stable order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// extraKubeconfigs checks every extra kubeconfig path, the role lists and
// each node's own: absolute, and none of the kubeconfigs rotate already
// handles as kubeadm's.
func (v *validator) extraKubeconfigs() {
	kdir := path.Clean(v.inv.Paths.KubernetesDir)
	kubeadms := map[string]bool{}
	for _, n := range []string{"admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"} {
		kubeadms[path.Join(kdir, n)] = true
	}
	check := func(field string, list []string) {
		seen := map[string]string{}
		for i, p := range list {
			f := fmt.Sprintf("%s[%d]", field, i)
			switch {
			case !strings.HasPrefix(p, "/"):
				v.add(f, "must be an absolute path on the node, got %q", p)
			case kubeadms[path.Clean(p)]:
				v.add(f, "%s is kubeadm's: rotate updates it anyway; list only other kubeconfigs here", p)
			case seen[path.Clean(p)] != "":
				v.add(f, "duplicate path %s (also %s)", p, seen[path.Clean(p)])
			default:
				seen[path.Clean(p)] = f
			}
		}
	}
	check("extraKubeconfigs.controlPlane", v.inv.ExtraKubeconfigs.ControlPlane)
	check("extraKubeconfigs.workers", v.inv.ExtraKubeconfigs.Workers)
	for _, n := range nodeFields(v.inv.Nodes) {
		check(n.field+".extraKubeconfigs", n.spec.ExtraKubeconfigs)
	}
}
