package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"
)

// This file decides whether a state file may be handed to bbolt at all.
// bbolt maps the file and trusts what its meta pages say: a truncated file
// faults (SIGBUS) on the first read past its end, and damaged pages panic
// inside bbolt. So before the file is mapped, its first pages are read with
// plain reads and checked against bbolt's on-disk format (go.etcd.io/bbolt
// internal/common: page.go and meta.go), under a shared lock so a writer in
// another process is never caught mid-write. Nothing here writes.

// bbolt's on-disk constants (internal/common/types.go, page.go).
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pageHeaderSize   = 16 // id u64, flags u16, count u16, overflow u32
	metaSize         = 56 // magic .. txid; the checksum follows
	metaFlag         = 0x04
	branchFlag       = 0x01
	leafFlag         = 0x02
	freelistFlag     = 0x10
	noFreelist       = ^uint64(0)
	minPageSize      = 1 << 10
	maxPageSize      = 1 << 16
	freelistIDSize   = 8
	freelistOverflow = 0xFFFF // count field saturated: the real count is the first id slot
)

// meta is the part of bbolt's meta page rotate checks.
type meta struct {
	pageSize uint32
	root     uint64 // page id of the root bucket
	freelist uint64
	pgid     uint64 // high-water mark: pages [0, pgid) are in use
	txid     uint64
}

// Corrupt is the error for a file rotate cannot use as a state file
// (ErrCorrupt): it names the file and the problem, and tells the operator
// that rotate left the file alone and what to do. Callers that find a
// record this rotate cannot have written use it too.
func Corrupt(path, problem string) error {
	return fmt.Errorf("%w: %s: %s; rotate has not changed it: restore it from a copy, or, if no rotation was ever started with it, move it aside and start afresh",
		ErrCorrupt, path, problem)
}

// checkOwner refuses a state file owned by anyone but the user running
// rotate or root, as OpenSSH does for its keys and configuration.
func checkOwner(path string, st os.FileInfo) error {
	owner, me := ownerUID(st), os.Geteuid()
	if owner < 0 || owner == me || owner == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s is owned by %s, but rotate runs as %s; it holds CA private keys: run rotate as its owner, or take it over with `chown %d %s` if it is really yours",
		ErrOwner, path, userName(owner), userName(me), me, path)
}

// ownerUID is the file's owner, -1 where the platform does not say.
func ownerUID(st os.FileInfo) int {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(sys.Uid)
	}
	return -1
}

func userName(uid int) string {
	id := strconv.Itoa(uid)
	if u, err := user.LookupId(id); err == nil {
		return u.Username + " (uid " + id + ")"
	}
	return "uid " + id
}

// checkFile checks an existing state file's bbolt structure without mapping
// it. It takes a shared lock for the duration (ErrBusy after timeout when
// another process holds it exclusively) and releases it before returning.
func checkFile(path string, timeout time.Duration) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("state file %s: %w", path, err)
	}
	defer f.Close() // releases the lock
	if err := lockShared(f, timeout); err != nil {
		if errors.Is(err, errLockTimeout) {
			return busy(path, timeout)
		}
		return fmt.Errorf("lock state file %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("state file %s: %w", path, err)
	}
	return checkLayout(path, f, st.Size())
}

func busy(path string, waited time.Duration) error {
	return fmt.Errorf("%w: %s is locked (waited %s); is another `rotate` running on it?", ErrBusy, path, waited)
}

var errLockTimeout = errors.New("lock timeout")

// lockShared takes a shared flock, polling until timeout like bbolt does.
func lockShared(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		if time.Now().After(deadline) {
			return errLockTimeout
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkLayout is checkFile's pure part: r holds size bytes of a bbolt file.
//
// bbolt keeps two meta pages and writes them in turn; it uses the valid one
// with the higher transaction id and ignores the other, which may be torn
// (a crash while bbolt wrote it) or point at pages that later transactions
// reused (any SIGKILL leaves such an older meta page). So does this check:
// at least one meta page must be valid, and only the one bbolt will use is
// followed to its root and freelist pages. Refusing a file bbolt reads
// fine would strand a run that was killed, which rotate must resume.
func checkLayout(path string, r io.ReaderAt, size int64) error {
	if size == 0 {
		return Corrupt(path, "the file is empty (0 bytes)")
	}
	if size < 2*minPageSize {
		return Corrupt(path, fmt.Sprintf("the file is %d bytes, too short for a state file (truncated?)", size))
	}
	m0, err0 := readMeta(r, 0, 0)
	var m1 meta
	var err1 error
	if err0 == nil {
		if size < 2*int64(m0.pageSize) {
			return Corrupt(path, fmt.Sprintf("the file is %d bytes, shorter than its two meta pages of %d bytes (truncated?)", size, m0.pageSize))
		}
		m1, err1 = readMeta(r, 1, int64(m0.pageSize))
	} else {
		// Like bbolt: without meta page 0 the page size is found by
		// looking for meta page 1 at every possible page size.
		err1 = errors.New("is not a bbolt meta page at any page size")
		for ps := int64(minPageSize); ps <= maxPageSize && 2*ps <= size; ps *= 2 {
			if m, err := readMeta(r, 1, ps); err == nil && int64(m.pageSize) == ps {
				m1, err1 = m, nil
				break
			}
		}
	}
	var cur meta
	switch {
	case err0 != nil && err1 != nil:
		return Corrupt(path, fmt.Sprintf("meta page 0 %v, and meta page 1 %v", err0, err1))
	case err0 != nil:
		cur = m1
	case err1 != nil:
		cur = m0
	default:
		if m1.pageSize != m0.pageSize {
			return Corrupt(path, fmt.Sprintf("the meta pages disagree on the page size (%d and %d)", m0.pageSize, m1.pageSize))
		}
		cur = m0
		if m1.txid > m0.txid {
			cur = m1
		}
	}
	if err := checkMeta(r, cur, size); err != nil {
		return Corrupt(path, fmt.Sprintf("the current meta page (transaction %d) %v", cur.txid, err))
	}
	return nil
}

// readMeta reads and validates meta page id at offset off: page flags,
// magic, version, page size and checksum. Page 0 is read at offset 0 before
// the page size is known; the meta record sits right after the page header.
func readMeta(r io.ReaderAt, id uint64, off int64) (meta, error) {
	buf := make([]byte, pageHeaderSize+metaSize+8)
	if _, err := r.ReadAt(buf, off); err != nil {
		return meta{}, fmt.Errorf("cannot be read: %v", err)
	}
	le := binary.NativeEndian // bbolt writes its structs in the host's byte order
	if got := le.Uint16(buf[8:]); got != metaFlag {
		return meta{}, fmt.Errorf("is not a bbolt meta page (page flags %#x); not a rotate state file, or overwritten", got)
	}
	mb := buf[pageHeaderSize:]
	if magic := le.Uint32(mb[0:]); magic != boltMagic {
		return meta{}, fmt.Errorf("has magic %#x, not bbolt's %#x; not a rotate state file, or overwritten", magic, uint32(boltMagic))
	}
	if v := le.Uint32(mb[4:]); v != boltVersion {
		return meta{}, fmt.Errorf("has bbolt format version %d, this rotate reads %d", v, boltVersion)
	}
	h := fnv.New64a()
	h.Write(mb[:metaSize])
	if sum, want := le.Uint64(mb[metaSize:]), h.Sum64(); sum != want {
		return meta{}, fmt.Errorf("fails its checksum (%#016x, want %#016x): the file is damaged", sum, want)
	}
	if got := le.Uint64(buf[0:]); got != id {
		return meta{}, fmt.Errorf("says it is page %d", got)
	}
	m := meta{
		pageSize: le.Uint32(mb[8:]),
		root:     le.Uint64(mb[16:]),
		freelist: le.Uint64(mb[32:]),
		pgid:     le.Uint64(mb[40:]),
		txid:     le.Uint64(mb[48:]),
	}
	if ps := m.pageSize; ps < minPageSize || ps > maxPageSize || ps&(ps-1) != 0 {
		return meta{}, fmt.Errorf("has page size %d, not a power of two from %d to %d", ps, minPageSize, maxPageSize)
	}
	return m, nil
}

// checkMeta checks that everything m points at lies inside the file: the
// high-water mark, the root bucket's page and the freelist page, whose
// headers are read too.
func checkMeta(r io.ReaderAt, m meta, size int64) error {
	ps := int64(m.pageSize)
	if m.pgid < 2 || m.pgid > uint64(size/ps) {
		return fmt.Errorf("says the file holds %d pages of %d bytes, but it is %d bytes (truncated?)", m.pgid, ps, size)
	}
	if m.freelist == noFreelist {
		return errors.New("has no freelist; rotate always writes one (not a rotate state file)")
	}
	for _, p := range []struct {
		what  string
		id    uint64
		flags []uint16
	}{
		{"root bucket", m.root, []uint16{branchFlag, leafFlag}},
		{"freelist", m.freelist, []uint16{freelistFlag}},
	} {
		if p.id < 2 || p.id >= m.pgid {
			return fmt.Errorf("puts its %s at page %d, outside pages 2..%d", p.what, p.id, m.pgid-1)
		}
		hdr := make([]byte, pageHeaderSize+freelistIDSize)
		if _, err := r.ReadAt(hdr, int64(p.id)*ps); err != nil {
			return fmt.Errorf("%s page %d cannot be read: %v", p.what, p.id, err)
		}
		le := binary.NativeEndian
		flags, count, overflow := le.Uint16(hdr[8:]), uint64(le.Uint16(hdr[10:])), uint64(le.Uint32(hdr[12:]))
		if !containsFlag(p.flags, flags) {
			return fmt.Errorf("%s page %d has page flags %#x: the file is damaged", p.what, p.id, flags)
		}
		if p.id+overflow >= m.pgid {
			return fmt.Errorf("%s page %d runs past the last page %d: the file is damaged", p.what, p.id, m.pgid-1)
		}
		if flags == freelistFlag {
			room := uint64((overflow+1)*uint64(ps)) - pageHeaderSize
			if count == freelistOverflow {
				count = le.Uint64(hdr[pageHeaderSize:]) + 1
			}
			if count > room/freelistIDSize {
				return fmt.Errorf("freelist page %d claims %d entries, more than it holds: the file is damaged", p.id, count)
			}
		}
	}
	return nil
}

func containsFlag(set []uint16, f uint16) bool {
	for _, s := range set {
		if s == f {
			return true
		}
	}
	return false
}
