package wire

import (
	"bytes"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The Append helpers encode messages the gateway writes itself. They build on pgproto3's encoders, which
// fail only for messages over 1 GiB or startup parameters containing NUL; the gateway never produces such
// messages, so that is treated as a programming error and panics.

func mustEncode(dst []byte, msg pgproto3.Message) []byte {
	out, err := msg.Encode(dst)
	if err != nil {
		panic(fmt.Sprintf("wire: encode %T: %v", msg, err))
	}
	return out
}

// AppendError appends an ErrorResponse with severity (both localized S and unlocalized V fields), SQLSTATE
// code and message.
func AppendError(dst []byte, severity, code, message string) []byte {
	return mustEncode(dst, &pgproto3.ErrorResponse{
		Severity:            severity,
		SeverityUnlocalized: severity,
		Code:                code,
		Message:             message,
	})
}

// AppendNotice appends a NoticeResponse with severity NOTICE.
func AppendNotice(dst []byte, code, message string) []byte {
	return mustEncode(dst, &pgproto3.NoticeResponse{
		Severity:            "NOTICE",
		SeverityUnlocalized: "NOTICE",
		Code:                code,
		Message:             message,
	})
}

// AppendReadyForQuery appends ReadyForQuery with transaction status 'I', 'T' or 'E'.
func AppendReadyForQuery(dst []byte, status byte) []byte {
	return mustEncode(dst, &pgproto3.ReadyForQuery{TxStatus: status})
}

// AppendParameterStatus appends a ParameterStatus.
func AppendParameterStatus(dst []byte, name, value string) []byte {
	return mustEncode(dst, &pgproto3.ParameterStatus{Name: name, Value: value})
}

// AppendBackendKeyData appends BackendKeyData (key is 4 bytes in protocol 3.0, up to 256 in 3.2).
func AppendBackendKeyData(dst []byte, pid uint32, key []byte) []byte {
	return mustEncode(dst, &pgproto3.BackendKeyData{ProcessID: pid, SecretKey: key})
}

// AppendNegotiateProtocolVersion appends NegotiateProtocolVersion: the newest minor version supported
// and the protocol options (_pq_.*) not recognized.
func AppendNegotiateProtocolVersion(dst []byte, newestMinor uint32, unrecognized []string) []byte {
	return mustEncode(dst, &pgproto3.NegotiateProtocolVersion{
		NewestMinorProtocol: newestMinor,
		UnrecognizedOptions: unrecognized,
	})
}

// AppendQuery appends a simple Query. sql must not contain NUL.
func AppendQuery(dst []byte, sql string) []byte {
	return mustEncode(dst, &pgproto3.Query{String: sql})
}

// AppendTerminate appends Terminate.
func AppendTerminate(dst []byte) []byte {
	return mustEncode(dst, &pgproto3.Terminate{})
}

// AppendCancelRequest appends an untyped CancelRequest packet (length 16 for a 4-byte key).
func AppendCancelRequest(dst []byte, pid uint32, key []byte) []byte {
	return mustEncode(dst, &pgproto3.CancelRequest{ProcessID: pid, SecretKey: key})
}

// AppendStartupMessage appends a protocol 3.0 StartupMessage (parameter order follows map iteration).
func AppendStartupMessage(dst []byte, params map[string]string) []byte {
	return mustEncode(dst, &pgproto3.StartupMessage{ProtocolVersion: ProtocolVersion30, Parameters: params})
}

// The readers below look inside the few backend messages the gateway inspects. They return subslices of
// body and allocate nothing except on error.

// ReadyStatus returns the transaction status of a ReadyForQuery ('Z') body: 'I', 'T' or 'E'.
func ReadyStatus(body []byte) (byte, error) {
	if len(body) != 1 {
		return 0, protocolViolation("invalid ReadyForQuery length %d", len(body))
	}
	switch s := body[0]; s {
	case 'I', 'T', 'E':
		return s, nil
	default:
		return 0, protocolViolation("invalid ReadyForQuery transaction status %q", s)
	}
}

// ParseParameterStatus splits a ParameterStatus ('S' from the backend) body into name and value.
func ParseParameterStatus(body []byte) (name, value []byte, err error) {
	name, rest, ok := cutCString(body)
	if !ok {
		return nil, nil, protocolViolation("invalid ParameterStatus message")
	}
	value, rest, ok = cutCString(rest)
	if !ok || len(rest) != 0 {
		return nil, nil, protocolViolation("invalid ParameterStatus message")
	}
	return name, value, nil
}

// ErrorFields returns the severity, SQLSTATE and message of an ErrorResponse or NoticeResponse body.
// The unlocalized severity (V) is preferred over the localized one (S) when both are present.
func ErrorFields(body []byte) (severity, code, message []byte, err error) {
	var localized []byte
	rest := body
	for {
		if len(rest) == 0 {
			return nil, nil, nil, protocolViolation("invalid error message: missing terminator")
		}
		field := rest[0]
		if field == 0 {
			if len(rest) != 1 {
				return nil, nil, nil, protocolViolation("invalid error message: data after terminator")
			}
			break
		}
		value, r, ok := cutCString(rest[1:])
		if !ok {
			return nil, nil, nil, protocolViolation("invalid error message: unterminated field %q", field)
		}
		rest = r
		switch field {
		case 'S':
			localized = value
		case 'V':
			severity = value
		case 'C':
			code = value
		case 'M':
			message = value
		}
	}
	if severity == nil {
		severity = localized
	}
	return severity, code, message, nil
}

// QueryText returns the SQL of a Query ('Q') body without its terminating NUL.
func QueryText(body []byte) ([]byte, error) {
	if i := bytes.IndexByte(body, 0); i < 0 || i != len(body)-1 {
		return nil, protocolViolation("invalid Query message: query string must end with the only NUL byte")
	}
	return body[:len(body)-1], nil
}
