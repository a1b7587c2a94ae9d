package steps

import "sync"

// forEachBounded calls f(i) for every i below n, each in its own
// goroutine with at most limit running at once (one when limit < 1), and
// returns when every call has. f records its own results; a call that
// should not start once ctx is done checks ctx itself.
func forEachBounded(n, limit int, f func(i int)) {
	limit = max(limit, 1)
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(i)
		})
	}
	wg.Wait()
}
