// Package pki holds the certificate work of a CA rotation: creating and
// loading CAs, re-issuing leaves like the ones they replace, kubelet client
// certificates, trust bundles with set semantics, and inspection (who issued
// what, what chains to what). It imports nothing of the project and no
// Kubernetes client; requesting a certificate through the CSR API is the
// e2e suite's (e2e/csr).
//
// The package does no file or network I/O. It reads the clock and randomness
// only through the Now and Rand fields of its option structs (defaulting to
// time.Now and crypto/rand), so callers can generate material once, persist
// it, and replay.
//
// Secrets: CA and Issued print as subject and SHA-256 fingerprint under every
// fmt verb and as slog values; errors name certificates by subject and
// fingerprint and never carry key material.
package pki
