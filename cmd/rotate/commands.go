package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/kubeca/rotate/orchestrator"
	"github.com/kubeca/rotate/plans"
	"github.com/kubeca/rotate/state"
)

var errHelp = errors.New("help requested")

type command struct {
	name, short string
	run         func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"plan", "show every phase, step and target (and with --live, every change) without changing anything", cmdPlan},
		{"start", "start a rotation from an inventory", cmdStart},
		{"resume", "continue a held or failed rotation from where it stopped", cmdResume},
		{"rollback", "revert a rotation's completed steps in reverse order, back to the old CAs", cmdRollback},
		{"status", "show the run, each phase's state and timing, the failed step's error and the SSH round trips per node", cmdStatus},
		{"events", "print the run's event log: steps, file changes and backups with SHA-256, failures, holds, rollbacks", cmdEvents},
	}
}

func topUsage(w io.Writer) {
	fmt.Fprintln(w, "rotate rotates a kubeadm cluster's CAs (cluster CA and front-proxy CA) without an outage.")
	fmt.Fprintln(w, "\nUsage: rotate COMMAND [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.short)
	}
	fmt.Fprintln(w, "\nRun `rotate COMMAND --help` for a command's flags.")
	fmt.Fprintln(w, "Exit codes: 0 success, 1 run failed (resumable), 2 usage or input error, 3 state file busy.")
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		topUsage(stderr)
		return usageError{errors.New("no command given")}
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		topUsage(stdout)
		return errHelp
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	topUsage(stderr)
	return usageError{fmt.Errorf("unknown command %q", args[0])}
}

// flagSet makes a command's flag set; parse errors and --help are handled
// uniformly. pflag itself calls Usage when it meets -h or --help.
func flagSet(name, usage string, stdout io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: rotate %s\n\nFlags:\n%s", usage, fs.FlagUsages())
	}
	return fs
}

func parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return errHelp // pflag has printed the usage already
		}
		return usageError{fmt.Errorf("%s: %w (see rotate %s --help)", fs.Name(), err, fs.Name())}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

type commonFlags struct {
	state     string
	insecure  bool
	verbose   bool
	breakLock bool
}

func (c *commonFlags) register(fs *pflag.FlagSet, ssh bool) {
	fs.StringVar(&c.state, "state", "rotate.db", "state file (progress, backups, CA material; created 0600)")
	if ssh {
		fs.BoolVar(&c.insecure, "insecure-ignore-host-keys", false, "DANGEROUS: do not verify SSH host keys (throw-away test clusters only)")
		fs.BoolVarP(&c.verbose, "verbose", "v", false, "structured debug logs on stderr")
		fs.BoolVar(&c.breakLock, "break-lock", false, "DANGEROUS: take the cluster lock (Lease kube-system/"+orchestrator.LockName+") over from another rotate run, even one on hold; only when that run is abandoned")
	}
}

func (c *commonFlags) common(stdout, stderr io.Writer) orchestrator.Common {
	level := slog.LevelWarn
	if c.verbose {
		level = slog.LevelDebug
	}
	if c.insecure {
		fmt.Fprintln(stderr, "rotate: WARNING: SSH host keys are NOT verified (--insecure-ignore-host-keys)")
	}
	return orchestrator.Common{
		StatePath: c.state, InsecureIgnoreHostKeys: c.insecure, BreakLock: c.breakLock, Out: stdout,
		Log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	}
}

func requireInventory(name, path string) error {
	if path == "" {
		return usageError{fmt.Errorf("%s: --inventory is required (see examples/inventory.yaml)", name)}
	}
	return nil
}

func cmdPlan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flagSet("plan", "plan --inventory FILE [--live]", stdout)
	var o orchestrator.PlanOptions
	fs.StringVarP(&o.InventoryPath, "inventory", "i", "", "inventory file (required)")
	fs.BoolVar(&o.Live, "live", false, "connect (read only) and show each file, flag and API object change per node")
	fs.BoolVar(&o.NoHold, "no-hold", false, "show the plan without the hold before narrowing trust")
	fs.BoolVar(&o.InsecureIgnoreHostKeys, "insecure-ignore-host-keys", false, "DANGEROUS: do not verify SSH host keys")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := requireInventory("plan", o.InventoryPath); err != nil {
		return err
	}
	o.Out = stdout
	if !o.Live {
		return staticPlan(ctx, o)
	}
	return orchestrator.PrintPlan(ctx, o)
}

// staticPlan validates only the inventory's structure, so the example
// inventory (whose key files do not exist here) still shows its plan.
func staticPlan(ctx context.Context, o orchestrator.PlanOptions) error {
	err := orchestrator.PrintPlan(ctx, o)
	var ie *plans.InventoryError
	if !errors.As(err, &ie) {
		return err
	}
	for _, p := range ie.Problems {
		if !p.Local {
			return err
		}
	}
	fmt.Fprintf(o.Out, "note: %d problem(s) of this machine (referenced files, the ssh-agent); `rotate start` will refuse until they are fixed:\n", len(ie.Problems))
	for _, p := range ie.Problems {
		fmt.Fprintf(o.Out, "  - %s: %s\n", p.Field, p.Msg)
	}
	raw, rerr := os.ReadFile(o.InventoryPath)
	if rerr != nil {
		return err
	}
	inv, perr := plans.ParseStructure(o.InventoryPath, raw)
	if perr != nil {
		return perr
	}
	return orchestrator.PrintStaticPlan(o.Out, inv, o.NoHold)
}

func cmdStart(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flagSet("start", "start --inventory FILE [--state rotate.db] [--no-hold]", stdout)
	var cf commonFlags
	var o orchestrator.StartOptions
	fs.StringVarP(&o.InventoryPath, "inventory", "i", "", "inventory file (required)")
	fs.BoolVar(&o.NoHold, "no-hold", false, "do not hold before narrowing trust (phase 12); run straight through")
	cf.register(fs, true)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := requireInventory("start", o.InventoryPath); err != nil {
		return err
	}
	o.Common = cf.common(stdout, stderr)
	return orchestrator.Start(ctx, o)
}

func cmdResume(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := continueFlags("resume", args, stdout, stderr)
	if err != nil {
		return err
	}
	return orchestrator.Resume(ctx, c)
}

func cmdRollback(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := continueFlags("rollback", args, stdout, stderr)
	if err != nil {
		return err
	}
	return orchestrator.Rollback(ctx, c)
}

// continueFlags parses the flags of resume and rollback, which continue
// the run of a state file or, with --recover-from, of a control-plane
// node's copy of it.
func continueFlags(name string, args []string, stdout, stderr io.Writer) (orchestrator.Common, error) {
	fs := flagSet(name, name+" [--state rotate.db] [--recover-from NODE --inventory FILE]", stdout)
	var cf commonFlags
	var recoverFrom, inventory string
	cf.register(fs, true)
	fs.StringVar(&recoverFrom, "recover-from", "", "rebuild a lost state file from this control-plane node's copy first (needs --inventory; refuses an existing state file)")
	fs.StringVarP(&inventory, "inventory", "i", "", "inventory to reach the nodes with (only with --recover-from: the state file records it)")
	if err := parse(fs, args); err != nil {
		return orchestrator.Common{}, err
	}
	switch {
	case recoverFrom != "" && inventory == "":
		return orchestrator.Common{}, usageError{fmt.Errorf("%s: --recover-from needs --inventory (the lost state file recorded it)", name)}
	case recoverFrom == "" && inventory != "":
		return orchestrator.Common{}, usageError{fmt.Errorf("%s: --inventory goes with --recover-from; otherwise the run's recorded inventory is used", name)}
	}
	c := cf.common(stdout, stderr)
	c.RecoverFrom, c.InventoryPath = recoverFrom, inventory
	return c, nil
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	statePath, output, err := readerFlags("status", args, stdout)
	if err != nil {
		return err
	}
	v, err := orchestrator.ShowStatus(ctx, statePath)
	if err != nil {
		return err
	}
	if v.Snapshot != "" {
		noteInUse(stdout, stderr, output, statePath, "snapshot", v.Snapshot, v.SnapshotTime)
	}
	if output == "json" {
		_, err := stdout.Write(v.JSON)
		return err
	}
	printStatus(stdout, v.Report)
	return nil
}

// readerFlags parses the flags of a command that only reads the state
// file: --state and --output.
func readerFlags(name string, args []string, stdout io.Writer) (statePath, output string, err error) {
	fs := flagSet(name, name+" [--state rotate.db] [-o table|json]", stdout)
	var cf commonFlags
	cf.register(fs, false)
	fs.StringVarP(&output, "output", "o", "table", "output format: table or json")
	if err := parse(fs, args); err != nil {
		return "", "", err
	}
	if output != "table" && output != "json" {
		return "", "", usageError{fmt.Errorf("%s: --output must be table or json, got %q", name, output)}
	}
	return cf.state, output, nil
}

// noteInUse says that a running rotate holds the state file and which of
// its side files (snapshot, journal) is shown instead; with JSON output
// on stderr, so that stdout stays the JSON alone.
func noteInUse(stdout, stderr io.Writer, output, statePath, what, file string, at time.Time) {
	note := fmt.Sprintf("%s is in use by a running rotate; showing its %s %s, written %s (%s ago)",
		statePath, what, file, at.Format(time.RFC3339), time.Since(at).Round(time.Second))
	if output == "json" {
		fmt.Fprintln(stderr, "rotate: "+note)
	} else {
		fmt.Fprintln(stdout, note+"\n")
	}
}

func cmdEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	statePath, output, err := readerFlags("events", args, stdout)
	if err != nil {
		return err
	}
	v, err := orchestrator.ShowEvents(ctx, statePath)
	if err != nil {
		return err
	}
	if v.Journal != "" {
		noteInUse(stdout, stderr, output, statePath, "journal", v.Journal, v.JournalTime)
	}
	if output == "json" {
		raw, err := orchestrator.EventsJSON(v.Events)
		if err != nil {
			return err
		}
		_, err = stdout.Write(raw)
		return err
	}
	printEvents(stdout, v.Events)
	return nil
}

// printEvents prints one line per event: time, level, kind, the step on
// its target and attempt, the node and path with the content's SHA-256
// (first 16 hex digits), and the message.
func printEvents(w io.Writer, evs []state.Event) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tLEVEL\tKIND\tSTEP\tWHAT")
	for _, e := range evs {
		where := "-"
		if e.Phase != "" {
			where = e.Phase
			if e.Step != "" {
				where += "/" + e.Step + "@" + e.Target
			}
			if e.Attempt > 0 {
				where += fmt.Sprintf(" #%d", e.Attempt)
			}
		}
		what := e.Message
		if e.Path != "" {
			obj := e.Node + ":" + e.Path
			if e.SHA256 != "" {
				obj += " sha256:" + e.SHA256[:min(16, len(e.SHA256))]
			}
			what = obj + "  " + what
		}
		kind := e.Kind
		if kind == "" {
			kind = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Level, kind, where, strings.ReplaceAll(what, "\n", " "))
	}
	tw.Flush()
}

func printStatus(w io.Writer, rep *orchestrator.StatusReport) {
	r := rep.Run
	fmt.Fprintf(w, "run %s  cluster %s  state %s", r.ID, r.Cluster, r.State)
	if r.Phase != "" {
		fmt.Fprintf(w, "  phase %s", r.Phase)
	}
	fmt.Fprintf(w, "\nstarted %s  updated %s", r.CreatedAt.Format(time.RFC3339), r.UpdatedAt.Format(time.RFC3339))
	if !r.FinishedAt.IsZero() {
		fmt.Fprintf(w, "  finished %s", r.FinishedAt.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "\ninventory %s (sha256 %.12s)  backups %d  events %d\n", r.InventoryPath, r.InventoryDigest, rep.Backups, rep.Events)
	if rt := rep.RoundTripSummary(); rt != "" {
		fmt.Fprintf(w, "round trips: %s\n", rt)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tNAME\tSTATE\tSTEPS\tDURATION")
	for _, p := range rep.Phases {
		d := "-"
		if p.Duration > 0 {
			d = p.Duration.String()
		}
		fmt.Fprintf(tw, "%d/12\t%s\t%s\t%d/%d\t%s\n", p.Index, p.Name, p.State, p.Done, p.Total, d)
	}
	tw.Flush()
	for _, f := range rep.Failed {
		fmt.Fprintf(w, "\nFAILED %s (attempt %d):\n  %s\n", f.Key, f.Attempts, strings.ReplaceAll(f.Error, "\n", "\n  "))
	}
	if r.LastError != "" && len(rep.Failed) == 0 {
		fmt.Fprintf(w, "\nlast error: %s\n", r.LastError)
	}
	if rep.Hold != nil && r.State == orchestrator.StateHeld {
		fmt.Fprintf(w, "\nHELD before narrowing trust (verified %s):\n", rep.Hold.CheckedAt.Format(time.RFC3339))
		for _, v := range rep.Hold.Verified {
			fmt.Fprintf(w, "  ok: %s\n", v)
		}
		for _, p := range rep.Hold.PreExisting {
			fmt.Fprintf(w, "  pre-existing: %s\n", p)
		}
		for _, a := range rep.Hold.Attention {
			fmt.Fprintf(w, "  attention: %s\n", a)
		}
		for _, l := range rep.Hold.Workloads {
			fmt.Fprintf(w, "  workload: %s\n", l)
		}
		fmt.Fprintln(w, "Resume with `rotate resume` to narrow trust (old-CA certificates stop working), or `rotate rollback`.")
	}
	for _, m := range rep.Mirror {
		switch {
		case m.Error != "":
			fmt.Fprintf(w, "\nstate copy on %s (%s) lags: %s", m.Node, m.Path, m.Error)
		case !m.WrittenAt.IsZero():
			fmt.Fprintf(w, "\nstate copy on %s (%s) written %s", m.Node, m.Path, m.WrittenAt.Format(time.RFC3339))
		}
	}
	if len(rep.Mirror) > 0 {
		fmt.Fprintln(w)
	}
	if rep.JoinHash != "" {
		fmt.Fprintf(w, "\nnew join hash: --discovery-token-ca-cert-hash %s\n", rep.JoinHash)
	}
	if rep.Lock != nil {
		fmt.Fprintf(w, "\ncluster lock: %s\n", rep.Lock)
	}
	switch r.State {
	case orchestrator.StateFailed:
		fmt.Fprintln(w, "\nFix the cause, then `rotate resume` (retries from the failed step) or `rotate rollback`.")
	case orchestrator.StateRollingBack:
		fmt.Fprintln(w, "\nA rollback is in progress or failed; run `rotate rollback` again to finish it.")
	}
}
