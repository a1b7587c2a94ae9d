package pki

import (
	"crypto/rand"
	"crypto/rsa"
	"io"
	"sync"
)

// RSA keys made ahead of need. An RSA-2048 key takes 80 ms or more of one
// core to generate, and preflight re-issues a dozen or more certificates
// per control-plane node with keys like the old ones (kubeadm's are RSA by
// default): about a second of the run's own time on a two-core machine.
// PrepareRSAKeys generates them in the background while the run does
// other things (dialing the nodes, reading the cluster); Reissue takes one
// when it needs a key of that size, and generates its own when none is
// ready. A key is handed out once; keys never taken die with the process
// and are never written anywhere.

var prepared = struct {
	mu   sync.Mutex
	keys map[int][]*rsa.PrivateKey // by modulus size
}{keys: map[int][]*rsa.PrivateKey{}}

// PrepareRSAKeys starts generating n RSA keys of the given size, one at a
// time (the run keeps the other cores), and returns at once.
func PrepareRSAKeys(bits, n int) {
	if n <= 0 || bits < 2048 {
		return
	}
	go func() {
		for range n {
			k, err := rsa.GenerateKey(rand.Reader, bits)
			if err != nil {
				return
			}
			prepared.mu.Lock()
			prepared.keys[bits] = append(prepared.keys[bits], k)
			prepared.mu.Unlock()
		}
	}()
}

// preparedRSA takes a prepared key of the given size, or returns nil. Keys
// drawn from a caller's own reader (tests) are never replaced by one.
func preparedRSA(bits int, r io.Reader) *rsa.PrivateKey {
	if r != rand.Reader {
		return nil
	}
	prepared.mu.Lock()
	defer prepared.mu.Unlock()
	ks := prepared.keys[bits]
	if len(ks) == 0 {
		return nil
	}
	k := ks[len(ks)-1]
	ks[len(ks)-1] = nil
	prepared.keys[bits] = ks[:len(ks)-1]
	return k
}
