package steps

import "path"

// Files rotate adds next to kubeadm's during the rotation. They are removed
// by the cleanup step at the end of phase 12.
const (
	fileNewCACert       = "rotate-ca.crt"
	fileNewCAKey        = "rotate-ca.key"
	fileNewFPCACert     = "rotate-front-proxy-ca.crt"
	fileNewFPCAKey      = "rotate-front-proxy-ca.key"
	fileCABundle        = "rotate-ca-bundle.crt"
	fileFPCABundle      = "rotate-front-proxy-ca-bundle.crt"
	restartAnnotation   = "rotate.kubeca.io/restart"
	kubeletClientLink   = "kubelet-client-current.pem"
	kubeconfigAdmin     = "admin.conf"
	kubeconfigKCM       = "controller-manager.conf"
	kubeconfigScheduler = "scheduler.conf"
	kubeconfigKubelet   = "kubelet.conf"
)

// kubeadm's own files.
const (
	fileCACert   = "ca.crt"
	fileCAKey    = "ca.key"
	fileFPCACert = "front-proxy-ca.crt"
	fileFPCAKey  = "front-proxy-ca.key"
)

// leafFile is a certificate the control plane serves or presents, and the
// CA that must issue its replacement.
type leafFile struct {
	name string // base name without extension, in the pki dir
	ca   string // CACluster, CAFrontProxy or CAEtcd
}

var controlPlaneLeaves = []leafFile{
	{"apiserver", CACluster},
	{"apiserver-kubelet-client", CACluster},
	{"front-proxy-client", CAFrontProxy},
}

// nodeNames is every node of the inventory, control plane first.
func (c *Config) nodeNames() []string {
	return append(append([]string{}, c.ControlPlane...), c.Workers...)
}

func (c *Config) pki(name string) string     { return path.Join(c.Paths.PKIDir, name) }
func (c *Config) kubeDir(name string) string { return path.Join(c.Paths.KubernetesDir, name) }
func (c *Config) manifest(comp Component) string {
	return path.Join(c.Paths.ManifestsDir, comp.Manifest)
}
func (c *Config) kubeletPKI(name string) string {
	return path.Join(c.Paths.KubeletPKIDir, name)
}

// kubeletMarkerDir holds the kubelet steps' markers: "markers" next to the
// backup directory (/var/lib/rotate/markers for the default
// /var/lib/rotate/backups, where every rotate so far has kept them, so a
// run begun by an older rotate finds its markers again).
func (c *Config) kubeletMarkerDir() string {
	return path.Join(path.Dir(c.Paths.BackupDir), "markers")
}

// prepared value keys.
func prepKey(node, name string) string { return "prep/" + node + "/" + name }
func prepDoneKey(node string) string   { return "prep/" + node + "/done" }
