package state

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkCommit measures one step checkpoint (step record, an output
// value and an event in one transaction): the fixed cost rotate pays per
// step and target. Run: go test -run '^$' -bench Commit ./state/
func BenchmarkCommit(b *testing.B) {
	for _, impl := range []string{"bolt", "mem"} {
		b.Run(impl, func(b *testing.B) {
			var s Store = NewMemStore()
			if impl == "bolt" {
				bs, err := Open(filepath.Join(b.TempDir(), "rotate.db"), OpenOptions{Create: true})
				if err != nil {
					b.Fatal(err)
				}
				defer bs.Close()
				s = bs
			}
			ctx := context.Background()
			val := make([]byte, 2048) // about a certificate
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := fmt.Sprintf("servers/kubelet-client@node%d", i)
				if err := s.Commit(ctx, Checkpoint{
					Steps:  []StepRecord{{Key: k, Status: StepDone, Attempts: 1}},
					Values: map[string][]byte{"prep/" + k: val},
					Events: []Event{{Message: "done"}},
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
