package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func TestParseKeyAlgorithm(t *testing.T) {
	tests := []struct {
		in      string
		want    KeyAlgorithm
		wantErr string
	}{
		{in: "", want: ECDSAP256},
		{in: "ECDSA-P256", want: ECDSAP256},
		{in: "ecdsa-p256", want: ECDSAP256},
		{in: "ECDSA-P384", want: ECDSAP384},
		{in: "RSA-2048", want: RSA2048},
		{in: " rsa-3072 ", want: RSA3072},
		{in: "RSA-4096", want: RSA4096},
		{in: "RSA-1024", wantErr: `unknown key algorithm "RSA-1024" (want one of ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072, RSA-4096)`},
		{in: "ed25519", wantErr: `unknown key algorithm "ed25519"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseKeyAlgorithm(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestGenerateKey(t *testing.T) {
	tests := []struct {
		alg   KeyAlgorithm
		shape string
		slow  bool
	}{
		{alg: "", shape: "ECDSA-P-256"},
		{alg: ECDSAP256, shape: "ECDSA-P-256"},
		{alg: ECDSAP384, shape: "ECDSA-P-384"},
		{alg: RSA2048, shape: "RSA-2048"},
		{alg: RSA3072, shape: "RSA-3072"},
		{alg: RSA4096, shape: "RSA-4096", slow: true},
	}
	for _, tt := range tests {
		t.Run(string(tt.alg), func(t *testing.T) {
			if tt.slow && testing.Short() {
				t.Skip("slow key generation")
			}
			k, err := GenerateKey(tt.alg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := KeyShape(k.Public()); got != tt.shape {
				t.Fatalf("shape %s, want %s", got, tt.shape)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		if _, err := GenerateKey("DSA-1024", nil); err == nil || !strings.Contains(err.Error(), `unknown key algorithm "DSA-1024"`) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestEncodeParseKeyPEM(t *testing.T) {
	rsaK, ecK, p384K, edK := rsaKey(t, 2048), ecKey(t), p384Key(t), edKey(t)
	tests := []struct {
		name      string
		key       crypto.Signer
		blockType string
	}{
		{"RSA as PKCS#1", rsaK, "RSA PRIVATE KEY"},
		{"ECDSA P-256 as SEC 1", ecK, "EC PRIVATE KEY"},
		{"ECDSA P-384 as SEC 1", p384K, "EC PRIVATE KEY"},
		{"Ed25519 as PKCS#8", edK, "PRIVATE KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := EncodeKeyPEM(tt.key)
			if err != nil {
				t.Fatal(err)
			}
			b, rest := pem.Decode(data)
			if b == nil || b.Type != tt.blockType || len(rest) != 0 {
				t.Fatalf("block %v, rest %d bytes; want one %q", b, len(rest), tt.blockType)
			}
			back, err := ParseKeyPEM(data)
			if err != nil {
				t.Fatal(err)
			}
			if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.key.Public()) {
				t.Fatal("round trip changed the key")
			}
			// PKCS#8 of the same key parses too.
			back, err = ParseKeyPEM(keyPEM(t, tt.key))
			if err != nil {
				t.Fatal(err)
			}
			if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.key.Public()) {
				t.Fatal("PKCS#8 parse changed the key")
			}
		})
	}
	t.Run("nil key", func(t *testing.T) {
		if _, err := EncodeKeyPEM(nil); err == nil || !strings.Contains(err.Error(), "key is nil") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestParseKeyPEMInputs(t *testing.T) {
	ecK := ecKey(t).(*ecdsa.PrivateKey)
	ecPEM, _ := EncodeKeyPEM(ecK)
	rsaPEM, _ := EncodeKeyPEM(rsaKey(t, 2048))
	ecParams := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
	ca := newTestCA(t, "c")
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{name: "SEC 1", in: ecPEM},
		{name: "PKCS#1", in: rsaPEM},
		{name: "openssl ecparam -genkey output", in: cat(ecParams, ecPEM)},
		{name: "CRLF and blank lines", in: []byte("\r\n\n" + strings.ReplaceAll(string(ecPEM), "\n", "\r\n") + "\n\n")},
		{name: "empty", in: nil, wantErr: "no private key found"},
		{name: "two keys", in: cat(ecPEM, rsaPEM), wantErr: "more than one private key"},
		{name: "certificate", in: certPEM(ca.Cert), wantErr: `PEM block 1 is "CERTIFICATE", want a private key`},
		{name: "encrypted PKCS#8", in: pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}), wantErr: "encrypted private keys are not supported"},
		{name: "legacy encrypted", in: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}), wantErr: "encrypted private keys are not supported"},
		{name: "garbage before", in: cat([]byte("key:\n"), ecPEM), wantErr: "unexpected non-PEM data at byte 0"},
		{name: "corrupt DER", in: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("secretsecret")}), wantErr: "PEM block 1: malformed SEC 1 EC private key"},
		{name: "corrupt PKCS#1", in: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte("secretsecret")}), wantErr: "malformed PKCS#1 RSA private key"},
		{name: "corrupt PKCS#8", in: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("secretsecret")}), wantErr: "malformed PKCS#8 private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKeyPEM(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error quotes key bytes: %v", err)
			}
		})
	}
}

func TestKeyMatches(t *testing.T) {
	ca := newTestCA(t, "ca")
	rsaK, ecK, edK := rsaKey(t, 2048), ecKey(t), edKey(t)
	leaf := func(k crypto.Signer) *x509.Certificate {
		return ca.Issue(t, &x509.Certificate{}, k)
	}
	rsaC, ecC, edC := leaf(rsaK), leaf(ecK), leaf(edK)
	tests := []struct {
		name string
		cert *x509.Certificate
		key  crypto.Signer
		want bool
	}{
		{"rsa match", rsaC, rsaK, true},
		{"ecdsa match", ecC, ecK, true},
		{"ed25519 match", edC, edK, true},
		{"ecdsa other key", ecC, ecKey(t), false},
		{"rsa vs ecdsa", rsaC, ecK, false},
		{"ecdsa vs ed25519", ecC, edK, false},
		{"nil cert", nil, ecK, false},
		{"nil key", ecC, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := KeyMatches(tt.cert, tt.key); got != tt.want {
				t.Fatalf("KeyMatches = %t, want %t", got, tt.want)
			}
		})
	}
}

func TestKeyShapeAndGenerateLike(t *testing.T) {
	p521, err := ecdsa.GenerateKey(elliptic.P521(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		pub   crypto.PublicKey
		shape string
	}{
		{"rsa 3072", rsaKey(t, 3072).Public(), "RSA-3072"},
		{"p256", ecKey(t).Public(), "ECDSA-P-256"},
		{"p521", p521.Public(), "ECDSA-P-521"},
		{"ed25519", edKey(t).Public(), "Ed25519"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := KeyShape(tt.pub); got != tt.shape {
				t.Fatalf("keyShape = %s, want %s", got, tt.shape)
			}
			k, err := generateLike(tt.pub, orRand(nil))
			if err != nil {
				t.Fatal(err)
			}
			if got := KeyShape(k.Public()); got != tt.shape {
				t.Fatalf("generateLike shape = %s, want %s", got, tt.shape)
			}
		})
	}
	if _, err := generateLike(struct{}{}, orRand(nil)); err == nil {
		t.Fatal("generateLike of unknown key type succeeded")
	}
}
