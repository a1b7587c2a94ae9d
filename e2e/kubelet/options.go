// Package kubelet is the e2e node agent: the kubelet's API identity without
// a container runtime. It obtains and uses credentials exactly as the kubelet
// does (kubelet.conf, TLS bootstrap through the CSR API, the
// kubelet-client-current.pem symlink), registers its Node, renews its Lease,
// serves :10250 with a self-signed serving certificate and client
// certificate authentication against the config's clientCAFile, and marks
// the pods bound to it Running and Ready.
//
// Credentials, the client CA bundle and the serving certificate are read
// once at start. A restart re-reads everything; that is the contract rotate
// relies on ("restart the kubelet").
package kubelet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Options configure one node agent. The command line maps onto it one to
// one (see e2e/cmd/e2e-kubelet).
type Options struct {
	NodeName string
	NodeIP   net.IP

	// Kubeconfig is kubelet.conf; written after a TLS bootstrap.
	Kubeconfig string
	// BootstrapKubeconfig is used when Kubeconfig is missing or holds an
	// expired client certificate. Empty disables bootstrapping.
	BootstrapKubeconfig string
	// Config is the KubeletConfiguration file (config.yaml).
	Config string
	// CertDir holds kubelet-client-*.pem and kubelet.crt/kubelet.key.
	CertDir string

	RegisterWithTaints []v1.Taint
	NodeLabels         map[string]string

	// HealthzAddress overrides the config's healthzBindAddress:healthzPort
	// (default 127.0.0.1:10248).
	HealthzAddress string
	// Port overrides the config's port (default 10250). The server listens
	// on NodeIP:Port.
	Port int

	// StatusInterval is how often the node status is written (default 10s).
	StatusInterval time.Duration
	// LeaseDurationSeconds is the Lease's duration (default: the config's
	// nodeLeaseDurationSeconds, else 40, as the kubelet).
	LeaseDurationSeconds int32
	// LeaseInterval is how often the Lease is renewed (default a quarter of
	// the duration, as the kubelet: 10s for 40).
	LeaseInterval time.Duration

	// Logger receives structured progress; nil discards.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.StatusInterval <= 0 {
		o.StatusInterval = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// leaseFrom fills the Lease timing the options leave open from the kubelet
// config, with the kubelet's defaults.
func (o *Options) leaseFrom(cfg *kubeletConfig) {
	if o.LeaseDurationSeconds <= 0 {
		o.LeaseDurationSeconds = cfg.NodeLeaseDurationSeconds
	}
	if o.LeaseDurationSeconds <= 0 {
		o.LeaseDurationSeconds = 40
	}
	if o.LeaseInterval <= 0 {
		o.LeaseInterval = time.Duration(o.LeaseDurationSeconds) * time.Second / 4
	}
}

// Validate reports missing or inconsistent options, including node labels
// the kubelet itself refuses (NodeRestriction would reject them anyway).
func (o *Options) Validate() error {
	var errs []error
	if o.NodeName == "" {
		errs = append(errs, errors.New("node name is required"))
	}
	if o.NodeIP == nil {
		errs = append(errs, errors.New("node IP is required"))
	}
	if o.Kubeconfig == "" {
		errs = append(errs, errors.New("kubeconfig path is required"))
	}
	if o.Config == "" {
		errs = append(errs, errors.New("config path is required"))
	}
	if o.CertDir == "" {
		errs = append(errs, errors.New("cert dir is required"))
	}
	if o.Port < 0 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d out of range", o.Port))
	}
	if bad := unknownKubernetesLabels(o.NodeLabels); len(bad) > 0 {
		errs = append(errs, fmt.Errorf("unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: %v (the kubelet refuses them; set them with admin credentials after registration)", bad))
	}
	return errors.Join(errs...)
}

// ParseTaints parses the kubelet's --register-with-taints syntax:
// key=value:Effect or key:Effect, comma separated.
func ParseTaints(s string) ([]v1.Taint, error) {
	var taints []v1.Taint
	for _, spec := range splitList(s) {
		kv, effect, ok := strings.Cut(spec, ":")
		if !ok {
			return nil, fmt.Errorf("invalid taint %q: want key[=value]:Effect", spec)
		}
		switch e := v1.TaintEffect(effect); e {
		case v1.TaintEffectNoSchedule, v1.TaintEffectPreferNoSchedule, v1.TaintEffectNoExecute:
		default:
			return nil, fmt.Errorf("invalid taint %q: unknown effect %q", spec, effect)
		}
		key, value, _ := strings.Cut(kv, "=")
		if key == "" {
			return nil, fmt.Errorf("invalid taint %q: empty key", spec)
		}
		taints = append(taints, v1.Taint{Key: key, Value: value, Effect: v1.TaintEffect(effect)})
	}
	return taints, nil
}

// ParseLabels parses key=value pairs, comma separated.
func ParseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	for _, spec := range splitList(s) {
		k, v, ok := strings.Cut(spec, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("invalid label %q: want key=value", spec)
		}
		labels[k] = v
	}
	return labels, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// kubeletLabels and kubeletLabelNamespaces are k8s.io/kubelet/pkg/apis'
// lists of labels a kubelet may set on its own Node.
var (
	kubeletLabels = map[string]bool{
		v1.LabelHostname:                true,
		v1.LabelTopologyZone:            true,
		v1.LabelTopologyRegion:          true,
		v1.LabelFailureDomainBetaZone:   true,
		v1.LabelFailureDomainBetaRegion: true,
		v1.LabelInstanceType:            true,
		v1.LabelInstanceTypeStable:      true,
		v1.LabelOSStable:                true,
		v1.LabelArchStable:              true,
		"beta.kubernetes.io/os":         true,
		"beta.kubernetes.io/arch":       true,
	}
	kubeletLabelNamespaces = []string{v1.LabelNamespaceSuffixKubelet, v1.LabelNamespaceSuffixNode}
)

func labelNamespace(key string) string {
	ns, _, ok := strings.Cut(key, "/")
	if !ok {
		return ""
	}
	return ns
}

func isKubeletLabel(key string) bool {
	if kubeletLabels[key] {
		return true
	}
	ns := labelNamespace(key)
	for _, allowed := range kubeletLabelNamespaces {
		if ns == allowed || strings.HasSuffix(ns, "."+allowed) {
			return true
		}
	}
	return false
}

func isKubernetesLabel(key string) bool {
	ns := labelNamespace(key)
	return ns == "kubernetes.io" || strings.HasSuffix(ns, ".kubernetes.io") ||
		ns == "k8s.io" || strings.HasSuffix(ns, ".k8s.io")
}

func unknownKubernetesLabels(labels map[string]string) []string {
	var bad []string
	for k := range labels {
		if isKubernetesLabel(k) && !isKubeletLabel(k) {
			bad = append(bad, k)
		}
	}
	sort.Strings(bad)
	return bad
}
