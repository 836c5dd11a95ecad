package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
)

func codeBody(code uint32, rest ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, code), rest...)
}

func TestParseStartup(t *testing.T) {
	many := []string{"user", "u"}
	for i := range MaxStartupParams {
		many = append(many, fmt.Sprintf("p%d", i), "v")
	}
	tooLong := startupBody("user", "u", "options", strings.Repeat("x", MaxStartupPacket))

	tests := []struct {
		name    string
		body    []byte
		want    *Startup
		code    string
		message string
	}{
		{
			name: "normal",
			body: startupBody("user", "alice", "database", "shop", "application_name", "psql", "options", "-c x=1"),
			want: &Startup{Kind: StartupMessage, Version: ProtocolVersion30, Params: map[string]string{
				"user": "alice", "database": "shop", "application_name": "psql", "options": "-c x=1"}},
		},
		{
			name: "database defaults to user",
			body: startupBody("user", "alice"),
			want: &Startup{Kind: StartupMessage, Version: ProtocolVersion30, Params: map[string]string{"user": "alice", "database": "alice"}},
		},
		{
			name: "empty database defaults to user",
			body: startupBody("user", "alice", "database", ""),
			want: &Startup{Kind: StartupMessage, Version: ProtocolVersion30, Params: map[string]string{"user": "alice", "database": "alice"}},
		},
		{
			name: "protocol 3.2 accepted",
			body: append([]byte{0, 3, 0, 2}, startupBody("user", "a")[4:]...),
			want: &Startup{Kind: StartupMessage, Version: ProtocolVersion32, Params: map[string]string{"user": "a", "database": "a"}},
		},
		{name: "ssl", body: codeBody(SSLRequestCode), want: &Startup{Kind: SSLRequest}},
		{name: "gssenc", body: codeBody(GSSENCRequestCode), want: &Startup{Kind: GSSENCRequest}},
		{
			name: "cancel 4-byte key",
			body: codeBody(CancelRequestCode, 0, 0, 0x30, 0x39, 1, 2, 3, 4),
			want: &Startup{Kind: CancelRequest, CancelPID: 12345, CancelKey: []byte{1, 2, 3, 4}},
		},
		{
			name: "cancel 32-byte key",
			body: codeBody(CancelRequestCode, append([]byte{0, 0, 0, 7}, bytes.Repeat([]byte{5}, 32)...)...),
			want: &Startup{Kind: CancelRequest, CancelPID: 7, CancelKey: bytes.Repeat([]byte{5}, 32)},
		},
		{name: "cancel no key", body: codeBody(CancelRequestCode, 0, 0, 0, 1), code: CodeProtocolViolation},
		{name: "cancel short pid", body: codeBody(CancelRequestCode, 0, 0), code: CodeProtocolViolation},
		{name: "cancel key too long", body: codeBody(CancelRequestCode, make([]byte, 4+257)...), code: CodeProtocolViolation},
		{name: "ssl with trailing bytes", body: codeBody(SSLRequestCode, 0), code: CodeProtocolViolation},
		{
			name:    "bad version",
			body:    append([]byte{0, 2, 0, 0}, startupBody("user", "a")[4:]...),
			code:    CodeFeatureNotSupported,
			message: "unsupported frontend protocol 2.0: server supports 3.0",
		},
		{name: "version 4.1", body: append([]byte{0, 4, 0, 1}, 0), code: CodeFeatureNotSupported,
			message: "unsupported frontend protocol 4.1: server supports 3.0"},
		{name: "too long", body: tooLong, code: CodeProtocolViolation, message: "invalid length of startup packet"},
		{name: "too short", body: []byte{0, 3, 0}, code: CodeProtocolViolation, message: "invalid length of startup packet"},
		{
			name:    "missing user",
			body:    startupBody("database", "d"),
			code:    CodeProtocolViolation,
			message: "no PostgreSQL user name specified in startup packet",
		},
		{name: "empty user", body: startupBody("user", ""), code: CodeProtocolViolation},
		{name: "duplicate key", body: startupBody("user", "a", "user", "b"), code: CodeProtocolViolation},
		{name: "no terminator", body: startupBody("user", "a")[:len(startupBody("user", "a"))-1], code: CodeProtocolViolation},
		{name: "no parameters no terminator", body: []byte{0, 3, 0, 0}, code: CodeProtocolViolation},
		{name: "unterminated value", body: []byte("\x00\x03\x00\x00user\x00alice"), code: CodeProtocolViolation},
		{name: "unterminated name", body: []byte("\x00\x03\x00\x00user"), code: CodeProtocolViolation},
		{name: "data after terminator", body: append(startupBody("user", "a"), 'x'), code: CodeProtocolViolation},
		{name: "too many parameters", body: startupBody(many...), code: CodeProtocolViolation, message: "too many parameters in startup packet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStartup(tt.body)
			if tt.want != nil {
				if err != nil {
					t.Fatal(err)
				}
				if got.Kind != tt.want.Kind || got.Version != tt.want.Version || !maps.Equal(got.Params, tt.want.Params) ||
					got.CancelPID != tt.want.CancelPID || !bytes.Equal(got.CancelKey, tt.want.CancelKey) {
					t.Fatalf("got %+v, want %+v", got, tt.want)
				}
				return
			}
			if e := wantCode(err, tt.code); e != nil {
				t.Fatal(e)
			}
			var we *Error
			errors.As(err, &we)
			if tt.message != "" && we.Message != tt.message {
				t.Fatalf("message %q, want %q", we.Message, tt.message)
			}
		})
	}
}

func TestParseStartupDoesNotAliasBody(t *testing.T) {
	body := codeBody(CancelRequestCode, 0, 0, 0, 1, 9, 9, 9, 9)
	s, err := ParseStartup(body)
	if err != nil {
		t.Fatal(err)
	}
	clear(body)
	if !bytes.Equal(s.CancelKey, []byte{9, 9, 9, 9}) {
		t.Fatal("CancelKey aliases the packet")
	}
}

func TestAppendStartupPackets(t *testing.T) {
	sm := AppendStartupMessage(nil, map[string]string{"user": "bob", "database": "db"})
	cr := AppendCancelRequest(nil, 42, []byte{1, 2, 3, 4})
	if len(cr) != 16 || binary.BigEndian.Uint32(cr) != 16 {
		t.Fatalf("cancel request % x", cr)
	}
	var got []*Startup
	for _, in := range [][]byte{sm, cr} {
		d := NewDecoder(DecoderConfig{})
		d.ExpectStartup()
		err := d.Feed(in, func(f *Frame) error {
			s, err := ParseStartup(f.Body)
			got = append(got, s)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if got[0].Params["user"] != "bob" || got[0].Params["database"] != "db" || got[1].Kind != CancelRequest ||
		got[1].CancelPID != 42 || !bytes.Equal(got[1].CancelKey, []byte{1, 2, 3, 4}) {
		t.Fatalf("got %+v %+v", got[0], got[1])
	}
}
