package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unsafe"
)

type testMsg struct {
	typ  byte // 0: startup packet
	body []byte
}

func (m testMsg) encode() []byte {
	if m.typ == 0 {
		return untyped(m.body)
	}
	return typed(m.typ, m.body)
}

func startupBody(params ...string) []byte {
	b := []byte{0, 3, 0, 0}
	for _, p := range params {
		b = append(b, p...)
		b = append(b, 0)
	}
	return append(b, 0)
}

func TestDecoderWholeFramesZeroCopy(t *testing.T) {
	msgs := []testMsg{
		{'Q', []byte("select 1\x00")},
		{'S', nil},
		{'D', bytes.Repeat([]byte{7}, 300)},
		{'Z', []byte{'I'}},
		{'X', nil},
	}
	var in []byte
	for _, m := range msgs {
		in = append(in, m.encode()...)
	}
	d := NewDecoder(DecoderConfig{})
	d.SetInspect('Q', true)
	off := 0
	i := 0
	err := d.Feed(in, func(f *Frame) error {
		m := msgs[i]
		n := 5 + len(m.body)
		if !f.Whole || !f.First || !f.Last || f.Type != m.typ || f.Len != len(m.body) {
			t.Fatalf("msg %d: frame %+v", i, f)
		}
		if !bytes.Equal(f.Body, m.body) || !bytes.Equal(f.Raw, in[off:off+n]) {
			t.Fatalf("msg %d: body/raw mismatch", i)
		}
		// Zero-copy: Raw aliases the input.
		if unsafe.SliceData(f.Raw) != &in[off] {
			t.Fatalf("msg %d: Raw does not alias the input", i)
		}
		if f.Trailing != len(in)-off-n {
			t.Fatalf("msg %d: Trailing %d, want %d", i, f.Trailing, len(in)-off-n)
		}
		off += n
		i++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if i != len(msgs) || d.Pending() || !d.AtBoundary() {
		t.Fatalf("got %d messages, pending %v", i, d.Pending())
	}
}

// splitStream is a client stream with a startup packet, inspected and streamed messages, and empty ones.
func splitStream() ([]testMsg, []byte) {
	msgs := []testMsg{
		{0, startupBody("user", "u", "database", "db")},
		{'Q', []byte("select 1\x00")}, // inspected
		{'P', []byte("\x00select $1\x00\x00\x00")},
		{'S', nil},
		{'B', bytes.Repeat([]byte{1}, 12)},
		{'H', nil},
		{'d', bytes.Repeat([]byte{2}, 30)},
		{'Q', []byte("x\x00")}, // inspected
		{'X', nil},
	}
	var in []byte
	for _, m := range msgs {
		in = append(in, m.encode()...)
	}
	return msgs, in
}

// checkSplit feeds in as the given chunks and checks that the frames reassemble to the input, that bodies
// are right, and that exactly the messages that must be Whole are Whole.
func checkSplit(t *testing.T, msgs []testMsg, in []byte, cuts []int) {
	t.Helper()
	d := NewDecoder(DecoderConfig{MaxInspect: 64})
	d.SetInspect('Q', true)
	d.ExpectStartup()
	var c collector
	prev := 0
	for _, cut := range append(cuts, len(in)) {
		if err := d.Feed(in[prev:cut], c.add); err != nil {
			t.Fatalf("cuts %v: %v", cuts, err)
		}
		prev = cut
	}
	if !bytes.Equal(c.raw(), in) {
		t.Fatalf("cuts %v: reassembled raw differs from input", cuts)
	}
	if len(c.msgs) != len(msgs) {
		t.Fatalf("cuts %v: %d messages, want %d", cuts, len(c.msgs), len(msgs))
	}
	if d.Pending() || !d.AtBoundary() || d.held() != 0 {
		t.Fatalf("cuts %v: decoder not idle after the stream", cuts)
	}
	start := 0
	for i, m := range msgs {
		got := c.msgs[i]
		end := start + len(m.encode())
		// Whole iff empty, startup, inspected, or entirely inside one chunk.
		inOne := true
		for _, cut := range cuts {
			if cut > start && cut < end {
				inOne = false
			}
		}
		wantWhole := len(m.body) == 0 || m.typ == 0 || m.typ == 'Q' || inOne
		if got.Type != m.typ || !bytes.Equal(got.Body, m.body) || got.Whole != wantWhole {
			t.Fatalf("cuts %v: msg %d got type %q whole %v body %q; want %q whole %v body %q",
				cuts, i, got.Type, got.Whole, got.Body, m.typ, wantWhole, m.body)
		}
		start = end
	}
}

func TestDecoderSplitAtEveryOffset(t *testing.T) {
	msgs, in := splitStream()
	for i := 0; i <= len(in); i++ {
		for j := i; j <= len(in); j++ {
			checkSplit(t, msgs, in, []int{i, j})
		}
	}
	// One byte per Feed.
	cuts := make([]int, 0, len(in))
	for i := 1; i < len(in); i++ {
		cuts = append(cuts, i)
	}
	checkSplit(t, msgs, in, cuts)
}

func TestDecoderHeaderSplitKeepsHeader(t *testing.T) {
	body := bytes.Repeat([]byte{9}, 10)
	in := typed('D', body)
	d := NewDecoder(DecoderConfig{})
	var c collector
	for _, chunk := range [][]byte{in[:3], in[3:5], in[5:8], in[8:]} {
		if err := d.Feed(chunk, c.add); err != nil {
			t.Fatal(err)
		}
		if len(chunk) == 2 && d.Pending() {
			t.Fatal("header still pending once complete")
		}
	}
	// The First piece is the header alone (kept in the decoder), then the body pieces.
	if len(c.pieces) != 3 || !bytes.Equal(c.pieces[0].Raw, in[:5]) || len(c.pieces[0].Body) != 0 ||
		!c.pieces[0].First || c.pieces[0].Last || !c.pieces[2].Last {
		t.Fatalf("pieces: %+v", c.pieces)
	}
	if !bytes.Equal(c.raw(), in) {
		t.Fatal("raw differs")
	}

	// A header split with nothing else: Pending until complete.
	d = NewDecoder(DecoderConfig{})
	if err := d.Feed(in[:4], c.add); err != nil {
		t.Fatal(err)
	}
	if !d.Pending() || d.AtBoundary() {
		t.Fatal("partial header not pending")
	}
}

func TestDecoderEmptyMessageSplitHeaderIsWhole(t *testing.T) {
	in := typed('S', nil)
	d := NewDecoder(DecoderConfig{})
	var c collector
	for i := range in {
		if err := d.Feed(in[i:i+1], c.add); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.pieces) != 1 || !c.pieces[0].Whole || !bytes.Equal(c.pieces[0].Raw, in) {
		t.Fatalf("pieces: %+v", c.pieces)
	}
}

func TestDecoderInspectedAccumulatesAsBytesArrive(t *testing.T) {
	sql := strings.Repeat("select 1; ", 3000) // 30000 bytes: crosses the 4 KiB and 16 KiB classes
	body := append([]byte(sql), 0)
	in := typed('Q', body)
	d := NewDecoder(DecoderConfig{MaxInspect: 1 << 20})
	d.SetInspect('Q', true)
	var c collector
	for off := 0; off < len(in); off += 1000 {
		end := min(off+1000, len(in))
		if err := d.Feed(in[off:end], c.add); err != nil {
			t.Fatal(err)
		}
		if end < len(in) {
			if !d.Pending() || len(c.pieces) != 0 {
				t.Fatalf("at %d: inspected message delivered early or not pending", end)
			}
			// Memory follows the bytes received, not the length the header claims.
			if h := d.held(); h > bufCap(end) {
				t.Fatalf("at %d bytes received: holding %d", end, h)
			}
		}
	}
	if len(c.msgs) != 1 || !c.msgs[0].Whole || !bytes.Equal(c.msgs[0].Body, body) {
		t.Fatalf("got %d messages", len(c.msgs))
	}
	if d.Pending() || d.held() != 0 {
		t.Fatal("buffer not released after the message")
	}
}

func TestDecoderInspectedBeyondPooledClasses(t *testing.T) {
	body := bytes.Repeat([]byte{'x'}, 40<<20)
	body[len(body)-1] = 0
	in := typed('Q', body)
	d := NewDecoder(DecoderConfig{MaxInspect: 64 << 20})
	d.SetInspect('Q', true)
	var got []byte
	fn := func(f *Frame) error {
		if !f.Whole {
			t.Fatal("inspected message streamed")
		}
		got = f.Raw
		if !bytes.Equal(f.Raw, in) {
			t.Fatal("raw differs")
		}
		return nil
	}
	const chunk = 3 << 20
	for off := 0; off < len(in); off += chunk {
		end := min(off+chunk, len(in))
		if err := d.Feed(in[off:end], fn); err != nil {
			t.Fatal(err)
		}
		// Past the largest class the buffer doubles, so it stays within twice what arrived.
		if h := d.held(); h > max(bufCap(end), 2*end) || (end < len(in) && h > len(in)) {
			t.Fatalf("holding %d bytes after %d received", h, end)
		}
	}
	if got == nil || d.held() != 0 {
		t.Fatal("message not delivered or buffer kept")
	}
}

func TestDecoderInspectedClaimDoesNotAllocate(t *testing.T) {
	d := NewDecoder(DecoderConfig{MaxInspect: 8 << 20})
	d.SetInspect('Q', true)
	// The header claims 8 MiB; only 10 body bytes arrive.
	in := append(header('Q', 8<<20), "select 1; "...)
	if err := d.Feed(in, func(*Frame) error { t.Fatal("frame before the message is complete"); return nil }); err != nil {
		t.Fatal(err)
	}
	if h := d.held(); h != bufCap(len(in)) {
		t.Fatalf("holding %d bytes for %d received", h, len(in))
	}
	d.Reset()
	if d.held() != 0 || d.Pending() {
		t.Fatal("Reset kept the buffer")
	}
	// Reusable after Reset.
	var c collector
	if err := d.Feed(typed('Q', []byte("x\x00")), c.add); err != nil || len(c.msgs) != 1 {
		t.Fatalf("after Reset: %v, %d messages", err, len(c.msgs))
	}
}

func TestDecoderStreamsLargeMessages(t *testing.T) {
	d := NewDecoder(DecoderConfig{MaxMessage: 1 << 30})
	// A 512 MiB DataRow is announced; it is forwarded as it arrives with nothing buffered.
	var c collector
	if err := d.Feed(append(header('D', 512<<20), 1, 2, 3), c.add); err != nil {
		t.Fatal(err)
	}
	if d.Pending() || d.held() != 0 || len(c.pieces) != 1 || !c.pieces[0].First || c.pieces[0].Len != 512<<20-4 {
		t.Fatalf("pieces %+v pending %v", c.pieces, d.Pending())
	}
	if err := d.Feed(make([]byte, 4096), c.add); err != nil {
		t.Fatal(err)
	}
	if d.held() != 0 || len(c.pieces) != 2 || c.pieces[1].Last || len(c.pieces[1].Body) != 4096 {
		t.Fatalf("pieces %+v", c.pieces)
	}
}

func TestDecoderRejects(t *testing.T) {
	tests := []struct {
		name    string
		inspect bool
		startup bool
		in      []byte
		code    string
	}{
		{"length 0", false, false, header('D', 0), CodeProtocolViolation},
		{"length 3", false, false, header('D', 3), CodeProtocolViolation},
		{"negative length", false, false, header('D', -1), CodeProtocolViolation},
		{"type 0", false, false, header(0, 4), CodeProtocolViolation},
		{"over MaxMessage", false, false, header('D', 1<<20+1), CodeProgramLimitExceeded},
		{"max int32", false, false, header('D', 1<<31-1), CodeProgramLimitExceeded},
		{"inspected over MaxInspect", true, false, header('Q', 4097), CodeProgramLimitExceeded},
		{"startup too short", false, true, []byte{0, 0, 0, 7}, CodeProtocolViolation},
		{"startup too long", false, true, []byte{0, 0, 0x27, 0x11}, CodeProtocolViolation},
		{"startup negative", false, true, []byte{0xff, 0xff, 0xff, 0xff}, CodeProtocolViolation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Also split the header to reach the non-contiguous path.
			for split := 0; split < len(tt.in); split++ {
				d := NewDecoder(DecoderConfig{MaxMessage: 1 << 20, MaxInspect: 4096})
				d.SetInspect('Q', tt.inspect)
				if tt.startup {
					d.ExpectStartup()
				}
				fn := func(*Frame) error { t.Fatal("frame for a rejected message"); return nil }
				err := d.Feed(tt.in[:split], fn)
				if err == nil {
					err = d.Feed(tt.in[split:], fn)
				}
				if e := wantCode(err, tt.code); e != nil {
					t.Fatal(e)
				}
				if d.held() != 0 {
					t.Fatal("buffer leased for a rejected message")
				}
				// The decoder stays failed.
				if err2 := d.Feed([]byte("S\x00\x00\x00\x04"), fn); err2 != err {
					t.Fatalf("second Feed: %v", err2)
				}
			}
		})
	}
	var e *Error
	d := NewDecoder(DecoderConfig{})
	d.ExpectStartup()
	if err := d.Feed([]byte{0, 0, 0, 2}, nil); !errors.As(err, &e) || e.Message != "invalid length of startup packet" {
		t.Fatalf("startup length error: %v", err)
	}
}

func TestDecoderCallbackErrorStops(t *testing.T) {
	stop := errors.New("stop")
	d := NewDecoder(DecoderConfig{})
	n := 0
	in := append(typed('S', nil), typed('S', nil)...)
	err := d.Feed(in, func(*Frame) error { n++; return stop })
	if err != stop || n != 1 {
		t.Fatalf("err %v after %d frames", err, n)
	}
	if err := d.Feed(in, func(*Frame) error { n++; return nil }); err != stop || n != 1 {
		t.Fatalf("decoder used after a callback error: %v", err)
	}
}

func TestDecoderStartupSequence(t *testing.T) {
	ssl := untyped([]byte{0x04, 0xd2, 0x16, 0x2f})
	sm := untyped(startupBody("user", "alice"))
	q := typed('Q', []byte("select 1\x00"))
	in := append(append(append([]byte{}, ssl...), sm...), q...)

	for split := 0; split <= len(in); split++ {
		d := NewDecoder(DecoderConfig{})
		d.ExpectStartup()
		var kinds []string
		var sslTrailing int
		fn := func(f *Frame) error {
			if f.Type != 0 {
				if f.First {
					kinds = append(kinds, string(f.Type))
				}
				return nil
			}
			if !f.Whole {
				t.Fatal("startup packet not whole")
			}
			s, err := ParseStartup(f.Body)
			if err != nil {
				return err
			}
			kinds = append(kinds, s.Kind.String())
			if s.Kind == SSLRequest {
				// Answered 'N': the client sends its StartupMessage next, again untyped.
				sslTrailing = f.Trailing
				d.ExpectStartup()
			} else if s.Params["user"] != "alice" || s.Params["database"] != "alice" {
				t.Fatalf("params %v", s.Params)
			}
			return nil
		}
		if err := d.Feed(in[:split], fn); err != nil {
			t.Fatal(err)
		}
		if err := d.Feed(in[split:], fn); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(kinds, ","); got != "SSLRequest,StartupMessage,Q" {
			t.Fatalf("split %d: %s", split, got)
		}
		// A client that pipelines data after SSLRequest is detectable by the gateway.
		if split >= len(ssl) && sslTrailing != split-len(ssl) {
			t.Fatalf("split %d: Trailing after SSLRequest %d", split, sslTrailing)
		}
	}
}

func TestDecoderNoAllocs(t *testing.T) {
	var in []byte
	for i := range 1000 {
		switch i % 4 {
		case 0:
			in = append(in, typed('Q', []byte("select 1\x00"))...)
		case 1:
			in = append(in, typed('D', []byte("\x00\x01\x00\x00\x00\x01x"))...)
		case 2:
			in = append(in, typed('Z', []byte("I"))...)
		case 3:
			in = append(in, typed('S', nil)...)
		}
	}
	d := NewDecoder(DecoderConfig{})
	d.SetInspect('Q', true)
	n := 0
	fn := func(f *Frame) error {
		if f.Whole {
			n++
		}
		return nil
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := d.Feed(in, fn); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per Feed of 1000 messages", allocs)
	}
	if n != 101*1000 {
		t.Fatalf("%d whole frames", n)
	}
}
