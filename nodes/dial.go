package nodes

import (
	"context"
	"fmt"
	"net"
)

// TCPDialer opens TCP connections from a node: the SSH connection's
// direct-tcpip channel (ssh -W), so the connection leaves from the node's
// network, e.g. to a Service's cluster IP that only the nodes reach. The
// node's sshd must allow TCP forwarding (AllowTcpForwarding, its default).
type TCPDialer interface {
	DialTCP(ctx context.Context, addr string) (net.Conn, error)
}

var _ TCPDialer = (*Client)(nil)

// DialTCP connects to addr (host:port) from the node.
func (c *Client) DialTCP(ctx context.Context, addr string) (net.Conn, error) {
	c.trips.Trip(ctx, c.cfg.Name)
	conn, err := c.conn.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, c.cfg.Name, err)
	}
	return conn, nil
}

// DialNode connects to addr from the named node (see TCPDialer).
func (p *Pool) DialNode(ctx context.Context, node, addr string) (net.Conn, error) {
	c, err := p.client(ctx, node)
	if err != nil {
		return nil, err
	}
	return c.DialTCP(ctx, addr)
}
