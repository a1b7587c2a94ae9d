package steps

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubeca/rotate/nodes"
)

func TestAPIServerEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"own endpoint", Config{Addresses: map[string]string{"cp1": "10.0.0.1"}, APIServerPort: 6443, APIServers: map[string]string{"cp1": "api-1.example.com:8443"}}, "api-1.example.com:8443"},
		{"recorded without endpoints: SSH address and the port", Config{Addresses: map[string]string{"cp1": "10.0.0.1"}, APIServerPort: 7443}, "10.0.0.1:7443"},
		{"no port recorded: 6443", Config{Addresses: map[string]string{"cp1": "10.0.0.1"}}, "10.0.0.1:6443"},
		{"IPv6", Config{Addresses: map[string]string{"cp1": "fd00::1"}, APIServerPort: 6443}, "[fd00::1]:6443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.c.APIServerEndpoint("cp1"); got != tc.want {
				t.Fatalf("APIServerEndpoint = %q, want %q", got, tc.want)
			}
		})
	}
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// Every check that talks to one apiserver dials its endpoint, not the
// node's SSH address: here the SSH address's port 6443-equivalent is
// closed, and only the endpoint serves.
func TestAPIServerChecksDialTheEndpoint(t *testing.T) {
	f := newVerifyFixture(t)
	rt := f.rt
	port := rt.Config.APIServerPort
	rt.Config.APIServerPort = closedPort(t)
	rt.Config.APIServers = map[string]string{"cp1": net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	ctx := context.Background()

	t.Run("preflight and its baseline", func(t *testing.T) {
		f.preflight(t)
		b, err := rt.loadBaseline(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if why := b[checkAPIServer("cp1")]; why != "" {
			t.Fatalf("baseline of the apiserver failed: %s", why)
		}
	})
	t.Run("verify", func(t *testing.T) {
		if _, err := f.verify(t); err != nil {
			t.Fatalf("verify: %v", err)
		}
	})
	t.Run("apiserver restart gate", func(t *testing.T) {
		cp1 := rt.Nodes.(memNodes)["cp1"].(*nodes.MemRunner)
		// The process report of nodes.NewestProcess: kube-apiserver
		// started 1 s ago, its manifest written 10 s ago.
		cp1.RunFunc = func(ctx context.Context, cmd string, stdin []byte) (nodes.Result, error) {
			return nodes.Result{Stdout: []byte("123 99900 100 1000 2000 1990\n")}, nil
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := (liveGates{}).Component(ctx, rt, Target{Node: "cp1", Role: RoleControlPlane}, APIServer); err != nil {
			t.Fatalf("gate: %v", err)
		}
	})
	t.Run("the SSH address is not dialed", func(t *testing.T) {
		rt.Config.APIServers = nil
		ok, why, err := rt.apiServerReady(ctx, rt.Config.APIServerEndpoint("cp1"))
		if err != nil || ok || !strings.Contains(why, "connection refused") {
			t.Fatalf("without its endpoint the check dials the closed port: ok=%v why=%q err=%v", ok, why, err)
		}
	})
}
