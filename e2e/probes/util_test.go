package probes

import (
	"crypto/x509"
	"log/slog"
)

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newPool(pemData []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pemData)
	return p
}
