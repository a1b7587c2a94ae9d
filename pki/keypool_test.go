package pki

import (
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"
	"time"
)

// Keys prepared ahead are what Reissue uses for an old certificate of that
// RSA size, each once; with none left it makes its own; a caller's own
// reader never gets a prepared key.
func TestPreparedRSAKeys(t *testing.T) {
	ca, err := NewCA(CAOptions{CommonName: "c", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	oldKey, err := GenerateKey(RSA2048, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := &x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, PublicKey: oldKey.Public(),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}

	PrepareRSAKeys(2048, 2)
	deadline := time.Now().Add(30 * time.Second)
	var ready []*rsa.PrivateKey
	for {
		prepared.mu.Lock()
		ready = append([]*rsa.PrivateKey(nil), prepared.keys[2048]...)
		prepared.mu.Unlock()
		if len(ready) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 keys prepared after 30s", len(ready))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if k := preparedRSA(2048, fixedReader{}); k != nil {
		t.Fatal("a prepared key for a caller's own reader")
	}
	seen := map[string]bool{}
	for i := range 3 {
		is, err := Reissue(old, ca, ReissueOptions{Now: testNow})
		if err != nil {
			t.Fatal(err)
		}
		k := is.Key.(*rsa.PrivateKey)
		if k.N.BitLen() != 2048 {
			t.Fatalf("key %d: %d bits", i, k.N.BitLen())
		}
		fromPool := false
		for _, r := range ready {
			fromPool = fromPool || r.Equal(k)
		}
		if want := i < 2; fromPool != want {
			t.Fatalf("reissue %d: key prepared ahead %v, want %v", i, fromPool, want)
		}
		if seen[k.N.String()] {
			t.Fatalf("reissue %d: a key handed out twice", i)
		}
		seen[k.N.String()] = true
	}
}

type fixedReader struct{}

func (fixedReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 7
	}
	return len(p), nil
}
