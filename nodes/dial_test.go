package nodes

import (
	"io"
	"net"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// TestDialTCP opens a TCP connection through a real sshd to a listener on
// its host, directly and through a Pool, and gets a connection error
// naming the node and address for a closed port.
func TestDialTCP(t *testing.T) {
	t.Parallel()
	ln := serveTCP(t, "hello from the node's network\n")
	_, cfg := startNode(t, "cp-1", sshdtest.Options{})
	c := dial(t, cfg)
	p := NewPool([]Config{cfg})
	defer p.Close()
	for name, d := range map[string]func() (net.Conn, error){
		"client": func() (net.Conn, error) { return c.DialTCP(testCtx(t), ln.Addr().String()) },
		"pool":   func() (net.Conn, error) { return p.DialNode(testCtx(t), "cp-1", ln.Addr().String()) },
	} {
		conn, err := d()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || string(b) != "hello from the node's network\n" {
			t.Errorf("%s: read %q, %v", name, b, err)
		}
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	if _, err := c.DialTCP(testCtx(t), addr); err == nil || !strings.Contains(err.Error(), "dial "+addr+" from cp-1") {
		t.Errorf("closed port: %v", err)
	}
}
