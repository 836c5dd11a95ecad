// Package auth authenticates PostgreSQL clients at the gateway, before they
// get near a backend, the way PgBouncer does it: against a userlist file and
// with trust, md5 or scram-sha-256.
//
// The package does no network I/O. The session feeds an Exchange the bodies
// of the client's authentication messages and writes the encoded messages the
// Exchange returns; see Exchange.
package auth

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// MaxMessageLen is the largest message body Exchange.Next accepts. Real
// clients send at most a few hundred bytes; the session should refuse a longer
// 'p' message before reading it.
const MaxMessageLen = 8192

// SQLSTATE codes the package reports.
const (
	CodeInvalidPassword     = "28P01" // invalid_password
	CodeProtocolViolation   = "08P01" // protocol_violation
	CodeFeatureNotSupported = "0A000" // feature_not_supported
	CodeInternalError       = "XX000" // internal_error
)

// Method is a client authentication method.
type Method int

const (
	Trust Method = iota
	MD5
	SCRAMSHA256
)

// ParseMethod parses a method name as written in pg_hba.conf.
func ParseMethod(s string) (Method, error) {
	switch s {
	case "trust":
		return Trust, nil
	case "md5":
		return MD5, nil
	case "scram-sha-256":
		return SCRAMSHA256, nil
	}
	return 0, fmt.Errorf("auth: unknown auth method %q (want trust, md5 or scram-sha-256)", s)
}

func (m Method) String() string {
	switch m {
	case Trust:
		return "trust"
	case MD5:
		return "md5"
	case SCRAMSHA256:
		return "scram-sha-256"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// Error is an authentication failure to report to the client.
type Error struct {
	Code    string // SQLSTATE
	Message string // sent to the client
	// Detail is the real reason, for the gateway's log only. It is never sent
	// to the client, because it can reveal whether a user exists or what kind
	// of secret it has.
	Detail string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// ErrorResponse returns the FATAL ErrorResponse to send to the client. It
// leaves out Detail on purpose.
func (e *Error) ErrorResponse() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                e.Code,
		Message:             e.Message,
	}
}

func authFailed(user, detail string) *Error {
	return &Error{
		Code:    CodeInvalidPassword,
		Message: `password authentication failed for user "` + user + `"`,
		Detail:  detail,
	}
}

func protocolViolation(format string, args ...any) *Error {
	return &Error{Code: CodeProtocolViolation, Message: fmt.Sprintf(format, args...)}
}
