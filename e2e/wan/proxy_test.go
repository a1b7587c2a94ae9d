package wan

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// echoServer accepts connections that first send banner, then echo.
func echoServer(t *testing.T, banner string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if banner != "" {
					io.WriteString(c, banner)
				}
				io.Copy(c, c)
			}()
		}
	}()
	return l.Addr().String()
}

func proxyTo(t *testing.T, oneWay time.Duration, target string) string {
	t.Helper()
	p := New(oneWay)
	t.Cleanup(func() { p.Close() })
	a, err := p.Listen("", "127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	return a.String()
}

// TestDelay: a banner (what an SSH server sends first) arrives a full
// round trip plus the handshake after connect, every request/response
// round trip takes at least 2×oneWay, and a burst of chunks arrives as a
// whole, in order, in a fraction of the time one delay per chunk would
// take — the delay does not serialize throughput. Upper bounds on single
// round trips would measure the machine's load, not the proxy.
func TestDelay(t *testing.T) {
	const oneWay = 25 * time.Millisecond
	addr := proxyTo(t, oneWay, echoServer(t, "SSH-2.0-test\r\n"))
	t0 := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "SSH-2.0-test\r\n" {
		t.Fatalf("banner %q, %v", line, err)
	}
	if got := time.Since(t0); got < 4*oneWay {
		t.Errorf("banner after %s, want ≥ %s (handshake round trip + one way + one way back)", got, 4*oneWay)
	}
	for i := range 5 {
		t1 := time.Now()
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("echo %q, %v", line, err)
		}
		// A lower bound only: how much longer it takes is the machine's
		// load (CI saw 153 ms beside the e2e suite), not the proxy's.
		if rtt := time.Since(t1); rtt < 2*oneWay {
			t.Errorf("round trip %d: %s, want ≥ %s", i, rtt, 2*oneWay)
		}
	}
	// A burst of 200 writes: all back about one round trip later.
	var want bytes.Buffer
	t2 := time.Now()
	for i := range 200 {
		line := []byte{byte('a' + i%26), '\n'}
		want.Write(line)
		if _, err := c.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("burst came back out of order or changed")
	}
	// Not serialized: one delay per chunk would take 200 one-way delays
	// (5 s); the bound is a fifth of that, far above any load's effect
	// on one round trip.
	if d := time.Since(t2); d < 2*oneWay || d >= 40*oneWay {
		t.Errorf("burst of 200 writes took %s, want about one round trip (%s), far below 200 one-way delays", d, 2*oneWay)
	}
}

// TestHalfClose: the client's EOF reaches the server, whose remaining
// output still reaches the client.
func TestHalfClose(t *testing.T) {
	addr := proxyTo(t, 5*time.Millisecond, echoServer(t, ""))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "bye")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// TestRefused: a dial to a closed port resets the client's connection.
func TestRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	addr := proxyTo(t, time.Millisecond, dead)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a connection to a closed port succeeded")
	}
}

// TestSSHRoundTrip runs `ssh … true` against a real sshd through the
// proxy (root with /usr/sbin/sshd only): the whole command costs several
// round trips, each at least 2×oneWay.
func TestSSHRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for sshd")
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Skip("no /usr/sbin/sshd")
	}
	dir := t.TempDir()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir+"/host")
	run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir+"/id")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sshdAddr := l.Addr().(*net.TCPAddr)
	l.Close()
	pub, _ := os.ReadFile(dir + "/id.pub")
	os.WriteFile(dir+"/authorized_keys", pub, 0o600)
	cfg := "ListenAddress 127.0.0.1:" + strconv.Itoa(sshdAddr.Port) + "\nHostKey " + dir + "/host\nAuthorizedKeysFile " + dir + "/authorized_keys\nUsePAM no\nStrictModes no\nPidFile none\n"
	os.WriteFile(dir+"/sshd_config", []byte(cfg), 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	sshd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", dir+"/sshd_config")
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sshd.Process.Kill(); sshd.Wait() })
	sshTrue := func(addr string) (time.Duration, error) {
		h, p, _ := net.SplitHostPort(addr)
		t0 := time.Now()
		out, err := exec.Command("ssh", "-i", dir+"/id", "-p", p, "-o", "StrictHostKeyChecking=no",
			"-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@"+h, "true").CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("%w: %s", err, out)
		}
		return time.Since(t0), nil
	}
	// sshd needs a moment to listen: retry until it answers directly.
	var direct time.Duration
	deadline := time.Now().Add(10 * time.Second)
	for {
		if direct, err = sshTrue(sshdAddr.String()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh directly: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	const oneWay = 25 * time.Millisecond
	delayed, err := sshTrue(proxyTo(t, oneWay, sshdAddr.String()))
	if err != nil {
		t.Fatalf("ssh through the proxy: %v", err)
	}
	t.Logf("ssh true: direct %s, through a %s round trip %s", direct, 2*oneWay, delayed)
	// A lower bound only, which a busy machine cannot break (comparing with
	// the direct time can: both vary by more than the delay): an SSH
	// session takes at least four round trips before the command runs
	// (key exchange, service request, authentication, channel).
	if min := 4 * 2 * oneWay; delayed < min {
		t.Errorf("ssh true through the proxy took %s: want ≥ %s (four %s round trips)", delayed, min, 2*oneWay)
	}
}

// TestNamespace: a program in the operator namespace reaches a node
// address (a /32 on the namespace's lo) through the proxy, which dials the
// real target from the test's own namespace (root only).
func TestNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ctx := t.Context()
	const name, node = "rbench-wan-test", "10.213.70.250"
	if err := CreateNamespace(ctx, name, []string{node}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := DeleteNamespace(context.Background(), name); err != nil {
			t.Error(err)
		}
	})
	p := New(10 * time.Millisecond)
	t.Cleanup(func() { p.Close() })
	if _, err := p.Listen(NetNSPath(name), node+":22", echoServer(t, "hello\n")); err != nil {
		t.Fatal(err)
	}
	c, err := DialIn(NetNSPath(name), node+":22")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "hello\n" {
		t.Fatalf("got %q, %v", line, err)
	}
	if a, _ := p.Stats(); a != 1 {
		t.Errorf("proxy accepted %d connections, want 1", a)
	}
}
