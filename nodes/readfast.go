package nodes

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// The fast read of a batch. readFilesScript is careful per file (a stat,
// the read framed by the stat's size, a stat again, up to three tries),
// and so starts about seven processes per file: on a loaded node a step's
// read of 13 files took 150-450 ms. readFilesFastScript describes every
// path with one lstat and one stat (following links) for the whole batch
// before the read and again after it, and reads every regular file (or
// symlink to one) with one cat: a handful of processes per batch, plus a
// readlink per symlink and a stat per path that is missing for another
// reason than "No such file or directory" (the first lstat's messages
// say which; a step's Check looks for a backup of every file it edits,
// missing but for a resumed step). The content is cut into files by the sizes the
// first stat gave, which is only trusted when every file read is described
// the same after the read as before it (size, mode, owner, inode and
// change time, of a symlink's target too) and the content is exactly as
// long as their sum. Whatever it cannot vouch for (a path whose
// description changed around the read, and then every file of the cat; a
// description it cannot match to its path; a path whose stat failed for a
// reason its shell test cannot tell) is read again, in a second session,
// by readFilesScript, so the fast read never changes what ReadFiles
// answers, only how fast.
//
// Framing: every datum is followed by "\n" BOUNDARY " " HEADER "\n", where
// BOUNDARY is random per session (16 bytes, hex) and passed as $1, so no
// file content or path can forge a header. The frames, in order:
//
//	lstat lines  "L"           (one line per path that could be described)
//	stat -L lines "R"          (the same, following symlinks)
//	per path, as needed:
//	  link target "T i RC"     (readlink's output, for a symlink)
//	  message     "E i"        (stat's message, for a path the shell's test
//	                            finds neither present nor a symlink, unless
//	                            the first lstat said it does not exist)
//	indexes       "N"          (the paths the first lstat said do not exist
//	                            and the shell's test still finds absent: no
//	                            stat of their own, the usual case of the
//	                            backups a step looks for)
//	indexes       "F"          (the paths cat reads, in order: each one that
//	                            is or resolves to a regular file)
//	content       "C RC"       (cat's output)
//	lstat lines  "M", stat -L lines "Z"   (the descriptions again, after,
//	                            of the paths and then of the files read)
//
// Each stat line is "%f %u %g %s %U %G %i %z %n" (lstat) or
// "%f %s %u %g %i %z %n" (stat -L): a path's line ends with " " and the
// path, and stat skips the paths it cannot describe; paths are matched to
// lines in order. A path with a newline cannot be matched, so a batch with
// one is read by readFilesScript alone.
const readFilesFastScript = `export LC_ALL=C
set -f
b=$1
shift
lfmt='%f %u %g %s %U %G %i %z %n' tfmt='%f %s %u %g %i %z %n'
{ errs=$(stat -c "$lfmt" -- "$@" 2>&1 >&3); } 3>&1
printf '\n%s L\n' "$b"
stat -L -c "$tfmt" -- "$@" 2>/dev/null
printf '\n%s R\n' "$b"
n=$# i=0 f= g=
for p in "$@"; do
  i=$((i+1))
  if [ -L "$p" ]; then
    readlink -- "$p"
    printf '\n%s T %d %d\n' "$b" "$i" "$?"
  elif [ ! -e "$p" ]; then
    case $errs in
    *" '$p': No such file or directory"*) g="$g $i" ;;
    *)
      m=$(stat -c %f -- "$p" 2>&1)
      printf '%s\n%s E %d\n' "$m" "$b" "$i" ;;
    esac
  fi
  if [ -f "$p" ]; then
    f="$f $i"
    set -- "$@" "$p"
  fi
done
printf '%s\n%s N\n' "$g" "$b"
printf '%s\n%s F\n' "$f" "$b"
(shift "$n"; [ $# -eq 0 ] || exec cat -- "$@" 2>/dev/null)
printf '\n%s C %d\n' "$b" "$?"
stat -c "$lfmt" -- "$@" 2>/dev/null
printf '\n%s M\n' "$b"
stat -L -c "$tfmt" -- "$@" 2>/dev/null
printf '\n%s Z\n' "$b"`

// Fields of a stat line before the path: lstat's 7 and stat -L's 5, each
// with %z's three words.
const (
	fastLstatFields = 10
	fastStatFields  = 8
)

// fastReadable reports whether readFilesFastScript can read paths (none
// has a newline, which would break its lines).
func fastReadable(paths []string) bool {
	for _, p := range paths {
		if strings.ContainsRune(p, '\n') {
			return false
		}
	}
	return true
}

// newBoundary is a fresh frame boundary for readFilesFastScript.
func newBoundary() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return "rotate-" + hex.EncodeToString(b[:])
}

// fastFrame is one datum of readFilesFastScript's output and its header.
type fastFrame struct {
	kind string
	i    int // 1-based path index; 0 for the others
	rc   string
	data []byte
}

// fastRecords is what readFilesFastScript said of one path.
type fastRecords struct {
	pre, preT, post, postT string // stat lines without the path ("" none)
	link, msg              *fastFrame
	read                   bool   // cat read it
	absent                 bool   // the first lstat said no such file, and the shell's test agreed
	content                []byte // its part of cat's output, if trusted
}

// parseReadFilesFast parses readFilesFastScript's output for paths. It
// returns a state for every path it can vouch for and, in redo, the
// indexes of the others (to be read by readFilesScript); an error only
// for output that is not the script's at all.
func parseReadFilesFast(node, boundary string, paths []string, out []byte) (states []FileState, redo []int, err error) {
	frames, err := splitFastFrames(boundary, out)
	if err != nil {
		return nil, nil, err
	}
	recs := make([]fastRecords, len(paths))
	var read []int              // indexes (0-based) of the paths cat read, in order
	after := slices.Clip(paths) // stat's paths after the read: these, then those read (a new array)
	var blob *fastFrame
	seen := ""
	for _, f := range frames {
		if f.i > len(paths) {
			return nil, nil, fmt.Errorf("unexpected path index %d", f.i)
		}
		switch f.kind {
		case "T":
			recs[f.i-1].link = f
		case "E":
			recs[f.i-1].msg = f
		case "N":
			for _, w := range strings.Fields(string(f.data)) {
				i, err := strconv.Atoi(w)
				if err != nil || i < 1 || i > len(paths) {
					return nil, nil, fmt.Errorf("unexpected index %q", w)
				}
				recs[i-1].absent = true
			}
		case "F":
			for _, w := range strings.Fields(string(f.data)) {
				i, err := strconv.Atoi(w)
				if err != nil || i < 1 || i > len(paths) {
					return nil, nil, fmt.Errorf("unexpected index %q", w)
				}
				read = append(read, i-1)
				recs[i-1].read = true
				after = append(after, paths[i-1])
			}
		case "C":
			blob = f
		case "L", "R", "M", "Z":
			all := paths
			if f.kind == "M" || f.kind == "Z" {
				all = after
			}
			n := fastLstatFields
			if f.kind == "R" || f.kind == "Z" {
				n = fastStatFields
			}
			lines, ok := matchStatLines(bytes.TrimSuffix(f.data, []byte("\n")), all, n)
			if !ok {
				// A line no path accounts for: trust nothing of it.
				return make([]FileState, len(paths)), allIndexes(len(paths)), nil
			}
			for j := range paths {
				switch f.kind {
				case "L":
					recs[j].pre = lines[j]
				case "R":
					recs[j].preT = lines[j]
				case "M":
					recs[j].post = lines[j]
				case "Z":
					recs[j].postT = lines[j]
				}
			}
		}
		seen += f.kind
	}
	if !strings.HasPrefix(seen, "LR") || !strings.HasSuffix(seen, "NFCMZ") {
		return nil, nil, errors.New("output cut short")
	}
	splitContent(recs, read, blob)
	states = make([]FileState, len(paths))
	for i, p := range paths {
		st, ok := fastState(node, p, &recs[i])
		if !ok {
			redo = append(redo, i)
			continue
		}
		states[i] = st
	}
	return states, redo, nil
}

// splitContent gives each file cat read its part of the output, when the
// parts can be trusted: cat succeeded, every file read is described the
// same before and after, and the output is as long as their sizes.
func splitContent(recs []fastRecords, read []int, blob *fastFrame) {
	if blob.rc != "0" {
		return
	}
	sizes := make([]int, len(read))
	total := 0
	for k, i := range read {
		r := &recs[i]
		t := strings.Fields(r.preT)
		if len(t) < 2 || r.pre != r.post || r.preT != r.postT {
			return
		}
		n, err := strconv.Atoi(t[1])
		if err != nil {
			return
		}
		sizes[k] = n
		total += n
	}
	if total != len(blob.data) {
		return
	}
	data := blob.data
	for k, i := range read {
		recs[i].content = data[:sizes[k]:sizes[k]]
		data = data[sizes[k]:]
	}
}

// fastState is path p's state from its records; false when they do not
// vouch for one (readFilesScript reads it again).
func fastState(node, p string, r *fastRecords) (FileState, bool) {
	st := FileState{Info: FileInfo{Path: p}}
	if r.absent {
		// Missing before the read (stat's message) and at the test;
		// nothing of it described after the read either.
		return st, r.pre == "" && r.post == "" && r.link == nil && r.msg == nil && !r.read
	}
	if r.msg != nil {
		// The shell found p neither present nor a symlink: stat says why.
		if r.pre != "" || r.link != nil || r.read {
			return st, false
		}
		if bytes.Contains(r.msg.data, []byte("No such file or directory")) {
			return st, true
		}
		st.Err = fmt.Errorf("read %s on %s: %s", p, node, firstLines(r.msg.data, 3, 300))
		return st, true
	}
	if r.pre == "" || r.pre != r.post || r.preT != r.postT {
		return st, false // appeared, vanished or changed around the read
	}
	f := strings.Fields(r.pre)
	desc := strings.Join(f[:6], " ") + "\n"
	isLink := strings.HasPrefix(f[0], "a") // S_IFLNK, 0xa000
	switch {
	case isLink && (r.link == nil || r.link.rc != "0"):
		return st, false
	case isLink:
		desc += string(bytes.TrimSuffix(r.link.data, []byte("\n")))
	case r.link != nil:
		return st, false
	}
	info, err := parseStat(p, []byte(desc))
	if err != nil {
		return st, false
	}
	st.Info = info
	regular := strings.HasPrefix(r.preT, "8") // S_IFREG, 0x8000
	switch {
	case regular != r.read:
		return st, false // a regular file cat did not read, or the reverse
	case !regular:
		return st, true
	case r.content == nil:
		return st, false // the content cannot be trusted
	}
	st.Content, st.HasContent = r.content, true
	return st, true
}

// splitFastFrames cuts out into frames at its boundaries.
func splitFastFrames(boundary string, out []byte) ([]*fastFrame, error) {
	sep := []byte("\n" + boundary + " ")
	var frames []*fastFrame
	for len(out) > 0 {
		j := bytes.Index(out, sep)
		if j < 0 {
			return nil, errors.New("output cut short")
		}
		data := out[:j:j]
		header, rest, ok := bytes.Cut(out[j+len(sep):], []byte("\n"))
		if !ok {
			return nil, errors.New("output cut short")
		}
		out = rest
		h := strings.Fields(string(header))
		f := &fastFrame{data: data}
		switch {
		case len(h) == 1 && len(h[0]) == 1 && strings.Contains("LRNFMZ", h[0]):
			f.kind = h[0]
		case len(h) == 2 && h[0] == "C":
			f.kind, f.rc = h[0], h[1]
		case len(h) >= 2 && (h[0] == "T" && len(h) == 3 || h[0] == "E" && len(h) == 2):
			f.kind = h[0]
			i, err := strconv.Atoi(h[1])
			if err != nil || i < 1 {
				return nil, fmt.Errorf("unexpected header %q", header)
			}
			f.i = i
			if len(h) == 3 {
				f.rc = h[2]
			}
		default:
			return nil, fmt.Errorf("unexpected header %q", header)
		}
		frames = append(frames, f)
	}
	return frames, nil
}

// matchStatLines matches stat's lines (data, without its last newline) to
// paths in order: stat prints one line per path it could describe, which
// ends with " " and the path, after n fields. lines[i] is path i's line
// less the path ("" when stat skipped it); false when a line matches no
// remaining path.
func matchStatLines(data []byte, paths []string, n int) ([]string, bool) {
	lines := make([]string, len(paths))
	if len(data) == 0 {
		return lines, true
	}
	j := 0
	for _, l := range strings.Split(string(data), "\n") {
		for ; j < len(paths); j++ {
			head, ok := strings.CutSuffix(l, " "+paths[j])
			if ok && len(strings.Fields(head)) == n {
				lines[j] = head
				break
			}
		}
		if j == len(paths) {
			return nil, false
		}
		j++
	}
	return lines, true
}

func allIndexes(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
