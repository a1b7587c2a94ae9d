package steps

// Exports for the external tests of this directory (package steps_test),
// which import plans to walk the real plan and so cannot be in package
// steps (plans imports steps).

type (
	MemNodes  = memNodes
	GateFunc  = gateFunc
	TestStore = fakeStore
)

var (
	TestConfig   = testConfig
	NewTestStore = newFakeStore
)

// Commit adds what a step put out to the store, as the orchestrator
// commits it with the step's checkpoint.
func (f *fakeStore) Commit(o *Outputs) {
	for k, v := range o.Values {
		f.values[k] = v
	}
	for _, c := range o.CAs {
		f.cas[c.Name] = c
	}
}

// ForStep is the store one step sees: the run's CAs and values, and
// backups of its own (the orchestrator scopes backups by step key, so two
// steps that change the same file each restore their own copy).
func (f *fakeStore) ForStep() *fakeStore {
	s := newFakeStore()
	s.cas, s.values = f.cas, f.values
	return s
}
