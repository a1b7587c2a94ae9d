package nodes

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
)

// listFilesScript prints the name of every file in $1 (regular, or a link
// to one), one a line, dot-files left out as the kubelet leaves them out of
// its static pod directory; a missing directory lists nothing.
const listFilesScript = `export LC_ALL=C
for f in "$1"/*; do
  [ -f "$f" ] && printf '%s\n' "${f##*/}"
done
exit 0`

// ListFiles returns the paths of the files directly in dir on the node
// (see listFilesScript), sorted. A runner without a shell (MemRunner
// without RunFunc) lists nothing. On a *Batched the listing keeps what it
// has read (it changes nothing).
func ListFiles(ctx context.Context, r Runner, dir string) ([]string, error) {
	if err := checkPath(dir); err != nil {
		return nil, fmt.Errorf("list %s on %s: %w", dir, r.Name(), err)
	}
	var res Result
	var err error
	if b, ok := r.(*Batched); ok {
		res, err = b.runLooking(ctx, shCommand(listFilesScript, dir))
	} else {
		res, err = r.Run(ctx, shCommand(listFilesScript, dir), nil)
	}
	if err != nil {
		return nil, fmt.Errorf("list %s on %s: %w", dir, r.Name(), err)
	}
	var out []string
	for _, name := range strings.Split(string(res.Stdout), "\n") {
		if name != "" && !strings.Contains(name, "/") {
			out = append(out, path.Join(dir, name))
		}
	}
	sort.Strings(out)
	return out, nil
}
