package plans

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kubeca/rotate/nodes"
)

func TestJumpHostValidation(t *testing.T) {
	dir, valid := fixtureDir(t)
	global := func(spec string) string {
		return strings.Replace(valid, "ssh:\n", "ssh:\n  jumpHost: "+spec+"\n", 1)
	}
	worker := func(spec string) string {
		return strings.Replace(valid, "      port: 2222\n", "      port: 2222\n      jumpHost: "+spec+"\n", 1)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"global", global("{address: bastion.example.com, port: 2200, user: jump, identityFile: id_ed25519}"), ""},
		{"a node's", worker("{address: 10.0.9.1}"), ""},
		{"no address", global("{port: 22}"), "ssh.jumpHost.address: required"},
		{"bad address", worker(`{address: "bastion:22"}`), `nodes.workers[0].jumpHost.address: "bastion:22" is neither an IP address nor a valid DNS name`},
		{"bad port", global("{address: bastion, port: 70000}"), "ssh.jumpHost.port: 70000 is not a TCP port (1-65535)"},
		{"missing identity file", worker("{address: bastion, identityFile: nope}"), "nodes.workers[0].jumpHost.identityFile: "},
		{"unknown key", global("{address: bastion, proxyCommand: nc}"), `ssh.jumpHost: unknown field "proxyCommand"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := invProblems(t, dir, tc.text)
			if tc.want == "" && got != "" || tc.want != "" && !strings.HasPrefix(got, tc.want) {
				t.Fatalf("problems:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

// The global jump host serves every node that names none; a node's own
// replaces it. Paths resolve like the node's.
func TestJumpHostResolves(t *testing.T) {
	dir, valid := fixtureDir(t)
	text := strings.Replace(valid, "ssh:\n", "ssh:\n  jumpHost: {address: bastion.example.com, identityFile: id_ed25519}\n", 1)
	text = strings.Replace(text, "      port: 2222\n", "      port: 2222\n      jumpHost: {address: 10.0.9.1, port: 2200, user: jump}\n", 1)
	inv, err := Load(write(t, dir, text))
	if err != nil {
		t.Fatal(err)
	}
	c := inv.Config()
	want := map[string]*nodes.JumpHost{
		"cp1": {Address: "bastion.example.com", IdentityFile: filepath.Join(dir, "id_ed25519")},
		"w1":  {Address: "10.0.9.1", Port: 2200, User: "jump"},
	}
	for _, n := range c.Nodes {
		if !reflect.DeepEqual(n.JumpHost, want[n.Name]) {
			t.Errorf("%s: jump host %+v, want %+v", n.Name, n.JumpHost, want[n.Name])
		}
	}
	lines := c.TopologyLines()
	if got, want := lines[len(lines)-1], "ssh through jump hosts: cp1 via bastion.example.com:22, w1 via 10.0.9.1:2200"; got != want {
		t.Fatalf("plan line %q, want %q", got, want)
	}
	// Recorded with the run and read back.
	raw, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalConfig(raw)
	if err != nil || !reflect.DeepEqual(back.Nodes, c.Nodes) {
		t.Fatalf("recorded nodes differ: %v\n%+v\n%+v", err, back.Nodes, c.Nodes)
	}
}
