package probes

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// Class is the kind of a failed request.
type Class string

// Classes. Clean() fails on X509, Unauthorized and Forbidden; Refused
// (a component restarting) is allowed and counted; Other is reported.
const (
	// X509 is any certificate verification error: the client rejecting
	// the server's chain or name, the server rejecting the client's
	// certificate (TLS alert), or a proxied error naming one.
	X509 Class = "x509"
	// Unauthorized is HTTP 401.
	Unauthorized Class = "unauthorized"
	// Forbidden is HTTP 403.
	Forbidden Class = "forbidden"
	// Refused is connection refused/reset, EOF, timeouts and
	// "shutting down" answers: a component restarting.
	Refused Class = "refused"
	// Other is everything else (unexpected status codes, lease gaps).
	Other Class = "other"
)

// Classes lists every class in report order.
var Classes = []Class{X509, Unauthorized, Forbidden, Refused, Other}

// Blocking reports whether a failure of class c makes a report unclean.
func (c Class) Blocking() bool { return c == X509 || c == Unauthorized || c == Forbidden }

// Classify returns the class of a failed request: err is the transport
// error (nil when a response arrived), status and body the response.
// It returns "" for a success (no error and a 2xx status).
func Classify(err error, status int, body []byte) Class {
	if err != nil {
		return ClassifyError(err)
	}
	switch {
	case status >= 200 && status < 300:
		return ""
	case status == http.StatusUnauthorized:
		return Unauthorized
	case status == http.StatusForbidden && bytes.Contains(body, []byte(`system:anonymous`)):
		// With anonymous auth on (kubeadm's default) an apiserver that
		// cannot verify a client certificate treats the request as
		// system:anonymous: the credential was not accepted.
		return Unauthorized
	case status == http.StatusForbidden:
		return Forbidden
	case status == http.StatusTooManyRequests:
		// The apiserver answers 429 while it shuts down.
		return Refused
	}
	if c := ClassifyText(string(body)); c != "" {
		return c
	}
	return Other
}

// ClassifyError classifies a transport error.
func ClassifyError(err error) Class {
	if err == nil {
		return ""
	}
	if isCertError(err) {
		return X509
	}
	if isConnError(err) {
		return Refused
	}
	if c := ClassifyText(err.Error()); c != "" {
		return c
	}
	return Other
}

func isCertError(err error) bool {
	var (
		verr  *tls.CertificateVerificationError
		uae   x509.UnknownAuthorityError
		cie   x509.CertificateInvalidError
		hne   x509.HostnameError
		sre   x509.SystemRootsError
		cve   x509.ConstraintViolationError
		ie    x509.InsecureAlgorithmError
		alert tls.AlertError
	)
	switch {
	case errors.As(err, &verr), errors.As(err, &uae), errors.As(err, &cie), errors.As(err, &hne),
		errors.As(err, &sre), errors.As(err, &cve), errors.As(err, &ie):
		return true
	case errors.As(err, &alert):
		return certAlerts[uint8(alert)]
	}
	return false
}

// certAlerts are the TLS alerts a peer sends when it rejects a
// certificate (RFC 8446 section 6.2).
var certAlerts = map[uint8]bool{
	42:  true, // bad_certificate
	43:  true, // unsupported_certificate
	44:  true, // certificate_revoked
	45:  true, // certificate_expired
	46:  true, // certificate_unknown
	48:  true, // unknown_ca
	116: true, // certificate_required
}

func isConnError(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, net.ErrClosed) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var (
	x509Text = []string{
		"x509:", "tls: bad certificate", "tls: unknown certificate authority", "tls: certificate required",
		"tls: expired certificate", "tls: unknown certificate", "tls: unsupported certificate",
		"tls: revoked certificate", "tls: failed to verify certificate", "certificate signed by unknown authority",
		"certificate has expired or is not yet valid",
	}
	refusedText = []string{
		"connection refused", "connection reset", "broken pipe", "EOF", "i/o timeout", "deadline exceeded",
		"Client.Timeout exceeded", "TLS handshake timeout", "no route to host", "network is unreachable",
		"server sent GOAWAY", "http2: client connection lost", "use of closed network connection",
		"apiserver is shutting down", "shutting down, please try again",
	}
	badStatus = regexp.MustCompile(`bad status from \S+: (\d{3})`)
)

// ClassifyText classifies an error message or response body ("" when
// nothing matches). Certificate words win over connection words, and a
// proxied "bad status ...: 401/403" (the aggregator's availability
// message) maps to its status.
func ClassifyText(s string) Class {
	if s == "" {
		return ""
	}
	for _, p := range x509Text {
		if strings.Contains(s, p) {
			return X509
		}
	}
	if m := badStatus.FindStringSubmatch(s); m != nil {
		code, _ := strconv.Atoi(m[1])
		switch code {
		case http.StatusUnauthorized:
			return Unauthorized
		case http.StatusForbidden:
			return Forbidden
		}
	}
	for _, p := range refusedText {
		if strings.Contains(s, p) {
			return Refused
		}
	}
	return ""
}
