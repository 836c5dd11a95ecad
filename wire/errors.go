package wire

import "fmt"

// SQLSTATE codes carried by *Error.
const (
	CodeProtocolViolation    = "08P01"
	CodeProgramLimitExceeded = "54000"
	CodeFeatureNotSupported  = "0A000"
)

// Error is a protocol failure with the SQLSTATE the gateway should send to the peer (typically as a FATAL
// ErrorResponse) before closing the connection.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("wire: %s (SQLSTATE %s)", e.Message, e.Code)
}

func protocolViolation(format string, args ...any) *Error {
	return &Error{Code: CodeProtocolViolation, Message: fmt.Sprintf(format, args...)}
}
