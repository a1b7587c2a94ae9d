package pki

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A new service-account key is of the old one's type and size; its public
// key, key id and a bundle with the old one are what the apiserver reads.
func TestNewSigningKeyLike(t *testing.T) {
	oldKey := rsaKey(t, 2048)
	oldPEM, err := EncodeKeyPEM(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	nk, err := NewSigningKeyLike(oldPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKeyPEM(nk.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if rk, ok := k.(*rsa.PrivateKey); !ok || rk.N.BitLen() != 2048 {
		t.Fatalf("new key %s, want RSA-2048 like the old one", KeyShape(k.Public()))
	}
	if !strings.HasPrefix(string(nk.PubPEM), "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("public key PEM %q, want a PUBLIC KEY block like kubeadm's sa.pub", nk.PubPEM[:30])
	}
	oldPub, err := PublicKeyPEM(oldKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	oldID, _ := KeyID(oldKey.Public())
	b, err := PublicKeyBundle(oldPub, nk.PubPEM)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := PublicKeyIDs(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0] != oldID || ids[1] != nk.KeyID {
		t.Fatalf("bundle ids %v, want [%s %s]", ids, oldID, nk.KeyID)
	}
	// Set semantics: adding a key already there changes nothing.
	b2, err := PublicKeyBundle(b, nk.PubPEM)
	if err != nil {
		t.Fatal(err)
	}
	if ids2, _ := PublicKeyIDs(b2); len(ids2) != 2 {
		t.Fatalf("bundle after re-adding the new key has %d keys, want 2", len(ids2))
	}
	// A private key and a certificate count for their public key.
	if ids, err := PublicKeyIDs(oldPEM); err != nil || len(ids) != 1 || ids[0] != oldID {
		t.Fatalf("ids of a private key PEM: %v %v", ids, err)
	}
	if _, err := PublicKeyIDs([]byte("not pem")); err == nil {
		t.Fatal("ids of no PEM: no error")
	}
}

// The key id is the apiserver's: base64url(SHA-256(PKIX DER)), checked
// against the DER the real openssl derives from the private key.
func TestKeyIDOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	k := rsaKey(t, 2048)
	p, _ := EncodeKeyPEM(k)
	f := filepath.Join(t.TempDir(), "sa.key")
	if err := os.WriteFile(f, p, 0o600); err != nil {
		t.Fatal(err)
	}
	der, err := exec.Command(openssl, "pkey", "-in", f, "-pubout", "-outform", "DER").Output()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	want := base64.RawURLEncoding.EncodeToString(sum[:])
	if got, _ := KeyID(k.Public()); got != want {
		t.Fatalf("KeyID %s, openssl's DER gives %s", got, want)
	}
}

// TokenKeyID reads the header only.
func TestTokenKeyID(t *testing.T) {
	head, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "abc"})
	tok := base64.RawURLEncoding.EncodeToString(head) + ".eyJzdWIiOiJ4In0.c2ln"
	if kid, err := TokenKeyID(tok + "\n"); err != nil || kid != "abc" {
		t.Fatalf("TokenKeyID = %q, %v", kid, err)
	}
	for _, bad := range []string{"", "nodot", "!!!.x.y", base64.RawURLEncoding.EncodeToString([]byte("[1]")) + ".x.y"} {
		if _, err := TokenKeyID(bad); err == nil {
			t.Errorf("TokenKeyID(%q): no error", bad)
		}
	}
}

// A supplied signing key must be one the apiserver signs with.
func TestLoadSigningKey(t *testing.T) {
	p, _ := EncodeKeyPEM(rsaKey(t, 2048))
	k, err := LoadSigningKey(p)
	if err != nil || k.KeyID == "" || !strings.HasPrefix(string(k.PubPEM), "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("LoadSigningKey(RSA) = %+v, %v", k.KeyID, err)
	}
	ed, err := ed25519PEM()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSigningKey(ed); err == nil || !strings.Contains(err.Error(), "Ed25519") {
		t.Fatalf("LoadSigningKey(Ed25519) err = %v, want a refusal naming the key type", err)
	}
	if _, err := LoadSigningKey([]byte("junk")); err == nil {
		t.Fatal("LoadSigningKey(junk): no error")
	}
}

func ed25519PEM() ([]byte, error) {
	_, k, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	return EncodeKeyPEM(k)
}
