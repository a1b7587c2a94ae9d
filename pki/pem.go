package pki

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// PEM block types.
const (
	blockCertificate   = "CERTIFICATE"
	blockRSAPrivateKey = "RSA PRIVATE KEY"
	blockECPrivateKey  = "EC PRIVATE KEY"
	blockPrivateKey    = "PRIVATE KEY"
	blockEncPrivateKey = "ENCRYPTED PRIVATE KEY"
	blockECParameters  = "EC PARAMETERS"
	blockPublicKey     = "PUBLIC KEY"
	blockRSAPublicKey  = "RSA PUBLIC KEY"
)

// describeFingerprint is how many hex digits of the fingerprint Describe shows.
const describeFingerprint = 16

// ErrNoCertificates is returned when PEM input holds no certificate.
var ErrNoCertificates = errors.New("no certificates found")

var pemBegin = []byte("-----BEGIN ")

// decodePEM splits data into PEM blocks strictly: only whitespace may appear
// before, between and after blocks, and every block must decode. Unlike
// pem.Decode it never skips text or a broken block. Empty input gives no
// blocks and no error. Errors never quote the input.
func decodePEM(data []byte) ([]*pem.Block, error) {
	var blocks []*pem.Block
	rest := data
	for {
		rest = bytes.TrimLeft(rest, " \t\r\n")
		if len(rest) == 0 {
			return blocks, nil
		}
		offset := len(data) - len(rest)
		if !bytes.HasPrefix(rest, pemBegin) {
			return nil, fmt.Errorf("unexpected non-PEM data at byte %d (after %d PEM blocks)", offset, len(blocks))
		}
		block, after := pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("malformed PEM block at byte %d", offset)
		}
		// pem.Decode skips a block it cannot decode and returns the next
		// one; the consumed text then holds more than one BEGIN line.
		consumed := rest[:len(rest)-len(after)]
		if bytes.Count(consumed, pemBegin) != 1 {
			return nil, fmt.Errorf("malformed PEM block at byte %d", offset)
		}
		blocks = append(blocks, block)
		rest = after
	}
}

// ParseCertsPEM parses every certificate in data. It fails on empty input,
// on any text outside PEM blocks, on a block that does not decode and on any
// block that is not a CERTIFICATE.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, ErrNoCertificates
	}
	return certs, nil
}

// parseCertsPEM is ParseCertsPEM that accepts empty input.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	blocks, err := decodePEM(data)
	if err != nil {
		return nil, err
	}
	certs := make([]*x509.Certificate, 0, len(blocks))
	for i, b := range blocks {
		if b.Type != blockCertificate {
			return nil, fmt.Errorf("PEM block %d is %q, want %q", i+1, b.Type, blockCertificate)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: parse certificate: %w", i+1, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// EncodeCertsPEM encodes certificates as consecutive CERTIFICATE blocks.
// Nil entries are skipped.
func EncodeCertsPEM(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		if c == nil {
			continue
		}
		_ = pem.Encode(&buf, &pem.Block{Type: blockCertificate, Bytes: c.Raw}) // writes to a bytes.Buffer cannot fail
	}
	return buf.Bytes()
}

// Fingerprint is the lowercase hex SHA-256 of the certificate's DER, the
// value `openssl x509 -fingerprint -sha256` prints (without colons).
func Fingerprint(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Describe identifies a certificate for logs and errors:
// "CN=kubernetes (sha256 0123456789abcdef…)".
func Describe(c *x509.Certificate) string {
	if c == nil {
		return "<nil certificate>"
	}
	return subjectName(c) + " (sha256 " + Fingerprint(c)[:describeFingerprint] + "…)"
}

// identify is Describe with the full fingerprint.
func identify(c *x509.Certificate) string {
	if c == nil {
		return "<nil certificate>"
	}
	return subjectName(c) + " (sha256 " + Fingerprint(c) + ")"
}

func subjectName(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return "CN=" + c.Subject.CommonName
	}
	if s := c.Subject.String(); s != "" {
		return s
	}
	return "<empty subject>"
}

// ScanPEM returns the certificates and private keys of every PEM block in
// data that parses, in order. Unlike ParseCertsPEM and ParseKeyPEM, which
// validate a file that must hold exactly certificates or one key, it
// answers "what does this file hold?" for any file: text outside blocks,
// blocks of other types and blocks that do not parse are skipped, so a
// kubeconfig, a manifest or a cert+key PEM gives what it holds in PEM and
// nothing else.
func ScanPEM(data []byte) (certs []*x509.Certificate, keys []crypto.Signer) {
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return certs, keys
		}
		switch b.Type {
		case blockCertificate:
			if c, err := x509.ParseCertificate(b.Bytes); err == nil {
				certs = append(certs, c)
			}
		case blockRSAPrivateKey, blockECPrivateKey, blockPrivateKey:
			if k, err := parseKeyBlock(b); err == nil {
				keys = append(keys, k)
			}
		}
	}
}
