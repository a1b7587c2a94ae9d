// Package edit holds the pure edits rotate makes to kubeadm's files: flags
// of static pod manifests, a pod annotation that forces a restart, the CA
// and client credentials of kubeconfigs, and the kubelet's clientCAFile.
//
// Every function takes the file's bytes and returns new bytes; none does
// I/O. Edits go through go.yaml.in/yaml/v3's Node tree, so comments, key
// order, quoting and fields this package does not know survive. The output
// uses the input's indentation (detected: kubeadm writes 2 spaces with
// sequences not indented under their key), and for files written by kubeadm
// a parse and re-emit is byte-identical, so an edit changes exactly the
// edited lines. (A layout yaml.v3 cannot emit, such as 4-space mappings
// with sequence dashes at +2, is normalized by an edit; content and
// comments are kept.) An edit that changes nothing returns the input unchanged
// (same bytes), so callers can compare to decide whether to write. Inputs
// with several YAML documents or with anchors/aliases are refused rather
// than rewritten.
package edit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// style is the layout of the input, reused for the output.
type style struct {
	indent  int
	compact bool // "- " at the parent key's indentation
}

// parse decodes exactly one YAML document whose root is a mapping.
func parse(b []byte, what string) (*yaml.Node, style, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, style{}, fmt.Errorf("%s is empty", what)
		}
		return nil, style{}, fmt.Errorf("parse %s: %w", what, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, style{}, fmt.Errorf("%s holds more than one YAML document; refusing to edit it", what)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, style{}, fmt.Errorf("%s is not a YAML mapping", what)
	}
	if hasAlias(&doc) {
		return nil, style{}, fmt.Errorf("%s uses YAML anchors or aliases; refusing to edit it", what)
	}
	return &doc, detectStyle(b), nil
}

func hasAlias(n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return true
	}
	for _, c := range n.Content {
		if hasAlias(c) {
			return true
		}
	}
	return false
}

// detectStyle finds the indentation step (the smallest indentation of a
// content line) and whether block sequences sit at their key's indentation.
func detectStyle(b []byte) style {
	st := style{indent: 2, compact: true}
	lines := strings.Split(string(b), "\n")
	minIndent := 0
	seqDecided := false
	for i, l := range lines {
		t := strings.TrimLeft(l, " ")
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		ind := len(l) - len(t)
		if ind > 0 && (minIndent == 0 || ind < minIndent) {
			minIndent = ind
		}
		if !seqDecided && strings.HasSuffix(strings.TrimRight(t, " "), ":") && !strings.HasPrefix(t, "- ") {
			// Next content line under a bare "key:".
			for _, n := range lines[i+1:] {
				nt := strings.TrimLeft(n, " ")
				if nt == "" || strings.HasPrefix(nt, "#") {
					continue
				}
				if strings.HasPrefix(nt, "- ") || nt == "-" {
					st.compact = len(n)-len(nt) == ind
					seqDecided = true
				}
				break
			}
		}
	}
	if minIndent >= 2 && minIndent <= 9 {
		st.indent = minIndent
	}
	return st
}

func encode(doc *yaml.Node, st style) ([]byte, error) {
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(st.indent)
	if st.compact {
		enc.CompactSeqIndent()
	}
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// get returns the value node of key in mapping m, or nil.
func get(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// path follows keys through nested mappings.
func path(m *yaml.Node, keys ...string) *yaml.Node {
	for _, k := range keys {
		m = get(m, k)
		if m == nil {
			return nil
		}
	}
	return m
}

func str(v string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v}
}

// setScalar sets the string value of key in mapping m, adding the key (in
// sorted position when m's keys are sorted, as kubeadm writes them) when
// absent. It reports whether anything changed.
func setScalar(m *yaml.Node, key, value string) (bool, error) {
	if v := get(m, key); v != nil {
		if v.Kind != yaml.ScalarNode {
			return false, fmt.Errorf("%s is not a scalar", key)
		}
		if v.Value == value && v.Tag != "!!null" {
			return false, nil
		}
		v.Value, v.Tag = value, "!!str"
		if v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			v.Style = 0
		}
		return true, nil
	}
	insertKey(m, key, str(value))
	return true, nil
}

// ensureMap returns the mapping under key in m, creating it if absent.
func ensureMap(m *yaml.Node, key string) (*yaml.Node, error) {
	if v := get(m, key); v != nil {
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			*v = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			return v, nil
		}
		if v.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s is not a mapping", key)
		}
		if v.Style&yaml.FlowStyle != 0 && len(v.Content) == 0 {
			v.Style = 0 // "{}" becomes a block mapping once it has keys
		}
		return v, nil
	}
	v := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	insertKey(m, key, v)
	return v, nil
}

func insertKey(m *yaml.Node, key string, v *yaml.Node) {
	keys := make([]string, 0, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		keys = append(keys, m.Content[i].Value)
	}
	at := len(keys)
	if sort.StringsAreSorted(keys) {
		at = sort.SearchStrings(keys, key)
	}
	kv := []*yaml.Node{str(key), v}
	kv[0].Tag = "" // plain key
	kv[0].Kind = yaml.ScalarNode
	m.Content = append(m.Content[:2*at], append(kv, m.Content[2*at:]...)...)
	if m.Style&yaml.FlowStyle != 0 && len(m.Content) == 2 {
		m.Style = 0
	}
}

// finish re-encodes doc, or returns the original bytes when nothing changed.
func finish(orig []byte, doc *yaml.Node, st style, changed bool) ([]byte, error) {
	if !changed {
		return orig, nil
	}
	return encode(doc, st)
}
