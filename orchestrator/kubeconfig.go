package orchestrator

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kubeca/rotate/internal/kubeconfig"
	"github.com/kubeca/rotate/pki"
	"github.com/kubeca/rotate/steps"
)

// kubeconfigAdvice says whether the inventory's kubeconfig (path, context
// ctxName or the current one) still fits the cluster CA now in use
// (currentPEM): it must trust it and, if it presents a client
// certificate, present one issued by it. rotate itself reaches the API
// through its run state, so a stale kubeconfig shows only at the next run,
// or for the operator's kubectl: say so when the run ends. Returns "" when
// nothing needs doing or the kubeconfig cannot be judged.
func kubeconfigAdvice(path, ctxName string, currentPEM []byte) string {
	cas, err := pki.ParseCertsPEM(currentPEM)
	if err != nil || len(cas) == 0 {
		return ""
	}
	current := cas[0]
	kt, err := kubeconfig.LoadTLS(path, ctxName)
	if err != nil {
		return ""
	}
	var problems []string
	if len(kt.CA) > 0 {
		if fps, err := pki.BundleFingerprints(kt.CA); err == nil && !slices.Contains(fps, pki.Fingerprint(current)) {
			problems = append(problems, "does not trust the cluster CA now in use")
		}
	}
	if len(kt.Cert) > 0 {
		if certs, err := pki.ParseCertsPEM(kt.Cert); err == nil && len(certs) > 0 && !pki.IssuedBy(certs[0], current) {
			problems = append(problems, "presents a client certificate the cluster no longer accepts")
		}
	}
	if len(problems) == 0 {
		return ""
	}
	return fmt.Sprintf("note: the inventory's kubeconfig %s %s (%s): before the next rotate run or kubectl use, replace it with /etc/kubernetes/admin.conf from a control-plane node, or give it the CA data and a client certificate of that CA",
		path, strings.Join(problems, " and "), pki.Describe(current))
}

// adviseKubeconfig prints kubeconfigAdvice for the cluster CA the run now
// leaves in use: the new one after a completed rotation, the old one after
// a rollback.
func (s *session) adviseKubeconfig(ctx context.Context, useNew bool) {
	pair, ok, err := s.store.CA(ctx, steps.CACluster)
	if err != nil || !ok {
		return
	}
	cur := pair.OldCert
	if useNew {
		cur = pair.NewCert
	}
	if msg := kubeconfigAdvice(s.cfg.Kubeconfig, s.cfg.Context, cur); msg != "" {
		s.engine.printer.Linef("%s", msg)
	}
}
