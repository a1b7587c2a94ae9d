package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kubeca/rotate/internal/redact"
	"github.com/kubeca/rotate/state"
)

// `rotate events` prints the run's event log. It reads the state file
// (shared lock, read only); while a run holds the lock it reads the journal
// the running process keeps next to the state file instead
// (state.JournalPath: <state>.events.jsonl, 0600): rewritten whole from the
// store when the process opens the run, then appended to after every
// checkpoint and backup, so it lags the store by at most the write in
// progress. Messages are redacted (steps.RedactText) in both.

// EventsView is what `rotate events` shows.
type EventsView struct {
	Events []state.Event
	// Journal is the journal file read ("" when the state file was read),
	// last written at JournalTime.
	Journal     string
	JournalTime time.Time
}

// ShowEvents reads the run's events from the state file or, while another
// rotate holds it, from that process's journal. Without a usable journal
// the error is still state.ErrBusy.
func ShowEvents(ctx context.Context, statePath string) (*EventsView, error) {
	evs, err := storedEvents(ctx, statePath)
	if err == nil {
		return &EventsView{Events: evs}, nil
	}
	if !errors.Is(err, state.ErrBusy) {
		return nil, err
	}
	raw, at, jerr := state.ReadJournal(statePath)
	if jerr == nil {
		evs, jerr = parseJournal(raw)
		if jerr != nil {
			jerr = fmt.Errorf("journal %s: %v", state.JournalPath(statePath), jerr)
		}
	}
	if jerr != nil {
		return nil, fmt.Errorf("%w; no journal to show instead (%v)", err, jerr)
	}
	return &EventsView{Events: evs, Journal: state.JournalPath(statePath), JournalTime: at}, nil
}

func storedEvents(ctx context.Context, statePath string) (evs []state.Event, err error) {
	store, err := state.Open(statePath, state.OpenOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	defer corruptOnPanic(statePath, &err)
	if _, err := store.Run(ctx); err != nil {
		if errors.Is(err, state.ErrNoRun) {
			return nil, fmt.Errorf("%w in %s", err, statePath)
		}
		return nil, err
	}
	evs, err = store.Events(ctx)
	if err != nil {
		return nil, err
	}
	for i := range evs {
		evs[i] = redactEvent(evs[i])
	}
	return evs, nil
}

// redactEvent hides key material and tokens in an event's free text
// (failures quote what failed).
func redactEvent(e state.Event) state.Event {
	e.Message = redact.Text(e.Message)
	return e
}

// journalLines renders events as the journal's lines, redacted.
func journalLines(evs []state.Event) ([]byte, error) {
	var b bytes.Buffer
	for _, e := range evs {
		raw, err := json.Marshal(redactEvent(e))
		if err != nil {
			return nil, err
		}
		b.Write(raw)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// parseJournal reads journal lines; a last line without its newline is
// being written and is left out.
func parseJournal(raw []byte) ([]state.Event, error) {
	var out []state.Event
	for len(raw) > 0 {
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			break
		}
		line := raw[:i]
		raw = raw[i+1:]
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e state.Event
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("line %d does not decode: %v", len(out)+1, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// EventsJSON is the events as `rotate events -o json` prints them: one
// array, oldest first.
func EventsJSON(evs []state.Event) ([]byte, error) {
	if evs == nil {
		evs = []state.Event{}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // "preflight -> distribute" as written
	enc.SetIndent("", "  ")
	if err := enc.Encode(evs); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
