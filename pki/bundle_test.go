package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
)

func TestBundles(t *testing.T) {
	c0, c1, c2 := newTestCA(t, "kubernetes").Cert, newTestCA(t, "kubernetes-2026").Cert, newTestCA(t, "other").Cert
	p := func(cs ...*x509.Certificate) []byte { return certPEM(cs...) }
	garbage := cat(p(c0), []byte("junk\n"))

	addTests := []struct {
		name    string
		bundle  []byte
		add     []*x509.Certificate
		want    []byte
		wantErr string
		is      error
	}{
		{name: "widen: old then new", bundle: p(c0), add: []*x509.Certificate{c1}, want: p(c0, c1)},
		{name: "idempotent", bundle: p(c0, c1), add: []*x509.Certificate{c1}, want: p(c0, c1)},
		{name: "present and absent", bundle: p(c0), add: []*x509.Certificate{c0, c1, c2}, want: p(c0, c1, c2)},
		{name: "repeated argument", bundle: p(c0), add: []*x509.Certificate{c1, c1}, want: p(c0, c1)},
		{name: "empty bundle", bundle: nil, add: []*x509.Certificate{c1}, want: p(c1)},
		{name: "duplicates in input collapse", bundle: p(c0, c1, c0), add: nil, want: p(c0, c1)},
		{name: "formatting normalised", bundle: []byte("\n\n" + strings.ReplaceAll(string(p(c0)), "\n", "\r\n")), add: []*x509.Certificate{c0}, want: p(c0)},
		{name: "nothing at all", bundle: nil, add: nil, wantErr: "add to bundle: bundle would be empty", is: ErrEmptyBundle},
		{name: "nil cert", bundle: p(c0), add: []*x509.Certificate{c1, nil}, wantErr: "add to bundle: certificate 2 is nil"},
		{name: "garbage", bundle: garbage, add: []*x509.Certificate{c1}, wantErr: "add to bundle: unexpected non-PEM data"},
	}
	for _, tt := range addTests {
		t.Run("BundleAdd/"+tt.name, func(t *testing.T) {
			got, err := BundleAdd(tt.bundle, tt.add...)
			checkBundleResult(t, got, err, tt.want, tt.wantErr, tt.is)
		})
	}

	removeTests := []struct {
		name    string
		bundle  []byte
		remove  []*x509.Certificate
		want    []byte
		wantErr string
		is      error
	}{
		{name: "narrow: drop old", bundle: p(c0, c1), remove: []*x509.Certificate{c0}, want: p(c1)},
		{name: "idempotent", bundle: p(c1), remove: []*x509.Certificate{c0}, want: p(c1)},
		{name: "every occurrence", bundle: p(c0, c1, c0, c2), remove: []*x509.Certificate{c0}, want: p(c1, c2)},
		{name: "order kept", bundle: p(c2, c0, c1), remove: []*x509.Certificate{c0}, want: p(c2, c1)},
		{name: "last one", bundle: p(c0), remove: []*x509.Certificate{c0}, wantErr: "remove from bundle: bundle would be empty", is: ErrEmptyBundle},
		{name: "empty input", bundle: nil, remove: []*x509.Certificate{c0}, wantErr: "remove from bundle: no certificates found", is: ErrNoCertificates},
		{name: "nil cert", bundle: p(c0, c1), remove: []*x509.Certificate{nil}, wantErr: "remove from bundle: certificate 1 is nil"},
		{name: "garbage", bundle: garbage, remove: []*x509.Certificate{c0}, wantErr: "remove from bundle: unexpected non-PEM data"},
	}
	for _, tt := range removeTests {
		t.Run("BundleRemove/"+tt.name, func(t *testing.T) {
			got, err := BundleRemove(tt.bundle, tt.remove...)
			checkBundleResult(t, got, err, tt.want, tt.wantErr, tt.is)
		})
	}

	equalTests := []struct {
		name    string
		a, b    []byte
		want    bool
		wantErr string
	}{
		{name: "same", a: p(c0, c1), b: p(c0, c1), want: true},
		{name: "order ignored", a: p(c0, c1), b: p(c1, c0), want: true},
		{name: "repetition ignored", a: p(c0, c1, c0), b: p(c1, c0), want: true},
		{name: "subset", a: p(c0), b: p(c0, c1), want: false},
		{name: "different", a: p(c0, c2), b: p(c0, c1), want: false},
		{name: "both empty", a: nil, b: []byte("\n"), want: true},
		{name: "garbage first", a: garbage, b: p(c0), wantErr: "compare bundles: first: unexpected non-PEM data"},
		{name: "garbage second", a: p(c0), b: []byte("x"), wantErr: "compare bundles: second: unexpected non-PEM data"},
	}
	for _, tt := range equalTests {
		t.Run("BundleEqual/"+tt.name, func(t *testing.T) {
			got, err := BundleEqual(tt.a, tt.b)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %t, %v; want %t", got, err, tt.want)
			}
		})
	}

	fpTests := []struct {
		name    string
		in      []byte
		want    []string
		wantErr string
	}{
		{name: "in order", in: p(c1, c0), want: []string{Fingerprint(c1), Fingerprint(c0)}},
		{name: "repetitions kept", in: p(c0, c0), want: []string{Fingerprint(c0), Fingerprint(c0)}},
		{name: "empty", in: nil, want: []string{}},
		{name: "garbage", in: garbage, wantErr: "bundle fingerprints: unexpected non-PEM data"},
	}
	for _, tt := range fpTests {
		t.Run("BundleFingerprints/"+tt.name, func(t *testing.T) {
			got, err := BundleFingerprints(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || strings.Join(got, ",") != strings.Join(tt.want, ",") || len(got) != len(tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}

	checkTests := []struct {
		name    string
		in      []byte
		wantErr string
		is      error
	}{
		{name: "B", in: p(c0, c1)},
		{name: "single", in: p(c1)},
		{name: "duplicate", in: p(c0, c1, c0), wantErr: "check bundle: duplicate certificate in bundle: CN=kubernetes (sha256 " + Fingerprint(c0) + ") at positions 1 and 3", is: ErrDuplicateInBundle},
		{name: "empty", in: nil, wantErr: "check bundle: no certificates found", is: ErrNoCertificates},
		{name: "garbage", in: garbage, wantErr: "check bundle: unexpected non-PEM data at byte"},
		{name: "key block", in: cat(p(c0), keyPEM(t, ecKey(t))), wantErr: `check bundle: PEM block 2 is "PRIVATE KEY", want "CERTIFICATE"`},
	}
	for _, tt := range checkTests {
		t.Run("CheckBundle/"+tt.name, func(t *testing.T) {
			err := CheckBundle(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v\nwant  %s", err, tt.wantErr)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("errors.Is(%v, %v) = false", err, tt.is)
			}
		})
	}
}

func checkBundleResult(t *testing.T, got []byte, err error, want []byte, wantErr string, is error) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.HasPrefix(err.Error(), wantErr) {
			t.Fatalf("err = %v, want %s", err, wantErr)
		}
		if is != nil && !errors.Is(err, is) {
			t.Fatalf("errors.Is(%v, %v) = false", err, is)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		gf, _ := BundleFingerprints(got)
		wf, _ := BundleFingerprints(want)
		t.Fatalf("got %v, want %v", gf, wf)
	}
	if err := CheckBundle(got); err != nil {
		t.Fatalf("result is not a clean bundle: %v", err)
	}
}
