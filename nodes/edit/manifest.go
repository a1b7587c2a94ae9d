package edit

import (
	"fmt"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// A static pod manifest's flags are the "--name=value" items of a
// container's command (or, if it has none there, args), as kubeadm writes
// them. flag may be given with or without the leading "--".

func flagName(flag string) (string, error) {
	name := strings.TrimPrefix(flag, "--")
	if name == "" || strings.ContainsAny(name, "= \t\n") || strings.HasPrefix(name, "-") {
		return "", fmt.Errorf("invalid flag name %q", flag)
	}
	return name, nil
}

// container returns the mapping of spec.containers[name==container].
func container(doc *yaml.Node, name string) (*yaml.Node, error) {
	cs := path(doc.Content[0], "spec", "containers")
	if cs == nil || cs.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("manifest has no spec.containers")
	}
	var found *yaml.Node
	var names []string
	for _, c := range cs.Content {
		n := get(c, "name")
		if n == nil {
			continue
		}
		names = append(names, n.Value)
		if n.Value == name {
			if found != nil {
				return nil, fmt.Errorf("manifest has two containers named %q", name)
			}
			found = c
		}
	}
	if found == nil {
		return nil, fmt.Errorf("manifest has no container %q (containers: %s)", name, strings.Join(names, ", "))
	}
	return found, nil
}

// flagItems finds the items of flag in the container's command and args.
// It returns the sequence holding them (command preferred) and their
// indexes.
func flagItems(c *yaml.Node, name string) (seq *yaml.Node, idx []int, err error) {
	for _, key := range []string{"command", "args"} {
		s := get(c, key)
		if s == nil {
			continue
		}
		if s.Kind != yaml.SequenceNode {
			return nil, nil, fmt.Errorf("%s is not a list", key)
		}
		if seq == nil {
			seq = s
		}
		for i, it := range s.Content {
			if it.Kind != yaml.ScalarNode {
				continue
			}
			if it.Value == "--"+name {
				return nil, nil, fmt.Errorf("flag --%s is given without '=' (value in a separate item?); refusing to guess", name)
			}
			if strings.HasPrefix(it.Value, "--"+name+"=") {
				if s != seq && len(idx) > 0 {
					return nil, nil, fmt.Errorf("flag --%s is in both command and args", name)
				}
				seq = s
				idx = append(idx, i)
			}
		}
		if len(idx) > 0 {
			break
		}
	}
	if len(idx) > 1 {
		return nil, nil, fmt.Errorf("flag --%s is given %d times; refusing to guess which one counts", name, len(idx))
	}
	return seq, idx, nil
}

// ManifestFlag returns the value of --flag in the named container's
// command; ok is false when the flag is absent.
func ManifestFlag(manifest []byte, containerName, flag string) (value string, ok bool, err error) {
	name, err := flagName(flag)
	if err != nil {
		return "", false, err
	}
	doc, _, err := parse(manifest, "manifest")
	if err != nil {
		return "", false, err
	}
	c, err := container(doc, containerName)
	if err != nil {
		return "", false, err
	}
	seq, idx, err := flagItems(c, name)
	if err != nil {
		return "", false, fmt.Errorf("container %s: %w", containerName, err)
	}
	if len(idx) == 0 {
		return "", false, nil
	}
	return strings.TrimPrefix(seq.Content[idx[0]].Value, "--"+name+"="), true, nil
}

// SetManifestFlag sets "--flag=value" in the named container's command:
// the existing item is replaced in place; a new flag is inserted where
// kubeadm would put it (flags after the binary name are sorted) or, if the
// list is not sorted, appended. Setting the current value returns the input
// unchanged.
func SetManifestFlag(manifest []byte, containerName, flag, value string) ([]byte, error) {
	name, err := flagName(flag)
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(value, "\n") {
		return nil, fmt.Errorf("flag --%s: value contains a newline", name)
	}
	doc, st, err := parse(manifest, "manifest")
	if err != nil {
		return nil, err
	}
	c, err := container(doc, containerName)
	if err != nil {
		return nil, err
	}
	seq, idx, err := flagItems(c, name)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", containerName, err)
	}
	item := "--" + name + "=" + value
	if len(idx) == 1 {
		it := seq.Content[idx[0]]
		if it.Value == item {
			return manifest, nil
		}
		it.Value = item
		it.Tag = "!!str"
		return finish(manifest, doc, st, true)
	}
	if seq == nil {
		return nil, fmt.Errorf("container %s has neither command nor args", containerName)
	}
	// Insert in sorted position among the flags (kubeadm sorts them after
	// the command name), else append.
	var flags []string
	first := -1
	for i, it := range seq.Content {
		if strings.HasPrefix(it.Value, "--") {
			if first < 0 {
				first = i
			}
			flags = append(flags, it.Value)
		} else if first >= 0 {
			flags = nil // a positional argument after flags: not kubeadm's layout
			break
		}
	}
	at := len(seq.Content)
	if first >= 0 && flags != nil && len(flags) == len(seq.Content)-first && sort.StringsAreSorted(flags) {
		at = first + sort.SearchStrings(flags, item)
	}
	seq.Content = append(seq.Content[:at], append([]*yaml.Node{str(item)}, seq.Content[at:]...)...)
	return finish(manifest, doc, st, true)
}

// RemoveManifestFlag removes --flag from the named container's command; an
// absent flag returns the input unchanged.
func RemoveManifestFlag(manifest []byte, containerName, flag string) ([]byte, error) {
	name, err := flagName(flag)
	if err != nil {
		return nil, err
	}
	doc, st, err := parse(manifest, "manifest")
	if err != nil {
		return nil, err
	}
	c, err := container(doc, containerName)
	if err != nil {
		return nil, err
	}
	seq, idx, err := flagItems(c, name)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", containerName, err)
	}
	if len(idx) == 0 {
		return manifest, nil
	}
	seq.Content = append(seq.Content[:idx[0]], seq.Content[idx[0]+1:]...)
	return finish(manifest, doc, st, true)
}

// PodAnnotation returns metadata.annotations[key].
func PodAnnotation(manifest []byte, key string) (string, bool, error) {
	doc, _, err := parse(manifest, "manifest")
	if err != nil {
		return "", false, err
	}
	v := path(doc.Content[0], "metadata", "annotations", key)
	if v == nil {
		return "", false, nil
	}
	return v.Value, true, nil
}

// SetPodAnnotation sets metadata.annotations[key] = value, creating the
// annotations mapping if needed. A static pod restarts when its manifest
// changes, so bumping an annotation (e.g. with a step's counter or run id)
// restarts it without touching anything else; setting the current value
// returns the input unchanged.
func SetPodAnnotation(manifest []byte, key, value string) ([]byte, error) {
	if key == "" {
		return nil, fmt.Errorf("empty annotation key")
	}
	doc, st, err := parse(manifest, "manifest")
	if err != nil {
		return nil, err
	}
	md, err := ensureMap(doc.Content[0], "metadata")
	if err != nil {
		return nil, err
	}
	ann, err := ensureMap(md, "annotations")
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	changed, err := setScalar(ann, key, value)
	if err != nil {
		return nil, fmt.Errorf("metadata.annotations: %w", err)
	}
	return finish(manifest, doc, st, changed)
}

// ContainerCommand returns the named container's command (nil when the
// manifest gives none and the image's entrypoint runs).
func ContainerCommand(manifest []byte, containerName string) ([]string, error) {
	doc, _, err := parse(manifest, "manifest")
	if err != nil {
		return nil, err
	}
	c, err := container(doc, containerName)
	if err != nil {
		return nil, err
	}
	s := get(c, "command")
	if s == nil {
		return nil, nil
	}
	if s.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("container %s: command is not a list", containerName)
	}
	out := make([]string, 0, len(s.Content))
	for _, it := range s.Content {
		out = append(out, it.Value)
	}
	return out, nil
}
