package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
)

// Trust bundles have set semantics keyed by fingerprint: adding a present
// certificate or removing an absent one changes nothing, so re-runs are safe.
// Order is preserved (old CA first, as kubeadm reads only the first
// certificate of ca.crt). Outputs are canonical PEM (EncodeCertsPEM): compare
// bundles with BundleEqual, not bytes.

// Errors returned by the bundle functions, for errors.Is.
var (
	ErrEmptyBundle       = errors.New("bundle would be empty")
	ErrDuplicateInBundle = errors.New("duplicate certificate in bundle")
)

// BundleAdd returns bundlePEM with every cert not already present appended,
// in argument order. An empty bundlePEM is an empty bundle. Duplicates already
// in bundlePEM are collapsed to their first occurrence.
func BundleAdd(bundlePEM []byte, certs ...*x509.Certificate) ([]byte, error) {
	have, err := parseCertsPEM(bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("add to bundle: %w", err)
	}
	seen := map[string]bool{}
	out := make([]*x509.Certificate, 0, len(have)+len(certs))
	for _, c := range have {
		if fp := Fingerprint(c); !seen[fp] {
			seen[fp] = true
			out = append(out, c)
		}
	}
	for i, c := range certs {
		if c == nil {
			return nil, fmt.Errorf("add to bundle: certificate %d is nil", i+1)
		}
		if fp := Fingerprint(c); !seen[fp] {
			seen[fp] = true
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("add to bundle: %w", ErrEmptyBundle)
	}
	return EncodeCertsPEM(out...), nil
}

// BundleRemove returns bundlePEM without any of certs (every occurrence).
// Certificates not present are ignored. Removing the last certificate is
// ErrEmptyBundle: an empty trust file would lock everyone out.
func BundleRemove(bundlePEM []byte, certs ...*x509.Certificate) ([]byte, error) {
	have, err := ParseCertsPEM(bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("remove from bundle: %w", err)
	}
	drop := map[string]bool{}
	for i, c := range certs {
		if c == nil {
			return nil, fmt.Errorf("remove from bundle: certificate %d is nil", i+1)
		}
		drop[Fingerprint(c)] = true
	}
	seen := map[string]bool{}
	out := make([]*x509.Certificate, 0, len(have))
	for _, c := range have {
		fp := Fingerprint(c)
		if drop[fp] || seen[fp] {
			continue
		}
		seen[fp] = true
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("remove from bundle: %w", ErrEmptyBundle)
	}
	return EncodeCertsPEM(out...), nil
}

// BundleEqual reports whether a and b hold the same set of certificates,
// ignoring order and repetition. Empty input is the empty set.
func BundleEqual(a, b []byte) (bool, error) {
	sa, err := fingerprintSet(a)
	if err != nil {
		return false, fmt.Errorf("compare bundles: first: %w", err)
	}
	sb, err := fingerprintSet(b)
	if err != nil {
		return false, fmt.Errorf("compare bundles: second: %w", err)
	}
	if len(sa) != len(sb) {
		return false, nil
	}
	for fp := range sa {
		if !sb[fp] {
			return false, nil
		}
	}
	return true, nil
}

func fingerprintSet(b []byte) (map[string]bool, error) {
	certs, err := parseCertsPEM(b)
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(certs))
	for _, c := range certs {
		set[Fingerprint(c)] = true
	}
	return set, nil
}

// BundleFingerprints returns the fingerprint of every certificate in b, in
// order, repetitions included (CheckBundle reports those). Empty input gives
// an empty list.
func BundleFingerprints(b []byte) ([]string, error) {
	certs, err := parseCertsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("bundle fingerprints: %w", err)
	}
	fps := make([]string, len(certs))
	for i, c := range certs {
		fps[i] = Fingerprint(c)
	}
	return fps, nil
}

// CheckBundle checks that b is a non-empty, well-formed bundle without
// repeated certificates; a repetition is reported (ErrDuplicateInBundle)
// with the certificate's subject and fingerprint.
func CheckBundle(b []byte) error {
	certs, err := ParseCertsPEM(b)
	if err != nil {
		return fmt.Errorf("check bundle: %w", err)
	}
	first := map[string]int{}
	for i, c := range certs {
		fp := Fingerprint(c)
		if j, ok := first[fp]; ok {
			return fmt.Errorf("check bundle: %w: %s at positions %d and %d", ErrDuplicateInBundle, identify(c), j+1, i+1)
		}
		first[fp] = i
	}
	return nil
}
