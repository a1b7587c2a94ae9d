// Benchmarks of one small operation with input (a batch of writes is one)
// through a link with a 50 ms round trip (e2e/wan's delay proxy in front
// of a real sshd): a plain ssh.Session (channel open, exec request and its
// reply, then the input: three round trips) against Client's exec
// (exec.go: a warm spare channel whose stub takes the command line and
// the input as one stream: one round trip). `make bench` prints
// their ratio (nodes/testdata/ratio.sh); the metric "RTT/op" is the time
// of one operation in round trips.
package nodes

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/kubeca/rotate/e2e/wan"
	"github.com/kubeca/rotate/nodes/sshdtest"
)

const benchRTT = 50 * time.Millisecond

// delayedClient is a Client of a real sshd reached through the proxy.
func delayedClient(b *testing.B) *Client {
	b.Helper()
	s, cfg := startNode(b, "n", sshdtest.Options{})
	p := wan.New(benchRTT / 2)
	b.Cleanup(func() { p.Close() })
	addr, err := p.Listen("", "127.0.0.1:0", s.Addr())
	if err != nil {
		b.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr.String())
	cfg.Port, _ = strconv.Atoi(port)
	cfg.Address = host
	sshdtest.WriteKnownHosts(b, cfg.KnownHostsFile, addr.String(), s.HostKey.PublicKey())
	return dial(b, cfg)
}

// benchOp is what both benchmarks run: a command with a little input,
// as a batched file write is.
var benchOp = struct {
	cmd   string
	stdin []byte
}{"cat >/dev/null; echo ok", bytes.Repeat([]byte("x"), 2048)}

func BenchmarkOperationSession(b *testing.B) {
	c := delayedClient(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := c.conn.NewSession()
		if err != nil {
			b.Fatal(err)
		}
		s.Stdin = bytes.NewReader(benchOp.stdin)
		out, err := s.Output(benchOp.cmd)
		s.Close()
		if err != nil || string(out) != "ok\n" {
			b.Fatalf("%q, %v", out, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(benchRTT), "RTT/op")
}

func BenchmarkOperationExec(b *testing.B) {
	c := delayedClient(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := c.Run(ctx, benchOp.cmd, benchOp.stdin)
		if err != nil || string(res.Stdout) != "ok\n" {
			b.Fatalf("%q, %v", res.Stdout, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(benchRTT), "RTT/op")
}
