package plans

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Inventory API version and kind.
const (
	APIVersion = "rotate.kubeca.io/v1alpha1"
	Kind       = "Inventory"
)

// DefaultBackupDir is paths.backupDir unless the inventory sets it; the
// kubelet markers go next to it, in /var/lib/rotate/markers.
const DefaultBackupDir = "/var/lib/rotate/backups"

// Inventory is the operator's description of a cluster (see
// examples/inventory.yaml for every field, commented).
type Inventory struct {
	APIVersion string         `yaml:"apiVersion"`
	Kind       string         `yaml:"kind"`
	Cluster    ClusterSpec    `yaml:"cluster"`
	Kubernetes KubernetesSpec `yaml:"kubernetes"`
	SSH        SSHSpec        `yaml:"ssh"`
	Nodes      NodesSpec      `yaml:"nodes"`
	Paths      PathsSpec      `yaml:"paths"`
	Kubelet    KubeletSpec    `yaml:"kubelet"`
	NewCA      NewCASpec      `yaml:"newCA"`
	Rollout    RolloutSpec    `yaml:"rollout"`
	Hold       *bool          `yaml:"hold"`
	// Rotate names the trust roots the run rotates (RootCluster, ...);
	// default: the cluster and front-proxy CAs.
	Rotate []string `yaml:"rotate"`
	// ExtraKubeconfigs are kubeconfigs on the nodes besides kubeadm's
	// (other tools', operators'), per role; a node's own list adds to its
	// role's.
	ExtraKubeconfigs ExtraKubeconfigsSpec `yaml:"extraKubeconfigs"`

	// Set by Load, not read from YAML.
	Path   string `yaml:"-"` // as given
	Digest string `yaml:"-"` // sha256 of the file's bytes
	Raw    []byte `yaml:"-"`

	// abs is Path made absolute when it was parsed; relative paths of
	// the operator machine count from its directory.
	abs string
	// home resolves ~ (homeErr when there is none).
	home    string
	homeErr error
	// config is the inventory resolved, once it validated.
	config *Config
	// discovered names the workers DiscoverWorkers added.
	discovered []string
}

type ClusterSpec struct {
	Name string `yaml:"name"`
}

type KubernetesSpec struct {
	Kubeconfig string `yaml:"kubeconfig"`
	Context    string `yaml:"context"`
}

// SSHSpec is the connection settings; on a node every field overrides.
type SSHSpec struct {
	User           string        `yaml:"user"`
	Port           *int          `yaml:"port"`
	IdentityFile   string        `yaml:"identityFile"`
	UseAgent       *bool         `yaml:"useAgent"`
	Become         *bool         `yaml:"become"`
	KnownHostsFile string        `yaml:"knownHostsFile"`
	DialTimeout    time.Duration `yaml:"dialTimeout"`
	CommandTimeout time.Duration `yaml:"commandTimeout"`
	// JumpHost is an SSH bastion the node is reached through (OpenSSH's
	// ProxyJump); a node's replaces the global one.
	JumpHost *JumpHostSpec `yaml:"jumpHost"`
}

// JumpHostSpec is ssh.jumpHost or a node's jumpHost. User and
// identityFile default to the node's, port to 22; its host key is
// verified against the node's knownHostsFile like the node's own.
type JumpHostSpec struct {
	Address      string `yaml:"address"`
	Port         *int   `yaml:"port"`
	User         string `yaml:"user"`
	IdentityFile string `yaml:"identityFile"`
}

type NodeSpec struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	SSHSpec `yaml:",inline"`
	// APIServer is where rotate reaches this control-plane node's
	// apiserver, when that is not Address on nodes.apiServerPort.
	APIServer *APIServerSpec `yaml:"apiServer"`
	// ExtraKubeconfigs are this node's, besides its role's.
	ExtraKubeconfigs []string `yaml:"extraKubeconfigs"`
}

// ExtraKubeconfigsSpec lists kubeconfig files on the nodes, by role.
type ExtraKubeconfigsSpec struct {
	ControlPlane []string `yaml:"controlPlane"`
	Workers      []string `yaml:"workers"`
}

type NodesSpec struct {
	ControlPlane []NodeSpec `yaml:"controlPlane"`
	Workers      []NodeSpec `yaml:"workers"`
	// Topology and nodes that come and go (see topology.go).
	APIServerPort *int `yaml:"apiServerPort"`
	// Unlisted is what a Node in the cluster but not in the inventory
	// does to preflight: UnlistedWarn (default) or UnlistedFail.
	Unlisted string `yaml:"unlisted"`
	// DiscoverWorkers finds workers in the API (see discover.go).
	DiscoverWorkers *DiscoverSpec `yaml:"discoverWorkers"`
}

// APIServerSpec is one apiserver's endpoint, apart from the node's SSH
// address: its host must be in the apiserver's serving certificate.
type APIServerSpec struct {
	Address string `yaml:"address"`
	Port    *int   `yaml:"port"`
}

type PathsSpec struct {
	KubernetesDir string `yaml:"kubernetesDir"`
	PKIDir        string `yaml:"pkiDir"`
	ManifestsDir  string `yaml:"manifestsDir"`
	KubeletConfig string `yaml:"kubeletConfig"`
	KubeletPKIDir string `yaml:"kubeletPKIDir"`
	BackupDir     string `yaml:"backupDir"`
}

type KubeletSpec struct {
	RestartCommand string `yaml:"restartCommand"`
}

type NewCASpec struct {
	Generate *GenerateSpec `yaml:"generate"`
	Files    *CAFilesSpec  `yaml:"files"`
}

type GenerateSpec struct {
	Algorithm            string        `yaml:"algorithm"`
	Validity             time.Duration `yaml:"validity"`
	ClusterCommonName    string        `yaml:"clusterCommonName"`
	FrontProxyCommonName string        `yaml:"frontProxyCommonName"`
	EtcdCommonName       string        `yaml:"etcdCommonName"`
}

type CAFilesSpec struct {
	ClusterCert    string `yaml:"clusterCert"`
	ClusterKey     string `yaml:"clusterKey"`
	FrontProxyCert string `yaml:"frontProxyCert"`
	FrontProxyKey  string `yaml:"frontProxyKey"`
	// EtcdCert and EtcdKey are required when rotate lists etcd.
	EtcdCert string `yaml:"etcdCert"`
	EtcdKey  string `yaml:"etcdKey"`
	// ServiceAccountKey is the new service-account signing key (PEM, RSA
	// or ECDSA), optional when rotate lists service-account: without it
	// one like the old is generated.
	ServiceAccountKey string `yaml:"serviceAccountKey"`
}

type RolloutSpec struct {
	WorkerBatchSize     int           `yaml:"workerBatchSize"`
	WorkerBatchPercent  int           `yaml:"workerBatchPercent"`
	WorkloadConcurrency int           `yaml:"workloadConcurrency"`
	Workloads           WorkloadSpec  `yaml:"workloads"`
	InClusterClients    InClusterSpec `yaml:"inClusterClients"`
	Timeouts            TimeoutsSpec  `yaml:"timeouts"`
}

type WorkloadSpec struct {
	Namespaces        []string `yaml:"namespaces"`
	ExcludeNamespaces []string `yaml:"excludeNamespaces"`
	Kinds             []string `yaml:"kinds"`
	// SkipSelector is a label selector: matching workloads are never
	// restarted (listed at the hold instead), like the annotation
	// rotate.kubeca.io/skip: "true" on one object.
	SkipSelector string `yaml:"skipSelector"`
	// Timeout bounds the wait for each workload's rollout, from its own
	// restart; Timeouts overrides it for "<namespace>/<name>".
	Timeout  time.Duration            `yaml:"timeout"`
	Timeouts map[string]time.Duration `yaml:"timeouts"`
}

type InClusterSpec struct {
	Namespaces []string `yaml:"namespaces"`
}

type TimeoutsSpec struct {
	Default time.Duration            `yaml:"default"`
	Phases  map[string]time.Duration `yaml:"phases"`
}

// Problem is one thing wrong with an inventory.
type Problem struct {
	Field string // e.g. nodes.controlPlane[1].address
	Line  int    // 0 when unknown
	Msg   string
	// Local marks a problem of this machine rather than of the file: a
	// referenced file missing or unreadable, no ssh-agent. `rotate plan`
	// still shows the plan of such an inventory.
	Local bool
}

// InventoryError lists every problem found, so one run shows them all.
type InventoryError struct {
	File     string
	Problems []Problem
}

// ErrInventory is wrapped by every inventory problem.
var ErrInventory = errors.New("invalid inventory")

func (e *InventoryError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "inventory %s: %d problem(s):", e.File, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		if p.Field != "" {
			b.WriteString(p.Field)
			if p.Line > 0 {
				fmt.Fprintf(&b, " (line %d)", p.Line)
			}
			b.WriteString(": ")
		} else if p.Line > 0 {
			fmt.Fprintf(&b, "line %d: ", p.Line)
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

func (e *InventoryError) Unwrap() error { return ErrInventory }

// MaxSize is the largest inventory file read; an inventory is a few
// kilobytes, so anything larger is the wrong file.
const MaxSize = 1 << 20

var errTooLarge = fmt.Errorf("file is larger than %d bytes (1 MiB): not an inventory", MaxSize)

// Load reads, strictly parses, defaults, validates and resolves an
// inventory file (see Config). Every problem is reported at once, each
// naming the file and field.
func Load(path string) (*Inventory, error) {
	raw, err := readLimited(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, &InventoryError{File: path, Problems: []Problem{{Msg: "file does not exist"}}}
	case err != nil:
		return nil, &InventoryError{File: path, Problems: []Problem{{Msg: err.Error()}}}
	}
	return Parse(path, raw)
}

// readLimited reads at most MaxSize bytes, and refuses a larger file
// before parsing any of it.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > MaxSize {
		return nil, errTooLarge
	}
	return raw, nil
}

var typeErrLine = regexp.MustCompile(`^line (\d+): (.*)$`)

// Parse is Load for bytes already read; path names the source in errors,
// and its directory (from the working directory now, if path is relative)
// anchors relative file paths.
func Parse(path string, raw []byte) (*Inventory, error) { return parse(path, raw, true) }

// ParseStructure is Parse without the checks of this machine (referenced
// files, the ssh-agent), for showing the plan of an inventory written for
// another machine.
func ParseStructure(path string, raw []byte) (*Inventory, error) { return parse(path, raw, false) }

func parse(path string, raw []byte, checkLocal bool) (*Inventory, error) {
	inv := &Inventory{Path: path, Raw: raw}
	sum := sha256.Sum256(raw)
	inv.Digest = hex.EncodeToString(sum[:])
	ie := &InventoryError{File: path}
	if len(raw) > MaxSize {
		ie.Problems = append(ie.Problems, Problem{Msg: errTooLarge.Error()})
		return nil, ie
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		ie.Problems = append(ie.Problems, Problem{Msg: "resolve the file's directory: " + err.Error()})
		return nil, ie
	}
	inv.abs = abs
	inv.home, inv.homeErr = os.UserHomeDir()

	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		ie.Problems = append(ie.Problems, Problem{Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")})
		return nil, ie
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		ie.Problems = append(ie.Problems, Problem{Msg: "file is empty"})
		return nil, ie
	}
	if root.Content[0].Kind != yaml.MappingNode {
		ie.Problems = append(ie.Problems, Problem{Line: root.Content[0].Line, Msg: "not a YAML mapping (expected apiVersion, kind, cluster, ...)"})
		return nil, ie
	}
	// The decoder drops a whole mapping that repeats a key, which would
	// read as a flood of "required" problems: report the repeats alone.
	if dups := duplicateKeys(root.Content[0], ""); len(dups) > 0 {
		ie.Problems = dups
		return nil, ie
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(inv); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			ie.Problems = append(ie.Problems, Problem{Msg: err.Error()})
			return nil, ie
		}
		for _, msg := range te.Errors {
			p := Problem{Msg: msg}
			if m := typeErrLine.FindStringSubmatch(msg); m != nil {
				p.Line, _ = strconv.Atoi(m[1])
				p.Msg = humanizeTypeError(m[2])
				p.Field = fieldAtLine(root.Content[0], "", p.Line)
			}
			ie.Problems = append(ie.Problems, p)
		}
	}
	inv.applyDefaults()
	v := &validator{inv: inv, root: root.Content[0], checkLocal: checkLocal, problems: ie.Problems}
	v.validate()
	ie.Problems = inDocumentOrder(v.problems)
	if len(ie.Problems) > 0 {
		return nil, ie
	}
	inv.config = inv.resolve()
	return inv, nil
}

// duplicateKeys reports each key that a mapping repeats, at the repeat.
func duplicateKeys(n *yaml.Node, prefix string) []Problem {
	var out []Problem
	switch n.Kind {
	case yaml.MappingNode:
		first := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := k.Value
			if prefix != "" {
				p = prefix + "." + k.Value
			}
			if line, dup := first[k.Value]; dup {
				out = append(out, Problem{Field: p, Line: k.Line, Msg: fmt.Sprintf("duplicate key %q (first at line %d)", k.Value, line)})
			} else {
				first[k.Value] = k.Line
			}
			out = append(out, duplicateKeys(n.Content[i+1], p)...)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			out = append(out, duplicateKeys(c, fmt.Sprintf("%s[%d]", prefix, i))...)
		}
	}
	return out
}

// inDocumentOrder sorts problems by line (those without one first, as they
// concern the whole file) and drops repeats (a shared ssh setting found
// wrong for each node that uses it), so the list reads like the file and is
// the same on every run.
func inDocumentOrder(ps []Problem) []Problem {
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Line < ps[j].Line })
	seen := map[string]bool{}
	out := ps[:0]
	for _, p := range ps {
		k := p.Field + "\x00" + p.Msg
		if !seen[k] {
			seen[k] = true
			out = append(out, p)
		}
	}
	return out
}

var fieldNotFound = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

func humanizeTypeError(msg string) string {
	if m := fieldNotFound.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("unknown field %q", m[1])
	}
	return strings.Replace(msg, "cannot unmarshal !!str", "cannot use string", 1)
}

// fieldAtLine finds the dotted path of the key (or value) on line.
func fieldAtLine(n *yaml.Node, prefix string, line int) string {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if prefix != "" {
				p = prefix + "." + k.Value
			}
			if k.Line == line {
				return p
			}
			if f := fieldAtLine(v, p, line); f != "" {
				return f
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", prefix, i)
			if c.Kind == yaml.ScalarNode && c.Line == line {
				return p
			}
			if f := fieldAtLine(c, p, line); f != "" {
				return f
			}
		}
	case yaml.ScalarNode:
		if n.Line == line {
			return prefix
		}
	}
	return ""
}

// lineOf returns the line of the YAML key at a dotted path, 0 if absent.
func lineOf(root *yaml.Node, path string) int {
	n := root
	line := 0
	for _, part := range strings.Split(path, ".") {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 {
			name = part[:i]
			idx, _ = strconv.Atoi(strings.TrimSuffix(part[i+1:], "]"))
		}
		if n == nil || n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				line = n.Content[i].Line
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		if idx >= 0 {
			if next.Kind != yaml.SequenceNode || idx >= len(next.Content) {
				return line
			}
			next = next.Content[idx]
			line = next.Line
		}
		n = next
	}
	return line
}

func boolPtr(b bool) *bool { return &b }
func intPtr(i int) *int    { return &i }

func (inv *Inventory) applyDefaults() {
	s := &inv.SSH
	if s.User == "" {
		s.User = "root"
	}
	if s.Port == nil {
		s.Port = intPtr(22)
	}
	if s.UseAgent == nil {
		s.UseAgent = boolPtr(false)
	}
	if s.Become == nil {
		s.Become = boolPtr(false)
	}
	if s.KnownHostsFile == "" {
		s.KnownHostsFile = "~/.ssh/known_hosts"
	}
	if s.DialTimeout == 0 {
		s.DialTimeout = 10 * time.Second
	}
	if s.CommandTimeout == 0 {
		s.CommandTimeout = 2 * time.Minute
	}
	p := &inv.Paths
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&p.KubernetesDir, "/etc/kubernetes")
	def(&p.PKIDir, filepath.Join(p.KubernetesDir, "pki"))
	def(&p.ManifestsDir, filepath.Join(p.KubernetesDir, "manifests"))
	def(&p.KubeletConfig, "/var/lib/kubelet/config.yaml")
	def(&p.KubeletPKIDir, "/var/lib/kubelet/pki")
	def(&p.BackupDir, DefaultBackupDir)
	def(&inv.Kubelet.RestartCommand, "systemctl restart kubelet")
	if inv.NewCA.Generate == nil && inv.NewCA.Files == nil {
		inv.NewCA.Generate = &GenerateSpec{}
	}
	if g := inv.NewCA.Generate; g != nil {
		def(&g.Algorithm, "ECDSA-P256")
		if g.Validity == 0 {
			g.Validity = 10 * 365 * 24 * time.Hour
		}
		def(&g.ClusterCommonName, "kubernetes-ca-rotated")
		def(&g.FrontProxyCommonName, "front-proxy-ca-rotated")
		def(&g.EtcdCommonName, "etcd-ca-rotated")
	}
	r := &inv.Rollout
	if r.WorkerBatchSize == 0 && r.WorkerBatchPercent == 0 {
		r.WorkerBatchSize = 1
	}
	if r.WorkloadConcurrency == 0 {
		r.WorkloadConcurrency = 4
	}
	if len(r.Workloads.Kinds) == 0 {
		r.Workloads.Kinds = []string{"Deployment", "DaemonSet", "StatefulSet"}
	}
	if r.Workloads.Timeout == 0 {
		r.Workloads.Timeout = 5 * time.Minute
	}
	if r.InClusterClients.Namespaces == nil {
		r.InClusterClients.Namespaces = []string{"kube-system"}
	}
	if r.Timeouts.Default == 0 {
		r.Timeouts.Default = 5 * time.Minute
	}
	if inv.Hold == nil {
		inv.Hold = boolPtr(true)
	}
	if len(inv.Rotate) == 0 {
		inv.Rotate = []string{RootCluster, RootFrontProxy}
	}
	inv.applyTopologyDefaults()
	inv.applyDiscoverDefaults()
}
