// Package redact shows what may be shown of secrets-bearing text: the
// change of a node file that `rotate plan --live` prints (Diff) and the
// free text of errors that `rotate status` prints (Text).
package redact

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kubeca/rotate/pki"
)

// Redaction of what `rotate plan --live` shows of a file's change. It is
// structural, not a match on how a line looks: a YAML or JSON document (a
// kubeconfig, a manifest, a kubelet configuration) is parsed and every
// secret is replaced in the tree, wherever it stands and however it is
// quoted, before the document is re-emitted in one canonical layout and
// compared line by line:
//
//   - kubeconfig users' credentials: client-key-data, token, password,
//     exec env values, auth-provider config; client-certificate-data and
//     certificate-authority-data show as the certificates' subjects and
//     fingerprints (any other key-data, token, secret or password field
//     anywhere is redacted too);
//   - any scalar that holds a PEM private key, plainly or base64-encoded,
//     and any bearer token or token/password flag value inside a scalar.
//
// Text that is not such a document is shown line by line with the same
// scalar rules, and content with PEM blocks outside a document (certificate
// and key files) is not shown at all.
//
// A redacted value reads "<redacted 1a2b3c4d>": a keyed hash under a key
// made afresh by each process, so a reader sees whether a secret changes
// between the old and new file, and nothing else about it.

var redactKey = func() []byte {
	k := make([]byte, 32)
	rand.Read(k) // never fails (crypto/rand since Go 1.24)
	return k
}()

// redacted is the stand-in for a secret value.
func redacted(v string) string {
	m := hmac.New(sha256.New, redactKey)
	m.Write([]byte(v))
	return "<redacted " + hex.EncodeToString(m.Sum(nil)[:4]) + ">"
}

var (
	bearerRE = regexp.MustCompile(`(?i)(bearer\s+)([^\s"',;]+)`)
	// A field or flag whose name ends in a secret's name, inside a line or
	// scalar, quoted or not: `token: x`, `"client-key-data": "x"`,
	// `--token=x`, `password = x`.
	secretFieldRE = regexp.MustCompile(`(?i)("?[\w.-]*(?:key-data|keydata|token|tokens|password|passwd|secret|secrets)"?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,}]+)`)
	base64RunRE   = regexp.MustCompile(`[A-Za-z0-9+/]{40,}={0,2}`)
	pemKeyRE      = regexp.MustCompile(`(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)`)
)

// secretKey says whether a mapping key names a secret value.
func secretKey(k string) bool {
	n := strings.NewReplacer("-", "", "_", "", ".", "").Replace(strings.ToLower(k))
	for _, s := range []string{"keydata", "token", "tokens", "password", "passwd", "secret", "secrets"} {
		if strings.HasSuffix(n, s) {
			return true
		}
	}
	return false
}

// certKey says whether a mapping key names base64 PEM certificates.
func certKey(k string) bool {
	n := strings.ReplaceAll(strings.ToLower(k), "-", "")
	return strings.HasSuffix(n, "certificatedata") || strings.HasSuffix(n, "authoritydata")
}

// base64Key: s (blanks ignored) is base64 of something holding a PEM
// private key.
func base64Key(s string) bool {
	dec, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s), ""))
	return err == nil && bytes.Contains(dec, []byte("PRIVATE KEY"))
}

// redactScalar applies the rules for a scalar: one that holds a private
// key is redacted whole; otherwise secrets inside it are.
func redactScalar(s string) string {
	if strings.Contains(s, "PRIVATE KEY") || base64Key(s) {
		return redacted(s)
	}
	return redactFields(s)
}

// redactFields hides bearer tokens, secret-named fields and flags, and
// base64-encoded private keys inside s.
func redactFields(s string) string {
	s = base64RunRE.ReplaceAllStringFunc(s, func(m string) string {
		if base64Key(m) {
			return redacted(m)
		}
		return m
	})
	s = bearerRE.ReplaceAllStringFunc(s, func(m string) string {
		p := bearerRE.FindStringSubmatch(m)
		return p[1] + redacted(p[2])
	})
	return secretFieldRE.ReplaceAllStringFunc(s, func(m string) string {
		p := secretFieldRE.FindStringSubmatch(m)
		return p[1] + redacted(p[2])
	})
}

// describeCertData shows base64 PEM certificates as subjects and
// fingerprints; anything else in such a field is redacted.
func describeCertData(v string) string {
	dec, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(v), ""))
	if err != nil || bytes.Contains(dec, []byte("PRIVATE KEY")) {
		return redacted(v)
	}
	certs, err := pki.ParseCertsPEM(dec)
	if err != nil {
		return redacted(v)
	}
	var ds []string
	for _, c := range certs {
		ds = append(ds, pki.Describe(c))
	}
	return strings.Join(ds, ", ")
}

// redactNode redacts n in place. secret: every scalar below is a secret
// (inside an auth-provider's config, an exec env entry's value).
func redactNode(n *yaml.Node, secret bool) {
	// One canonical layout for both sides of a diff; no comments (they
	// can hold anything).
	n.Style = 0
	n.HeadComment, n.LineComment, n.FootComment = "", "", ""
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			redactNode(c, secret)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			k.Style = 0
			k.HeadComment, k.LineComment, k.FootComment = "", "", ""
			switch {
			case secret || secretKey(k.Value):
				redactTree(v)
			case certKey(k.Value) && v.Kind == yaml.ScalarNode:
				v.Value, v.Style, v.Tag = describeCertData(v.Value), 0, "!!str"
			case k.Value == "env":
				redactEnv(v)
				redactNode(v, false)
			case k.Value == "auth-provider" || k.Value == "authProvider":
				redactNode(v, false)
				for j := 0; v.Kind == yaml.MappingNode && j+1 < len(v.Content); j += 2 {
					if v.Content[j].Value == "config" {
						redactTree(v.Content[j+1])
					}
				}
			default:
				redactNode(v, false)
			}
		}
	case yaml.ScalarNode:
		if secret {
			n.Value, n.Tag = redacted(n.Value), "!!str"
		} else if r := redactScalar(n.Value); r != n.Value {
			n.Value, n.Tag = r, "!!str"
		}
	case yaml.AliasNode:
		// Aliases point at nodes redacted where they are defined.
	}
}

// redactTree makes every scalar below n a redacted value.
func redactTree(n *yaml.Node) { redactNode(n, true) }

// redactEnv redacts the value of every {name, value} entry of an env list
// (kubeconfig exec env, container env).
func redactEnv(n *yaml.Node) {
	if n.Kind != yaml.SequenceNode {
		return
	}
	for _, e := range n.Content {
		for j := 0; e.Kind == yaml.MappingNode && j+1 < len(e.Content); j += 2 {
			if e.Content[j].Value == "value" {
				redactTree(e.Content[j+1])
			}
		}
	}
}

// safeLines is b as lines that may be shown; ok is false for content that
// is never shown (PEM outside a document).
func safeLines(b []byte) (lines []string, ok bool) {
	if docs, err := parseDocs(b); err == nil {
		var out bytes.Buffer
		enc := yaml.NewEncoder(&out)
		enc.SetIndent(2)
		for _, d := range docs {
			redactNode(d, false)
			if err := enc.Encode(d); err != nil {
				return nil, false
			}
		}
		enc.Close()
		return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"), true
	}
	if bytes.Contains(b, []byte("-----BEGIN")) {
		return nil, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(l)
		if len(t) > 40 && !strings.ContainsAny(t, " :=") {
			t = "<base64 redacted>" // an unlabelled blob
		}
		lines = append(lines, redactFields(t))
	}
	return lines, true
}

// parseDocs parses b as YAML (JSON included) documents whose roots are
// mappings or sequences; plain text, a lone scalar and PEM are not.
func parseDocs(b []byte) ([]*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []*yaml.Node
	for {
		var d yaml.Node
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(d.Content) != 1 || (d.Content[0].Kind != yaml.MappingNode && d.Content[0].Kind != yaml.SequenceNode) {
			return nil, errors.New("not a YAML mapping or sequence")
		}
		docs = append(docs, &d)
	}
	if len(docs) == 0 {
		return nil, errors.New("empty")
	}
	return docs, nil
}

// Text hides PEM private keys, bearer tokens, secret-named fields
// and base64-encoded keys in free text, such as an error `rotate status`
// shows.
func Text(s string) string {
	return redactFields(pemKeyRE.ReplaceAllString(s, "<private key redacted>"))
}

// Diff describes a change of a file by its changed lines, after the
// structural redaction of safeLines of both sides.
func Diff(a, b []byte) string {
	al, aok := safeLines(a)
	bl, bok := safeLines(b)
	if !aok || !bok {
		// Certificates and keys: never show lines, not even parts.
		return "replace PEM content (not shown)"
	}
	in := func(s []string, x string) bool {
		for _, y := range s {
			if y == x {
				return true
			}
		}
		return false
	}
	var out []string
	for _, l := range bl {
		if !in(al, l) {
			out = append(out, "+"+strings.TrimSpace(l))
		}
	}
	for _, l := range al {
		if !in(bl, l) {
			out = append(out, "-"+strings.TrimSpace(l))
		}
	}
	if len(out) > 8 {
		out = append(out[:8], fmt.Sprintf("(%d more changed lines)", len(out)-8))
	}
	if len(out) == 0 {
		return "content replaced"
	}
	return strings.Join(out, " | ")
}
