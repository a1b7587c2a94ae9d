package plans

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
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

	// Set by Load, not read from YAML.
	Path   string `yaml:"-"` // as given
	Digest string `yaml:"-"` // sha256 of the file's bytes
	Raw    []byte `yaml:"-"`

	checkFiles bool
	// abs is Path made absolute when it was parsed; relative paths of
	// the operator machine count from its directory.
	abs string
	// home resolves ~ (homeErr when there is none).
	home    string
	homeErr error
	// config is the inventory resolved, once it validated.
	config *Config
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
	Port           int           `yaml:"port"`
	IdentityFile   string        `yaml:"identityFile"`
	UseAgent       *bool         `yaml:"useAgent"`
	Become         *bool         `yaml:"become"`
	KnownHostsFile string        `yaml:"knownHostsFile"`
	DialTimeout    time.Duration `yaml:"dialTimeout"`
	CommandTimeout time.Duration `yaml:"commandTimeout"`
}

type NodeSpec struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	SSHSpec `yaml:",inline"`
}

type NodesSpec struct {
	ControlPlane []NodeSpec `yaml:"controlPlane"`
	Workers      []NodeSpec `yaml:"workers"`
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
}

type CAFilesSpec struct {
	ClusterCert    string `yaml:"clusterCert"`
	ClusterKey     string `yaml:"clusterKey"`
	FrontProxyCert string `yaml:"frontProxyCert"`
	FrontProxyKey  string `yaml:"frontProxyKey"`
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

// Load reads, strictly parses, defaults, validates and resolves an
// inventory file (see Config). Every problem is reported at once, each
// naming the file and field.
func Load(path string) (*Inventory, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &InventoryError{File: path, Problems: []Problem{{Msg: "file does not exist"}}}
		}
		return nil, &InventoryError{File: path, Problems: []Problem{{Msg: err.Error()}}}
	}
	return Parse(path, raw)
}

var typeErrLine = regexp.MustCompile(`^line (\d+): (.*)$`)

// Parse is Load for bytes already read; path names the source in errors,
// and its directory (from the working directory now, if path is relative)
// anchors relative file paths.
func Parse(path string, raw []byte) (*Inventory, error) { return parse(path, raw, true) }

// ParseStructure is Parse without checking that referenced files exist,
// for showing the plan of an inventory written for another machine.
func ParseStructure(path string, raw []byte) (*Inventory, error) { return parse(path, raw, false) }

func parse(path string, raw []byte, checkFiles bool) (*Inventory, error) {
	inv := &Inventory{Path: path, Raw: raw, checkFiles: checkFiles}
	sum := sha256.Sum256(raw)
	inv.Digest = hex.EncodeToString(sum[:])
	ie := &InventoryError{File: path}
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
	inv.validate(ie, root.Content[0])
	ie.Problems = dedupe(ie.Problems)
	if len(ie.Problems) > 0 {
		return nil, ie
	}
	inv.config = inv.resolve()
	return inv, nil
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

func (inv *Inventory) applyDefaults() {
	s := &inv.SSH
	if s.User == "" {
		s.User = "root"
	}
	if s.Port == 0 {
		s.Port = 22
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
	if r.InClusterClients.Namespaces == nil {
		r.InClusterClients.Namespaces = []string{"kube-system"}
	}
	if r.Timeouts.Default == 0 {
		r.Timeouts.Default = 5 * time.Minute
	}
	if inv.Hold == nil {
		inv.Hold = boolPtr(true)
	}
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func validHost(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.ToLower(s), ".") {
		if len(l) > 63 || !dnsLabel.MatchString(l) {
			return false
		}
	}
	return true
}

var knownPhases = map[string]bool{}

func (inv *Inventory) validate(ie *InventoryError, root *yaml.Node) {
	add := func(field, format string, args ...any) {
		ie.Problems = append(ie.Problems, Problem{Field: field, Line: lineOf(root, field), Msg: fmt.Sprintf(format, args...)})
	}
	if inv.APIVersion != APIVersion {
		add("apiVersion", "must be %q, got %q", APIVersion, inv.APIVersion)
	}
	if inv.Kind != Kind {
		add("kind", "must be %q, got %q", Kind, inv.Kind)
	}
	if inv.Cluster.Name == "" {
		add("cluster.name", "required")
	}
	if inv.Kubernetes.Kubeconfig == "" {
		add("kubernetes.kubeconfig", "required: path of an admin kubeconfig")
	} else if err := inv.fileReadable(inv.localPath(inv.Kubernetes.Kubeconfig)); err != nil {
		add("kubernetes.kubeconfig", "%v", err)
	}
	if len(inv.Nodes.ControlPlane) == 0 {
		add("nodes.controlPlane", "at least one control-plane node is required")
	}
	seen := map[string]string{}
	checkNode := func(field string, n NodeSpec) {
		if n.Name == "" {
			add(field+".name", "required")
		} else if !validHost(n.Name) {
			add(field+".name", "%q is not a valid Kubernetes node name (lower case RFC 1123)", n.Name)
		} else if prev, dup := seen[n.Name]; dup {
			add(field+".name", "duplicate node name %q (also %s)", n.Name, prev)
		} else {
			seen[n.Name] = field
		}
		if n.Address == "" {
			add(field+".address", "required")
		} else if !validHost(n.Address) {
			add(field+".address", "%q is neither an IP address nor a valid DNS name", n.Address)
		}
		c := inv.mergeSSH(n)
		if c.Port < 1 || c.Port > 65535 {
			add(field+".port", "%d is not a TCP port (1-65535)", c.Port)
		}
		if !c.UseAgent && c.IdentityFile == "" {
			add(field+".identityFile", "required unless useAgent is true (set ssh.identityFile or the node's)")
		}
		if c.IdentityFile != "" {
			if err := inv.fileReadable(c.IdentityFile); err != nil {
				f := field + ".identityFile"
				if n.IdentityFile == "" {
					f = "ssh.identityFile"
				}
				add(f, "%v", err)
			}
		}
		if err := inv.fileReadable(c.KnownHostsFile); err != nil {
			f := field + ".knownHostsFile"
			if n.KnownHostsFile == "" {
				f = "ssh.knownHostsFile"
			}
			add(f, "%v (host keys are always verified; see --insecure-ignore-host-keys)", err)
		}
	}
	for i, n := range inv.Nodes.ControlPlane {
		checkNode(fmt.Sprintf("nodes.controlPlane[%d]", i), n)
	}
	for i, n := range inv.Nodes.Workers {
		checkNode(fmt.Sprintf("nodes.workers[%d]", i), n)
	}
	if inv.SSH.Port < 1 || inv.SSH.Port > 65535 {
		add("ssh.port", "%d is not a TCP port (1-65535)", inv.SSH.Port)
	}
	for f, v := range map[string]string{
		"paths.kubernetesDir": inv.Paths.KubernetesDir, "paths.pkiDir": inv.Paths.PKIDir,
		"paths.manifestsDir": inv.Paths.ManifestsDir, "paths.kubeletConfig": inv.Paths.KubeletConfig,
		"paths.kubeletPKIDir": inv.Paths.KubeletPKIDir, "paths.backupDir": inv.Paths.BackupDir,
	} {
		if !strings.HasPrefix(v, "/") {
			add(f, "must be an absolute path on the node, got %q", v)
		}
	}
	if strings.TrimSpace(inv.Kubelet.RestartCommand) == "" {
		add("kubelet.restartCommand", "must not be empty")
	}
	switch {
	case inv.NewCA.Generate != nil && inv.NewCA.Files != nil:
		add("newCA", "set either generate or files, not both")
	case inv.NewCA.Files != nil:
		f := inv.NewCA.Files
		for field, v := range map[string]string{"clusterCert": f.ClusterCert, "clusterKey": f.ClusterKey, "frontProxyCert": f.FrontProxyCert, "frontProxyKey": f.FrontProxyKey} {
			if v == "" {
				add("newCA.files."+field, "required")
			} else if err := inv.fileReadable(inv.localPath(v)); err != nil {
				add("newCA.files."+field, "%v", err)
			}
		}
	default:
		g := inv.NewCA.Generate
		switch g.Algorithm {
		case "ECDSA-P256", "RSA-2048", "RSA-3072", "RSA-4096":
		default:
			add("newCA.generate.algorithm", "%q is not one of ECDSA-P256, RSA-2048, RSA-3072, RSA-4096", g.Algorithm)
		}
		if g.Validity < 24*time.Hour {
			add("newCA.generate.validity", "%s is too short for a CA (at least 24h)", g.Validity)
		}
		if g.ClusterCommonName == g.FrontProxyCommonName {
			add("newCA.generate.frontProxyCommonName", "must differ from clusterCommonName %q", g.ClusterCommonName)
		}
	}
	r := inv.Rollout
	if r.WorkerBatchSize != 0 && r.WorkerBatchPercent != 0 {
		add("rollout.workerBatchPercent", "set either workerBatchSize or workerBatchPercent, not both")
	}
	if r.WorkerBatchSize < 0 {
		add("rollout.workerBatchSize", "must be at least 1, got %d", r.WorkerBatchSize)
	}
	if r.WorkerBatchPercent < 0 || r.WorkerBatchPercent > 100 {
		add("rollout.workerBatchPercent", "must be 1-100, got %d", r.WorkerBatchPercent)
	}
	if r.WorkloadConcurrency < 1 {
		add("rollout.workloadConcurrency", "must be at least 1, got %d", r.WorkloadConcurrency)
	}
	for i, k := range r.Workloads.Kinds {
		if k != "Deployment" && k != "DaemonSet" && k != "StatefulSet" {
			add(fmt.Sprintf("rollout.workloads.kinds[%d]", i), "%q is not Deployment, DaemonSet or StatefulSet", k)
		}
	}
	if r.Timeouts.Default < 0 {
		add("rollout.timeouts.default", "must be positive")
	}
	for name, d := range r.Timeouts.Phases {
		if !knownPhases[name] {
			add("rollout.timeouts.phases."+name, "unknown phase %q (see `rotate plan` for phase names)", name)
		} else if d <= 0 {
			add("rollout.timeouts.phases."+name, "must be positive")
		}
	}
}

func (inv *Inventory) fileReadable(p string) error {
	if !inv.checkFiles {
		return nil
	}
	return fileReadable(p)
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

// dedupe drops repeated problems (a shared ssh setting reported per node).
func dedupe(ps []Problem) []Problem {
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
