package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestRunArguments(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "cluster.json")
	os.WriteFile(bad, []byte(`{"name":"x","apiServerEndpoint":"http://nope","nodes":[]}`), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{nil, "usage"},
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"run"}, "--cluster and --report are required"},
		{[]string{"run", "--cluster", bad}, "--cluster and --report are required"},
		{[]string{"run", "--cluster", filepath.Join(dir, "missing.json"), "--report", "r.json"}, "no such file"},
		{[]string{"run", "--cluster", bad, "--report", "r.json"}, "no control-plane node"},
		{[]string{"run", "--cluster", bad, "--report", "r.json", "--bogus"}, "unknown flag"},
		{[]string{"setup"}, "--cluster is required"},
		{[]string{"teardown", "--cluster", bad}, "apiServerEndpoint"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		err := run(context.Background(), tt.args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"run", "--help"}, &out, &out); !errors.Is(err, pflag.ErrHelp) || !strings.Contains(out.String(), "--component-logs") {
		t.Errorf("help: %v\n%s", err, out.String())
	}
}
