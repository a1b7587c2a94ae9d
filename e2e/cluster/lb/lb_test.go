package lb

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// echoServer answers every line with its own name.
func echoServer(t *testing.T, name string) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := io.WriteString(c, name+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), func() { ln.Close() }
}

// deadAddr is an address that refuses connections.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func ask(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read through lb: %v", err)
	}
	return line[:len(line)-1]
}

func serve(t *testing.T, backends []string) string {
	t.Helper()
	l, err := New(Config{Backends: backends, DownFor: time.Minute}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

func TestRoundRobin(t *testing.T) {
	a, stopA := echoServer(t, "a")
	defer stopA()
	b, stopB := echoServer(t, "b")
	defer stopB()
	lb := serve(t, []string{a, b})
	got := map[string]int{}
	for range 6 {
		got[ask(t, lb)]++
	}
	if got["a"] != 3 || got["b"] != 3 {
		t.Fatalf("distribution %v, want 3/3", got)
	}
}

func TestSkipsRefusingBackend(t *testing.T) {
	a, stopA := echoServer(t, "a")
	defer stopA()
	lb := serve(t, []string{deadAddr(t), a, deadAddr(t)})
	for i := range 6 {
		if got := ask(t, lb); got != "a" {
			t.Fatalf("request %d answered by %q", i, got)
		}
	}
}

func TestBackendKilledLater(t *testing.T) {
	a, stopA := echoServer(t, "a")
	defer stopA()
	b, stopB := echoServer(t, "b")
	lb := serve(t, []string{a, b})
	ask(t, lb)
	stopB()
	for i := range 4 {
		if got := ask(t, lb); got != "a" {
			t.Fatalf("request %d after b died answered by %q", i, got)
		}
	}
}

func TestNoBackends(t *testing.T) {
	if _, err := New(Config{}, slog.Default()); err == nil {
		t.Fatal("New without backends: nil error")
	}
}
