package supervisor

import (
	"context"
	"encoding/binary"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// watch pokes the sync loop whenever an entry of the manifest directory is
// created, written, renamed or removed — the kubelet's file source watches
// its directory with inotify the same way. Until the directory exists it
// retries every second (the periodic resync covers the gap). The returned
// func stops watching.
func (s *Supervisor) watch(ctx context.Context) func() {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		for ctx.Err() == nil {
			if err := s.watchOnce(ctx); err != nil && ctx.Err() == nil {
				s.log.Debug("inotify watch", "dir", s.cfg.ManifestDir, "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}()
	return cancel
}

// watchOnce watches until ctx ends or the watch breaks (the directory was
// removed).
func (s *Supervisor) watchOnce(ctx context.Context) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	const mask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_CLOSE_WRITE |
		unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
	if _, err := unix.InotifyAddWatch(fd, s.cfg.ManifestDir, mask); err != nil {
		return err
	}
	s.poke() // anything that changed before the watch existed
	go func() {
		<-ctx.Done()
		f.SetReadDeadline(time.Now())
	}()
	buf := make([]byte, 64*1024)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return err
		}
		gone := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			// struct inotify_event: wd, mask, cookie, len, name[len].
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := binary.NativeEndian.Uint32(buf[off+12:])
			if mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0 {
				gone = true
			}
			off += unix.SizeofInotifyEvent + int(nameLen)
		}
		s.poke()
		if gone {
			return os.ErrNotExist
		}
	}
}
