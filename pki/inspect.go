package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// IssuedBy reports whether cert names ca as its issuer and ca's key verifies
// cert's signature (x509 CheckSignatureFrom, which also requires ca to be a
// CA allowed to sign certificates).
func IssuedBy(cert, ca *x509.Certificate) bool {
	if cert == nil || ca == nil {
		return false
	}
	if !bytes.Equal(cert.RawIssuer, ca.RawSubject) {
		return false
	}
	return cert.CheckSignatureFrom(ca) == nil
}

// ChainsTo verifies cert against the CAs in bundlePEM as roots (no
// intermediates) for usage (x509.ExtKeyUsageAny for any) at now (zero:
// time.Now()).
func ChainsTo(cert *x509.Certificate, bundlePEM []byte, usage x509.ExtKeyUsage, now time.Time) error {
	if cert == nil {
		return errors.New("verify chain: certificate is nil")
	}
	roots, err := ParseCertsPEM(bundlePEM)
	if err != nil {
		return fmt.Errorf("verify %s: parse bundle: %w", Describe(cert), err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	_, err = cert.Verify(x509.VerifyOptions{
		Roots:       pool,
		CurrentTime: orNow(now),
		KeyUsages:   []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return fmt.Errorf("verify %s against bundle of %d: %w", Describe(cert), len(roots), err)
	}
	return nil
}

// ExpiresBefore reports whether cert's NotAfter is before t.
func ExpiresBefore(cert *x509.Certificate, t time.Time) bool {
	return cert != nil && cert.NotAfter.Before(t)
}

// Source is PEM data and where it came from, for ScanIssuedBy.
type Source struct {
	Where string // e.g. "node cp1:/etc/kubernetes/admin.conf" or "ConfigMap kube-system/x"
	PEM   []byte
}

// Finding is a certificate found by ScanIssuedBy.
type Finding struct {
	Where       string
	Subject     string // RFC 2253 form, e.g. "CN=kubernetes-admin,O=kubeadm:cluster-admins"
	Fingerprint string
	Issuer      string
	NotAfter    time.Time
}

// ScanIssuedBy returns every certificate in sources that ca issued, in source
// and file order. Sources may hold single certificates, bundles, or
// certificates with their keys (key blocks are skipped); empty PEM is fine.
// The CA certificate itself is not reported. PEM that does not parse, or a
// block of another type, is an error naming the source.
func ScanIssuedBy(ca *x509.Certificate, sources []Source) ([]Finding, error) {
	if ca == nil {
		return nil, errors.New("scan: CA certificate is nil")
	}
	caFP := Fingerprint(ca)
	var out []Finding
	for _, s := range sources {
		blocks, err := decodePEM(s.PEM)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", s.Where, err)
		}
		for i, b := range blocks {
			switch b.Type {
			case blockCertificate:
			case blockRSAPrivateKey, blockECPrivateKey, blockPrivateKey, blockEncPrivateKey,
				blockECParameters, blockPublicKey, blockRSAPublicKey:
				continue
			default:
				return nil, fmt.Errorf("scan %s: PEM block %d has unexpected type %q", s.Where, i+1, b.Type)
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("scan %s: PEM block %d: parse certificate: %w", s.Where, i+1, err)
			}
			fp := Fingerprint(c)
			if fp == caFP || !IssuedBy(c, ca) {
				continue
			}
			out = append(out, Finding{
				Where:       s.Where,
				Subject:     c.Subject.String(),
				Fingerprint: fp,
				Issuer:      c.Issuer.String(),
				NotAfter:    c.NotAfter,
			})
		}
	}
	return out, nil
}
