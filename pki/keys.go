package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
)

// KeyAlgorithm names a key type and size, spelled as kubeadm's
// encryptionAlgorithm field spells it.
type KeyAlgorithm string

// Supported key algorithms.
const (
	ECDSAP256 KeyAlgorithm = "ECDSA-P256"
	ECDSAP384 KeyAlgorithm = "ECDSA-P384"
	RSA2048   KeyAlgorithm = "RSA-2048"
	RSA3072   KeyAlgorithm = "RSA-3072"
	RSA4096   KeyAlgorithm = "RSA-4096"

	// DefaultKeyAlgorithm is used when an algorithm is not set.
	DefaultKeyAlgorithm = ECDSAP256
)

// KeyAlgorithms lists the supported algorithms, default first.
func KeyAlgorithms() []KeyAlgorithm {
	return []KeyAlgorithm{ECDSAP256, ECDSAP384, RSA2048, RSA3072, RSA4096}
}

// ParseKeyAlgorithm parses an algorithm name, ignoring case. The empty string
// gives DefaultKeyAlgorithm.
func ParseKeyAlgorithm(s string) (KeyAlgorithm, error) {
	if strings.TrimSpace(s) == "" {
		return DefaultKeyAlgorithm, nil
	}
	for _, a := range KeyAlgorithms() {
		if strings.EqualFold(strings.TrimSpace(s), string(a)) {
			return a, nil
		}
	}
	names := make([]string, 0, len(KeyAlgorithms()))
	for _, a := range KeyAlgorithms() {
		names = append(names, string(a))
	}
	return "", fmt.Errorf("unknown key algorithm %q (want one of %s)", s, strings.Join(names, ", "))
}

// GenerateKey creates a private key of algorithm a (DefaultKeyAlgorithm when
// empty) from r (crypto/rand when nil). Since Go 1.26 the standard library
// draws key material from its own secure source unless
// GODEBUG=cryptocustomrand=1 is set.
func GenerateKey(a KeyAlgorithm, r io.Reader) (crypto.Signer, error) {
	if r == nil {
		r = rand.Reader
	}
	if a == "" {
		a = DefaultKeyAlgorithm
	}
	switch a {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), r)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), r)
	case RSA2048:
		return rsa.GenerateKey(r, 2048)
	case RSA3072:
		return rsa.GenerateKey(r, 3072)
	case RSA4096:
		return rsa.GenerateKey(r, 4096)
	}
	_, err := ParseKeyAlgorithm(string(a))
	return nil, err
}

// generateLike creates a key of the same type and size as pub.
func generateLike(pub crypto.PublicKey, r io.Reader) (crypto.Signer, error) {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if k := preparedRSA(p.N.BitLen(), r); k != nil {
			return k, nil
		}
		return rsa.GenerateKey(r, p.N.BitLen())
	case *ecdsa.PublicKey:
		return ecdsa.GenerateKey(p.Curve, r)
	case ed25519.PublicKey:
		_, k, err := ed25519.GenerateKey(r)
		return k, err
	}
	return nil, fmt.Errorf("unsupported public key type %T", pub)
}

// keyShape describes a public key's algorithm and size, e.g. "RSA-2048",
// "ECDSA-P-256", "Ed25519".
// KeyShape names a public key's algorithm and size ("RSA-2048",
// "ECDSA-P-256", "Ed25519").
func KeyShape(pub crypto.PublicKey) string {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", p.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA-" + p.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// ParseKeyPEM parses one private key: PKCS#1 ("RSA PRIVATE KEY"), SEC 1
// ("EC PRIVATE KEY", an "EC PARAMETERS" block before it is ignored) or
// PKCS#8 ("PRIVATE KEY"; RSA, ECDSA, Ed25519). Any other block, text outside
// blocks, or more than one key is an error. Errors never include key bytes.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	blocks, err := decodePEM(data)
	if err != nil {
		return nil, err
	}
	var key crypto.Signer
	for i, b := range blocks {
		switch b.Type {
		case blockECParameters:
			continue
		case blockRSAPrivateKey, blockECPrivateKey, blockPrivateKey:
			if key != nil {
				return nil, errors.New("more than one private key in PEM data")
			}
			if key, err = parseKeyBlock(b); err != nil {
				return nil, fmt.Errorf("PEM block %d: %w", i+1, err)
			}
		case blockEncPrivateKey:
			return nil, errors.New("encrypted private keys are not supported")
		default:
			return nil, fmt.Errorf("PEM block %d is %q, want a private key", i+1, b.Type)
		}
	}
	if key == nil {
		return nil, errors.New("no private key found")
	}
	return key, nil
}

func parseKeyBlock(b *pem.Block) (crypto.Signer, error) {
	if _, ok := b.Headers["Proc-Type"]; ok {
		return nil, errors.New("encrypted private keys are not supported")
	}
	switch b.Type {
	case blockRSAPrivateKey:
		k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
		if err != nil {
			return nil, errors.New("malformed PKCS#1 RSA private key")
		}
		return k, nil
	case blockECPrivateKey:
		k, err := x509.ParseECPrivateKey(b.Bytes)
		if err != nil {
			return nil, errors.New("malformed SEC 1 EC private key")
		}
		return k, nil
	case blockPrivateKey:
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, errors.New("malformed PKCS#8 private key")
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("PKCS#8 key of type %T cannot sign", k)
		}
		return s, nil
	}
	return nil, fmt.Errorf("PEM block %q is not a private key", b.Type)
}

// EncodeKeyPEM encodes a private key as kubeadm writes it: "RSA PRIVATE KEY"
// (PKCS#1) for RSA, "EC PRIVATE KEY" (SEC 1) for ECDSA, and "PRIVATE KEY"
// (PKCS#8) for Ed25519.
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	var b *pem.Block
	switch k := key.(type) {
	case *rsa.PrivateKey:
		b = &pem.Block{Type: blockRSAPrivateKey, Bytes: x509.MarshalPKCS1PrivateKey(k)}
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("encode ECDSA private key: %w", err)
		}
		b = &pem.Block{Type: blockECPrivateKey, Bytes: der}
	case ed25519.PrivateKey:
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("encode Ed25519 private key: %w", err)
		}
		b = &pem.Block{Type: blockPrivateKey, Bytes: der}
	case nil:
		return nil, errors.New("encode private key: key is nil")
	default:
		return nil, fmt.Errorf("encode private key: unsupported key type %T", key)
	}
	return pem.EncodeToMemory(b), nil
}

// KeyMatches reports whether key is the private half of cert's public key.
func KeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	if cert == nil || key == nil {
		return false
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return false
	}
	return pub.Equal(key.Public())
}

// isRSA reports whether key is an RSA key (kubelet adds the
// keyEncipherment usage only for RSA keys).
func isRSA(key crypto.Signer) bool {
	_, ok := key.Public().(*rsa.PublicKey)
	return ok
}
