package plans

import (
	"context"
	"strings"
	"testing"

	"github.com/kubeca/rotate/steps"
)

// TestWorkerKubeletsInTheBackground: the three worker kubelet steps run
// in the background, each alongside control-plane and API steps only,
// and are waited for before the step that needs them; without workers
// they are gone.
func TestWorkerKubeletsInTheBackground(t *testing.T) {
	inv := exampleInventory(t)
	p := Build(inv, Options{})
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"kubelet-trust-workers":  "no-kubelet-cut-off",
		"kubelet-client-workers": "",
		"kubelet-narrow-workers": "extra-kubeconfigs-narrowed",
	}
	got := map[string]string{}
	for _, ph := range p.Phases {
		for i, ps := range ph.Steps {
			if !ps.Background {
				continue
			}
			got[ps.Step.Name()] = ps.Until
			for _, o := range ph.Steps[i+1 : i+1+len(ph.Alongside(i))] {
				for _, tg := range o.Targets {
					if tg.Role == steps.RoleWorker {
						t.Errorf("%s runs alongside %s, which acts on worker %s", ps.Step.Name(), o.Step.Name(), tg.Node)
					}
				}
			}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("background steps %v, want %v", got, want)
	}
	for s, u := range want {
		if g, ok := got[s]; !ok || g != u {
			t.Errorf("%s: background until %q (%v), want %q", s, g, ok, u)
		}
	}

	c := inv.Config()
	c.Steps.Workers = nil
	for _, ps := range c.Plan(Options{}).Steps() {
		if ps.Background {
			t.Errorf("%s is in the plan of a cluster without workers", ps.Step.Name())
		}
	}
}

type namedStep struct{ steps.Step }

func (n namedStep) Name() string { return n.Step.(fakeName).name }

type fakeName struct{ name string }

func (fakeName) Name() string { return "" }
func (fakeName) Check(context.Context, *steps.Runtime, steps.Target) (bool, error) {
	return false, nil
}
func (fakeName) Apply(context.Context, *steps.Runtime, steps.Target) error  { return nil }
func (fakeName) Gate(context.Context, *steps.Runtime, steps.Target) error   { return nil }
func (fakeName) Revert(context.Context, *steps.Runtime, steps.Target) error { return nil }

// TestValidateBackground: Validate refuses a background step whose Until
// is not a later step, one that runs alongside a step acting on its
// nodes, one started before another is waited for, and an Until on a
// step that is not in the background.
func TestValidateBackground(t *testing.T) {
	st := func(n string) steps.Step { return namedStep{fakeName{n}} }
	w := []steps.Target{{Node: "w1", Role: steps.RoleWorker}}
	cp := []steps.Target{{Node: "cp1", Role: steps.RoleControlPlane}}
	plan := func(ss ...PlannedStep) *Plan {
		return &Plan{Phases: []Phase{{Name: "servers", Steps: ss}}}
	}
	for _, tc := range []struct {
		name string
		plan *Plan
		want string // "" : valid
	}{
		{"valid", plan(
			PlannedStep{Step: st("bg"), Targets: w, Concurrency: 1, Background: true, Until: "join"},
			PlannedStep{Step: st("cp"), Targets: cp, Concurrency: 1},
			PlannedStep{Step: st("join"), Targets: w, Concurrency: 1},
		), ""},
		{"until the phase's end", plan(
			PlannedStep{Step: st("bg"), Targets: w, Concurrency: 1, Background: true},
			PlannedStep{Step: st("cp"), Targets: cp, Concurrency: 1},
		), ""},
		{"until an earlier step", plan(
			PlannedStep{Step: st("early"), Targets: cp, Concurrency: 1},
			PlannedStep{Step: st("bg"), Targets: w, Concurrency: 1, Background: true, Until: "early"},
			PlannedStep{Step: st("cp"), Targets: cp, Concurrency: 1},
		), "background step bg runs until early, which is not a later step of the phase"},
		{"same node alongside", plan(
			PlannedStep{Step: st("bg"), Targets: w, Concurrency: 1, Background: true, Until: "join"},
			PlannedStep{Step: st("all"), Targets: append(append([]steps.Target{}, cp...), w...), Concurrency: 2},
			PlannedStep{Step: st("join"), Targets: cp, Concurrency: 1},
		), "step all acts on node w1 while background step bg does"},
		{"two lanes", plan(
			PlannedStep{Step: st("bg"), Targets: w, Concurrency: 1, Background: true},
			PlannedStep{Step: st("bg2"), Targets: cp, Concurrency: 1, Background: true},
		), "background step bg2 starts before background step bg is waited for"},
		{"until without background", plan(
			PlannedStep{Step: st("cp"), Targets: cp, Concurrency: 1, Until: "join"},
			PlannedStep{Step: st("join"), Targets: w, Concurrency: 1},
		), "step cp has until join but is not a background step"},
	} {
		err := tc.plan.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: Validate = %v, want %q", tc.name, err, tc.want)
		}
	}
}
