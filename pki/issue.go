package pki

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"time"
)

// Kubelet client certificate identity (kubeadm / Node authorizer convention).
const (
	NodeUserPrefix = "system:node:"
	NodesGroup     = "system:nodes"
)

// ReissueOptions configures Reissue and NewKubeletClientCert.
type ReissueOptions struct {
	// KeepKey re-uses OldKey instead of generating a new key.
	KeepKey bool
	// OldKey is the key of the certificate being replaced; required with KeepKey.
	OldKey crypto.Signer
	// Validity defaults to DefaultLeafValidity; NotAfter never exceeds the CA's.
	Validity time.Duration
	Now      time.Time // zero: time.Now()
	Rand     io.Reader // nil: crypto/rand
}

// Issued is a leaf certificate and its key, parsed and PEM. It prints as
// subject and fingerprint only, under every fmt verb.
type Issued struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// String returns "certificate CN=<cn> (sha256 <fingerprint>)"; never key material.
func (is Issued) String() string { return "certificate " + identify(is.Cert) }

// GoString keeps %#v free of key material.
func (is Issued) GoString() string {
	return "pki.Issued{Cert: " + strconv.Quote(identify(is.Cert)) + ", Key: " + RedactedIf(is.Key != nil || len(is.KeyPEM) > 0) + "}"
}

// Format makes every fmt verb print String (GoString for %#v).
func (is Issued) Format(f fmt.State, verb rune) { FormatRedacted(f, verb, is.String(), is.GoString()) }

// LogValue makes slog print String.
func (is Issued) LogValue() slog.Value { return slog.StringValue(is.String()) }

// MarshalJSON refuses (ErrNotSerializable).
func (is Issued) MarshalJSON() ([]byte, error) {
	return nil, fmt.Errorf("%s: %w", is.String(), ErrNotSerializable)
}

// Reissue issues, from ca, a certificate like old: same subject (byte for
// byte), DNS/IP/URI/email SANs, key usages and extended key usages; a new key
// of old's algorithm and size (RSA bits, EC curve, Ed25519) unless KeepKey;
// a new 128-bit random serial; AuthorityKeyId from the CA; NotBefore Backdate
// before now and NotAfter min(now+Validity, CA NotAfter).
//
// old may also be a template that was never signed (no public key, no raw
// subject): the subject and extensions are taken from its fields and the new
// key is DefaultKeyAlgorithm.
func Reissue(old *x509.Certificate, ca *CA, opts ReissueOptions) (*Issued, error) {
	if old == nil {
		return nil, errors.New("reissue: old certificate is nil")
	}
	if err := ca.usable(); err != nil {
		return nil, fmt.Errorf("reissue %s: %w", Describe(old), err)
	}
	if old.IsCA {
		return nil, fmt.Errorf("reissue %s: certificate is a CA; create CAs with NewCA", Describe(old))
	}
	r := orRand(opts.Rand)
	var key crypto.Signer
	if opts.KeepKey {
		if opts.OldKey == nil {
			return nil, fmt.Errorf("reissue %s: KeepKey set without OldKey", Describe(old))
		}
		if !KeyMatches(old, opts.OldKey) {
			return nil, fmt.Errorf("reissue %s: old key: %w", Describe(old), ErrKeyMismatch)
		}
		key = opts.OldKey
	} else {
		var err error
		if old.PublicKey == nil { // a template, not a parsed certificate
			key, err = GenerateKey(DefaultKeyAlgorithm, r)
		} else {
			key, err = generateLike(old.PublicKey, r)
		}
		if err != nil {
			return nil, fmt.Errorf("reissue %s: new key: %w", Describe(old), err)
		}
	}
	tmpl := &x509.Certificate{
		Subject:               old.Subject,
		RawSubject:            old.RawSubject,
		DNSNames:              old.DNSNames,
		IPAddresses:           old.IPAddresses,
		URIs:                  old.URIs,
		EmailAddresses:        old.EmailAddresses,
		KeyUsage:              old.KeyUsage,
		ExtKeyUsage:           old.ExtKeyUsage,
		UnknownExtKeyUsage:    old.UnknownExtKeyUsage,
		BasicConstraintsValid: old.BasicConstraintsValid,
	}
	is, err := sign(tmpl, key, ca, opts.Validity, opts.Now, r)
	if err != nil {
		return nil, fmt.Errorf("reissue %s: %w", Describe(old), err)
	}
	return is, nil
}

// NewKubeletClientCert issues, from ca, a kubelet client certificate for
// nodeName as the kube-controller-manager signer would: CN
// system:node:<nodeName>, O system:nodes, client auth, digital signature
// (plus key encipherment for RSA keys), with a new ECDSA P-256 key (kubelet's
// default) unless opts.KeepKey re-uses opts.OldKey.
func NewKubeletClientCert(nodeName string, ca *CA, opts ReissueOptions) (*Issued, error) {
	if err := ValidNodeName(nodeName); err != nil {
		return nil, fmt.Errorf("kubelet client certificate: %w", err)
	}
	if err := ca.usable(); err != nil {
		return nil, fmt.Errorf("kubelet client certificate for node %s: %w", nodeName, err)
	}
	r := orRand(opts.Rand)
	var key crypto.Signer
	if opts.KeepKey {
		if opts.OldKey == nil {
			return nil, fmt.Errorf("kubelet client certificate for node %s: KeepKey set without OldKey", nodeName)
		}
		key = opts.OldKey
	} else {
		var err error
		if key, err = GenerateKey(ECDSAP256, r); err != nil {
			return nil, fmt.Errorf("kubelet client certificate for node %s: new key: %w", nodeName, err)
		}
	}
	usage := x509.KeyUsageDigitalSignature
	if isRSA(key) {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		Subject:               KubeletSubject(nodeName),
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	is, err := sign(tmpl, key, ca, opts.Validity, opts.Now, r)
	if err != nil {
		return nil, fmt.Errorf("kubelet client certificate for node %s: %w", nodeName, err)
	}
	return is, nil
}

// NewKubeletServingCert issues, from ca, a kubelet serving certificate
// for nodeName and the given names as the kubelet-serving signer would:
// CN system:node:<nodeName>, O system:nodes, server auth, digital
// signature (plus key encipherment for RSA keys), for opts.OldKey when
// opts.KeepKey is set, else a new ECDSA P-256 key.
func NewKubeletServingCert(nodeName string, dnsNames []string, ips []net.IP, ca *CA, opts ReissueOptions) (*Issued, error) {
	if err := ValidNodeName(nodeName); err != nil {
		return nil, fmt.Errorf("kubelet serving certificate: %w", err)
	}
	if len(dnsNames)+len(ips) == 0 {
		return nil, fmt.Errorf("kubelet serving certificate for node %s: no names", nodeName)
	}
	if err := ca.usable(); err != nil {
		return nil, fmt.Errorf("kubelet serving certificate for node %s: %w", nodeName, err)
	}
	r := orRand(opts.Rand)
	key := opts.OldKey
	if !opts.KeepKey || key == nil {
		var err error
		if key, err = GenerateKey(ECDSAP256, r); err != nil {
			return nil, fmt.Errorf("kubelet serving certificate for node %s: new key: %w", nodeName, err)
		}
	}
	usage := x509.KeyUsageDigitalSignature
	if isRSA(key) {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		Subject:               KubeletSubject(nodeName),
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
		BasicConstraintsValid: true,
	}
	is, err := sign(tmpl, key, ca, opts.Validity, opts.Now, r)
	if err != nil {
		return nil, fmt.Errorf("kubelet serving certificate for node %s: %w", nodeName, err)
	}
	return is, nil
}

// KubeletSubject is the subject of a kubelet client certificate:
// CN system:node:<name>, O system:nodes.
func KubeletSubject(nodeName string) pkix.Name {
	return pkix.Name{CommonName: NodeUserPrefix + nodeName, Organization: []string{NodesGroup}}
}

// ValidNodeName checks a node name can be the CN system:node:<name>.
func ValidNodeName(n string) error {
	if n == "" {
		return errors.New("node name is empty")
	}
	for _, c := range n {
		if c <= ' ' || c == '/' || c == 0x7f {
			return fmt.Errorf("invalid node name %q", n)
		}
	}
	return nil
}

// sign completes tmpl (serial, validity, AuthorityKeyId) and signs it with ca
// for key's public half. ca must be usable.
func sign(tmpl *x509.Certificate, key crypto.Signer, ca *CA, validity time.Duration, now time.Time, r io.Reader) (*Issued, error) {
	if validity < 0 {
		return nil, fmt.Errorf("negative validity %s", validity)
	}
	if validity == 0 {
		validity = DefaultLeafValidity
	}
	now = orNow(now)
	serial, err := randomSerial(r)
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-Backdate).UTC()
	tmpl.NotAfter = now.Add(validity).UTC()
	if ca.Cert.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter.UTC()
	}
	if !tmpl.NotAfter.After(now) {
		return nil, fmt.Errorf("CA %s: %w (not after %s)", Describe(ca.Cert), ErrExpired, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl.AuthorityKeyId = ca.Cert.SubjectKeyId
	der, err := x509.CreateCertificate(r, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign with CA %s: %w", Describe(ca.Cert), err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	return &Issued{Cert: cert, Key: key, CertPEM: EncodeCertsPEM(cert), KeyPEM: keyPEM}, nil
}

// KubeletPEM returns the certificate PEM followed by the key PEM in one file,
// the layout of kubelet's kubelet-client-<timestamp>.pem.
func KubeletPEM(is *Issued) ([]byte, error) {
	if is == nil || is.Cert == nil || is.Key == nil {
		return nil, errors.New("kubelet PEM: certificate or key is missing")
	}
	if !KeyMatches(is.Cert, is.Key) {
		return nil, fmt.Errorf("kubelet PEM %s: %w", Describe(is.Cert), ErrKeyMismatch)
	}
	certPEM := is.CertPEM
	if len(certPEM) == 0 {
		certPEM = EncodeCertsPEM(is.Cert)
	}
	keyPEM, err := EncodeKeyPEM(is.Key)
	if err != nil {
		return nil, fmt.Errorf("kubelet PEM %s: %w", Describe(is.Cert), err)
	}
	out := make([]byte, 0, len(certPEM)+len(keyPEM))
	out = append(out, certPEM...)
	return append(out, keyPEM...), nil
}

// ParseKubeletPEM parses a kubelet cert+key file (kubelet-client-current.pem):
// one or more certificates, the first being the leaf, and exactly one private
// key matching the leaf, in any order.
func ParseKubeletPEM(data []byte) (*x509.Certificate, crypto.Signer, error) {
	blocks, err := decodePEM(data)
	if err != nil {
		return nil, nil, fmt.Errorf("parse kubelet PEM: %w", err)
	}
	var leaf *x509.Certificate
	var key crypto.Signer
	for i, b := range blocks {
		switch b.Type {
		case blockCertificate:
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("parse kubelet PEM: block %d: parse certificate: %w", i+1, err)
			}
			if leaf == nil {
				leaf = c
			}
		case blockRSAPrivateKey, blockECPrivateKey, blockPrivateKey:
			if key != nil {
				return nil, nil, errors.New("parse kubelet PEM: more than one private key")
			}
			if key, err = parseKeyBlock(b); err != nil {
				return nil, nil, fmt.Errorf("parse kubelet PEM: block %d: %w", i+1, err)
			}
		case blockECParameters:
		default:
			return nil, nil, fmt.Errorf("parse kubelet PEM: unexpected PEM block %d of type %q", i+1, b.Type)
		}
	}
	switch {
	case leaf == nil:
		return nil, nil, fmt.Errorf("parse kubelet PEM: %w", ErrNoCertificates)
	case key == nil:
		return nil, nil, fmt.Errorf("parse kubelet PEM %s: no private key found", Describe(leaf))
	case !KeyMatches(leaf, key):
		return nil, nil, fmt.Errorf("parse kubelet PEM %s: %w", Describe(leaf), ErrKeyMismatch)
	}
	return leaf, key, nil
}

// String describes the options without key material.
func (o ReissueOptions) String() string {
	return fmt.Sprintf("pki.ReissueOptions{KeepKey: %t, OldKey: %s, Validity: %s, Now: %s, Rand: %s}",
		o.KeepKey, RedactedIf(o.OldKey != nil), o.Validity, o.Now.Format(time.RFC3339), setOrNil(o.Rand != nil))
}

// Format keeps OldKey out of every fmt verb.
func (o ReissueOptions) Format(f fmt.State, verb rune) {
	FormatRedacted(f, verb, o.String(), o.String())
}

// MarshalJSON encodes String: options are transient and OldKey stays out.
func (o ReissueOptions) MarshalJSON() ([]byte, error) { return json.Marshal(o.String()) }

func setOrNil(set bool) string {
	if set {
		return "<set>"
	}
	return "<nil>"
}
