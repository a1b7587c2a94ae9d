// Command rotate rotates a kubeadm cluster's certificate authorities (the
// cluster CA and the front-proxy CA) without an outage, and can always be
// resumed or rolled back. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"syscall"

	"github.com/kubeca/rotate/orchestrator"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // the run failed; `rotate resume` retries
	exitUsage  = 2 // bad flags, bad inventory, a state file rotate cannot use
	exitBusy   = 3 // another rotate holds the state file, or another run the cluster lock
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks errors that are the caller's input.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	if err == nil {
		return exitOK
	}
	if errors.Is(err, errHelp) {
		return exitOK
	}
	fmt.Fprintf(stderr, "rotate: %v\n", err)
	return exitCode(err)
}

// exitCode maps an error to the exit code. A state file rotate cannot use
// (damaged, foreign, crafted, a directory, someone else's, too open,
// unreadable) is the caller's input, even when a failed run wraps it; any
// other failure of a run is resumable.
func exitCode(err error) int {
	var ue usageError
	var ie *plans.InventoryError
	var re *orchestrator.RunError
	switch {
	case errors.Is(err, state.ErrBusy), errors.Is(err, orchestrator.ErrLocked):
		return exitBusy
	case errors.Is(err, state.ErrCorrupt), errors.Is(err, state.ErrOwner),
		errors.Is(err, state.ErrPermissions), errors.Is(err, state.ErrSchema):
		return exitUsage
	case errors.As(err, &re):
		return exitFailed
	case errors.As(err, &ue), errors.As(err, &ie),
		errors.Is(err, orchestrator.ErrUnfinishedRun), errors.Is(err, orchestrator.ErrNothingToResume),
		errors.Is(err, orchestrator.ErrPlanMismatch), errors.Is(err, state.ErrNoRun),
		errors.Is(err, orchestrator.ErrCannotRecover),
		errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
		return exitUsage
	default:
		return exitFailed
	}
}
