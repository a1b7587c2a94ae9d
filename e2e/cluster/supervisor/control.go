package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Request is one control request on the supervisor socket (one JSON line).
type Request struct {
	Op string `json:"op"` // "restart-kubelet" | "status" | "stop" | "set-notice-delay" | "sync"
	// Except names pods that "stop" leaves running.
	Except []string `json:"except,omitempty"`
	// NoticeDelay is the new notice delay of "set-notice-delay".
	NoticeDelay time.Duration `json:"noticeDelay,omitempty"`
}

// Response answers a Request (one JSON line).
type Response struct {
	Error    string          `json:"error,omitempty"`
	PID      int             `json:"pid,omitempty"`
	Services []ServiceStatus `json:"services,omitempty"`
}

func (s *Supervisor) serve(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("accept", "err", err)
			}
			return
		}
		go s.handle(ctx, c)
	}
}

func (s *Supervisor) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	var req Request
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		_ = json.NewEncoder(c).Encode(Response{Error: "bad request: " + err.Error()})
		return
	}
	var resp Response
	switch req.Op {
	case "restart-kubelet":
		s.log.Info("kubelet restart requested over the control socket")
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		pid, err := s.RestartService(rctx, KubeletService)
		cancel()
		if err != nil {
			resp.Error = err.Error()
		}
		resp.PID = pid
	case "status":
		resp.Services = s.Status()
	case "sync":
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := s.Sync(sctx); err != nil {
			resp.Error = "sync: " + err.Error()
		}
		cancel()
		resp.Services = s.Status()
	case "set-notice-delay":
		if req.NoticeDelay < 0 {
			resp.Error = fmt.Sprintf("negative notice delay %s", req.NoticeDelay)
			break
		}
		s.SetNoticeDelay(req.NoticeDelay)
	case "stop":
		s.StopPods(req.Except)
		resp.Services = s.Status()
	default:
		resp.Error = fmt.Sprintf("unknown op %q", req.Op)
	}
	_ = json.NewEncoder(c).Encode(resp)
}

// Call sends one request to the supervisor listening on socket.
func Call(ctx context.Context, socket string, req Request) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Response{}, fmt.Errorf("connect to supervisor at %s: %w", socket, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("read %s response: %w", req.Op, err)
	}
	if resp.Error != "" {
		return resp, fmt.Errorf("supervisor: %s", resp.Error)
	}
	return resp, nil
}

// RestartKubelet asks the supervisor to restart the kubelet service and
// waits until the new kubelet's healthz answers 200. This is what the
// inventory's kubelet restart command runs on the node.
func RestartKubelet(ctx context.Context, socket, healthz string, poll time.Duration) (int, error) {
	resp, err := Call(ctx, socket, Request{Op: "restart-kubelet"})
	if err != nil {
		return 0, err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		code, err := get(ctx, client, healthz)
		switch {
		case err != nil && ctx.Err() != nil && last != "":
			// The deadline cut this request short: the answer before it
			// says why the kubelet is not healthy.
		case err != nil:
			last = err.Error()
		case code == http.StatusOK:
			return resp.PID, nil
		default:
			last = fmt.Sprintf("HTTP %d", code)
		}
		select {
		case <-ctx.Done():
			return resp.PID, fmt.Errorf("kubelet (pid %d) restarted but %s is not healthy: %s (%w)", resp.PID, healthz, last, ctx.Err())
		case <-time.After(poll):
		}
	}
}

func get(ctx context.Context, c *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
