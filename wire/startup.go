package wire

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// MaxStartupParams bounds the number of parameters ParseStartup accepts.
const MaxStartupParams = 64

// maxCancelKey is PostgreSQL 18's MAX_CANCEL_KEY_LENGTH (protocol 3.2 allows variable-length keys).
const maxCancelKey = 256

// StartupKind says which untyped packet a Startup is.
type StartupKind int

const (
	StartupMessage StartupKind = iota
	SSLRequest
	GSSENCRequest
	CancelRequest
)

func (k StartupKind) String() string {
	switch k {
	case StartupMessage:
		return "StartupMessage"
	case SSLRequest:
		return "SSLRequest"
	case GSSENCRequest:
		return "GSSENCRequest"
	case CancelRequest:
		return "CancelRequest"
	}
	return "StartupKind(?)"
}

// Startup is a parsed startup packet.
type Startup struct {
	Kind      StartupKind
	Version   uint32            // StartupMessage: protocol version as sent
	Params    map[string]string // StartupMessage: user, database, options, application_name, ...
	CancelPID uint32            // CancelRequest
	CancelKey []byte            // CancelRequest: the secret key (4 bytes in protocol 3.0, up to 256 in 3.2)
}

// ParseStartup parses a startup packet body (everything after the 4-byte length). The result does not
// alias body.
//
// A major version other than 3 is *Error 0A000; any 3.x is accepted and reported in Version so the
// gateway can answer NegotiateProtocolVersion. "database" defaults to the user name, as in PostgreSQL.
// Malformed layouts, duplicate or too many parameters, and a missing user are *Error 08P01.
func ParseStartup(body []byte) (*Startup, error) {
	if len(body) < minStartupPacket-4 || len(body) > MaxStartupPacket-4 {
		return nil, protocolViolation("invalid length of startup packet")
	}
	code := binary.BigEndian.Uint32(body)
	rest := body[4:]

	switch code {
	case SSLRequestCode, GSSENCRequestCode:
		if len(rest) != 0 {
			return nil, protocolViolation("invalid length of encryption request packet")
		}
		if code == SSLRequestCode {
			return &Startup{Kind: SSLRequest}, nil
		}
		return &Startup{Kind: GSSENCRequest}, nil
	case CancelRequestCode:
		if len(rest) < 4 {
			return nil, protocolViolation("invalid length of cancel request packet")
		}
		key := rest[4:]
		if len(key) == 0 || len(key) > maxCancelKey {
			return nil, protocolViolation("invalid length of cancel key in cancel request packet")
		}
		return &Startup{
			Kind:      CancelRequest,
			CancelPID: binary.BigEndian.Uint32(rest),
			CancelKey: bytes.Clone(key),
		}, nil
	}

	if major, minor := code>>16, code&0xffff; major != 3 {
		return nil, &Error{
			Code:    CodeFeatureNotSupported,
			Message: fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0", major, minor),
		}
	}

	// Name/value pairs of NUL-terminated strings, ended by an empty name that must be the last byte.
	params := make(map[string]string, 8)
	for {
		if len(rest) == 0 {
			return nil, protocolViolation("invalid startup packet layout: expected terminator as last byte")
		}
		if rest[0] == 0 {
			if len(rest) != 1 {
				return nil, protocolViolation("invalid startup packet layout: expected terminator as last byte")
			}
			break
		}
		name, r, ok := cutCString(rest)
		if !ok {
			return nil, protocolViolation("invalid startup packet layout: expected terminator as last byte")
		}
		value, r, ok := cutCString(r)
		if !ok {
			return nil, protocolViolation("invalid startup packet layout: expected terminator as last byte")
		}
		rest = r
		if len(params) == MaxStartupParams {
			return nil, protocolViolation("too many parameters in startup packet")
		}
		if _, dup := params[string(name)]; dup {
			return nil, protocolViolation("duplicate startup packet parameter %q", name)
		}
		params[string(name)] = string(value)
	}

	if params["user"] == "" {
		return nil, protocolViolation("no PostgreSQL user name specified in startup packet")
	}
	if params["database"] == "" {
		params["database"] = params["user"]
	}
	return &Startup{Kind: StartupMessage, Version: code, Params: params}, nil
}

// cutCString splits a NUL-terminated string off the front of b.
func cutCString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}
