package steps

import (
	"context"
	"path"
	"strconv"

	"github.com/kubeca/rotate/nodes/edit"
	"github.com/kubeca/rotate/steps/fileedit"
)

// The cloud-controller-manager, where a control-plane node runs it as a
// static pod: ccm-trust-both (phase 8) points its --root-ca-file at the
// bundle, ccm-narrow (phase 12) at kubeadm's ca.crt, which holds only the
// new CA by then, before cleanup removes the bundle. Its container is
// named cloud-controller-manager; a node without its manifest has nothing
// to do.

// ccm is the cloud-controller-manager's manifest and container.
var ccm = Component{Name: "cloud-controller-manager", Manifest: "cloud-controller-manager.yaml", HealthPort: 10258}

// ccmStep is a NodeEdit of the cloud-controller-manager's manifest whose
// gates wait for the restarted process where the manifest exists.
// NodeEdit.Revert needs no gate of it: the step's only file is the
// manifest, restored early; RevertGate waits for the restart it causes.
type ccmStep struct{ *NodeEdit }

// CCMNarrow points the cloud-controller-manager, where one exists, at
// ca.crt (the new CA only, after control-plane-canonical), so that
// nothing names the bundle cleanup removes.
func CCMNarrow() Step {
	return newCCMStep("ccm-narrow", "cloud-controller-manager trusts only the new CA (if present)",
		func(c *Config) string { return c.pki(fileCACert) })
}

// newCCMStep sets the cloud-controller-manager's --root-ca-file to
// rootCA and restarts it.
func newCCMStep(name, short string, rootCA func(c *Config) string) *ccmStep {
	return &ccmStep{&NodeEdit{StepName: name, Short: short,
		Edits: func(ctx context.Context, rt *Runtime, t Target) ([]fileedit.Edit, error) {
			if _, ok, err := rt.ccmGate(ctx, t); err != nil || !ok {
				if err == nil {
					rt.Printf("no cloud-controller-manager manifest on %s: nothing to do", t.Node)
				}
				return nil, err
			}
			return []fileedit.Edit{setFlags(rt, ccm, map[string]string{"root-ca-file": rootCA(rt.Config)}), bumpManifest(rt, ccm)}, nil
		},
		Notes: func(ctx context.Context, rt *Runtime, t Target) ([]string, error) {
			c, ok, err := rt.ccmGate(ctx, t)
			if err != nil || !ok {
				return nil, err
			}
			return []string{"restart " + c.Name + " (static pod) and wait until healthy"}, nil
		}}}
}

func (s *ccmStep) Gate(ctx context.Context, rt *Runtime, t Target) error {
	c, ok, err := rt.ccmGate(ctx, t)
	if err != nil || !ok {
		return err
	}
	return rt.gateComponent(ctx, t, c)
}

func (s *ccmStep) RevertGate(ctx context.Context, rt *Runtime, t Target) error {
	return s.Gate(ctx, rt, t)
}

// ccmGate is the Component the restart gate waits for on t, from the
// manifest: the process is its command's binary (cloud-controller-manager,
// or e.g. aws-cloud-controller-manager), healthz on its --secure-port
// (10258 by default; none for 0). ok is false without a manifest.
func (rt *Runtime) ccmGate(ctx context.Context, t Target) (Component, bool, error) {
	r, err := rt.node(ctx, t)
	if err != nil {
		return Component{}, false, err
	}
	p := rt.Config.manifest(ccm)
	st, err := r.Stat(ctx, p)
	if err != nil || !st.Exists {
		return Component{}, false, err
	}
	raw, err := r.ReadFile(ctx, p)
	if err != nil {
		return Component{}, false, err
	}
	c := ccm
	if cmd, err := edit.ContainerCommand(raw, ccm.Name); err == nil && len(cmd) > 0 && path.Base(cmd[0]) != "." {
		c.Name = path.Base(cmd[0])
	}
	if v, ok, err := edit.ManifestFlag(raw, ccm.Name, "secure-port"); err == nil && ok {
		if c.HealthPort, err = strconv.Atoi(v); err != nil {
			c.HealthPort = ccm.HealthPort
		}
	}
	return c, true, nil
}
