package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/kubeca/rotate/e2e/clusterinfo"
)

// Defaults.
const (
	DefaultName          = "e2e"
	DefaultRoot          = "/var/lib/rotate-e2e"
	DefaultSubnet        = "10.213.47.0/24"
	DefaultControlPlanes = 3
	DefaultWorkers       = 2
	KubernetesVersion    = "v1.37.2"
	APIServerPort        = 6443

	RoleControlPlane = "control-plane"
	RoleWorker       = "worker"
)

// Options configures Up.
type Options struct {
	Name          string // cluster name; namespaces and links are named after it
	Dir           string // cluster dir on the host; default DefaultRoot/Name
	ControlPlanes int
	Workers       int
	Subnet        string // an IPv4 prefix of length 24 or shorter

	// BinDir holds kube-apiserver, kube-controller-manager, kube-scheduler,
	// kubeadm, kubectl and etcd. Empty: run e2e/scripts/build-binaries.sh.
	BinDir string
	// SourceDir is the root of the rotate module. Empty: found from the
	// working directory upwards.
	SourceDir string
	// HarnessBinDir holds a prebuilt e2e-node binary. Empty: built from
	// SourceDir into the cluster dir.
	HarnessBinDir string
	// NoKubelet runs neither the kubelet nor its container runtime: the
	// nodes run only sshd and the static pods (harness tests that need no
	// Node objects).
	NoKubelet bool
	// SpareWorkers are machines ready to join (network, sshd, a kubelet
	// waiting for kubeadm) that are neither joined at Up nor in the
	// inventory: JoinNode joins one mid-run, like an autoscaler or an
	// operator adding a node during a rotation.
	SpareWorkers int
	// NonRootNodes are reached over SSH as OperatorUser (passwordless
	// sudo) on port AltSSHPort, like a hardened production node. Nil: the
	// second control-plane node and the last worker; empty: none.
	NonRootNodes []string
	// ServingCSRNodes run their kubelet with serverTLSBootstrap: true (the
	// serving certificate comes from the CSR API; the harness approves it
	// as an operator's approver would). Nil: every node; empty: none. When
	// every node does, the apiservers also verify the kubelets' serving
	// certificates (--kubelet-certificate-authority), as a hardened
	// cluster does.
	ServingCSRNodes []string
	// NoticeDelay is how long every node's static-pod supervisor waits
	// after it sees a manifest change before it acts on it (0: at once,
	// like the kubelet's inotify watch). SetNoticeDelay changes it on a
	// running cluster ("slow mode").
	NoticeDelay time.Duration

	// Progress receives one line per step; nil discards.
	Progress io.Writer

	// ReplaceStale takes down a cluster an earlier run left in Dir (its
	// processes, namespaces, links and mounts, as that run recorded them)
	// before bringing this one up. Without it Up refuses such a dir. A
	// cluster that another live harness process holds is never touched.
	ReplaceStale bool

	// FailAfter makes Up fail right after the named stage (tests of the
	// cleanup of a half-failed up). See Stages.
	FailAfter string
}

// Stages of Up, in order.
var Stages = []string{"prepare", "network", "namespaces", "ssh", "lb", "pki", "control-plane", "bootstrap", "workers", "ready"}

// Spec describes a cluster; it is stored in the state file and is the source
// of cluster.json.
type Spec struct {
	Name        string `json:"name"`
	Dir         string `json:"dir"`
	Subnet      string `json:"subnet"`
	HostAddress string `json:"hostAddress"`
	LBAddress   string `json:"lbAddress"`
	BinDir      string `json:"binDir"`
	HarnessBin  string `json:"harnessBin"`
	// Kubelet: every node runs the real kubelet on an in-memory CRI.
	Kubelet bool `json:"kubelet"`
	// NoticeDelay is the supervisors' current manifest notice delay.
	NoticeDelay time.Duration `json:"noticeDelay,omitempty"`
	// VerifyKubelets: every kubelet's serving certificate comes from the
	// CSR API (serverTLSBootstrap: true, cluster-wide) and the apiservers
	// verify it (--kubelet-certificate-authority).
	VerifyKubelets bool   `json:"verifyKubelets,omitempty"`
	HostLink       string `json:"hostLink"`
	SwitchNS       string `json:"switchNetns"`
	LBNS           string `json:"lbNetns"`
	CgroupRoot     string `json:"cgroupRoot,omitempty"`
	Nodes          []Node `json:"nodes"`
}

// Node is one simulated machine.
type Node struct {
	Name    string `json:"name"`
	Role    string `json:"role"`
	Address string `json:"address"`
	Dir     string `json:"dir"`
	NetNS   string `json:"netns"`
	// SSHUser and SSHPort: how the operator reaches the node ("" and 0:
	// root on port 22). A non-root user has passwordless sudo.
	SSHUser string `json:"sshUser,omitempty"`
	SSHPort int    `json:"sshPort,omitempty"`
	// ServingCSR: the kubelet has serverTLSBootstrap: true.
	ServingCSR bool `json:"servingCSR,omitempty"`
	// Spare: not joined yet (see Options.SpareWorkers); not in the
	// inventory nor in cluster.json.
	Spare bool `json:"spare,omitempty"`
}

// OperatorUser is the non-root SSH user of NonRootNodes; AltSSHPort their
// sshd port. The user exists on the host (nodes share its /etc/passwd;
// bind-mounting a file over it does not survive a host tool replacing the
// file, as useradd does) and is removed by the last cluster's Down.
const (
	OperatorUser = "rotate-op"
	AltSSHPort   = 2222
)

// Port is the node's sshd port.
func (n Node) Port() int {
	if n.SSHPort == 0 {
		return 22
	}
	return n.SSHPort
}

// User is the SSH login user on the node.
func (n Node) User() string {
	if n.SSHUser == "" {
		return "root"
	}
	return n.SSHUser
}

// Host paths of a node's directories and namespace files.
func (n Node) EtcKubernetes() string { return filepath.Join(n.Dir, "etc-kubernetes") }
func (n Node) VarLibKubelet() string { return filepath.Join(n.Dir, "var-lib-kubelet") }
func (n Node) VarLibEtcd() string    { return filepath.Join(n.Dir, "var-lib-etcd") }
func (n Node) LogDir() string        { return filepath.Join(n.Dir, "log") }
func (n Node) RunDir() string        { return filepath.Join(n.Dir, "run") }
func (n Node) SSHDir() string        { return filepath.Join(n.Dir, "ssh") }
func (n Node) KubeadmConfig() string { return filepath.Join(n.Dir, "kubeadm.yaml") }
func (n Node) ControlPlane() bool    { return n.Role == RoleControlPlane }

// HostPath maps a path as seen inside the node (e.g.
// /var/lib/kubelet/pki/kubelet-client-current.pem) to the host path of the
// node's file, following absolute symlinks the way they resolve inside the
// node. Paths outside the node's own mounts are returned unchanged.
func (n Node) HostPath(p string) string {
	for range 8 {
		hp := p
		for _, m := range n.nodeMounts() {
			if p == m[1] || strings.HasPrefix(p, m[1]+"/") {
				hp = m[0] + strings.TrimPrefix(p, m[1])
				break
			}
		}
		target, err := os.Readlink(hp)
		if err != nil {
			return hp
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	return p
}

// SupervisorSocket is the host path of the node supervisor's control socket
// (the same file is /run/rotate-e2e/supervisor.sock inside the node).
func (n Node) SupervisorSocket() string { return filepath.Join(n.RunDir(), "supervisor.sock") }

// nodeMounts maps host dirs of a node to where they appear inside it.
// Everything a node's processes write (rotate's backups and markers, the
// kubelet's state, temp files, home directories) lands in the node's own
// dirs, never in a host directory shared by all nodes. /root and /home are
// the node's own too: the host's root ~/.bashrc (which runs pyenv, 200+ ms
// for every SSH command through bash) is not the node's.
func (n Node) nodeMounts() [][2]string {
	return [][2]string{
		{n.EtcKubernetes(), "/etc/kubernetes"},
		{n.VarLibKubelet(), "/var/lib/kubelet"},
		{n.VarLibEtcd(), "/var/lib/etcd"},
		{filepath.Join(n.Dir, "var-log-pods"), "/var/log/pods"},
		{filepath.Join(n.Dir, "var-log-containers"), "/var/log/containers"},
		{n.LogDir(), "/var/log/rotate-e2e"},
		{filepath.Join(n.Dir, "var-lib-rotate"), "/var/lib/rotate"},
		{n.RootHome(), "/root"},
		{n.HomeDir(), "/home"},
		{filepath.Join(n.Dir, "tmp"), "/tmp"},
		{filepath.Join(n.Dir, "etc-sudoers.d"), "/etc/sudoers.d"},
		// The kubelet creates the controller-manager's flexvolume hostPath
		// (DirectoryOrCreate) on its node's root filesystem.
		{filepath.Join(n.Dir, "usr-libexec-kubernetes"), "/usr/libexec/kubernetes"},
	}
}

// RootHome and HomeDir are the host dirs of the node's /root and /home.
func (n Node) RootHome() string { return filepath.Join(n.Dir, "root-home") }
func (n Node) HomeDir() string  { return filepath.Join(n.Dir, "home") }

// mntFile is clusterinfo.Cluster.MountNS.
func mntFile(dir, node string) string { return (&clusterinfo.Cluster{Dir: dir}).MountNS(node) }
func utsFile(dir, node string) string { return filepath.Join(dir, "ns", node+".uts") }

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// plan validates opts and derives the cluster layout.
func plan(opts Options) (Spec, error) {
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if !nameRE.MatchString(opts.Name) {
		return Spec{}, fmt.Errorf("cluster name %q: want lower-case letters, digits and '-', at most 32", opts.Name)
	}
	if opts.Dir == "" {
		opts.Dir = filepath.Join(DefaultRoot, opts.Name)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return Spec{}, err
	}
	if opts.Subnet == "" {
		opts.Subnet = DefaultSubnet
	}
	pfx, err := netip.ParsePrefix(opts.Subnet)
	if err != nil || !pfx.Addr().Is4() || pfx.Bits() > 24 || pfx.Bits() < 8 {
		return Spec{}, fmt.Errorf("subnet %q: want an IPv4 prefix /8../24", opts.Subnet)
	}
	pfx = pfx.Masked()
	if opts.ControlPlanes < 1 || opts.ControlPlanes > 80 {
		return Spec{}, fmt.Errorf("control planes: %d, want 1..80", opts.ControlPlanes)
	}
	if opts.Workers < 0 || opts.Workers > 150 {
		return Spec{}, fmt.Errorf("workers: %d, want 0..150", opts.Workers)
	}
	if opts.NoticeDelay < 0 {
		return Spec{}, fmt.Errorf("notice delay %s: want 0 or more", opts.NoticeDelay)
	}
	at := func(off int) string {
		b := pfx.Addr().As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		v += uint32(off)
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
	}
	prefix := "re2e-" + opts.Name
	s := Spec{
		Name:        opts.Name,
		Dir:         dir,
		Subnet:      pfx.String(),
		HostAddress: at(1),
		LBAddress:   at(2),
		HostLink:    hostLinkName(opts.Name),
		SwitchNS:    prefix + "-switch",
		LBNS:        prefix + "-lb",
		Kubelet:     !opts.NoKubelet,
		NoticeDelay: opts.NoticeDelay,
	}
	add := func(name, role string, off int) {
		s.Nodes = append(s.Nodes, Node{
			Name:    name,
			Role:    role,
			Address: at(off),
			Dir:     filepath.Join(dir, "nodes", name),
			NetNS:   prefix + "-" + name,
		})
	}
	for i := 1; i <= opts.ControlPlanes; i++ {
		add(fmt.Sprintf("cp%d", i), RoleControlPlane, 10+i)
	}
	for i := 1; i <= opts.Workers; i++ {
		add(fmt.Sprintf("worker%d", i), RoleWorker, 100+i)
	}
	if opts.SpareWorkers < 0 || opts.Workers+opts.SpareWorkers > 150 {
		return Spec{}, fmt.Errorf("spare workers: %d, want 0..%d", opts.SpareWorkers, 150-opts.Workers)
	}
	for i := opts.Workers + 1; i <= opts.Workers+opts.SpareWorkers; i++ {
		add(fmt.Sprintf("worker%d", i), RoleWorker, 100+i)
		s.Nodes[len(s.Nodes)-1].Spare = true
	}
	nonRoot, serving := opts.NonRootNodes, opts.ServingCSRNodes
	if nonRoot == nil {
		if opts.ControlPlanes >= 2 {
			nonRoot = append(nonRoot, "cp2")
		}
		if opts.Workers >= 2 {
			nonRoot = append(nonRoot, fmt.Sprintf("worker%d", opts.Workers))
		}
		if opts.SpareWorkers > 0 {
			nonRoot = append(nonRoot, fmt.Sprintf("worker%d", opts.Workers+opts.SpareWorkers))
		}
	}
	if serving == nil && !opts.NoKubelet {
		for _, n := range s.Nodes {
			serving = append(serving, n.Name)
		}
	}
	for _, name := range nonRoot {
		i := slices.IndexFunc(s.Nodes, func(n Node) bool { return n.Name == name })
		if i < 0 {
			return Spec{}, fmt.Errorf("non-root node %q is not a node of the cluster", name)
		}
		s.Nodes[i].SSHUser, s.Nodes[i].SSHPort = OperatorUser, AltSSHPort
	}
	for _, name := range serving {
		i := slices.IndexFunc(s.Nodes, func(n Node) bool { return n.Name == name })
		if i < 0 {
			return Spec{}, fmt.Errorf("serving-CSR node %q is not a node of the cluster", name)
		}
		if opts.NoKubelet {
			return Spec{}, fmt.Errorf("serving-CSR node %q needs a kubelet", name)
		}
		s.Nodes[i].ServingCSR = true
	}
	s.VerifyKubelets = len(s.Nodes) > 0 && !slices.ContainsFunc(s.Nodes, func(n Node) bool { return !n.ServingCSR })
	return s, nil
}

// hostLinkName is the root-namespace end of the host's veth: interface
// names have at most 15 bytes.
func hostLinkName(name string) string {
	if n := "re2e-" + name; len(n) <= 15 {
		return n
	}
	sum := sha256.Sum256([]byte(name))
	return "re2e-" + hex.EncodeToString(sum[:])[:10]
}

// Node returns the node called name.
func (s *Spec) Node(name string) (Node, error) {
	for _, n := range s.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return Node{}, fmt.Errorf("no node %q in cluster %s", name, s.Name)
}

// ControlPlaneNodes returns the control-plane nodes in order.
func (s *Spec) ControlPlaneNodes() []Node {
	var out []Node
	for _, n := range s.Nodes {
		if n.ControlPlane() {
			out = append(out, n)
		}
	}
	return out
}

// Paths of cluster-wide files.
func (s *Spec) AdminKubeconfig() string { return filepath.Join(s.Dir, "admin.conf") }
func (s *Spec) InventoryPath() string   { return filepath.Join(s.Dir, "inventory.yaml") }
func (s *Spec) ClusterJSON() string     { return filepath.Join(s.Dir, "cluster.json") }
func (s *Spec) SSHKey() string          { return filepath.Join(s.Dir, "ssh", "id_ed25519") }
func (s *Spec) KnownHosts() string      { return filepath.Join(s.Dir, "ssh", "known_hosts") }
func (s *Spec) APIServerEndpoint() string {
	return fmt.Sprintf("https://%s:%d", s.LBAddress, APIServerPort)
}
func (s *Spec) nodeBin() string { return filepath.Join(s.HarnessBin, "e2e-node") }
