// Package nodes carries out every change rotate makes on a cluster node: it
// connects over SSH (golang.org/x/crypto/ssh) with verified host keys and
// runs small POSIX shell scripts through the node's own /bin/sh, so nothing
// has to be installed on the node beyond coreutils and, for non-root users,
// sudo.
//
// The rules it keeps are those of a careful operator with root on a
// production control plane:
//
//   - a host key that is unknown or does not match known_hosts is a hard
//     error (ErrHostKey), never retried;
//   - paths and file contents never become shell text: paths travel as
//     single-quoted positional arguments, contents through stdin;
//   - a file is replaced atomically (temp file in the same directory, content
//     checked against its SHA-256, fsync, rename), so a reader or a dropped
//     connection sees the old or the new file, never a partial one;
//   - before the first change to a path in a run its previous state is saved
//     (BackupFile) so that Restore can put back exactly what was there;
//   - file contents never appear in errors or logs (they may be keys).
//
// Runner is the one-node interface steps are written against; *Client is the
// SSH implementation, MemRunner an in-memory fake for unit tests, and Pool
// keeps one connection per node; fan-out over nodes is the orchestrator's.
// Pure edits of the files rotate changes (static pod manifests,
// kubeconfigs, the kubelet config) live in nodes/edit.
package nodes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// ErrHostKey is wrapped by every host key verification failure: an unknown
// host, a key that does not match known_hosts, or a revoked key. Such errors
// are never retried.
var ErrHostKey = errors.New("host key verification failed")

// ErrNotExist is returned (wrapped) by ReadFile for a missing file. It is
// fs.ErrNotExist, so errors.Is(err, fs.ErrNotExist) holds.
var ErrNotExist = fs.ErrNotExist

// ErrBecome is wrapped when privilege escalation through `sudo -n` fails: sudo
// wants a password, the user may not run the command, or sudo is missing.
var ErrBecome = errors.New("privilege escalation (sudo -n) failed")

// ErrConnectionLost is wrapped when the SSH connection dropped before a
// command reported its exit status. Whether the command completed on the
// node is unknown; file writes are atomic, so the file is either the old or
// the new content.
var ErrConnectionLost = errors.New("connection lost before the command finished")

// FileInfo describes a path as the node sees it, with lstat semantics: a
// symlink is described, not followed.
type FileInfo struct {
	Path   string
	Exists bool
	// Mode holds the permission bits plus fs.ModeSetuid, fs.ModeSetgid and
	// fs.ModeSticky; never the file type (see IsSymlink, IsDir, IsRegular).
	Mode         fs.FileMode
	UID, GID     int
	Owner, Group string // names; "UNKNOWN" when the id has no name on the node
	IsSymlink    bool
	LinkTarget   string // the link's content as stored (readlink), not resolved
	IsDir        bool
	IsRegular    bool
	Size         int64
}

// Result is what a command produced.
type Result struct {
	Stdout, Stderr []byte
	ExitStatus     int
}

// ExitError reports a command that ran and exited non-zero (or was killed by
// a signal, then ExitStatus is -1 and Signal names it).
type ExitError struct {
	Node   string
	Op     string // short description, never file contents
	Signal string
	Result Result
}

func (e *ExitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s on %s: ", e.Op, e.Node)
	if e.Signal != "" {
		fmt.Fprintf(&b, "killed by signal %s", e.Signal)
	} else {
		fmt.Fprintf(&b, "exit status %d", e.Result.ExitStatus)
	}
	if msg := firstLines(e.Result.Stderr, 3, 300); msg != "" {
		fmt.Fprintf(&b, ": %s", msg)
	}
	return b.String()
}

// firstLines returns up to n non-empty lines of s, at most max bytes, joined
// with "; ". Only stderr goes through here, never file contents.
func firstLines(s []byte, n, max int) string {
	var out []string
	for _, l := range strings.Split(string(s), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		out = append(out, l)
		if len(out) == n {
			break
		}
	}
	j := strings.Join(out, "; ")
	if len(j) > max {
		j = j[:max] + "..."
	}
	return j
}

// Runner acts on one node. *Client (SSH), the runners handed out by Pool and
// *MemRunner implement it. Paths must be absolute and clean.
type Runner interface {
	// Name is the node's inventory name.
	Name() string
	// Run runs cmd with /bin/sh -c (through sudo -n when the node's config
	// says Become) with stdin as its standard input. A non-zero exit is an
	// *ExitError carrying the Result. When ctx's deadline or the node's
	// CommandTimeout passes, the remote command is killed and the error
	// wraps context.DeadlineExceeded.
	Run(ctx context.Context, cmd string, stdin []byte) (Result, error)
	// ReadFile returns the content of path, following symlinks. A missing
	// file is an error wrapping ErrNotExist.
	ReadFile(ctx context.Context, path string) ([]byte, error)
	// Stat describes path with lstat semantics. A missing path is
	// FileInfo{Exists: false} and a nil error.
	Stat(ctx context.Context, path string) (FileInfo, error)
	// WriteFile replaces path atomically. An existing file keeps its owner
	// and group, and its mode when mode is 0; a new file gets mode (0600
	// when mode is 0) and the connecting (or sudo) user as owner, which is
	// root in practice. Writing through a symlink or over a directory is
	// refused: repoint links with Symlink.
	WriteFile(ctx context.Context, path string, data []byte, mode fs.FileMode) error
	// Symlink makes link a symlink to target, atomically replacing whatever
	// non-directory was at link.
	Symlink(ctx context.Context, target, link string) error
	// Remove deletes path (a file or symlink, not a directory); a missing
	// path is not an error.
	Remove(ctx context.Context, path string) error
}

// ExactWriter is implemented by runners that can replace any non-directory
// at path (including a symlink) with a regular file of exactly the given
// content, mode and numeric owner in one atomic rename. Restore uses it when
// available. *Client, Pool's runners and *MemRunner implement it.
type ExactWriter interface {
	WriteFileExact(ctx context.Context, path string, data []byte, mode fs.FileMode, uid, gid int) error
}

// checkPath rejects paths that are not absolute and clean, or that could not
// be passed to a command (NUL).
func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("path %q contains a NUL byte", p)
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q is not absolute", p)
	case cleanPath(p) != p:
		return fmt.Errorf("path %q is not clean (want %q)", p, cleanPath(p))
	}
	return nil
}

// octalMode renders m's permission and special bits as chmod's octal.
func octalMode(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

// modeFromUnix converts st_mode permission and special bits to a FileMode.
func modeFromUnix(raw uint32) fs.FileMode {
	m := fs.FileMode(raw & 0o777)
	if raw&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if raw&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if raw&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// permBits is the part of a FileMode that WriteFile and FileInfo carry.
const permBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky
