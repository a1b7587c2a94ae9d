// Package pki holds the certificate work of a CA rotation: creating and
// loading CAs, re-issuing leaves like the ones they replace, kubelet client
// certificates (signed directly or through the CSR API), trust bundles with
// set semantics, and inspection (who issued what, what chains to what).
//
// The package does no file or network I/O except the CSR API path, which goes
// through a client-go kubernetes.Interface. It reads the clock and randomness
// only through the Now and Rand fields of its option structs (defaulting to
// time.Now and crypto/rand), so callers can generate material once, persist
// it, and replay.
//
// Secrets: CA and Issued print as subject and SHA-256 fingerprint under every
// fmt verb and as slog values; errors name certificates by subject and
// fingerprint and never carry key material.
package pki
