package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// The service-account signing key: kubeadm's sa.key (a private key) and
// sa.pub (its public key, PEM "PUBLIC KEY"). The apiserver verifies tokens
// with every public key of its --service-account-key-file files and names
// each by its key id (the "kid" of a token's header and of the keys in
// /openid/v1/jwks): base64url of the SHA-256 of the key's PKIX DER.

// SigningKey is a service-account signing key pair, PEM.
type SigningKey struct {
	KeyPEM, PubPEM []byte
	KeyID          string
}

// NewSigningKeyLike makes a signing key of the same type and size as the
// private key oldKeyPEM (kubeadm's sa.key is RSA-2048), from r
// (crypto/rand when nil).
func NewSigningKeyLike(oldKeyPEM []byte, r io.Reader) (SigningKey, error) {
	old, err := ParseKeyPEM(oldKeyPEM)
	if err != nil {
		return SigningKey{}, err
	}
	if r == nil {
		r = rand.Reader
	}
	k, err := generateLike(old.Public(), r)
	if err != nil {
		return SigningKey{}, err
	}
	keyPEM, err := EncodeKeyPEM(k)
	if err != nil {
		return SigningKey{}, err
	}
	return signingKey(k, keyPEM)
}

// LoadSigningKey reads a service-account signing key supplied as PEM: one
// RSA or ECDSA private key (what the apiserver signs tokens with).
func LoadSigningKey(keyPEM []byte) (SigningKey, error) {
	k, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return SigningKey{}, err
	}
	switch k.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey:
	default:
		return SigningKey{}, fmt.Errorf("a %s key cannot sign service-account tokens (RSA or ECDSA)", KeyShape(k.Public()))
	}
	return signingKey(k, keyPEM)
}

func signingKey(k crypto.Signer, keyPEM []byte) (SigningKey, error) {
	pub, err := PublicKeyPEM(k.Public())
	if err != nil {
		return SigningKey{}, err
	}
	id, err := KeyID(k.Public())
	if err != nil {
		return SigningKey{}, err
	}
	return SigningKey{KeyPEM: keyPEM, PubPEM: pub, KeyID: id}, nil
}

// PublicKeyPEM encodes pub as kubeadm writes sa.pub.
func PublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKeysPEM reads every public key of a --service-account-key-file:
// "PUBLIC KEY" and "RSA PUBLIC KEY" blocks, a certificate's key, or the
// public half of a private key (the apiserver accepts all of them).
func ParsePublicKeysPEM(data []byte) ([]crypto.PublicKey, error) {
	var out []crypto.PublicKey
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("public key: %w", err)
			}
			out = append(out, k)
		case "RSA PUBLIC KEY":
			k, err := x509.ParsePKCS1PublicKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("RSA public key: %w", err)
			}
			out = append(out, k)
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certificate: %w", err)
			}
			out = append(out, c.PublicKey)
		default:
			k, err := parseKeyBlock(b)
			if err != nil {
				return nil, err
			}
			out = append(out, k.Public())
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no public key in PEM data")
	}
	return out, nil
}

// PublicKeyIDs are the key ids of every public key in data.
func PublicKeyIDs(data []byte) ([]string, error) {
	keys, err := ParsePublicKeysPEM(data)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, k := range keys {
		id, err := KeyID(k)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// KeyID is the apiserver's id of a service-account public key.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// PublicKeyBundle is old's keys, then those of add not already in it: one
// --service-account-key-file the apiserver verifies tokens of both with.
func PublicKeyBundle(old, add []byte) ([]byte, error) {
	have, err := PublicKeyIDs(old)
	if err != nil {
		return nil, fmt.Errorf("old public keys: %w", err)
	}
	keys, err := ParsePublicKeysPEM(add)
	if err != nil {
		return nil, fmt.Errorf("new public key: %w", err)
	}
	out := bytes.TrimRight(old, "\n")
	out = append(append([]byte(nil), out...), '\n')
	for _, k := range keys {
		id, err := KeyID(k)
		if err != nil {
			return nil, err
		}
		if slices.Contains(have, id) {
			continue
		}
		p, err := PublicKeyPEM(k)
		if err != nil {
			return nil, err
		}
		out = append(out, p...)
		have = append(have, id)
	}
	return out, nil
}

// TokenKeyID is the key id in a JWT's header ("" when it has none). Only
// the header is decoded: the token's claims and signature are never read
// or returned.
func TokenKeyID(token string) (string, error) {
	token = strings.TrimSpace(token)
	head, _, ok := strings.Cut(token, ".")
	if !ok {
		return "", errors.New("not a JWT")
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(head, "="))
	if err != nil {
		return "", fmt.Errorf("JWT header: %w", err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return "", fmt.Errorf("JWT header: %w", err)
	}
	return h.Kid, nil
}

// DroppedPublicKeys are the key ids of the "PUBLIC KEY" blocks of before
// (a --service-account-key-file) that after does not hold: replacing
// before by after narrows which tokens the file's reader accepts. Files
// without such blocks (certificates, private keys) drop none.
func DroppedPublicKeys(before, after []byte) []string {
	if !bytes.Contains(before, []byte("-----BEGIN PUBLIC KEY-----")) {
		return nil
	}
	ids, _ := PublicKeyIDs(before)
	kept, _ := PublicKeyIDs(after)
	var out []string
	for _, id := range ids {
		if !slices.Contains(kept, id) {
			out = append(out, id)
		}
	}
	return out
}
