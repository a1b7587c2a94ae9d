package nodes

import (
	"context"
	"fmt"
	"sync"

	"github.com/hashicorp/go-multierror"
)

// FanOut calls fn for every name with at most limit calls running at once
// (limit <= 0: all at once). It waits for every started call. Each failure
// is wrapped "node NAME: ..." and collected, in the order of names, in a
// *multierror.Error; nil when all succeeded. Once ctx is done no further
// call starts, and each name not started gets an error wrapping ctx.Err().
// fn receives ctx and must honour it itself.
func FanOut(ctx context.Context, names []string, limit int, fn func(ctx context.Context, name string) error) error {
	_, err := FanOutResults(ctx, names, limit, func(ctx context.Context, name string) (struct{}, error) {
		return struct{}{}, fn(ctx, name)
	})
	return err
}

// FanOutResults is FanOut for functions with a result: it returns the
// results of the calls that succeeded, by name, alongside the error.
func FanOutResults[T any](ctx context.Context, names []string, limit int, fn func(ctx context.Context, name string) (T, error)) (map[string]T, error) {
	if limit <= 0 || limit > len(names) {
		limit = len(names)
	}
	errs := make([]error, len(names))
	vals := make([]T, len(names))
	ok := make([]bool, len(names))
	sem := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	for i, name := range names {
		// Prefer cancellation over a free slot.
		if ctx.Err() != nil {
			errs[i] = fmt.Errorf("node %s: not started: %w", name, ctx.Err())
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = fmt.Errorf("node %s: not started: %w", name, ctx.Err())
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			v, err := fn(ctx, name)
			if err != nil {
				errs[i] = fmt.Errorf("node %s: %w", name, err)
				return
			}
			vals[i], ok[i] = v, true
		}()
	}
	wg.Wait()
	out := make(map[string]T, len(names))
	var merr *multierror.Error
	for i, name := range names {
		if errs[i] != nil {
			merr = multierror.Append(merr, errs[i])
		} else if ok[i] {
			out[name] = vals[i]
		}
	}
	return out, merr.ErrorOrNil()
}
