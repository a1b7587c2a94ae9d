package probes

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"strconv"
	"strings"
)

// certIDs names the certificates in a PEM bundle by common name and
// SHA-256 fingerprint prefix ("" when there are none). Non-certificate
// blocks (keys) are skipped and never printed.
func certIDs(data []byte) string {
	var ids []string
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			continue
		}
		sum := sha256.Sum256(c.Raw)
		ids = append(ids, "CN="+c.Subject.CommonName+" sha256:"+hex.EncodeToString(sum[:6]))
	}
	return strings.Join(ids, ", ")
}

func itoa(n int) string { return strconv.Itoa(n) }

func joinQuoted(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, " ")
}
