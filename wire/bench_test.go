package wire

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// loopReader repeats a stream forever, like a socket that never runs dry.
type loopReader struct {
	b   []byte
	off int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	return n, nil
}

func smallBackendStream() ([]byte, int) {
	var b []byte
	n := 0
	for i := range 1000 {
		var m pgproto3.BackendMessage
		switch i % 10 {
		case 8:
			m = &pgproto3.CommandComplete{CommandTag: []byte("SELECT 8")}
		case 9:
			m = &pgproto3.ReadyForQuery{TxStatus: 'I'}
		default:
			m = &pgproto3.DataRow{Values: [][]byte{[]byte("42"), []byte("hello world"), nil}}
		}
		b, _ = m.Encode(b)
		n++
	}
	return b, n
}

func smallFrontendStream() ([]byte, int) {
	var b []byte
	n := 0
	for range 250 {
		for _, m := range []pgproto3.FrontendMessage{
			&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("42")}},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
		} {
			b, _ = m.Encode(b)
			n++
		}
	}
	return b, n
}

// BenchmarkDecoderSmallMessages frames a stream of small messages read from a socket-like reader in
// 16 KiB reads, against pgproto3 receiving (and decoding) the same stream.
func BenchmarkDecoderSmallMessages(b *testing.B) {
	streams := []struct {
		name   string
		stream func() ([]byte, int)
		pgx    func(r *loopReader) func() error
	}{
		{"backend", smallBackendStream, func(r *loopReader) func() error {
			fe := pgproto3.NewFrontend(r, nil)
			return func() error { _, err := fe.Receive(); return err }
		}},
		{"frontend", smallFrontendStream, func(r *loopReader) func() error {
			be := pgproto3.NewBackend(r, nil)
			return func() error { _, err := be.Receive(); return err }
		}},
	}
	for _, s := range streams {
		stream, count := s.stream()

		b.Run(s.name+"/wire", func(b *testing.B) {
			r := &loopReader{b: stream}
			buf := GetBuffer(16 << 10)
			defer PutBuffer(buf)
			d := NewDecoder(DecoderConfig{})
			d.SetInspect('Z', true)
			msgs := 0
			fn := func(f *Frame) error {
				if f.Last {
					msgs++
				}
				return nil
			}
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for b.Loop() {
				for got := 0; got < len(stream); {
					n, _ := r.Read((*buf)[:min(len(*buf), len(stream)-got)])
					if err := d.Feed((*buf)[:n], fn); err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
			if msgs%count != 0 {
				b.Fatalf("%d messages, not a multiple of %d", msgs, count)
			}
		})

		b.Run(s.name+"/pgproto3", func(b *testing.B) {
			receive := s.pgx(&loopReader{b: stream})
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for b.Loop() {
				for range count {
					if err := receive(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
