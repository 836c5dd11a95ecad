package wire

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestAppendBackendMessages(t *testing.T) {
	var buf []byte
	buf = AppendError(buf, "FATAL", "08P01", "bad things")
	buf = AppendNotice(buf, "01000", "heads up")
	buf = AppendParameterStatus(buf, "TimeZone", "UTC")
	buf = AppendBackendKeyData(buf, 99, []byte{1, 2, 3, 4})
	buf = AppendNegotiateProtocolVersion(buf, 0, []string{"_pq_.x"})
	buf = AppendReadyForQuery(buf, 'T')

	want := []pgproto3.BackendMessage{
		&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08P01", Message: "bad things"},
		&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "01000", Message: "heads up"},
		&pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"},
		&pgproto3.BackendKeyData{ProcessID: 99, SecretKey: []byte{1, 2, 3, 4}},
		&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: []string{"_pq_.x"}},
		&pgproto3.ReadyForQuery{TxStatus: 'T'},
	}
	fe := pgproto3.NewFrontend(bytes.NewReader(buf), nil)
	for i, w := range want {
		got, err := fe.Receive()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, w) {
			t.Fatalf("message %d: got %#v, want %#v", i, got, w)
		}
	}

	// The readers agree with what was written.
	d := NewDecoder(DecoderConfig{})
	var seen []byte
	err := d.Feed(buf, func(f *Frame) error {
		seen = append(seen, f.Type)
		switch f.Type {
		case 'E', 'N':
			sev, code, msg, err := ErrorFields(f.Body)
			if err != nil {
				return err
			}
			if f.Type == 'E' && (string(sev) != "FATAL" || string(code) != "08P01" || string(msg) != "bad things") {
				t.Fatalf("ErrorFields: %q %q %q", sev, code, msg)
			}
			if f.Type == 'N' && (string(sev) != "NOTICE" || string(code) != "01000" || string(msg) != "heads up") {
				t.Fatalf("ErrorFields: %q %q %q", sev, code, msg)
			}
		case 'S':
			name, value, err := ParseParameterStatus(f.Body)
			if err != nil || string(name) != "TimeZone" || string(value) != "UTC" {
				t.Fatalf("ParseParameterStatus: %q %q %v", name, value, err)
			}
		case 'Z':
			s, err := ReadyStatus(f.Body)
			if err != nil || s != 'T' {
				t.Fatalf("ReadyStatus: %q %v", s, err)
			}
		}
		return nil
	})
	if err != nil || string(seen) != "ENSKvZ" {
		t.Fatalf("decoded %q: %v", seen, err)
	}
}

func TestAppendFrontendMessages(t *testing.T) {
	var buf []byte
	buf = AppendQuery(buf, "select 1")
	buf = AppendTerminate(buf)
	be := pgproto3.NewBackend(bytes.NewReader(buf), nil)
	m, err := be.Receive()
	if q, ok := m.(*pgproto3.Query); err != nil || !ok || q.String != "select 1" {
		t.Fatalf("got %#v, %v", m, err)
	}
	if m, err := be.Receive(); err != nil || reflect.TypeOf(m) != reflect.TypeOf(&pgproto3.Terminate{}) {
		t.Fatalf("got %#v, %v", m, err)
	}
	sql, err := QueryText(buf[5 : len(buf)-5])
	if err != nil || string(sql) != "select 1" {
		t.Fatalf("QueryText: %q %v", sql, err)
	}
}

func TestReadersRejectMalformed(t *testing.T) {
	bad := []struct {
		name string
		fn   func() error
	}{
		{"ready empty", func() error { _, err := ReadyStatus(nil); return err }},
		{"ready long", func() error { _, err := ReadyStatus([]byte("II")); return err }},
		{"ready status", func() error { _, err := ReadyStatus([]byte("X")); return err }},
		{"param no value", func() error { _, _, err := ParseParameterStatus([]byte("a\x00")); return err }},
		{"param unterminated", func() error { _, _, err := ParseParameterStatus([]byte("a\x00b")); return err }},
		{"param trailing", func() error { _, _, err := ParseParameterStatus([]byte("a\x00b\x00c")); return err }},
		{"error empty", func() error { _, _, _, err := ErrorFields(nil); return err }},
		{"error no terminator", func() error { _, _, _, err := ErrorFields([]byte("SERROR\x00")); return err }},
		{"error unterminated field", func() error { _, _, _, err := ErrorFields([]byte("SERROR")); return err }},
		{"error after terminator", func() error { _, _, _, err := ErrorFields([]byte("SERROR\x00\x00x")); return err }},
		{"query empty", func() error { _, err := QueryText(nil); return err }},
		{"query unterminated", func() error { _, err := QueryText([]byte("select")); return err }},
		{"query inner NUL", func() error { _, err := QueryText([]byte("sel\x00ect\x00")); return err }},
	}
	for _, tt := range bad {
		if err := wantCode(tt.fn(), CodeProtocolViolation); err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
	}

	// Localized severity is used when V is absent (pre-9.6 servers).
	sev, code, msg, err := ErrorFields([]byte("SERREUR\x00C42601\x00Mboom\x00\x00"))
	if err != nil || string(sev) != "ERREUR" || string(code) != "42601" || string(msg) != "boom" {
		t.Fatalf("ErrorFields: %q %q %q %v", sev, code, msg, err)
	}
	sev, _, _, _ = ErrorFields([]byte("SERREUR\x00VERROR\x00\x00"))
	if string(sev) != "ERROR" {
		t.Fatalf("severity %q, want unlocalized ERROR", sev)
	}
}

func TestReadersDoNotAllocate(t *testing.T) {
	e := AppendError(nil, "ERROR", "42601", "syntax error")[5:]
	p := AppendParameterStatus(nil, "client_encoding", "UTF8")[5:]
	q := AppendQuery(nil, "select 1")[5:]
	allocs := testing.AllocsPerRun(100, func() {
		_, _, _, _ = ErrorFields(e)
		_, _, _ = ParseParameterStatus(p)
		_, _ = QueryText(q)
		_, _ = ReadyStatus([]byte{'I'})
	})
	if allocs != 0 {
		t.Fatalf("%v allocations", allocs)
	}
}

func TestBufferPool(t *testing.T) {
	for _, tt := range []struct{ size, want int }{
		{0, 4 << 10}, {1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 16 << 10}, {100 << 10, 256 << 10},
		{1 << 20, 1 << 20}, {1<<20 + 1, 4 << 20}, {4<<20 + 1, 16 << 20}, {16 << 20, 16 << 20}, {16<<20 + 1, 16<<20 + 1},
	} {
		b := GetBuffer(tt.size)
		if len(*b) != tt.want || cap(*b) != tt.want {
			t.Fatalf("GetBuffer(%d): len %d cap %d, want %d", tt.size, len(*b), cap(*b), tt.want)
		}
		*b = (*b)[:1]
		PutBuffer(b)
	}
	// A returned buffer comes back at full length whatever it was resliced to.
	b := GetBuffer(10)
	*b = (*b)[:0]
	PutBuffer(b)
	if b = GetBuffer(10); len(*b) != 4<<10 {
		t.Fatalf("len %d", len(*b))
	}
	odd := make([]byte, 5000)
	PutBuffer(&odd) // not a class: dropped, must not be handed out as 4 KiB or 16 KiB
	PutBuffer(nil)
	for range 10 {
		if b := GetBuffer(4 << 10); cap(*b) != 4<<10 {
			t.Fatalf("cap %d", cap(*b))
		}
	}
}
