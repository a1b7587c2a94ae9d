package probes

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// maxScan bounds how much of one log file is read per round.
const maxScan = 8 << 20

// logScanner reports x509 and Unauthorized lines appearing in component
// log files after the probes started.
type logScanner struct {
	r     *Runner
	globs []string
	files map[string]*tail
}

type tail struct {
	offset  int64
	partial []byte
}

// startLogScan records the current end of every matching file (lines
// before the start do not count) and scans new lines every second. Files
// that appear later are read from their beginning.
func (r *Runner) startLogScan(ctx context.Context) {
	ls := &logScanner{r: r, globs: r.opts.ComponentLogs, files: map[string]*tail{}}
	for _, f := range ls.match() {
		if fi, err := os.Stat(f); err == nil {
			ls.files[f] = &tail{offset: fi.Size()}
		}
	}
	r.rec.event(time.Now(), ProbeLogs, "", "scanning "+itoa(len(ls.files))+" log files matching "+joinQuoted(ls.globs))
	r.goLoop(ctx, "log scan", r.opts.Interval, ls.scan)
}

func (ls *logScanner) match() []string {
	seen := map[string]bool{}
	var out []string
	for _, g := range ls.globs {
		m, _ := filepath.Glob(g)
		for _, f := range m {
			if !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	sort.Strings(out)
	return out
}

func (ls *logScanner) scan(context.Context) {
	for _, f := range ls.match() {
		t := ls.files[f]
		if t == nil {
			t = &tail{}
			ls.files[f] = t
		}
		ls.read(f, t)
	}
}

func (ls *logScanner) read(path string, t *tail) {
	fh, err := os.Open(path)
	if err != nil {
		return
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return
	}
	if fi.Size() < t.offset { // truncated or replaced
		t.offset, t.partial = 0, nil
	}
	if fi.Size() == t.offset {
		return
	}
	buf := make([]byte, min(fi.Size()-t.offset, maxScan))
	n, err := fh.ReadAt(buf, t.offset)
	if err != nil && err != io.EOF {
		return
	}
	t.offset += int64(n)
	data := append(t.partial, buf[:n]...)
	now := time.Now()
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		ls.line(now, path, data[:i])
		data = data[i+1:]
	}
	t.partial = append([]byte(nil), data...)
}

// classifyLogLine returns X509 for lines with "x509:", Unauthorized for
// lines with "Unauthorized", "" otherwise. Indented lines continue a
// multi-line record (the kubelet prints its whole configuration at start,
// with keys such as "x509:" and "cacheUnauthorizedTTL:") and are not
// records of their own.
func classifyLogLine(line []byte) Class {
	if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
		return ""
	}
	switch {
	case bytes.Contains(line, []byte("x509:")):
		return X509
	case bytes.Contains(line, []byte("Unauthorized")):
		return Unauthorized
	}
	return ""
}

// kubeletNotReady marks the line the kubelet logs when it reports its
// node NotReady itself (nodestatus.ReadyCondition), with the condition.
var kubeletNotReady = []byte(`"Node became not ready"`)

func (ls *logScanner) line(now time.Time, path string, line []byte) {
	if bytes.Contains(line, kubeletNotReady) {
		ls.r.rec.notReady(now, path, string(line))
	}
	class := classifyLogLine(line)
	msg := ""
	if class != "" {
		msg = string(line)
	}
	ls.r.rec.result(now, ProbeLogs, path, class, msg, "")
}
