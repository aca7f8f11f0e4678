package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"syscall"

	"github.com/herald-dev/herald/dispatcher/delivery/ssrf"
)

// Failure reasons of attempts that got no HTTP response. They are stable:
// the health stage writes them to status.delivery.lastFailureReason, and
// dashboards may match on them. HTTP failures use "HTTP <code>".
const (
	ReasonTimeout           = "Timeout"
	ReasonConnectionRefused = "ConnectionRefused"
	ReasonConnectionReset   = "ConnectionReset"
	ReasonDNSFailure        = "DNSFailure"
	ReasonTLSError          = "TLSError"
	ReasonBlockedAddress    = "BlockedAddress"
	ReasonOther             = "Other"
)

// Reasons of deliveries that could not be attempted or were given up.
const (
	// ReasonInvalidPayload: the queued payload is not a CloudEvent in
	// structured JSON; it is dead-lettered at once.
	ReasonInvalidPayload = "InvalidPayload"
	// ReasonSigningKeyMissing: no signing key is valid now.
	ReasonSigningKeyMissing = "SigningKeyMissing"
	// ReasonMaxAttempts and ReasonMaxAge prefix the dead-letter reason of a
	// delivery that exhausted its retries ("MaxAttempts: HTTP 503").
	ReasonMaxAttempts = "MaxAttempts"
	ReasonMaxAge      = "MaxAge"
)

// HTTPReason is the failure reason of an attempt answered with a non-2xx
// status.
func HTTPReason(code int) string { return "HTTP " + strconv.Itoa(code) }

// ClassifyError maps an error of an attempt that got no HTTP response to one
// of the stable reasons above. The order matters: a blocked dial is reported
// as such even though it surfaces as a dial error, and a TLS failure caused
// by a reset is a reset.
func ClassifyError(err error) string {
	if err == nil {
		return ""
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	var (
		lookupErr   *ssrf.LookupError
		dnsErr      *net.DNSError
		certInvalid x509.CertificateInvalidError
		unknownAuth x509.UnknownAuthorityError
		hostnameErr x509.HostnameError
		verifyErr   *tls.CertificateVerificationError
		recordErr   tls.RecordHeaderError
		alertErr    tls.AlertError
		netErr      net.Error
		opErr       *net.OpError
	)
	switch {
	case errors.Is(err, ssrf.ErrBlocked):
		return ReasonBlockedAddress
	case errors.As(err, &lookupErr), errors.As(err, &dnsErr):
		// A resolver timeout is still a DNS problem, not a slow receiver.
		return ReasonDNSFailure
	case errors.Is(err, syscall.ECONNREFUSED):
		return ReasonConnectionRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNABORTED):
		return ReasonConnectionReset
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return ReasonTimeout
	case errors.As(err, &netErr) && netErr.Timeout():
		return ReasonTimeout
	case errors.As(err, &verifyErr), errors.As(err, &certInvalid), errors.As(err, &unknownAuth),
		errors.As(err, &hostnameErr), errors.As(err, &recordErr), errors.As(err, &alertErr):
		return ReasonTLSError
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// An alert from the receiver's TLS stack ("certificate required",
		// "bad certificate", "handshake failure"); its type is unexported.
		return ReasonTLSError
	case strings.HasPrefix(err.Error(), "tls: "):
		return ReasonTLSError
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		// The receiver closed the connection without answering.
		return ReasonConnectionReset
	}
	return ReasonOther
}

// safeErrorText is the text of a transport error without the request URL,
// which may carry a token in its query; the remaining text names addresses
// and protocol errors only.
func safeErrorText(err error) string {
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		return urlErr.Op + ": " + urlErr.Err.Error()
	}
	return err.Error()
}
