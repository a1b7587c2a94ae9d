package wan

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NetNSPath is the file of the named network namespace (`ip netns`).
func NetNSPath(name string) string { return filepath.Join("/run/netns", name) }

// CreateNamespace creates the network namespace name with lo up and every
// address of addrs on lo (as /32): a program in it that connects to one of
// them reaches a listener in the same namespace (see Proxy.Listen), not
// the real host. A namespace of that name left by an earlier run is
// deleted first.
func CreateNamespace(ctx context.Context, name string, addrs []string) error {
	if err := DeleteNamespace(ctx, name); err != nil {
		return err
	}
	if err := ip(ctx, "netns", "add", name); err != nil {
		return err
	}
	if err := ip(ctx, "-n", name, "link", "set", "lo", "up"); err != nil {
		return err
	}
	for _, a := range addrs {
		if err := ip(ctx, "-n", name, "addr", "add", a+"/32", "dev", "lo"); err != nil {
			return err
		}
	}
	return nil
}

// DeleteNamespace deletes the named network namespace if it exists.
func DeleteNamespace(ctx context.Context, name string) error {
	if _, err := os.Stat(NetNSPath(name)); err != nil {
		return nil
	}
	return ip(ctx, "netns", "del", name)
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ListenIn listens on addr (tcp) in the network namespace at nsPath (""
// for the process's own). The socket stays in that namespace; accepting on
// it works from any thread.
func ListenIn(nsPath, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetNS(nsPath, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// DialIn connects to addr (tcp) from the network namespace at nsPath.
func DialIn(nsPath, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(nsPath, func() (err error) {
		c, err = net.Dial("tcp", addr)
		return err
	})
	return c, err
}

// inNetNS runs fn on a thread switched into the network namespace at
// nsPath and back. A thread that cannot switch back stays locked, so the
// runtime discards it with its goroutine.
func inNetNS(nsPath string, fn func() error) error {
	if nsPath == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer own.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter %s: %w", nsPath, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave %s: %w (after: %v)", nsPath, err, ferr)
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
