package nodes

import (
	"path"
	"strings"
)

func cleanPath(p string) string { return path.Clean(p) }

// shellQuote single-quotes s for a POSIX shell: the only character that
// needs care inside single quotes is the quote itself, written as '\”.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shCommand renders `sh -c SCRIPT sh ARG...`: the script is fixed text and
// every argument reaches it as a positional parameter ($1, $2, ...), so no
// path or value is ever parsed as shell syntax.
// ShCommand is the command line that runs script with sh, args as its
// positional parameters (each quoted).
func ShCommand(script string, args ...string) string { return shCommand(script, args...) }

func shCommand(script string, args ...string) string {
	var b strings.Builder
	b.WriteString("sh -c ")
	b.WriteString(shellQuote(script))
	b.WriteString(" sh")
	for _, a := range args {
		b.WriteByte(' ')
		b.WriteString(shellQuote(a))
	}
	return b.String()
}

// The scripts below run on the node under /bin/sh (dash, bash or busybox
// ash all do) and need only GNU coreutils, 8.20 or later (2012: dd's
// iflag=count_bytes and status=none, cp --attributes-only). LC_ALL=C
// makes error messages
// matchable. Exit codes 64-79 are the scripts' own refusals; their stderr
// says why and never contains file contents.

// readScript prints the file (following symlinks). "missing" on stderr's
// first line marks ENOENT.
const readScript = `export LC_ALL=C
if [ ! -e "$1" ]; then
  if [ -L "$1" ]; then echo "missing: dangling symlink" >&2; else echo "missing" >&2; fi
  exit 64
fi
exec cat -- "$1"`

// statScript prints "missing", or one line
// "RAWMODE_HEX UID GID SIZE OWNER GROUP" followed, for a symlink, by its
// target (everything after the first newline, less one trailing newline).
const statScript = `export LC_ALL=C
if ! out=$(stat -c '%f %u %g %s %U %G' -- "$1" 2>&1); then
  case $out in
  *"No such file or directory"*) echo missing; exit 0 ;;
  esac
  printf '%s\n' "$out" >&2
  exit 1
fi
printf '%s\n' "$out"
if [ -L "$1" ]; then readlink -- "$1"; fi`

// fileFuncs are the shell functions behind every change to a file, shared
// by the one-operation scripts below and applyFilesScript (batch), so a
// batch changes files exactly as the single operations do. Each function
// exits the script (with one of the codes 64-79) on a refusal or failure;
// the EXIT trap removes whatever temporary file or directory is in flight,
// and SIGPIPE/SIGHUP (a dropped connection) are turned into exit so that
// it runs. rotate_dir sets $dir to the parent of a clean absolute path
// without forking dirname.
const fileFuncs = `export LC_ALL=C
umask 077
tmp= ld= rotate_seq=0
rotate_cleanup() {
  if [ -n "$tmp" ]; then rm -f -- "$tmp"; fi
  if [ -n "$ld" ]; then rm -f -- "$ld/l"; rmdir -- "$ld" 2>/dev/null; fi
}
trap rotate_cleanup EXIT
trap 'exit 129' HUP INT PIPE TERM
rotate_dir() { dir=${1%/*}; dir=${dir:-/}; }
` + writeFunc + linkFunc + removeFunc + mkdirFunc

// writeFunc replaces $1 atomically with the next $4 bytes of stdin.
//
//	$1 path  $2 mode (octal, or "" to keep/default)  $3 owner "uid:gid" or ""
//	$4 expected size  $5 expected sha256  $6 "replace" to allow replacing a
//	symlink (Restore), else a symlink is refused.
//
// The temp file is a dot-file in the same directory (kubelet ignores dot
// files in the static pod directory), removed on any failure, including a
// dropped connection. It is created by the shell itself, exclusively (set
// -C: never through an existing file or symlink) and 0600 (umask 077), and
// filled and fsynced by one dd, so a write costs few processes: a batch
// writes dozens of files. The content is checked against its digest before
// anything is renamed, so stdin cut short by a dropped connection never
// becomes the file. A file replaced keeps its owner and mode (cp
// --attributes-only copies just those); the directory is the caller's to
// sync.
const writeFunc = `rotate_write() {
p=$1 mode=$2 owner=$3 size=$4 sum=$5 how=$6
rotate_dir "$p"; base=${p##*/}
if [ -L "$p" ]; then
  if [ "$how" != replace ]; then echo "refusing to write through symlink $p; repoint it or write its target" >&2; exit 65; fi
elif [ -e "$p" ] && [ ! -f "$p" ]; then
  echo "$p exists and is not a regular file" >&2; exit 66
fi
if [ ! -d "$dir" ]; then echo "directory $dir does not exist" >&2; exit 67; fi
rotate_seq=$((rotate_seq+1)); t="$dir/.$base.rotate-$$-$rotate_seq"
set -C; true > "$t" || exit 68; set +C
tmp=$t
dd of="$tmp" bs=65536 count="$size" iflag=count_bytes,fullblock conv=notrunc,fsync status=none || exit 69
got=$(sha256sum < "$tmp") || exit 70
if [ "${got%% *}" != "$sum" ]; then
  echo "content check failed: received $(wc -c < "$tmp") of $size bytes or a different digest; $p not changed" >&2
  exit 71
fi
if [ -f "$p" ] && [ ! -L "$p" ]; then
  cp --attributes-only --preserve=mode,ownership -- "$p" "$tmp" || exit 72
fi
if [ -n "$owner" ]; then chown -- "$owner" "$tmp" || exit 73; fi
if [ -n "$mode" ]; then chmod -- "$mode" "$tmp" || exit 74; fi
mv -f -- "$tmp" "$p" || exit 75
tmp=
}
`

// linkFunc points $2 at $1 atomically: ln -s into a fresh temp directory
// beside the link, then rename over the link (mv -T never follows an
// existing link into a directory).
const linkFunc = `rotate_link() {
rotate_dir "$2"
if [ -d "$2" ] && [ ! -L "$2" ]; then echo "$2 is a directory" >&2; exit 66; fi
if [ ! -d "$dir" ]; then echo "directory $dir does not exist" >&2; exit 67; fi
ld=$(mktemp -d -- "$dir/.rotate-link-XXXXXX") || exit 68
ln -s -- "$1" "$ld/l" || exit 69
mv -f -T -- "$ld/l" "$2" || exit 75
rmdir -- "$ld"; ld=
}
`

// removeFunc deletes a file or symlink; missing is fine; directories are
// refused.
const removeFunc = `rotate_remove() {
rotate_dir "$1"
if [ -d "$1" ] && [ ! -L "$1" ]; then echo "$1 is a directory" >&2; exit 66; fi
rm -f -- "$1" || exit 1
}
`

// mkdirFunc creates $1 (and missing parents, 0700 through the umask),
// refuses it unless it is a directory and not a symlink to one (before
// anything is chmodded through such a link), and makes it 0700.
const mkdirFunc = `rotate_mkdir() {
umask 077
mkdir -p -- "$1" || exit 1
if [ -L "$1" ] || [ ! -d "$1" ]; then echo "$1 is not a directory (a symlink?)" >&2; exit 66; fi
chmod 0700 -- "$1" || exit 1
}
`

// writeScript replaces $1 atomically with stdin (arguments as writeFunc's).
const writeScript = fileFuncs + `rotate_write "$@"
sync -- "$dir" 2>/dev/null || :`

// symlinkScript points $2 at $1 atomically.
const symlinkScript = fileFuncs + `rotate_link "$1" "$2"
sync -- "$dir" 2>/dev/null || :`

// removeScript deletes $1, a file or symlink; missing is fine.
const removeScript = fileFuncs + `rotate_remove "$1"
sync -- "$dir" 2>/dev/null || :`

// chownLinkScript sets a symlink's own owner ($2 = uid:gid).
const chownLinkScript = `chown -h -- "$2" "$1"`

// mkdirPrivateScript creates $1 (and missing parents), checks that it is a
// directory and not a symlink to one, and makes it and every further
// argument 0700, owned by the running user.
const mkdirPrivateScript = fileFuncs + `rotate_mkdir "$1"
for d in "$@"; do chmod 0700 -- "$d" || exit 1; done`
