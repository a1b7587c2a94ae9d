package nodes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// The SSH side of batches (batch.go): ReadFiles and ApplyFiles each run one
// script in one session. Paths (and symlink targets) are positional
// arguments, as in every other script; contents travel through stdin
// (ApplyFiles) or stdout (ReadFiles), framed by byte counts so any bytes
// are carried unambiguously.
//
// sshd hands the whole command line to the login shell as one argument,
// which Linux caps at 128 KiB (MAX_ARG_STRLEN). A batch whose quoted paths
// would pass maxBatchArgs is therefore split into several sessions, in
// order: a few hundred typical paths fit in one. Contents are not limited
// (stdin is streamed).

// maxBatchArgs bounds the quoted arguments of one batch session, leaving
// room for the script and the sudo/timeout wrapper under 128 KiB.
const maxBatchArgs = 96 << 10

// errChanged marks a path that changed between its stat and its re-stat
// around the read (three times in a row).
var errChanged = errors.New("changed while it was being read; retry")

// readFilesScript describes and reads every argument. For argument i
// (1-based) it prints one record, then more of the same i if the file
// changed while it was read (up to three tries; the last record wins):
//
//	P i missing
//	P i error LEN \n LEN bytes of stat's message
//	P i stat LEN \n LEN bytes of what statScript prints, then for what is
//	  or resolves to a regular file:
//	  C SIZE \n exactly SIZE bytes of content
//	  K ok|changed|unreadable
//
// SIZE is the size stat reported before the read; the content is cut or
// zero-padded to it, so the framing holds whatever happens to the file,
// and the re-stat after the read (size, mode, owner, inode and change
// time, of the link too for a symlink) says whether the bytes can be
// trusted; the check fields (%i %z, the last four words) are cut off the
// lstat line before it is printed in statScript's format. The
// read's exit status comes back through fd 3 while the content goes to the
// real stdout (fd 4).
const readFilesScript = `export LC_ALL=C
set -f
exec 4>&1
lfmt='%f %u %g %s %U %G %i %z' tfmt='%f %s %u %g %i %z'
i=0
for p in "$@"; do
  i=$((i+1)) try=0
  while :; do
    try=$((try+1))
    if ! st=$(stat -c "$lfmt" -- "$p" 2>&1); then
      case $st in *"No such file or directory"*) printf 'P %d missing\n' "$i"; break ;; esac
      printf 'P %d error %d\n%s' "$i" "${#st}" "$st"; break
    fi
    t= n= c1=
    case $st in
    a*) t=$(readlink -- "$p"; echo x); t=${t%x}
        if ts=$(stat -L -c "$tfmt" -- "$p" 2>/dev/null); then
          case $ts in 8*) set -- $ts; n=$2 c1="$st
$ts" ;; esac
        fi ;;
    8*) set -- $st; n=$4 c1=$st ;;
    esac
    s="${st% * * * *}
$t"
    printf 'P %d stat %d\n%s' "$i" "${#s}" "$s"
    [ -n "$n" ] || break
    printf 'C %d\n' "$n"
    rc=$( { { head -c "$n" -- "$p" 2>/dev/null; echo "$?" >&3; head -c "$n" /dev/zero; } | head -c "$n" >&4; } 3>&1 )
    case $st in
    a*) c2=$(stat -c "$lfmt" -- "$p" 2>/dev/null; stat -L -c "$tfmt" -- "$p" 2>/dev/null) ;;
    *) c2=$(stat -c "$lfmt" -- "$p" 2>/dev/null) ;;
    esac
    if [ "$rc" != 0 ]; then printf 'K unreadable\n'; break; fi
    if [ "$c1" = "$c2" ]; then printf 'K ok\n'; break; fi
    if [ "$try" -ge 3 ]; then printf 'K changed\n'; break; fi
  done
done`

// applyFilesScript carries out the operations described on stdin, in
// order, with the same functions as the one-operation scripts (fileFuncs).
// Each operation is a header line
//
//	KIND ARG NARGS SIZE SHA256 MODE OWNER
//
// (KIND write, exact, link, remove, mkdir; OWNER set on a link: the
// link's own owner, chown -h; ARG the index of its first
// positional argument: the path, then a link's target or a directory's
// further directories; "-" for an empty field) followed, for a write, by
// exactly SIZE bytes of content. Positional arguments are fetched by a
// number checked to be digits, so eval only ever sees "p=${12}"; no path is
// parsed as shell text. "ok" is printed after each operation completes,
// so the caller knows how many were applied. The last header, "sync ARG",
// fsyncs the directories in arguments ARG.. in one call; a stream that ends
// without it (a dropped connection) is an error.
//
// ApplyRunApply's batches add two headers: "flush ARG N" fsyncs the N
// arguments from ARG on and goes on, and "run ARG" runs argument ARG as a command line
// (sh -c, stdin empty, umask 022 as a login session has it, its stderr the
// session's), then prints
//
//	R STATUS LEN \n LEN bytes of the command's stdout \n
//
// and, unless STATUS is 0, exits with it: the operations after it are
// never applied.
const applyFilesScript = fileFuncs + `set -f
while IFS=' ' read -r kind a n size sum mode owner; do
  case $a$n in ''|*[!0-9]*) echo "malformed batch header" >&2; exit 78 ;; esac
  case $kind in
  sync)
    shift $((a-1))
    if [ $# -gt 0 ]; then sync -- "$@" 2>/dev/null || :; fi
    exit 0 ;;
  flush)
    (shift $((a-1)); k=0
     for d do k=$((k+1)); if [ "$k" -le "$n" ]; then set -- "$@" "$d"; fi; done
     shift "$k"; if [ $# -gt 0 ]; then sync -- "$@" 2>/dev/null || :; fi)
    continue ;;
  run)
    eval "c=\${$a}"
    out=$(umask 022; sh -c "$c" </dev/null); rc=$?
    printf 'R %d %d\n%s\n' "$rc" "${#out}" "$out"
    [ "$rc" -eq 0 ] || exit "$rc"
    continue ;;
  esac
  eval "p=\${$a}"
  [ "$mode" = - ] && mode=
  [ "$owner" = - ] && owner=
  case $kind in
  write) rotate_write "$p" "$mode" "$owner" "$size" "$sum" refuse-symlink ;;
  exact) rotate_write "$p" "$mode" "$owner" "$size" "$sum" replace ;;
  link)
    eval "t=\${$((a+1))}"; rotate_link "$t" "$p"
    if [ -n "$owner" ]; then chown -h -- "$owner" "$p" || exit 73; fi ;;
  remove) rotate_remove "$p" ;;
  mkdir)
    rotate_mkdir "$p"
    k=$((a+1))
    while [ "$k" -lt $((a+n)) ]; do eval "d=\${$k}"; chmod 0700 -- "$d" || exit 1; k=$((k+1)); done ;;
  *) echo "unknown batch operation" >&2; exit 78 ;;
  esac
  echo ok
done
echo "batch input ended early" >&2
exit 79`

// ReadFiles describes and reads paths in one session (see Batcher; more
// than one only for a batch too long for one command line).
func (c *Client) ReadFiles(ctx context.Context, paths []string) ([]FileState, error) {
	for _, p := range paths {
		if err := checkPath(p); err != nil {
			return nil, fmt.Errorf("read %s on %s: %w", p, c.cfg.Name, err)
		}
	}
	out := make([]FileState, 0, len(paths))
	for _, chunk := range argChunks(len(paths), func(i int) []string { return paths[i : i+1] }) {
		states, err := c.readFiles(ctx, paths[chunk[0]:chunk[1]])
		if err != nil {
			return nil, err
		}
		out = append(out, states...)
	}
	return out, nil
}

// readFiles reads paths in one session of readFilesFastScript, and those
// it cannot vouch for in a second one of readFilesScript (readfast.go).
func (c *Client) readFiles(ctx context.Context, paths []string) ([]FileState, error) {
	if !fastReadable(paths) {
		return c.readFilesCarefully(ctx, paths)
	}
	op := fmt.Sprintf("read %d files", len(paths))
	boundary := newBoundary()
	res, err := c.run(ctx, op, shCommand(readFilesFastScript, append([]string{boundary}, paths...)...), nil)
	if err != nil {
		return nil, err
	}
	states, redo, err := parseReadFilesFast(c.cfg.Name, boundary, paths, res.Stdout)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	if len(redo) == 0 {
		return states, nil
	}
	again := make([]string, len(redo))
	for k, i := range redo {
		again[k] = paths[i]
	}
	redone, err := c.readFilesCarefully(ctx, again)
	if err != nil {
		return nil, err
	}
	for k, i := range redo {
		states[i] = redone[k]
	}
	return states, nil
}

// readFilesCarefully reads paths in one session of readFilesScript.
func (c *Client) readFilesCarefully(ctx context.Context, paths []string) ([]FileState, error) {
	op := fmt.Sprintf("read %d files", len(paths))
	res, err := c.run(ctx, op, shCommand(readFilesScript, paths...), nil)
	if err != nil {
		return nil, err
	}
	states, err := parseReadFiles(c.cfg.Name, paths, res.Stdout)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	return states, nil
}

// argChunks splits n items, whose positional arguments args(i) gives, into
// [start, end) ranges whose quoted arguments fit maxBatchArgs (at least
// one item each).
func argChunks(n int, args func(i int) []string) [][2]int {
	var out [][2]int
	start, size := 0, 0
	for i := 0; i < n; i++ {
		s := quotedSize(args(i))
		if i > start && size+s > maxBatchArgs {
			out = append(out, [2]int{start, i})
			start, size = i, 0
		}
		size += s
	}
	if n > start {
		out = append(out, [2]int{start, n})
	}
	return out
}

// quotedSize is what args take on a command line, quoted, each with its
// separator.
func quotedSize(args []string) int {
	n := 0
	for _, a := range args {
		n += len(shellQuote(a)) + 1
	}
	return n
}

// parseReadFiles parses readFilesScript's output for paths.
func parseReadFiles(node string, paths []string, out []byte) ([]FileState, error) {
	states := make([]FileState, len(paths))
	seen := make([]bool, len(paths))
	cur := -1
	take := func(n int) ([]byte, error) {
		if n < 0 || n > len(out) {
			return nil, errors.New("output cut short")
		}
		b := out[:n:n]
		out = out[n:]
		return b, nil
	}
	for len(out) > 0 {
		line, rest, ok := bytes.Cut(out, []byte("\n"))
		if !ok {
			return nil, errors.New("output cut short")
		}
		out = rest
		f := strings.Fields(string(line))
		if len(f) < 2 {
			return nil, fmt.Errorf("unexpected output line %q", line)
		}
		switch f[0] {
		case "P":
			i, err := strconv.Atoi(f[1])
			if err != nil || i < 1 || i > len(paths) || len(f) < 3 {
				return nil, fmt.Errorf("unexpected output line %q", line)
			}
			cur = i - 1
			p := paths[cur]
			seen[cur] = true
			states[cur] = FileState{Info: FileInfo{Path: p}}
			if f[2] == "missing" {
				continue
			}
			n := -1
			if len(f) == 4 {
				n, _ = strconv.Atoi(f[3])
			}
			b, err := take(n)
			if err != nil {
				return nil, err
			}
			switch f[2] {
			case "error":
				states[cur].Err = fmt.Errorf("read %s on %s: %s", p, node, firstLines(b, 3, 300))
			case "stat":
				fi, err := parseStat(p, b)
				if err != nil {
					return nil, err
				}
				states[cur].Info = fi
			default:
				return nil, fmt.Errorf("unexpected output line %q", line)
			}
		case "C":
			n, err := strconv.Atoi(f[1])
			if err != nil || cur < 0 {
				return nil, fmt.Errorf("unexpected output line %q", line)
			}
			b, err := take(n)
			if err != nil {
				return nil, err
			}
			states[cur].Content, states[cur].HasContent = b, true
		case "K":
			if cur < 0 {
				return nil, fmt.Errorf("unexpected output line %q", line)
			}
			switch f[1] {
			case "ok":
				continue
			case "changed":
				states[cur].Err = fmt.Errorf("read %s on %s: %w", paths[cur], node, errChanged)
			default:
				states[cur].Err = fmt.Errorf("read %s on %s: reading it failed", paths[cur], node)
			}
			states[cur].Content, states[cur].HasContent = nil, false
		default:
			return nil, fmt.Errorf("unexpected output line %q", line)
		}
	}
	for i, ok := range seen {
		if !ok {
			return nil, fmt.Errorf("no answer for %s", paths[i])
		}
	}
	return states, nil
}

// ApplyFiles carries out ops in order in one session (see Batcher; more
// than one only for a batch too long for one command line, each session
// applying its operations before the next starts).
func (c *Client) ApplyFiles(ctx context.Context, ops []FileOp) error {
	if err := validateOps(c.cfg.Name, ops); err != nil {
		return err
	}
	chunks := argChunks(len(ops), func(i int) []string { return opArgs(ops[i]) })
	for _, chunk := range chunks {
		if err := c.applyChunk(ctx, ops, chunk[0], chunk[1]); err != nil {
			return err
		}
	}
	return nil
}

// opArgs are op's positional arguments: its path, then a link's target or
// a directory's further directories.
func opArgs(op FileOp) []string {
	switch op.Kind {
	case OpSymlink, OpSymlinkExact:
		return []string{op.Path, op.Target}
	case OpMkdirPrivate:
		return append([]string{op.Path}, op.Dirs...)
	}
	return []string{op.Path}
}

// applyChunk applies ops[start:end] in one session; an error is a
// *BatchError indexed into the whole ops.
func (c *Client) applyChunk(ctx context.Context, ops []FileOp, start, end int) error {
	var e opEncoder
	e.ops(ops[start:end])
	e.sync("sync")
	res, err := c.run(ctx, fmt.Sprintf("apply %d file operations", end-start), shCommand(applyFilesScript, e.args...), e.in.Bytes())
	if err == nil {
		return nil
	}
	done := start + bytes.Count(res.Stdout, []byte("ok\n"))
	if done >= end { // every operation applied; the final sync failed
		done = end - 1
	}
	return &BatchError{Node: c.cfg.Name, Index: done, Op: ops[done], Done: done, Err: err}
}

// opEncoder writes applyFilesScript's input: the headers and contents on
// stdin, the paths as positional arguments, and the directories to sync.
type opEncoder struct {
	args    []string
	in      bytes.Buffer
	dirs    []string
	seenDir map[string]bool
}

func (e *opEncoder) ops(ops []FileOp) {
	if e.seenDir == nil {
		e.seenDir = map[string]bool{}
	}
	for _, op := range ops {
		a := opArgs(op)
		kind, size, sum, mode, owner := "", 0, "-", "-", "-"
		switch op.Kind {
		case OpWrite, OpWriteExact:
			kind, size = "write", len(op.Data)
			s := sha256.Sum256(op.Data)
			sum = hex.EncodeToString(s[:])
			if op.Mode != 0 || op.Kind == OpWriteExact {
				mode = octalMode(op.Mode)
			}
			if op.Kind == OpWriteExact {
				kind, owner = "exact", fmt.Sprintf("%d:%d", op.UID, op.GID)
			}
		case OpSymlink:
			kind = "link"
		case OpSymlinkExact:
			kind, owner = "link", fmt.Sprintf("%d:%d", op.UID, op.GID)
		case OpRemove:
			kind = "remove"
		case OpMkdirPrivate:
			kind = "mkdir"
		}
		fmt.Fprintf(&e.in, "%s %d %d %d %s %s %s\n", kind, len(e.args)+1, len(a), size, sum, mode, owner)
		if size > 0 {
			e.in.Write(op.Data)
		}
		e.args = append(e.args, a...)
		if d := path.Dir(op.Path); op.Kind != OpMkdirPrivate && !e.seenDir[d] {
			e.seenDir[d] = true
			e.dirs = append(e.dirs, d)
		}
	}
}

// sync adds the header that syncs the directories written since the last
// one (kind "sync": and ends the batch; "flush": and goes on).
func (e *opEncoder) sync(kind string) {
	fmt.Fprintf(&e.in, "%s %d %d 0 - - -\n", kind, len(e.args)+1, len(e.dirs))
	e.args = append(e.args, e.dirs...)
	e.dirs = nil
	clear(e.seenDir)
}

// run adds the header that runs cmd.
func (e *opEncoder) run(cmd string) {
	fmt.Fprintf(&e.in, "run %d 1 0 - - -\n", len(e.args)+1)
	e.args = append(e.args, cmd)
}

// ApplyRunApply applies before, runs cmd and applies after in one session
// (see RunBatcher); one too long for a command line is three.
func (c *Client) ApplyRunApply(ctx context.Context, before []FileOp, cmd string, after []FileOp) (Result, error) {
	if err := validateOps(c.cfg.Name, before); err != nil {
		return Result{}, err
	}
	if err := validateOps(c.cfg.Name, after); err != nil {
		return Result{}, fmt.Errorf("the operations after the command: %w", err)
	}
	var e opEncoder
	e.ops(before)
	e.sync("flush")
	e.run(cmd)
	e.ops(after)
	e.sync("sync")
	if quotedSize(e.args) > maxBatchArgs {
		return applyRunApplyEach(ctx, c, before, cmd, after)
	}
	res, err := c.run(ctx, fmt.Sprintf("apply %d file operations, run a command, apply %d", len(before), len(after)), shCommand(applyFilesScript, e.args...), e.in.Bytes())
	out, err := parseApplyRunApply(c.cfg.Name, before, after, res, err)
	return Result{Stdout: out.stdout, Stderr: res.Stderr, ExitStatus: out.status}, err
}

// runOutcome is what parseApplyRunApply found of the command.
type runOutcome struct {
	stdout []byte
	status int
}

// parseApplyRunApply makes an ApplyRunApply session's outcome (res, err)
// the caller's: which batch or the command failed, and the command's
// output.
func parseApplyRunApply(node string, before, after []FileOp, res Result, err error) (runOutcome, error) {
	okBefore, okAfter, ran := 0, 0, false
	var o runOutcome
	out := res.Stdout
	for len(out) > 0 {
		line, rest, _ := bytes.Cut(out, []byte("\n"))
		out = rest
		if string(line) == "ok" {
			if ran {
				okAfter++
			} else {
				okBefore++
			}
			continue
		}
		f := strings.Fields(string(line))
		if ran || len(f) != 3 || f[0] != "R" {
			if err == nil {
				return o, fmt.Errorf("apply, run, apply on %s: unexpected output line %q", node, line)
			}
			break // cut short with the session: what was parsed stands
		}
		status, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || n < 0 || n+1 > len(out) {
			if err == nil {
				return o, fmt.Errorf("apply, run, apply on %s: output cut short", node)
			}
			break
		}
		ran, o.stdout, o.status = true, bytes.Clone(out[:n]), status
		out = out[n+1:]
	}
	switch {
	case err == nil && ran:
		return o, nil
	case err == nil:
		return o, fmt.Errorf("apply, run, apply on %s: the command's outcome is missing", node)
	case !ran && okBefore < len(before):
		return o, &BatchError{Node: node, Index: okBefore, Op: before[okBefore], Done: okBefore, Err: err}
	case !ran || o.status != 0:
		// The command did not finish (the session ended under it) or
		// failed: its error, with its output.
		var xe *ExitError
		if errors.As(err, &xe) {
			x := *xe
			x.Op = "run command"
			x.Result.Stdout = o.stdout
			return o, &StageError{Err: &x}
		}
		return o, &StageError{Err: err}
	}
	if len(after) == 0 {
		return o, &StageError{Ran: true, Err: err}
	}
	done := min(okAfter, len(after)-1) // all applied: the final sync failed
	return o, &StageError{Ran: true, Err: &BatchError{Node: node, Index: done, Op: after[done], Done: done, Err: err}}
}

// validateOps refuses a batch with an operation that could not be sent
// (a bad path or target, an unknown kind, an invalid owner, Dirs that are
// not Path's ancestors) before anything is applied: the *BatchError names
// it, with Done 0.
func validateOps(node string, ops []FileOp) error {
	for i, op := range ops {
		if err := validateOp(op); err != nil {
			return &BatchError{Node: node, Index: i, Op: op, Done: 0, Err: err}
		}
	}
	return nil
}

func validateOp(op FileOp) error {
	if err := checkPath(op.Path); err != nil {
		return err
	}
	switch op.Kind {
	case OpWrite, OpRemove:
	case OpWriteExact:
		if op.UID < 0 || op.GID < 0 {
			return fmt.Errorf("invalid owner %d:%d", op.UID, op.GID)
		}
	case OpSymlink, OpSymlinkExact:
		if op.Target == "" || strings.ContainsRune(op.Target, 0) {
			return fmt.Errorf("invalid target %q", op.Target)
		}
		if op.UID < 0 || op.GID < 0 {
			return fmt.Errorf("invalid owner %d:%d", op.UID, op.GID)
		}
	case OpMkdirPrivate:
		for _, d := range op.Dirs {
			if err := checkPath(d); err != nil {
				return err
			}
			if d != "/" && !strings.HasPrefix(op.Path, d+"/") {
				return fmt.Errorf("%s is not a parent of %s", d, op.Path)
			}
		}
	default:
		return fmt.Errorf("unknown file operation %d", op.Kind)
	}
	return nil
}
