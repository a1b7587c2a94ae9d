package nodes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// ReadFile returns path's content (see Runner).
func (c *Client) ReadFile(ctx context.Context, path string) ([]byte, error) {
	op := "read " + path
	if err := checkPath(path); err != nil {
		return nil, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	res, err := c.run(ctx, op, shCommand(readScript, path), nil)
	if err != nil {
		var xe *ExitError
		if errors.As(err, &xe) && xe.Result.ExitStatus == 64 && hasLinePrefix(xe.Result.Stderr, "missing") {
			return nil, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, ErrNotExist)
		}
		return nil, err
	}
	return res.Stdout, nil
}

// Stat describes path with lstat semantics (see Runner).
func (c *Client) Stat(ctx context.Context, path string) (FileInfo, error) {
	op := "stat " + path
	if err := checkPath(path); err != nil {
		return FileInfo{}, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	res, err := c.run(ctx, op, shCommand(statScript, path), nil)
	if err != nil {
		return FileInfo{}, err
	}
	fi, err := parseStat(path, res.Stdout)
	if err != nil {
		return FileInfo{}, fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	return fi, nil
}

// parseStat parses statScript's output.
func parseStat(path string, out []byte) (FileInfo, error) {
	fi := FileInfo{Path: path}
	s := string(out)
	if s == "missing\n" {
		return fi, nil
	}
	line, rest, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) != 6 {
		return fi, fmt.Errorf("unexpected stat output %q", line)
	}
	raw, err := strconv.ParseUint(f[0], 16, 32)
	if err != nil {
		return fi, fmt.Errorf("unexpected stat mode %q", f[0])
	}
	uid, err1 := strconv.Atoi(f[1])
	gid, err2 := strconv.Atoi(f[2])
	size, err3 := strconv.ParseInt(f[3], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return fi, fmt.Errorf("unexpected stat output %q: %w", line, err)
	}
	fi.Exists = true
	fi.Mode = modeFromUnix(uint32(raw))
	fi.UID, fi.GID, fi.Size = uid, gid, size
	fi.Owner, fi.Group = f[4], f[5]
	switch uint32(raw) & 0o170000 {
	case 0o120000:
		fi.IsSymlink = true
		fi.LinkTarget = strings.TrimSuffix(rest, "\n")
	case 0o040000:
		fi.IsDir = true
	case 0o100000:
		fi.IsRegular = true
	}
	return fi, nil
}

// WriteFile replaces path atomically (see Runner).
func (c *Client) WriteFile(ctx context.Context, path string, data []byte, mode fs.FileMode) error {
	m := ""
	if mode != 0 {
		m = octalMode(mode)
	}
	return c.write(ctx, path, data, m, "", false)
}

// WriteFileExact replaces whatever non-directory is at path with a regular
// file of exactly data, mode and owner uid:gid, atomically (see
// ExactWriter).
func (c *Client) WriteFileExact(ctx context.Context, path string, data []byte, mode fs.FileMode, uid, gid int) error {
	if uid < 0 || gid < 0 {
		return fmt.Errorf("write %s on %s: invalid owner %d:%d", path, c.cfg.Name, uid, gid)
	}
	return c.write(ctx, path, data, octalMode(mode), fmt.Sprintf("%d:%d", uid, gid), true)
}

func (c *Client) write(ctx context.Context, path string, data []byte, mode, owner string, replaceLink bool) error {
	op := "write " + path
	if err := checkPath(path); err != nil {
		return fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	sum := sha256.Sum256(data)
	how := "refuse-symlink"
	if replaceLink {
		how = "replace"
	}
	_, err := c.run(ctx, op, shCommand(writeScript, path, mode, owner,
		strconv.Itoa(len(data)), hex.EncodeToString(sum[:]), how), data)
	return err
}

// Symlink points link at target atomically (see Runner).
func (c *Client) Symlink(ctx context.Context, target, link string) error {
	op := "symlink " + link
	if err := checkPath(link); err != nil {
		return fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	if target == "" || strings.ContainsRune(target, 0) {
		return fmt.Errorf("%s on %s: invalid target %q", op, c.cfg.Name, target)
	}
	_, err := c.run(ctx, op, shCommand(symlinkScript, target, link), nil)
	return err
}

// Remove deletes path; missing is fine (see Runner).
func (c *Client) Remove(ctx context.Context, path string) error {
	op := "remove " + path
	if err := checkPath(path); err != nil {
		return fmt.Errorf("%s on %s: %w", op, c.cfg.Name, err)
	}
	_, err := c.run(ctx, op, shCommand(removeScript, path), nil)
	return err
}

// hasLinePrefix reports whether a line of out starts with prefix.
func hasLinePrefix(out []byte, prefix string) bool {
	for _, l := range bytes.Split(out, []byte("\n")) {
		if bytes.HasPrefix(l, []byte(prefix)) {
			return true
		}
	}
	return false
}
