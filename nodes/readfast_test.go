package nodes

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/kubeca/rotate/nodes/sshdtest"
)

// TestReadFilesFastSSH: the fast read of a mixed batch (readfast.go) is one
// round trip and answers exactly what the careful per-file script does,
// path by path: contents with any bytes (a forged frame header too),
// missing paths, a stat error, symlinks (dangling, to a directory),
// directories, a FIFO, paths with spaces and one path twice.
func TestReadFilesFastSSH(t *testing.T) {
	t.Parallel()
	_, cfg := startNode(t, "n", sshdtest.Options{})
	pool := NewPool([]Config{cfg})
	defer pool.Close()
	ctx := testCtx(t)
	r, err := pool.Get(ctx, "n")
	must(t, err)
	c := dial(t, cfg)

	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	files := map[string]string{
		"bin":   "line\n\x00nul\x00\r\n\xff\xfe end without newline",
		"empty": "",
		"forge": "a\nrotate-00 C 1 0\n\nrotate-00 L\n",
		"x b":   "with a space",
		"b":     "the suffix of another path",
		"big":   string(make([]byte, 300<<10)),
	}
	for name, content := range files {
		must(t, os.WriteFile(p(name), []byte(content), 0o640))
	}
	must(t, os.Symlink("bin", p("link")))
	must(t, os.Symlink(p("nowhere"), p("dangling")))
	must(t, os.Symlink(dir, p("dirlink")))
	must(t, syscall.Mkfifo(p("fifo"), 0o600))
	paths := []string{p("bin"), p("missing"), p("empty"), p("forge"), p("x b"), p("b"), p("big"),
		p("link"), p("dangling"), p("dirlink"), dir, p("fifo"), p("bin") + "/child", p("b"), p("missing/deeper")}

	trips := pool.RoundTrips()
	before := trips.Counts().Nodes["n"]
	fast, err := ReadFiles(ctx, r, paths)
	must(t, err)
	if got := trips.Counts().Nodes["n"] - before; got != 1 {
		t.Errorf("the fast read took %d round trips, want 1 (something was read again)", got)
	}
	careful, err := c.readFilesCarefully(ctx, paths)
	must(t, err)
	for i := range paths {
		if !sameFileState(fast[i], careful[i]) {
			t.Errorf("%s:\nfast    %+v\ncareful %+v", paths[i], fast[i], careful[i])
		}
	}
	if string(fast[3].Content) != files["forge"] || fast[12].Err == nil || fast[1].Info.Exists || fast[1].Err != nil {
		t.Errorf("forged header %q, ENOTDIR %v, missing %+v", fast[3].Content, fast[12].Err, fast[1])
	}
	// The missing paths are told apart by the first stat's messages (no
	// stat of their own); the path under a file gets its own.
	res, err := c.Run(ctx, shCommand(readFilesFastScript, append([]string{"rotate-b"}, paths...)...), nil)
	must(t, err)
	if out := string(res.Stdout); !strings.Contains(out, "\n 2 15\nrotate-b N\n") || !strings.Contains(out, "rotate-b E 13\n") || strings.Count(out, " E ") != 1 {
		t.Errorf("the script's absent paths and messages:\n%s", out[strings.Index(out, "rotate-b R"):strings.Index(out, "rotate-b F")])
	}
}

// sameFileState compares two states, errors by their text.
func sameFileState(a, b FileState) bool {
	if fmt.Sprint(a.Err) != fmt.Sprint(b.Err) || a.HasContent != b.HasContent || string(a.Content) != string(b.Content) {
		return false
	}
	return reflect.DeepEqual(a.Info, b.Info)
}

// TestParseReadFilesFast: cat's output is cut into files by their sizes;
// when a file read changed around the read, or the output does not add up
// to the sizes, every file read is read again (not the other paths); a
// stat line no path accounts for makes every path be read again; output
// that is cut short or not the script's is an error.
func TestParseReadFilesFast(t *testing.T) {
	const b = "rotate-b"
	paths := []string{"/a", "/l", "/gone", "/b"}
	const tz = "2026-12-01 08:00:00.000000000 +0000"
	lst := func(mode string, size int, path string) string {
		return fmt.Sprintf("%s 0 0 %d root root 7 %s %s", mode, size, tz, path)
	}
	st := func(size int, path string) string { return fmt.Sprintf("81a4 %d 0 0 7 %s %s", size, tz, path) }
	frame := func(data, header string) string { return data + "\n" + b + " " + header + "\n" }
	// /a of aSize bytes (aAfter after the read), /l a symlink to it, /gone
	// missing, /b of two bytes (bAfter after the read).
	out := func(aSize, aAfter, bAfter int, content string) string {
		pre := lst("81a4", aSize, "/a") + "\n" + lst("a1ff", 2, "/l") + "\n" + lst("81a4", 2, "/b")
		preT := st(aSize, "/a") + "\n" + st(aSize, "/l") + "\n" + st(2, "/b")
		post := lst("81a4", aAfter, "/a") + "\n" + lst("a1ff", 2, "/l") + "\n" + lst("81a4", bAfter, "/b")
		postT := st(aAfter, "/a") + "\n" + st(aAfter, "/l") + "\n" + st(bAfter, "/b")
		return frame(pre+"\n", "L") + frame(preT+"\n", "R") +
			frame("/a\n", "T 2 0") +
			frame("stat: cannot statx '/gone': No such file or directory", "E 3") +
			frame("", "N") + frame(" 1 2 4", "F") + frame(content, "C 0") +
			frame(post+"\n"+post+"\n", "M") + frame(postT+"\n"+postT+"\n", "Z")
	}
	forged := "x\nrotate-other C 0\n" // a header of another boundary
	states, redo, err := parseReadFilesFast("n", b, paths, []byte(out(len(forged), len(forged), 2, forged+forged+"bb")))
	must(t, err)
	if len(redo) != 0 || string(states[0].Content) != forged || states[1].Info.LinkTarget != "/a" || string(states[1].Content) != forged ||
		states[2].Info.Exists || states[2].Err != nil || string(states[3].Content) != "bb" {
		t.Errorf("clean read: redo %v, states %+v", redo, states)
	}
	for name, o := range map[string]string{
		"/a changed":             out(3, 4, 2, "abcabcbb"),
		"/b changed":             out(3, 3, 3, "abcabcbb"),
		"shorter than described": out(3, 3, 2, "abcabcb"),
		"longer than described":  out(3, 3, 2, "abcabcbbb"),
		"cat failed":             strings.Replace(out(3, 3, 2, "abcabcbb"), b+" C 0", b+" C 1", 1),
	} {
		if _, redo, err := parseReadFilesFast("n", b, paths, []byte(o)); err != nil || !reflect.DeepEqual(redo, []int{0, 1, 3}) {
			t.Errorf("%s: redo %v (want the files read), err %v", name, redo, err)
		}
	}
	good := out(3, 3, 2, "abcabcbb")
	// /gone said missing by the first lstat: no message of its own.
	absent := strings.Replace(strings.Replace(good, frame("stat: cannot statx '/gone': No such file or directory", "E 3"), "", 1), frame("", "N"), frame(" 3", "N"), 1)
	states, redo, err = parseReadFilesFast("n", b, paths, []byte(absent))
	if err != nil || len(redo) != 0 || states[2].Info.Exists || states[2].Err != nil {
		t.Errorf("absent /gone: redo %v, states %+v, err %v", redo, states, err)
	}
	// ... and then described after the read: it appeared, read again.
	k := strings.Index(absent, frame(" 1 2 4", "F"))
	link := lst("a1ff", 2, "/l") + "\n"
	appeared := absent[:k] + strings.Replace(absent[k:], link, link+lst("81a4", 1, "/gone")+"\n", 1)
	if _, redo, err := parseReadFilesFast("n", b, paths, []byte(appeared)); err != nil || !reflect.DeepEqual(redo, []int{2}) {
		t.Errorf("/gone appeared after the read: redo %v (want /gone), err %v", redo, err)
	}
	stray := strings.Replace(good, " /b\n", " /other\n", 1)
	if _, redo, err := parseReadFilesFast("n", b, paths, []byte(stray)); err != nil || len(redo) != 4 {
		t.Errorf("a line of no path: redo %v, err %v", redo, err)
	}
	for name, bad := range map[string]string{
		"cut short":      good[:len(good)-30],
		"no stat frames": frame("abc", "C 0"),
		"bad header":     frame("", "Q 1"),
		"bad index":      frame("", "T 9 0") + good,
		"bad read index": strings.Replace(good, " 1 2 4\n", " 1 2 7\n", 1),
		"bad absent":     strings.Replace(good, frame("", "N"), frame(" 9", "N"), 1),
		"no absent":      strings.Replace(good, frame("", "N"), "", 1),
	} {
		if _, _, err := parseReadFilesFast("n", b, paths, []byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
