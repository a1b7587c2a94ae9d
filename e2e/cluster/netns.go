package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Network layout: a "switch" namespace holds bridge br0; every node (and the
// load balancer) is a network namespace whose eth0 is a veth with its peer
// enslaved to br0; the root namespace gets one veth (Spec.HostLink) into the
// bridge with the host address, so rotate, kubectl and the tests run on the
// host.

func (c *Cluster) setupNetwork(ctx context.Context) error {
	s := &c.st.Spec
	if err := checkSubnetFree(ctx, s); err != nil {
		return err
	}
	bits := strings.Split(s.Subnet, "/")[1]
	// Switch.
	if err := c.addNetNS(ctx, s.SwitchNS); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", s.SwitchNS, "link", "set", "lo", "up"},
		{"-n", s.SwitchNS, "link", "add", "br0", "type", "bridge"},
		{"-n", s.SwitchNS, "link", "set", "br0", "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	// Host veth.
	if err := c.record(func(st *state) { st.addUnique(&st.HostLinks, s.HostLink) }); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"link", "add", s.HostLink, "type", "veth", "peer", "name", "host", "netns", s.SwitchNS},
		{"-n", s.SwitchNS, "link", "set", "host", "master", "br0", "up"},
		{"addr", "add", s.HostAddress + "/" + bits, "dev", s.HostLink},
		{"link", "set", s.HostLink, "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	// Load balancer and nodes.
	if err := c.addMember(ctx, s.LBNS, "lb", s.LBAddress, bits); err != nil {
		return err
	}
	for i, n := range s.Nodes {
		if err := c.addMember(ctx, n.NetNS, fmt.Sprintf("n%d", i), n.Address, bits); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) addNetNS(ctx context.Context, name string) error {
	if err := c.record(func(st *state) { st.addUnique(&st.NetNS, name) }); err != nil {
		return err
	}
	_, err := run(ctx, "ip", "netns", "add", name)
	return err
}

// addMember creates namespace ns with eth0 = addr, its peer (port) on br0.
func (c *Cluster) addMember(ctx context.Context, ns, port, addr, bits string) error {
	s := &c.st.Spec
	if err := c.addNetNS(ctx, ns); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", s.SwitchNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", s.SwitchNS, "link", "set", port, "master", "br0", "up"},
		{"-n", ns, "addr", "add", addr + "/" + bits, "dev", "eth0"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "set", "eth0", "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	ino, err := nsInode(filepath.Join("/run/netns", ns))
	if err != nil {
		return fmt.Errorf("stat netns %s: %w", ns, err)
	}
	return c.record(func(st *state) { st.NSInodes["net:"+ns] = ino })
}

// checkSubnetFree refuses a subnet that overlaps a route or address of the
// root namespace (another cluster or a real network).
func checkSubnetFree(ctx context.Context, s *Spec) error {
	want := netip.MustParsePrefix(s.Subnet)
	out, err := run(ctx, "ip", "-4", "-o", "addr", "show")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i, w := range f {
			if w == "inet" && i+1 < len(f) {
				if p, err := netip.ParsePrefix(f[i+1]); err == nil && p.Masked().Overlaps(want) {
					return fmt.Errorf("subnet %s overlaps %s on %s (another cluster running? use --subnet)", s.Subnet, f[i+1], f[1])
				}
			}
		}
	}
	for _, ns := range append([]string{s.SwitchNS, s.LBNS}, nodeNetNS(s)...) {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			return fmt.Errorf("network namespace %s already exists (cluster %q already up? run down first)", ns, s.Name)
		}
	}
	return nil
}

func nodeNetNS(s *Spec) []string {
	var out []string
	for _, n := range s.Nodes {
		out = append(out, n.NetNS)
	}
	return out
}

// teardownNetwork deletes the recorded namespaces and links (missing ones
// are fine).
func (c *Cluster) teardownNetwork(ctx context.Context) error {
	var errs []string
	// Delete in reverse creation order: members, then the switch.
	for i := len(c.st.NetNS) - 1; i >= 0; i-- {
		ns := c.st.NetNS[i]
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		if _, err := run(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	for _, l := range c.st.HostLinks {
		if _, err := os.Stat(filepath.Join("/sys/class/net", l)); err != nil {
			continue
		}
		if _, err := run(ctx, "ip", "link", "del", l); err != nil {
			// The kernel removes a veth whose peer's namespace was just
			// deleted asynchronously: gone between the check and the
			// delete is gone.
			if _, serr := os.Stat(filepath.Join("/sys/class/net", l)); serr == nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("network teardown: %s", strings.Join(errs, "; "))
	}
	return nil
}
