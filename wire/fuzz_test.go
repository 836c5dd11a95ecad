package wire

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"testing"
)

const (
	fuzzMaxMessage = 1 << 16
	fuzzMaxInspect = 300
)

// fuzzInspectTypes are the types an inspect mask bit turns on.
var fuzzInspectTypes = [8]byte{'Q', 'P', 'Z', 'E', 'S', 'D', 'd', 'B'}

func FuzzDecoder(f *testing.F) {
	f.Add([]byte("Q\x00\x00\x00\x0dselect 1\x00S\x00\x00\x00\x04"), []byte{0, 3, 1}, uint8(1), false)
	f.Add(append(untyped(codeBody(SSLRequestCode)), untyped(startupBody("user", "u"))...), []byte{5}, uint8(0), true)
	f.Add(append(untyped(startupBody("user", "u", "database", "d")), typed('Q', []byte("x\x00"))...), []byte{}, uint8(255), true)
	f.Add(typed('d', bytes.Repeat([]byte{1}, 1000)), []byte{2, 200, 7}, uint8(0), false)
	f.Add(typed('d', bytes.Repeat([]byte{1}, 1000)), []byte{2, 200, 7}, uint8(64), false)
	f.Add(header('Q', 1<<20), []byte{}, uint8(1), false)
	f.Add(header('D', 3), []byte{0}, uint8(0), false)
	f.Add([]byte{0, 0, 0x27, 0x11}, []byte{}, uint8(0), true)
	f.Add(append(typed('Z', []byte("I")), typed('E', []byte("SERROR\x00\x00"))...), []byte{1, 1, 1, 1}, uint8(12), false)

	f.Fuzz(func(t *testing.T, data, chunking []byte, inspectMask uint8, startup bool) {
		d := NewDecoder(DecoderConfig{MaxMessage: fuzzMaxMessage, MaxInspect: fuzzMaxInspect})
		for i, typ := range fuzzInspectTypes {
			d.SetInspect(typ, inspectMask&(1<<i) != 0)
		}
		if startup {
			d.ExpectStartup()
		}
		// Buffered memory may follow only bytes that arrived, and never exceed the largest whole message.
		bound := bufCap(max(fuzzMaxInspect+1, MaxStartupPacket))
		checkHeld := func() {
			if h := d.held(); h > bound || (h > 0 && h > bufCap(d.accN)) {
				t.Fatalf("holding %d bytes with %d received (bound %d)", h, d.accN, bound)
			}
		}

		var c collector
		fn := func(f *Frame) error {
			checkHeld()
			if err := c.add(f); err != nil {
				t.Fatal(err)
			}
			if f.Type == 0 {
				if f.Len+4 > MaxStartupPacket {
					t.Fatalf("startup packet of %d bytes", f.Len+4)
				}
				if s, err := ParseStartup(f.Body); err == nil && (s.Kind == SSLRequest || s.Kind == GSSENCRequest) {
					d.ExpectStartup()
				}
			} else if f.Len+4 > fuzzMaxMessage || (f.Whole && d.inspect.has(f.Type) && f.Len+4 > fuzzMaxInspect) {
				t.Fatalf("message type %q of %d bytes passed the limits", f.Type, f.Len)
			}
			return nil
		}

		var err error
		rest := data
		for i := 0; len(rest) > 0 && err == nil; i++ {
			n := len(rest)
			if len(chunking) > 0 {
				n = min(n, int(chunking[i%len(chunking)])+1)
			}
			err = d.Feed(rest[:n], fn)
			rest = rest[n:]
			checkHeld()
		}

		raw := c.raw()
		if err != nil {
			var we *Error
			if !errors.As(err, &we) {
				t.Fatalf("error %v is not *Error", err)
			}
			if !bytes.HasPrefix(data, raw) {
				t.Fatal("forwarded bytes are not a prefix of the input")
			}
			if d.held() != 0 {
				t.Fatal("buffer kept after an error")
			}
			return
		}
		// Every byte consumed was forwarded, or is buffered awaiting the rest of its message.
		if got := append(raw, d.pendingBytes()...); !bytes.Equal(got, data) {
			t.Fatalf("forwarded+pending %d bytes differ from the %d input bytes", len(got), len(data))
		}
		d.Reset()
		if d.held() != 0 || d.Pending() {
			t.Fatal("Reset kept state")
		}
	})
}

func FuzzParseStartup(f *testing.F) {
	f.Add(startupBody("user", "alice", "database", "db"))
	f.Add(startupBody("user", "alice", "options", "-c search_path=x", "_pq_.opt", "1"))
	f.Add(append([]byte{0, 3, 0, 2}, startupBody("user", "a")[4:]...))
	f.Add(codeBody(SSLRequestCode))
	f.Add(codeBody(GSSENCRequestCode))
	f.Add(codeBody(CancelRequestCode, 0, 0, 0, 1, 1, 2, 3, 4))
	f.Add(append([]byte{0, 2, 0, 0}, 0))
	f.Add(startupBody("user", "a", "user", "b"))
	f.Add([]byte("\x00\x03\x00\x00user\x00alice"))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, body []byte) {
		s, err := ParseStartup(body)
		if err != nil {
			var we *Error
			if !errors.As(err, &we) || (we.Code != CodeProtocolViolation && we.Code != CodeFeatureNotSupported) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		switch s.Kind {
		case SSLRequest, GSSENCRequest:
			if len(body) != 4 {
				t.Fatalf("%v with %d bytes", s.Kind, len(body))
			}
		case CancelRequest:
			if len(s.CancelKey) == 0 || len(s.CancelKey) > maxCancelKey || len(body) != 8+len(s.CancelKey) {
				t.Fatalf("cancel key of %d bytes in %d", len(s.CancelKey), len(body))
			}
		case StartupMessage:
			if s.Version>>16 != 3 || s.Params["user"] == "" || s.Params["database"] == "" || len(s.Params) > MaxStartupParams+1 {
				t.Fatalf("accepted %+v", s)
			}
			// Re-encoding the parameters parses back to the same result.
			again := codeBody(s.Version)
			for _, k := range slices.Sorted(maps.Keys(s.Params)) {
				again = append(append(append(append(again, k...), 0), s.Params[k]...), 0)
			}
			again = append(again, 0)
			if len(again) > MaxStartupPacket-4 {
				return // the defaulted database may push a maximal packet over the limit
			}
			s2, err := ParseStartup(again)
			if err != nil || !maps.Equal(s.Params, s2.Params) || s2.Version != s.Version {
				t.Fatalf("round trip: %v %+v vs %+v", err, s2, s)
			}
		default:
			t.Fatalf("kind %v", s.Kind)
		}
	})
}
