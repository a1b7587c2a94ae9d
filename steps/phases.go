package steps

import (
	"context"
	"fmt"

	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/steps/fileedit"
)

// The node steps of the twelve phases. Each is a NodeEdit whose edits are
// computed from the run's CA material, so they are the same bytes on every
// attempt.

// runCAs is the run's CA material as the steps write it to nodes and
// objects.
type runCAs struct {
	cluster, frontProxy CAPair
	// bundle and frontProxyBundle are old+new, PEM.
	bundle, frontProxyBundle []byte
}

func (rt *Runtime) runCAs(ctx context.Context) (runCAs, error) {
	var m runCAs
	var err error
	if m.cluster, err = rt.caPair(ctx, CACluster); err != nil {
		return runCAs{}, err
	}
	if m.frontProxy, err = rt.caPair(ctx, CAFrontProxy); err != nil {
		return runCAs{}, err
	}
	if m.bundle, m.frontProxyBundle, err = rt.bundles(ctx); err != nil {
		return runCAs{}, err
	}
	return m, nil
}

// Distribute puts the new CAs and the bundles on control-plane nodes and
// the cluster bundle on workers. kubeadm's ca.crt is untouched.
func Distribute() *NodeEdit {
	return &NodeEdit{StepName: "distribute", Short: "new CA files and bundles next to kubeadm's",
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			cas, err := rt.runCAs(ctx)
			if err != nil {
				return nil, err
			}
			c := rt.Config
			if t.Role != RoleControlPlane {
				return []fileedit.Edit{fileedit.SetContent(c.pki(fileCABundle), cas.bundle, 0o644)}, nil
			}
			etcd, err := rt.etcdDistribute(ctx)
			if err != nil {
				return nil, err
			}
			sa, err := rt.saDistribute(ctx)
			if err != nil {
				return nil, err
			}
			return append([]fileedit.Edit{
				fileedit.SetContent(c.pki(fileNewCACert), cas.cluster.NewCert, 0o644),
				fileedit.SetContent(c.pki(fileNewCAKey), cas.cluster.NewKey, 0o600),
				fileedit.SetContent(c.pki(fileNewFPCACert), cas.frontProxy.NewCert, 0o644),
				fileedit.SetContent(c.pki(fileNewFPCAKey), cas.frontProxy.NewKey, 0o600),
				fileedit.SetContent(c.pki(fileCABundle), cas.bundle, 0o644),
				fileedit.SetContent(c.pki(fileFPCABundle), cas.frontProxyBundle, 0o644),
			}, append(etcd, sa...)...), nil
		}}
}

// KCMTrustBoth points the controller-manager's trust flags at the bundles.
// Its root CA file is what it publishes as kube-root-ca.crt.
func KCMTrustBoth() *NodeEdit {
	return &NodeEdit{StepName: "kcm-trust-both", Short: "controller-manager trusts old+new",
		Restart: []Component{ControllerManager}, LeadersLast: []Component{ControllerManager},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			c := rt.Config
			return []fileedit.Edit{setFlags(rt, ControllerManager, map[string]string{
				"root-ca-file":                 c.pki(fileCABundle),
				"client-ca-file":               c.pki(fileCABundle),
				"requestheader-client-ca-file": c.pki(fileFPCABundle),
			})}, nil
		}}
}

// APIServerTrustBoth makes the apiserver accept client certificates of
// both CAs and front-proxy certificates of both front-proxy CAs.
func APIServerTrustBoth() *NodeEdit {
	return &NodeEdit{StepName: "apiserver-trust-both", Short: "apiserver trusts old+new",
		Restart: []Component{APIServer},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			c := rt.Config
			flags := map[string]string{
				"client-ca-file":                c.pki(fileCABundle),
				"requestheader-client-ca-file":  c.pki(fileFPCABundle),
				"kubelet-certificate-authority": c.pki(fileCABundle),
			}
			if c.Etcd {
				flags["etcd-cafile"] = c.pki(fileEtcdCABundle)
			}
			if c.ServiceAccount {
				flags["service-account-key-file"] = c.pki(fileSABundle)
			}
			return []fileedit.Edit{setFlags(rt, APIServer, flags, "kubelet-certificate-authority")}, nil
		}}
}

// SchedulerTrustBoth gives the scheduler's kubeconfig both CAs (it
// verifies the apiserver with it; client CAs come from
// extension-apiserver-authentication).
func SchedulerTrustBoth() *NodeEdit {
	return &NodeEdit{StepName: "scheduler-trust-both", Short: "scheduler trusts old+new",
		Restart: []Component{Scheduler}, LeadersLast: []Component{Scheduler},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			cas, err := rt.runCAs(ctx)
			if err != nil {
				return nil, err
			}
			c := rt.Config
			return []fileedit.Edit{
				kubeconfigCA(c.kubeDir(kubeconfigScheduler), cas.bundle, false),
				setFlags(rt, Scheduler, map[string]string{"client-ca-file": c.pki(fileCABundle)}, "client-ca-file"),
			}, nil
		}}
}

// Kubeconfigs gives every control-plane kubeconfig both CAs and a client
// certificate from the new CA (same subject and groups).
func Kubeconfigs() *NodeEdit {
	return &NodeEdit{StepName: "kubeconfigs", Short: "kubeconfigs: CA bundle, client certs from the new CA",
		Restart: []Component{ControllerManager, Scheduler}, LeadersLast: []Component{ControllerManager, Scheduler},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			cas, err := rt.runCAs(ctx)
			if err != nil {
				return nil, err
			}
			var edits []fileedit.Edit
			for _, kc := range edit.ControlPlaneKubeconfigs {
				crt, ok1, err := rt.Store.Value(ctx, prepKey(t.Node, kc.Name+".crt"))
				if err != nil {
					return nil, err
				}
				key, ok2, err := rt.Store.Value(ctx, prepKey(t.Node, kc.Name+".key"))
				if err != nil {
					return nil, err
				}
				if !ok1 || !ok2 {
					if kc.Optional {
						continue
					}
					return nil, fmt.Errorf("no prepared client certificate for %s on %s", kc.Name, t.Node)
				}
				edits = append(edits, kubeconfigCAAndCert(rt.Config.kubeDir(kc.Name), cas.bundle, crt, key, kc.Optional))
			}
			return edits, nil
		}}
}

// CCMTrustBoth points a cloud-controller-manager static pod, where one
// exists, at the bundle; elsewhere it records that there is none (see
// ccm.go; CCMNarrow undoes it when trust narrows).
func CCMTrustBoth() Step {
	return newCCMStep("ccm-trust-both", "cloud-controller-manager trusts old+new (if present)",
		func(c *Config) string { return c.pki(fileCABundle) })
}

// KubeletTrustBoth makes the kubelet accept client certificates of both
// CAs (the apiserver's kubelet-client certificate switches later) and
// verify the apiserver with both.
func KubeletTrustBoth(name string) *NodeEdit {
	return &NodeEdit{StepName: name, Short: "kubelet trusts old+new", Kubelet: true,
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			cas, err := rt.runCAs(ctx)
			if err != nil {
				return nil, err
			}
			c := rt.Config
			return []fileedit.Edit{
				kubeletClientCA(rt, c.pki(fileCABundle)),
				kubeconfigCA(c.kubeDir(kubeconfigKubelet), cas.bundle, false),
			}, nil
		}}
}

// SwitchIssuance makes the new CAs issue: the controller-manager signs
// with the new CA, and the apiserver's serving, kubelet-client and
// front-proxy-client certificates are replaced by ones from the new CAs.
func SwitchIssuance() *NodeEdit {
	// The controller-managers restart too: standbys first, so that the
	// leadership moves once (restarting the leader first, then each
	// standby just as it waits out the lease, left the lease unrenewed
	// for 25 s in make demo).
	return &NodeEdit{StepName: "switch-issuance", Short: "signer and apiserver certificates from the new CAs",
		Restart: []Component{APIServer, ControllerManager}, LeadersLast: []Component{ControllerManager},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			c := rt.Config
			var names []string
			for _, lf := range controlPlaneLeaves {
				names = append(names, lf.name)
			}
			if c.Etcd {
				names = append(names, etcdAPIServerLeaf)
			}
			edits, err := rt.preparedLeaves(ctx, t, names...)
			if err != nil {
				return nil, err
			}
			kcm := map[string]string{
				"cluster-signing-cert-file": c.pki(fileNewCACert),
				"cluster-signing-key-file":  c.pki(fileNewCAKey),
			}
			if c.ServiceAccount {
				kcm["service-account-private-key-file"] = c.pki(fileNewSAKey)
				edits = append(edits, setFlags(rt, APIServer, map[string]string{"service-account-signing-key-file": c.pki(fileNewSAKey)}))
			}
			edits = append(edits, setFlags(rt, ControllerManager, kcm, "service-account-private-key-file"))
			return edits, nil
		}}
}

// NarrowKCMRootCA makes the controller-manager publish only the new CA.
func NarrowKCMRootCA() *NodeEdit {
	return &NodeEdit{StepName: "kcm-root-ca-new", Short: "controller-manager publishes only the new CA",
		Restart: []Component{ControllerManager}, LeadersLast: []Component{ControllerManager},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			return []fileedit.Edit{setFlags(rt, ControllerManager, map[string]string{"root-ca-file": rt.Config.pki(fileNewCACert)})}, nil
		}}
}

// ControlPlaneCanonical narrows the control plane to the new CAs and puts
// it back in kubeadm's canonical layout: ca.crt/ca.key and
// front-proxy-ca.* are the new CAs, every flag points at kubeadm's paths,
// every kubeconfig trusts only the new CA.
func ControlPlaneCanonical() *NodeEdit {
	return &NodeEdit{StepName: "control-plane-canonical", Short: "control plane on the new CAs at kubeadm's paths",
		Restart: []Component{APIServer, ControllerManager, Scheduler}, LeadersLast: []Component{ControllerManager, Scheduler},
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			cas, err := rt.runCAs(ctx)
			if err != nil {
				return nil, err
			}
			c := rt.Config
			apiFlags := map[string]string{
				"client-ca-file":                c.pki(fileCACert),
				"requestheader-client-ca-file":  c.pki(fileFPCACert),
				"kubelet-certificate-authority": c.pki(fileCACert),
			}
			if c.Etcd {
				apiFlags["etcd-cafile"] = c.pki(fileEtcdCACert)
			}
			kcmFlags := map[string]string{
				"root-ca-file":                 c.pki(fileCACert),
				"client-ca-file":               c.pki(fileCACert),
				"requestheader-client-ca-file": c.pki(fileFPCACert),
				"cluster-signing-cert-file":    c.pki(fileCACert),
				"cluster-signing-key-file":     c.pki(fileCAKey),
			}
			var saEdits []fileedit.Edit
			if c.ServiceAccount {
				k, err := rt.saKeys(ctx)
				if err != nil {
					return nil, err
				}
				apiFlags["service-account-key-file"] = c.pki(fileSAPub)
				apiFlags["service-account-signing-key-file"] = c.pki(fileSAKey)
				kcmFlags["service-account-private-key-file"] = c.pki(fileSAKey)
				// Before the manifests, like the CA files: a static pod
				// restarted as soon as its manifest changes must find
				// sa.pub holding the new key already.
				saEdits = []fileedit.Edit{
					fileedit.SetContent(c.pki(fileSAKey), k.pair.NewKey, 0o600),
					fileedit.SetContent(c.pki(fileSAPub), k.pair.NewCert, 0o644),
				}
			}
			edits := append(saEdits, []fileedit.Edit{
				fileedit.SetContent(c.pki(fileCACert), cas.cluster.NewCert, 0o644),
				fileedit.SetContent(c.pki(fileCAKey), cas.cluster.NewKey, 0o600),
				fileedit.SetContent(c.pki(fileFPCACert), cas.frontProxy.NewCert, 0o644),
				fileedit.SetContent(c.pki(fileFPCAKey), cas.frontProxy.NewKey, 0o600),
				setFlags(rt, APIServer, apiFlags, "kubelet-certificate-authority"),
				setFlags(rt, ControllerManager, kcmFlags, "service-account-private-key-file"),
				setFlags(rt, Scheduler, map[string]string{"client-ca-file": c.pki(fileCACert)}, "client-ca-file"),
			}...)
			for _, kc := range edit.ControlPlaneKubeconfigs {
				edits = append(edits, kubeconfigCA(c.kubeDir(kc.Name), cas.cluster.NewCert, kc.Optional))
			}
			return edits, nil
		}}
}

// KubeletNarrow makes the kubelet trust only the new CA, at kubeadm's
// canonical ca.crt.
func KubeletNarrow(name string) *NodeEdit {
	return &NodeEdit{StepName: name, Short: "kubelet trusts only the new CA", Kubelet: true,
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			cas, err := rt.runCAs(ctx)
			if err != nil {
				return nil, err
			}
			c := rt.Config
			return []fileedit.Edit{
				fileedit.SetContent(c.pki(fileCACert), cas.cluster.NewCert, 0o644),
				kubeletClientCA(rt, c.pki(fileCACert)),
				kubeconfigCA(c.kubeDir(kubeconfigKubelet), cas.cluster.NewCert, false),
			}, nil
		}}
}

// Cleanup removes the files rotate added, once nothing on the node names
// them any more (see cleanup.go).
func Cleanup() Step {
	return &cleanupStep{&NodeEdit{StepName: "cleanup", Short: "remove rotate's temporary CA files",
		Reads: (*Runtime).rotateFileCandidates,
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			c := rt.Config
			var edits []fileedit.Edit
			for _, f := range c.rotateFiles() {
				edits = append(edits, fileedit.Remove(c.pki(f)))
			}
			return edits, nil
		}}}
}

// kubeletConfEmbedded replaces an embedded client certificate in
// kubelet.conf (kubeadm init before kubelet-finalize leaves one); a
// kubelet.conf that references kubelet-client-current.pem is unchanged.
func kubeletConfEmbedded(p string, pemBytes []byte) fileedit.Edit {
	return fileedit.Edit{Path: p, Fn: func(cur []byte, exists bool) ([]byte, bool, error) {
		if !exists {
			return nil, false, fmt.Errorf("%s is missing", p)
		}
		cc, err := edit.KubeconfigClientCert(cur, "")
		if err != nil {
			return nil, false, err
		}
		if len(cc.CertPEM) == 0 || cc.CertFile != "" {
			return cur, false, nil
		}
		c, k, err := pki.ParseKubeletPEM(pemBytes)
		if err != nil {
			return nil, false, err
		}
		cert := pki.EncodeCertsPEM(c)
		key, err := pki.EncodeKeyPEM(k)
		if err != nil {
			return nil, false, err
		}
		b, err := edit.SetKubeconfigClientCert(cur, "", cert, key)
		return b, false, err
	}}
}
