package probes

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Probe names.
const (
	ProbeAdmin      = "admin"
	ProbeNode       = "node"
	ProbeNodeProxy  = "node-proxy"
	ProbeInCluster  = "in-cluster"
	ProbeAggregated = "aggregated"
	ProbeWebhook    = "webhook"
	ProbeLease      = "leader-lease"
	ProbeLogs       = "component-logs"
)

// Failure is one failed request (or lease gap, or log line).
type Failure struct {
	Time   time.Time `json:"time"`
	Probe  string    `json:"probe"`
	Target string    `json:"target"`
	Class  Class     `json:"class"`
	Error  string    `json:"error"`
	// Note explains a reclassification (e.g. an LB answer while an
	// apiserver restarted).
	Note string `json:"note,omitempty"`
}

// Event is a notable non-failure: credentials reloaded, a pod replaced,
// a leader change.
type Event struct {
	Time    time.Time `json:"time"`
	Probe   string    `json:"probe"`
	Target  string    `json:"target,omitempty"`
	Message string    `json:"message"`
}

// Counts are request outcomes.
type Counts struct {
	Requests int           `json:"requests"`
	OK       int           `json:"ok"`
	Failures map[Class]int `json:"failures,omitempty"`
}

func (c *Counts) add(class Class) {
	c.Requests++
	if class == "" {
		c.OK++
		return
	}
	if c.Failures == nil {
		c.Failures = map[Class]int{}
	}
	c.Failures[class]++
}

// ProbeStats are one probe's counts, in all and per target.
type ProbeStats struct {
	Counts
	Targets map[string]*Counts `json:"targets"`
}

// Report is the outcome of a probe run.
type Report struct {
	Cluster  string                 `json:"cluster"`
	Started  time.Time              `json:"started"`
	Stopped  time.Time              `json:"stopped"`
	Probes   map[string]*ProbeStats `json:"probes"`
	Failures []Failure              `json:"failures"`
	// DroppedFailures counts failures beyond the detail cap (counts stay
	// exact).
	DroppedFailures int     `json:"droppedFailures,omitempty"`
	Events          []Event `json:"events,omitempty"`
	DroppedEvents   int     `json:"droppedEvents,omitempty"`
	// Errors are problems of the probe machinery itself (setup, cleanup).
	Errors []string `json:"errors,omitempty"`
	// NotReady are the kubelets' own "Node became not ready" log lines
	// (Target: the log file; Message: the line, with the condition's
	// reason and message), so a Ready flip can be told apart from the
	// node lifecycle controller's verdict on a silent kubelet.
	NotReady []Event `json:"notReady,omitempty"`
}

// Clean reports whether no request failed with an x509, 401 or 403 error.
func (r Report) Clean() bool {
	for _, p := range r.Probes {
		for c, n := range p.Failures {
			if c.Blocking() && n > 0 {
				return false
			}
		}
	}
	return true
}

// Count returns the number of failures of class in probe ("" = all
// probes).
func (r Report) Count(probe string, class Class) int {
	n := 0
	for name, p := range r.Probes {
		if probe == "" || probe == name {
			n += p.Failures[class]
		}
	}
	return n
}

// Summary is a table of counts per class per probe, then the verdict and
// the first blocking failures.
func (r Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "probes on %s from %s for %s\n", r.Cluster, r.Started.UTC().Format(time.RFC3339), r.Stopped.Sub(r.Started).Round(time.Second))
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "probe\trequests\tok")
	for _, c := range Classes {
		fmt.Fprintf(tw, "\t%s", c)
	}
	fmt.Fprintln(tw, "\t")
	names := make([]string, 0, len(r.Probes))
	for n := range r.Probes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := r.Probes[n]
		fmt.Fprintf(tw, "%s\t%d\t%d", n, p.Requests, p.OK)
		for _, c := range Classes {
			fmt.Fprintf(tw, "\t%d", p.Failures[c])
		}
		fmt.Fprintln(tw, "\t")
	}
	tw.Flush()
	if r.Clean() {
		b.WriteString("CLEAN: no x509, unauthorized or forbidden failures\n")
	} else {
		fmt.Fprintf(&b, "NOT CLEAN: %d x509, %d unauthorized, %d forbidden\n", r.Count("", X509), r.Count("", Unauthorized), r.Count("", Forbidden))
		b.WriteString(r.groups(Class.Blocking, 10))
	}
	if n := r.Count("", Other); n > 0 {
		fmt.Fprintf(&b, "%d other failures (lease gaps, unexpected answers; reported, not blocking):\n", n)
		b.WriteString(r.groups(func(c Class) bool { return c == Other }, 5))
	}
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "probe error: %s\n", e)
	}
	return b.String()
}

// groups lists the failures of the classes keep selects grouped by probe,
// class and message, most frequent first, at most n groups.
func (r Report) groups(keep func(Class) bool, n int) string {
	type group struct {
		probe, msg  string
		class       Class
		count       int
		first, last time.Time
		targets     []string
	}
	byKey := map[string]*group{}
	var order []*group
	for _, f := range r.Failures {
		if !keep(f.Class) {
			continue
		}
		msg := truncate(f.Error, 160)
		key := f.Probe + "\x00" + string(f.Class) + "\x00" + msg
		g := byKey[key]
		if g == nil {
			g = &group{probe: f.Probe, class: f.Class, msg: msg, first: f.Time}
			byKey[key] = g
			order = append(order, g)
		}
		g.count++
		if f.Time.Before(g.first) {
			g.first = f.Time
		}
		if f.Time.After(g.last) {
			g.last = f.Time
		}
		if len(g.targets) < 3 && !slices.Contains(g.targets, f.Target) {
			g.targets = append(g.targets, f.Target)
		}
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].count > order[j].count })
	var b strings.Builder
	for i, g := range order {
		if i == n {
			fmt.Fprintf(&b, "  ... %d more groups\n", len(order)-n)
			break
		}
		fmt.Fprintf(&b, "  %dx %s %s %s..%s e.g. %s: %s\n", g.count, g.probe, g.class,
			g.first.UTC().Format("15:04:05"), g.last.UTC().Format("15:04:05"), strings.Join(g.targets, "; "), g.msg)
	}
	return b.String()
}

// WriteFile writes the report as indented JSON.
func (r Report) WriteFile(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

func truncate(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Detail caps: counts stay exact beyond them.
const (
	maxFailures = 20000
	maxEvents   = 5000
)

// recorder collects outcomes from every probe goroutine.
type recorder struct {
	mu     sync.Mutex
	report Report
}

func newRecorder(cluster string, now time.Time) *recorder {
	return &recorder{report: Report{Cluster: cluster, Started: now, Probes: map[string]*ProbeStats{}}}
}

// result records one request outcome; class "" is a success.
func (r *recorder) result(now time.Time, probe, target string, class Class, err string, note string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.report.Probes[probe]
	if p == nil {
		p = &ProbeStats{Targets: map[string]*Counts{}}
		r.report.Probes[probe] = p
	}
	p.add(class)
	t := p.Targets[target]
	if t == nil {
		t = &Counts{}
		p.Targets[target] = t
	}
	t.add(class)
	if class == "" {
		return
	}
	if len(r.report.Failures) >= maxFailures {
		r.report.DroppedFailures++
		return
	}
	r.report.Failures = append(r.report.Failures, Failure{Time: now, Probe: probe, Target: target, Class: class, Error: truncate(err, 1000), Note: note})
}

func (r *recorder) event(now time.Time, probe, target, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.report.Events) >= maxEvents {
		r.report.DroppedEvents++
		return
	}
	r.report.Events = append(r.report.Events, Event{Time: now, Probe: probe, Target: target, Message: msg})
}

func (r *recorder) notReady(now time.Time, path, line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.report.NotReady) >= maxEvents {
		r.report.DroppedEvents++
		return
	}
	r.report.NotReady = append(r.report.NotReady, Event{Time: now, Probe: ProbeLogs, Target: path, Message: truncate(line, 2000)})
}

func (r *recorder) error(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.Errors = append(r.report.Errors, msg)
}

// snapshot returns a deep copy of the report so far.
func (r *recorder) snapshot(now time.Time) Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.report
	out.Stopped = now
	out.Probes = make(map[string]*ProbeStats, len(r.report.Probes))
	for n, p := range r.report.Probes {
		cp := &ProbeStats{Counts: copyCounts(p.Counts), Targets: make(map[string]*Counts, len(p.Targets))}
		for t, c := range p.Targets {
			cc := copyCounts(*c)
			cp.Targets[t] = &cc
		}
		out.Probes[n] = cp
	}
	out.Failures = append([]Failure(nil), r.report.Failures...)
	out.Events = append([]Event(nil), r.report.Events...)
	out.Errors = append([]string(nil), r.report.Errors...)
	return out
}

func copyCounts(c Counts) Counts {
	out := Counts{Requests: c.Requests, OK: c.OK}
	if c.Failures != nil {
		out.Failures = make(map[Class]int, len(c.Failures))
		for k, v := range c.Failures {
			out.Failures[k] = v
		}
	}
	return out
}
