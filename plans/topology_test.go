package plans

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// invProblems loads text and returns its problems ("" for none), one a
// line as the error lists them.
func invProblems(t *testing.T, dir, text string) string {
	t.Helper()
	_, err := Load(write(t, dir, text))
	if err == nil {
		return ""
	}
	var ie *InventoryError
	if !errors.As(err, &ie) {
		t.Fatalf("Load = %v, want *InventoryError", err)
	}
	var out []string
	for _, p := range ie.Problems {
		out = append(out, p.Field+": "+p.Msg)
	}
	return strings.Join(out, "\n")
}

func TestTopologyValidation(t *testing.T) {
	dir, valid := fixtureDir(t)
	cp := func(extra string) string {
		return strings.Replace(valid, "      address: 10.0.0.1\n", "      address: 10.0.0.1\n"+extra, 1)
	}
	worker := func(extra string) string {
		return strings.Replace(valid, "      port: 2222\n", "      port: 2222\n"+extra, 1)
	}
	nodesTop := func(extra string) string {
		return strings.Replace(valid, "nodes:\n", "nodes:\n"+extra, 1)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"apiServer address and port", cp("      apiServer: {address: api-1.example.com, port: 8443}\n"), ""},
		{"apiServer port only", cp("      apiServer: {port: 8443}\n"), ""},
		{"default apiserver port", nodesTop("  apiServerPort: 7443\n"), ""},
		{"bad apiServer address", cp("      apiServer: {address: \"10.0.0.1:6443\"}\n"),
			`nodes.controlPlane[0].apiServer.address: "10.0.0.1:6443" is neither an IP address nor a valid DNS name`},
		{"bad apiServer port", cp("      apiServer: {port: 0}\n"), "nodes.controlPlane[0].apiServer.port: 0 is not a TCP port (1-65535)"},
		{"bad default port", nodesTop("  apiServerPort: 65536\n"), "nodes.apiServerPort: 65536 is not a TCP port (1-65535)"},
		{"apiServer on a worker", worker("      apiServer: {port: 6443}\n"),
			"nodes.workers[0].apiServer: only control-plane nodes run an apiserver rotate checks; remove apiServer from this worker"},
		{"unlisted warn", nodesTop("  unlisted: warn\n"), ""},
		{"unlisted fail", nodesTop("  unlisted: fail\n"), ""},
		{"unlisted other", nodesTop("  unlisted: ignore\n"), `nodes.unlisted: "ignore" is not one of warn, fail`},
		{"unknown apiServer field", cp("      apiServer:\n        host: x\n"), `nodes.controlPlane[0].apiServer.host: unknown field "host"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := invProblems(t, dir, tc.text); got != tc.want {
				t.Fatalf("problems:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestAPIServerEndpointsResolve(t *testing.T) {
	dir, valid := fixtureDir(t)
	text := strings.Replace(valid, "nodes:\n", "nodes:\n  apiServerPort: 7443\n", 1) // cp1 takes the default port
	text = strings.Replace(text, "  workers:\n", `    - name: cp2
      address: 10.0.0.2
      apiServer: {address: "fd00::2"}
    - name: cp3
      address: 10.0.0.3
      apiServer: {address: api-3.example.com, port: 443}
  workers:
`, 1)
	inv, err := Load(write(t, dir, text))
	if err != nil {
		t.Fatal(err)
	}
	c := inv.Config()
	want := map[string]string{"cp1": "10.0.0.1:7443", "cp2": "[fd00::2]:7443", "cp3": "api-3.example.com:443"}
	if !reflect.DeepEqual(c.Steps.APIServers, want) {
		t.Fatalf("endpoints %v, want %v", c.Steps.APIServers, want)
	}
	for n, ep := range want {
		if got := c.Steps.APIServerEndpoint(n); got != ep {
			t.Errorf("%s: %s, want %s", n, got, ep)
		}
	}
	if c.Steps.Address("cp3") != "10.0.0.3" {
		t.Errorf("the SSH address changed: %s", c.Steps.Address("cp3"))
	}
}

func TestUnlistedResolves(t *testing.T) {
	dir, valid := fixtureDir(t)
	for _, tc := range []struct{ text, want string }{
		{valid, "warn"},
		{strings.Replace(valid, "nodes:\n", "nodes:\n  unlisted: fail\n", 1), "fail"},
	} {
		inv, err := Load(write(t, dir, tc.text))
		if err != nil {
			t.Fatal(err)
		}
		if got := inv.Config().Steps.UnlistedNodes; got != tc.want {
			t.Errorf("UnlistedNodes = %q, want %q", got, tc.want)
		}
	}
}
