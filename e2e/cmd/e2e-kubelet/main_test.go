package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--node-ip=not-an-ip", "--node-name=n"}, "invalid --node-ip"},
		{[]string{"--node-name=n", "--node-ip=10.0.0.1", "--register-with-taints=k=v"}, "--register-with-taints"},
		{[]string{"--node-name=n", "--node-ip=10.0.0.1", "--node-labels=novalue"}, "--node-labels"},
		{[]string{"--node-name=n", "--node-ip=10.0.0.1", "--node-labels=node-role.kubernetes.io/control-plane="}, "unknown 'kubernetes.io'"},
		{[]string{"--node-ip=10.0.0.1"}, "node name is required"},
		{[]string{"--node-name=n", "--node-ip=10.0.0.1", "extra"}, "unexpected arguments"},
		{[]string{"--node-name=n", "--node-ip=10.0.0.1", "--log-format=xml"}, "--log-format"},
		{[]string{"--node-name=n", "--node-ip=10.0.0.1", "--config=/nonexistent/config.yaml"}, "read kubelet config"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		err := run(context.Background(), tt.args, &stderr)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}
