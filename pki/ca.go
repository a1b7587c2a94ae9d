package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"strconv"
	"time"
)

const (
	// DefaultCAValidity is the lifetime of a new CA (kubeadm's ten years).
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultLeafValidity is the lifetime of a re-issued leaf (kubeadm's one year).
	DefaultLeafValidity = 365 * 24 * time.Hour
	// Backdate is how far NotBefore lies before "now", for clock skew.
	Backdate = 5 * time.Minute
)

// Errors returned by LoadCA (and by Reissue for an unusable CA), for errors.Is.
var (
	ErrKeyMismatch = errors.New("private key does not match the certificate")
	ErrNotCA       = errors.New("certificate is not a CA (basic constraints)")
	ErrCannotSign  = errors.New("certificate may not sign certificates (no certSign key usage)")
	ErrNotYetValid = errors.New("certificate is not yet valid")
	ErrExpired     = errors.New("certificate has expired")
	ErrExpiresSoon = errors.New("certificate expires within the required window")
)

// ErrNotSerializable is returned by MarshalJSON of CA and Issued: JSON
// (including slog's JSON handler for values nested in other structs) would
// carry the private key, and a redacted form would silently lose it when
// persisted. Persist CertPEM and KeyPEM explicitly; log with String or Describe.
var ErrNotSerializable = errors.New("refusing to marshal a private key to JSON; persist CertPEM and KeyPEM explicitly")

// Compile-time checks: CA and Issued control every way they are printed.
var (
	_ fmt.Formatter  = CA{}
	_ fmt.GoStringer = CA{}
	_ slog.LogValuer = CA{}
	_ json.Marshaler = CA{}
	_ fmt.Formatter  = Issued{}
	_ fmt.GoStringer = Issued{}
	_ slog.LogValuer = Issued{}
	_ json.Marshaler = Issued{}
	_ fmt.Formatter  = ReissueOptions{}
	_ json.Marshaler = ReissueOptions{}
)

// CA is a certificate authority: certificate and signing key, parsed and PEM.
// It prints as subject and fingerprint only, under every fmt verb.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// CAOptions configures NewCA. Zero values take the documented defaults.
type CAOptions struct {
	CommonName   string       // required
	Organization []string     // optional
	Algorithm    KeyAlgorithm // default DefaultKeyAlgorithm (ECDSA-P256)
	Validity     time.Duration
	Now          time.Time // zero: time.Now()
	Rand         io.Reader // nil: crypto/rand
}

// NewCA creates a self-signed CA: basic constraints CA with path length 0,
// key usages certSign, cRLSign and digitalSignature, a 128-bit random serial,
// a SubjectKeyId, NotBefore Backdate before now and NotAfter now+Validity.
func NewCA(opts CAOptions) (*CA, error) {
	if opts.CommonName == "" {
		return nil, errors.New("new CA: common name is required")
	}
	if opts.Validity < 0 {
		return nil, fmt.Errorf("new CA %q: negative validity %s", opts.CommonName, opts.Validity)
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultCAValidity
	}
	now, r := orNow(opts.Now), orRand(opts.Rand)
	key, err := GenerateKey(opts.Algorithm, r)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", opts.CommonName, err)
	}
	serial, err := randomSerial(r)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", opts.CommonName, err)
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", opts.CommonName, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: opts.CommonName, Organization: opts.Organization},
		NotBefore:             now.Add(-Backdate).UTC(),
		NotAfter:              now.Add(opts.Validity).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(r, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: sign: %w", opts.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: parse: %w", opts.CommonName, err)
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", opts.CommonName, err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: EncodeCertsPEM(cert), KeyPEM: keyPEM}, nil
}

// LoadCA parses and checks a CA certificate and key. certPEM may be a bundle
// (ca.crt mid-rotation): the certificate whose public key matches the key is
// used. CertPEM and KeyPEM of the result are re-encoded canonically: that one
// certificate, and the key as EncodeKeyPEM writes it. The CA must be
// valid at now (zero: time.Now()) and for at least window after it.
//
// Errors wrap ErrKeyMismatch, ErrNotCA, ErrCannotSign, ErrNotYetValid,
// ErrExpired or ErrExpiresSoon where they apply.
func LoadCA(certPEM, keyPEM []byte, now time.Time, window time.Duration) (*CA, error) {
	certs, err := ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: parse certificate: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA %s: parse key: %w", Describe(certs[0]), err)
	}
	var cert *x509.Certificate
	for _, c := range certs {
		if KeyMatches(c, key) {
			cert = c
			break
		}
	}
	if cert == nil {
		if len(certs) == 1 {
			return nil, fmt.Errorf("load CA %s: %w", Describe(certs[0]), ErrKeyMismatch)
		}
		return nil, fmt.Errorf("load CA: %w: none of the %d certificates (first %s) matches the key", ErrKeyMismatch, len(certs), Describe(certs[0]))
	}
	if err := checkCA(cert); err != nil {
		return nil, fmt.Errorf("load CA %s: %w", Describe(cert), err)
	}
	now = orNow(now)
	switch {
	case now.Before(cert.NotBefore):
		return nil, fmt.Errorf("load CA %s: %w (not before %s)", Describe(cert), ErrNotYetValid, cert.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(cert.NotAfter):
		return nil, fmt.Errorf("load CA %s: %w (not after %s)", Describe(cert), ErrExpired, cert.NotAfter.UTC().Format(time.RFC3339))
	case window > 0 && !now.Add(window).Before(cert.NotAfter):
		return nil, fmt.Errorf("load CA %s: %w (not after %s, window %s)", Describe(cert), ErrExpiresSoon, cert.NotAfter.UTC().Format(time.RFC3339), window)
	}
	normKey, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", Describe(cert), err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: EncodeCertsPEM(cert), KeyPEM: normKey}, nil
}

// checkCA applies the constraints crypto/x509 applies to a parent when it
// checks a signature: a CA by basic constraints, and certSign allowed.
func checkCA(c *x509.Certificate) error {
	if !c.BasicConstraintsValid || !c.IsCA {
		return ErrNotCA
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return ErrCannotSign
	}
	return nil
}

// usable checks that ca has a matching certificate and key and may sign.
func (ca *CA) usable() error {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return errors.New("CA certificate or key is missing")
	}
	if !KeyMatches(ca.Cert, ca.Key) {
		return fmt.Errorf("CA %s: %w", Describe(ca.Cert), ErrKeyMismatch)
	}
	if err := checkCA(ca.Cert); err != nil {
		return fmt.Errorf("CA %s: %w", Describe(ca.Cert), err)
	}
	return nil
}

// String returns "CA CN=<cn> (sha256 <fingerprint>)"; never key material.
func (ca CA) String() string { return "CA " + identify(ca.Cert) }

// GoString keeps %#v free of key material.
func (ca CA) GoString() string {
	return "pki.CA{Cert: " + strconv.Quote(identify(ca.Cert)) + ", Key: " + RedactedIf(ca.Key != nil || len(ca.KeyPEM) > 0) + "}"
}

// Format makes every fmt verb print String (GoString for %#v).
func (ca CA) Format(f fmt.State, verb rune) { FormatRedacted(f, verb, ca.String(), ca.GoString()) }

// LogValue makes slog print String.
func (ca CA) LogValue() slog.Value { return slog.StringValue(ca.String()) }

// MarshalJSON refuses (ErrNotSerializable).
func (ca CA) MarshalJSON() ([]byte, error) {
	return nil, fmt.Errorf("%s: %w", ca.String(), ErrNotSerializable)
}

// RedactedIf is how a type that holds a key shows it: "<redacted>" when
// set, "<nil>" when not.
func RedactedIf(set bool) string {
	if set {
		return "<redacted>"
	}
	return "<nil>"
}

// FormatRedacted implements fmt.Formatter for a type that holds key
// material: every verb prints s (%#v prints gos, %q s quoted), so nothing
// but what the type chose to show is ever printed.
func FormatRedacted(f fmt.State, verb rune, s, gos string) {
	switch verb {
	case 'v':
		if f.Flag('#') {
			_, _ = io.WriteString(f, gos)
			return
		}
		_, _ = io.WriteString(f, s)
	case 's':
		_, _ = io.WriteString(f, s)
	case 'q':
		_, _ = io.WriteString(f, strconv.Quote(s))
	default:
		_, _ = fmt.Fprintf(f, "%%!%c(%s)", verb, s)
	}
}

// randomSerial returns a uniformly random positive serial below 2^128.
func randomSerial(r io.Reader) (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for range 8 {
		n, err := rand.Int(r, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
	return nil, errors.New("generate serial number: random source returns zeros")
}

// subjectKeyID is the SHA-256 of the subjectPublicKey bit string truncated to
// 160 bits (RFC 7093, section 2, method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

func orNow(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

func orRand(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}
