// Command e2e-demo is `make demo`: it brings up the local HA cluster (3
// control-plane nodes, 2 workers, real Kubernetes components), rotates its
// CAs with the real `rotate` binary while probes watch every credential
// holder, verifies the result, prints a summary and tears the cluster down.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kubeca/rotate/e2e/cluster"
	"github.com/kubeca/rotate/e2e/probes"
	"github.com/kubeca/rotate/e2e/verify"
	"github.com/kubeca/rotate/internal/kubeconfig"
	"github.com/kubeca/rotate/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo FAILED: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf("\n### "+format+"\n", args...) }

type prefixWriter struct{ prefix string }

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		fmt.Println(p.prefix + l)
	}
	return len(b), nil
}

func run(ctx context.Context) (err error) {
	binDir := os.Getenv("ROTATE_BIN_DIR")
	rotateBin := filepath.Join(binDir, "rotate")
	if _, err := os.Stat(rotateBin); err != nil {
		return fmt.Errorf("rotate binary not found at %s (run `make build`, or set ROTATE_BIN_DIR)", rotateBin)
	}
	start := time.Now()
	say("1/5 bringing up a local HA cluster: 3 control-plane nodes, 2 workers (real kube-apiserver, controller-manager, scheduler, etcd, kubeadm PKI, OpenSSH)")
	c, err := cluster.Up(ctx, cluster.Options{Name: "demo", ControlPlanes: 3, Workers: 2, Subnet: "10.213.50.0/24",
		BinDir: os.Getenv("ROTATE_K8S_BIN"), HarnessBinDir: binDir, Progress: prefixWriter{"    cluster: "}, ReplaceStale: true})
	if err != nil {
		return fmt.Errorf("cluster up: %w", err)
	}
	defer func() {
		say("tearing the cluster down")
		dctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if derr := c.Down(dctx); derr != nil && err == nil {
			err = fmt.Errorf("cluster down: %w", derr)
		}
	}()
	up := time.Since(start)
	info := c.Info()
	fmt.Printf("    cluster up in %s; inventory: %s\n", up.Round(time.Second), info.Inventory)
	oldCA, err := verify.ReadCA(info.Nodes[0], "ca")
	if err != nil {
		return err
	}
	oldEtcd, err := verify.ReadCA(info.Nodes[0], "etcd/ca")
	if err != nil {
		return err
	}
	oldSA, err := verify.ReadSAKey(info.Nodes[0])
	if err != nil {
		return err
	}
	oldClient, err := verify.ClientCert(oldCA, "demo-old-ca-client")
	if err != nil {
		return err
	}
	p, err := probes.Start(ctx, filepath.Join(c.Dir(), "cluster.json"), probes.Options{})
	if err != nil {
		return fmt.Errorf("probes: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			p.Stop()
		}
	}()
	work, err := os.MkdirTemp("", "rotate-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	rot := func(args ...string) error {
		cmd := exec.CommandContext(ctx, rotateBin, args...)
		cmd.Dir = work
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		if err := cmd.Start(); err != nil {
			return err
		}
		done := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				fmt.Println("    " + sc.Text())
			}
			close(done)
		}()
		err := cmd.Wait()
		pw.Close()
		<-done
		if err != nil {
			return fmt.Errorf("rotate %s: %w", args[0], err)
		}
		return nil
	}
	t0 := time.Now()
	say("2/5 rotate start --inventory %s (holds before narrowing trust)", info.Inventory)
	if err := rot("start", "--inventory", info.Inventory); err != nil {
		return err
	}
	say("3/5 rotate status (the hold: what was verified and what still needs the old CA)")
	if err := rot("status"); err != nil {
		return err
	}
	say("4/5 rotate resume (narrow trust: old-CA certificates stop working)")
	if err := rot("resume"); err != nil {
		return err
	}
	took := time.Since(t0)
	say("5/5 verifying the result from outside")
	newCA, err := verify.ReadCA(info.Nodes[0], "ca")
	if err != nil {
		return err
	}
	newClient, err := verify.ClientCert(newCA, "demo-new-ca-client")
	if err != nil {
		return err
	}
	checks := []struct {
		name string
		fn   func() error
	}{
		{"every apiserver serves a certificate from the new CA", func() error { return verify.ServingIssuer(ctx, info, newCA.Cert) }},
		{"a client certificate from the OLD CA is rejected by every apiserver (not authenticated)", func() error {
			return verify.ExpectRejected(ctx, info, []*x509.Certificate{newCA.Cert}, oldClient)
		}},
		{"a client certificate from the new CA is accepted by every apiserver", func() error {
			return verify.ExpectClientStatus(ctx, info, []*x509.Certificate{newCA.Cert}, newClient, 200)
		}},
		{"every kubelet client certificate is from the new CA", func() error { return verify.KubeletCertsIssuedBy(info, newCA.Cert) }},
		{"every control-plane kubeconfig is on the new CA", func() error { return verify.KubeconfigsIssuedBy(info, newCA.Cert) }},
		{"every etcd member serves certificates of the new etcd CA and refuses the old one's", func() error {
			newEtcd, err := verify.ReadCA(info.Nodes[0], "etcd/ca")
			if err != nil {
				return err
			}
			return verify.EtcdOnCA(ctx, info, newEtcd, oldEtcd)
		}},
		{"every apiserver publishes only the new service-account key, accepts its tokens and rejects the old key's", func() error {
			newSA, err := verify.ReadSAKey(info.Nodes[0])
			if err != nil {
				return err
			}
			cfg, err := kubeconfig.Load(filepath.Join(info.Nodes[0].EtcKubernetes, "admin.conf"), "")
			if err != nil {
				return err
			}
			kc, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			return verify.ServiceAccountKeyIs(ctx, info, kc, []*x509.Certificate{newCA.Cert}, newClient, newSA, oldSA)
		}},
		{"every pod's token on every node is signed by the new service-account key", func() error {
			newSA, err := verify.ReadSAKey(info.Nodes[0])
			if err != nil {
				return err
			}
			return verify.PodTokensSignedBy(ctx, info, newSA.ID)
		}},
	}
	failed := 0
	for _, ch := range checks {
		if err := ch.fn(); err != nil {
			fmt.Printf("    FAIL %s: %v\n", ch.name, err)
			failed++
		} else {
			fmt.Printf("    ok   %s\n", ch.name)
		}
	}
	rep := p.Stop()
	stopped = true
	if rep.Clean() {
		fmt.Println("    ok   probes saw no x509/401/403 error during the rotation")
	} else {
		fmt.Println("    FAIL probes saw credential errors")
		failed++
	}
	if st := rep.Probes[probes.ProbeStorage]; st != nil && st.OK > 0 && st.OK == st.Requests {
		fmt.Printf("    ok   a value was written and read back through the apiservers every second (%d times): etcd kept quorum\n", st.OK)
	} else {
		fmt.Println("    FAIL the storage probe could not write and read back a value at some moment (or never ran)")
		failed++
	}
	say("summary")
	fmt.Printf("    cluster %s: 3 control-plane nodes, 2 workers; up in %s\n", info.Name, up.Round(time.Second))
	fmt.Printf("    old cluster CA: %s\n    new cluster CA: %s\n", pki.Describe(oldCA.Cert), pki.Describe(newCA.Cert))
	fmt.Printf("    rotation (start + hold + resume): %s\n", took.Round(time.Second))
	fmt.Printf("    probes:\n%s\n", indent(rep.Summary(), "      "))
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	fmt.Println("    demo passed: the cluster's CAs were rotated without an outage")
	return nil
}

func indent(s, p string) string {
	return p + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+p)
}
