package nodes

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

func TestHostKeyVerification(t *testing.T) {
	t.Parallel()
	s, cfg := startNode(t, "cp-2", sshdtest.Options{})
	serverFP := ssh.FingerprintSHA256(s.HostKey.PublicKey())
	other := sshdtest.WriteKey(t, filepath.Join(t.TempDir(), "other"))
	otherFP := ssh.FingerprintSHA256(other.PublicKey())

	writeKH := func(t *testing.T, lines ...string) string {
		f := filepath.Join(t.TempDir(), "known_hosts")
		must(t, os.WriteFile(f, []byte(strings.Join(lines, "\n")+"\n"), 0o644))
		return f
	}
	line := func(addr string, k ssh.PublicKey) string {
		return knownhosts.Line([]string{knownhosts.Normalize(addr)}, k)
	}

	t.Run("known key accepted", func(t *testing.T) {
		dial(t, cfg)
	})

	refused := []struct {
		name  string
		kh    func(t *testing.T, p *proxy) string
		wants []string
	}{
		{"unknown host", func(t *testing.T, p *proxy) string {
			return writeKH(t, line("127.0.0.9:22", s.HostKey.PublicKey()))
		}, []string{"unknown host key for node cp-2", serverFP, "known_hosts", "ssh-ed25519"}},
		{"mismatch", func(t *testing.T, p *proxy) string {
			return writeKH(t, line(p.addr(), other.PublicKey()))
		}, []string{"host key mismatch for node cp-2", serverFP, otherFP, "man-in-the-middle", "refusing to connect"}},
		{"revoked", func(t *testing.T, p *proxy) string {
			return writeKH(t, "@revoked * "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.HostKey.PublicKey()))))
		}, []string{"revoked", serverFP, "node cp-2"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t, s.Addr())
			cfg := p.via(t, s, cfg)
			cfg.KnownHostsFile = tc.kh(t, p)
			cfg.Retries = 3

			_, err := Dial(testCtx(t), cfg)
			if !errors.Is(err, ErrHostKey) {
				t.Fatalf("err = %v, want ErrHostKey", err)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if n := p.accepted.Load(); n != 1 {
				t.Errorf("%d connection attempts, want 1: host key errors are never retried", n)
			}

			// Through the pool: nothing is written.
			dir := t.TempDir()
			f := filepath.Join(dir, "ca.crt")
			must(t, os.WriteFile(f, []byte("C0"), 0o644))
			pool := NewPool([]Config{cfg})
			defer pool.Close()
			err = func(ctx ctxT) error {
				r, err := pool.Get(ctx, "cp-2")
				if err != nil {
					return err
				}
				return r.WriteFile(ctx, f, []byte("C1"), 0)
			}(testCtx(t))
			if !errors.Is(err, ErrHostKey) {
				t.Fatalf("write through the pool: err = %v, want ErrHostKey", err)
			}
			assertFile(t, f, "C0", 0o644, 0, 0)
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("directory changed: %v", entries)
			}
		})
	}

	t.Run("missing known_hosts file", func(t *testing.T) {
		cfg := cfg
		cfg.KnownHostsFile = filepath.Join(t.TempDir(), "nope")
		_, err := Dial(testCtx(t), cfg)
		if !errors.Is(err, ErrHostKey) || !strings.Contains(err.Error(), "nope") {
			t.Fatalf("err = %v, want ErrHostKey naming the file", err)
		}
	})

	t.Run("insecure mode skips verification", func(t *testing.T) {
		cfg := cfg
		cfg.KnownHostsFile = writeKH(t, line(s.Addr(), other.PublicKey()))
		cfg.InsecureIgnoreHostKey = true
		dial(t, cfg)
	})
}

// TestHostKeyAlgorithmFromKnownHosts: a server with an ed25519 and an ECDSA
// host key, known_hosts listing only the ed25519 one. The client must ask
// for ed25519 instead of reporting a mismatch on the ECDSA key that x/crypto
// prefers by default.
func TestHostKeyAlgorithmFromKnownHosts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ecFile := filepath.Join(dir, "ssh_host_ecdsa_key")
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	blk, err := ssh.MarshalPrivateKey(priv, "")
	must(t, err)
	must(t, os.WriteFile(ecFile, pem.EncodeToMemory(blk), 0o600))

	_, cfg := startNode(t, "n", sshdtest.Options{ExtraConfig: []string{"HostKey " + ecFile}})
	dial(t, cfg) // cfg.KnownHostsFile lists the ed25519 key only
}
