package orchestrator

import (
	"context"
	"fmt"
	"sync"

	"github.com/hashicorp/go-multierror"

	"github.com/kubeca/rotate/steps"
)

// FanOut runs fn for every target with at most limit in flight, in target
// order. With limit 1 it stops at the first error; otherwise targets
// already running finish, no new ones start, and every error is returned
// (a *multierror.Error naming each target).
func FanOut(ctx context.Context, targets []steps.Target, limit int, fn func(ctx context.Context, t steps.Target) error) error {
	return fanOut(ctx, nil, targets, limit, fn)
}

// fanOut is FanOut that also starts no new target once stop is closed
// (those running finish; the ones not started are not an error: the
// caller stopped it because something else failed).
func fanOut(ctx context.Context, stop <-chan struct{}, targets []steps.Target, limit int, fn func(ctx context.Context, t steps.Target) error) error {
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	if limit < 1 {
		limit = 1
	}
	if limit == 1 || len(targets) == 1 {
		for _, t := range targets {
			if err := ctx.Err(); err != nil {
				return err
			}
			if stopped() {
				return nil
			}
			if err := fn(ctx, t); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		mu     sync.Mutex
		result *multierror.Error
		wg     sync.WaitGroup
		failed bool
	)
	sem := make(chan struct{}, limit)
	for _, t := range targets {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			mu.Lock()
			result = multierror.Append(result, ctx.Err())
			mu.Unlock()
			wg.Wait()
			return result.ErrorOrNil()
		}
		mu.Lock()
		halt := failed || stopped()
		mu.Unlock()
		if halt {
			<-sem
			break
		}
		wg.Add(1)
		go func(t steps.Target) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, t); err != nil {
				mu.Lock()
				failed = true
				result = multierror.Append(result, fmt.Errorf("%s: %w", t, err))
				mu.Unlock()
			}
		}(t)
	}
	wg.Wait()
	if result != nil {
		result.ErrorFormat = listErrors
	}
	return result.ErrorOrNil()
}

func listErrors(errs []error) string {
	if len(errs) == 1 {
		return errs[0].Error()
	}
	s := fmt.Sprintf("%d targets failed:", len(errs))
	for _, e := range errs {
		s += "\n  * " + e.Error()
	}
	return s
}
