package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// needles are strings whose presence in output would leak key material.
func needles(t *testing.T, key crypto.Signer, keyPEM []byte) []string {
	t.Helper()
	out := []string{"PRIVATE KEY"}
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		t.Fatal("no key PEM")
	}
	for _, line := range strings.Split(string(keyPEM), "\n") {
		if len(line) >= 32 && !strings.HasPrefix(line, "-----") {
			out = append(out, line[8:32])
		}
	}
	h := hex.EncodeToString(b.Bytes)
	for i := 0; i+32 <= len(h); i += 32 {
		out = append(out, h[i:i+32], strings.ToUpper(h[i:i+32]))
	}
	out = append(out, strings.Trim(fmt.Sprint(b.Bytes[:16]), "[]"))
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		d, _ := k.Bytes()
		out = append(out, hex.EncodeToString(d)[:24])
	case *rsa.PrivateKey:
		out = append(out, k.D.String()[:24], k.D.Text(16)[:24], k.Primes[0].String()[:24])
	}
	return out
}

func TestFormattingNeverShowsKeys(t *testing.T) {
	ca, err := NewCA(CAOptions{CommonName: "kubernetes-2026", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	rsaCA, err := NewCA(CAOptions{CommonName: "front-proxy-ca-2026", Algorithm: RSA2048, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	is, err := NewKubeletClientCert("worker-1", ca, ReissueOptions{Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	rsaIs, err := NewKubeletClientCert("worker-2", ca, ReissueOptions{Now: testNow, KeepKey: true, OldKey: rsaCA.Key})
	if err != nil {
		t.Fatal(err)
	}
	type holder struct {
		CA     *CA
		Issued *Issued
		Value  CA
	}
	subjects := []struct {
		name   string
		v      any
		key    crypto.Signer
		keyPEM []byte
		want   string // must appear in %v
	}{
		{"*CA", ca, ca.Key, ca.KeyPEM, "CA CN=kubernetes-2026 (sha256 " + Fingerprint(ca.Cert) + ")"},
		{"CA", *ca, ca.Key, ca.KeyPEM, "CA CN=kubernetes-2026 (sha256 " + Fingerprint(ca.Cert) + ")"},
		{"RSA *CA", rsaCA, rsaCA.Key, rsaCA.KeyPEM, "CA CN=front-proxy-ca-2026"},
		{"*Issued", is, is.Key, is.KeyPEM, "certificate CN=system:node:worker-1 (sha256 " + Fingerprint(is.Cert) + ")"},
		{"Issued", *is, is.Key, is.KeyPEM, "certificate CN=system:node:worker-1"},
		{"RSA *Issued", rsaIs, rsaIs.Key, rsaIs.KeyPEM, "certificate CN=system:node:worker-2"},
		{"struct holding both", holder{CA: rsaCA, Issued: rsaIs, Value: *rsaCA}, rsaCA.Key, rsaCA.KeyPEM, "CA CN=front-proxy-ca-2026"},
		{"slice", []*CA{ca, rsaCA}, rsaCA.Key, rsaCA.KeyPEM, "CA CN=kubernetes-2026"},
		{"map", map[string]Issued{"w": *rsaIs}, rsaIs.Key, rsaIs.KeyPEM, "certificate CN=system:node:worker-2"},
		{"ReissueOptions", ReissueOptions{KeepKey: true, OldKey: rsaCA.Key}, rsaCA.Key, rsaCA.KeyPEM, "OldKey: <redacted>"},
		{"nil *CA", (*CA)(nil), ca.Key, ca.KeyPEM, "<nil>"},
	}
	verbs := []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"}
	for _, s := range subjects {
		t.Run(s.name, func(t *testing.T) {
			bad := needles(t, s.key, s.keyPEM)
			outputs := map[string]string{
				"Sprint":   fmt.Sprint(s.v),
				"Sprintln": fmt.Sprintln(s.v),
			}
			for _, verb := range verbs {
				outputs[verb] = fmt.Sprintf(verb, s.v)
			}
			for _, h := range []struct {
				name string
				new  func(*bytes.Buffer) slog.Handler
			}{
				{"slog JSON", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
				{"slog text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
			} {
				var buf bytes.Buffer
				slog.New(h.new(&buf)).Info("rotating", "value", s.v)
				outputs[h.name] = buf.String()
			}
			for how, out := range outputs {
				for _, n := range bad {
					if strings.Contains(out, n) {
						t.Fatalf("%s output contains key material %q:\n%s", how, n, out)
					}
				}
			}
			if !strings.Contains(outputs["%v"], s.want) {
				t.Fatalf("%%v = %s, want it to contain %s", outputs["%v"], s.want)
			}
		})
	}
	t.Run("exact forms", func(t *testing.T) {
		fp := Fingerprint(ca.Cert)
		tests := []struct{ format, want string }{
			{"%v", "CA CN=kubernetes-2026 (sha256 " + fp + ")"},
			{"%s", "CA CN=kubernetes-2026 (sha256 " + fp + ")"},
			{"%q", `"CA CN=kubernetes-2026 (sha256 ` + fp + `)"`},
			{"%#v", `pki.CA{Cert: "CN=kubernetes-2026 (sha256 ` + fp + `)", Key: <redacted>}`},
			{"%d", "%!d(CA CN=kubernetes-2026 (sha256 " + fp + "))"},
		}
		for _, tt := range tests {
			if got := fmt.Sprintf(tt.format, ca); got != tt.want {
				t.Errorf("%s: got %s, want %s", tt.format, got, tt.want)
			}
		}
		if got, want := fmt.Sprintf("%#v", Issued{}), `pki.Issued{Cert: "<nil certificate>", Key: <nil>}`; got != want {
			t.Errorf("%%#v of zero Issued = %s, want %s", got, want)
		}
	})
}

func TestJSONNeverCarriesKeys(t *testing.T) {
	ca, err := NewCA(CAOptions{CommonName: "kubernetes-2026", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	is, err := NewKubeletClientCert("w1", ca, ReissueOptions{Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	refused := []struct {
		name string
		v    any
	}{
		{"*CA", ca},
		{"CA", *ca},
		{"*Issued", is},
		{"nested", struct{ Issued []Issued }{[]Issued{*is}}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			out, err := json.Marshal(tt.v)
			if !errors.Is(err, ErrNotSerializable) || out != nil {
				t.Fatalf("json.Marshal = %q, %v; want ErrNotSerializable", out, err)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatal(err)
			}
		})
	}
	t.Run("options", func(t *testing.T) {
		out, err := json.Marshal(struct {
			R ReissueOptions
		}{ReissueOptions{OldKey: ca.Key}})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range needles(t, ca.Key, ca.KeyPEM) {
			if strings.Contains(string(out), n) {
				t.Fatalf("JSON contains key material: %s", out)
			}
		}
		if !strings.Contains(string(out), `OldKey: \u003credacted\u003e`) {
			t.Fatalf("JSON %s does not show the redaction", out)
		}
	})
}
