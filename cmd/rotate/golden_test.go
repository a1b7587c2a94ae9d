package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Golden files pin what an operator reads and what names a state file's
// checkpoints: `rotate plan` on the example inventory lists every phase
// and step name (a step key is phase/step@target, so a renamed step would
// orphan the checkpoints of existing state files), and each command's
// --help lists its flags. A change to either shows up in review as a
// change to testdata/*.golden; regenerate them with
//
//	go test ./cmd/rotate -run Golden -update
var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func TestGoldenHelp(t *testing.T) {
	cases := map[string][]string{"help": {"--help"}}
	for _, c := range commands() {
		cases[c.name+"-help"] = []string{c.name, "--help"}
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			r := rotate(t, t.TempDir(), args...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("rotate %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
			}
			golden(t, name, r.stdout)
		})
	}
	orphans(t, cases)
}

// TestGoldenPlan: the plan of examples/inventory.yaml. The note listing
// this machine's missing files (its kubeconfig, SSH key and known_hosts)
// depends on the machine and is left out; paths are shown relative to the
// repository and to $HOME.
func TestGoldenPlan(t *testing.T) {
	ex, err := filepath.Abs("../../examples/inventory.yaml")
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	cmd := exec.Command(rotateBin, "plan", "--inventory", ex)
	cmd.Dir, cmd.Env = t.TempDir(), append(os.Environ(), "HOME="+home)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err != nil {
		t.Fatalf("rotate plan: %v: %s", err, se.String())
	}
	var out []string
	for _, l := range strings.SplitAfter(so.String(), "\n") {
		if strings.HasPrefix(l, "note: ") || strings.HasPrefix(l, "  - ") {
			continue
		}
		l = strings.ReplaceAll(l, ex, "examples/inventory.yaml")
		out = append(out, strings.ReplaceAll(l, home, "$HOME"))
	}
	golden(t, "plan-example", strings.Join(out, ""))
}

// golden compares got with testdata/<name>.golden, or writes it with
// -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/rotate -run Golden -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (if the change is intended, run go test ./cmd/rotate -run Golden -update and review the diff):\n%s", p, lineDiff(string(want), got))
	}
}

// orphans fails for (or with -update removes) golden help files of
// commands that no longer exist.
func orphans(t *testing.T, cases map[string][]string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join("testdata", "*-help.golden"))
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".golden")
		if _, ok := cases[name]; ok {
			continue
		}
		if *update {
			os.Remove(f)
			continue
		}
		t.Errorf("%s belongs to no command (run go test ./cmd/rotate -run Golden -update to remove it)", f)
	}
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for _, l := range w {
		if !slices.Contains(g, l) {
			out = append(out, "-"+l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			out = append(out, "+"+l)
		}
	}
	if len(out) == 0 {
		return "(the same lines in another order or number)"
	}
	return strings.Join(out, "\n")
}
