package wire

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func randBytes(r *rand.Rand, max int) []byte {
	b := make([]byte, r.IntN(max+1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// bigBytes is a large payload; its content is irrelevant to framing, so it is cheap to make.
func bigBytes(r *rand.Rand, max int) []byte {
	return bytes.Repeat([]byte{byte(r.Uint32())}, r.IntN(max+1))
}

func randText(r *rand.Rand, max int) string {
	b := make([]byte, r.IntN(max+1))
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
	}
	return string(b)
}

// randBackendMessage returns a valid backend message; sizes vary from empty to a few pieces of 64 KiB
// reads so that streaming is exercised.
func randBackendMessage(r *rand.Rand) pgproto3.BackendMessage {
	switch r.IntN(16) {
	case 0:
		vals := make([][]byte, r.IntN(5))
		for i := range vals {
			if r.IntN(4) > 0 {
				vals[i] = randBytes(r, 40)
			}
		}
		return &pgproto3.DataRow{Values: vals}
	case 1:
		return &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
			{Name: []byte(randText(r, 10)), TableOID: r.Uint32(), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1},
		}}
	case 2:
		return &pgproto3.CommandComplete{CommandTag: []byte("SELECT " + fmt.Sprint(r.IntN(1000)))}
	case 3:
		return &pgproto3.ReadyForQuery{TxStatus: "ITE"[r.IntN(3)]}
	case 4:
		return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42601", Message: randText(r, 80)}
	case 5:
		return &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: randText(r, 80)}
	case 6:
		return &pgproto3.ParameterStatus{Name: randText(r, 12), Value: randText(r, 12)}
	case 7:
		return &pgproto3.BackendKeyData{ProcessID: r.Uint32(), SecretKey: append(randBytes(r, 28), 1, 2, 3, 4)}
	case 8:
		return &pgproto3.ParseComplete{}
	case 9:
		return &pgproto3.BindComplete{}
	case 10:
		return &pgproto3.NoData{}
	case 11:
		return &pgproto3.CopyData{Data: bigBytes(r, 200_000)}
	case 12:
		return &pgproto3.AuthenticationOk{}
	case 13:
		return &pgproto3.NotificationResponse{PID: r.Uint32(), Channel: randText(r, 10), Payload: randText(r, 100)}
	case 14:
		return &pgproto3.EmptyQueryResponse{}
	default:
		return &pgproto3.ParameterDescription{ParameterOIDs: []uint32{23, 25}}
	}
}

func randFrontendMessage(r *rand.Rand) pgproto3.FrontendMessage {
	switch r.IntN(12) {
	case 0:
		return &pgproto3.Query{String: randText(r, 5000)}
	case 1:
		return &pgproto3.Parse{Name: randText(r, 5), Query: randText(r, 300), ParameterOIDs: []uint32{23}}
	case 2:
		return &pgproto3.Bind{DestinationPortal: randText(r, 5), PreparedStatement: randText(r, 5),
			ParameterFormatCodes: []int16{0}, Parameters: [][]byte{randBytes(r, 100)}, ResultFormatCodes: []int16{1}}
	case 3:
		return &pgproto3.Describe{ObjectType: 'S', Name: randText(r, 5)}
	case 4:
		return &pgproto3.Execute{Portal: randText(r, 5), MaxRows: r.Uint32()}
	case 5:
		return &pgproto3.Sync{}
	case 6:
		return &pgproto3.Flush{}
	case 7:
		return &pgproto3.Close{ObjectType: 'P', Name: randText(r, 5)}
	case 8:
		return &pgproto3.CopyData{Data: bigBytes(r, 200_000)}
	case 9:
		return &pgproto3.CopyDone{}
	case 10:
		return &pgproto3.CopyFail{Message: randText(r, 30)}
	default:
		return &pgproto3.Terminate{}
	}
}

// decodeChunked feeds stream to a Decoder in random chunk sizes and returns the reassembled messages.
func decodeChunked(t *testing.T, r *rand.Rand, stream []byte, inspect string) []message {
	t.Helper()
	d := NewDecoder(DecoderConfig{MaxInspect: 1 << 20})
	for i := range len(inspect) {
		d.SetInspect(inspect[i], true)
	}
	var c collector
	for rest := stream; len(rest) > 0; {
		n := min(len(rest), 1+r.IntN([]int{8, 200, 5000, 70000}[r.IntN(4)]))
		if err := d.Feed(rest[:n], c.add); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if !bytes.Equal(c.raw(), stream) || d.Pending() || c.cur != nil {
		t.Fatal("reassembled stream differs from the input")
	}
	return c.msgs
}

func TestDifferentialPgproto3(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))

		// Backend stream, read by pgproto3.Frontend.
		var stream []byte
		for range 200 {
			var err error
			if stream, err = randBackendMessage(r).Encode(stream); err != nil {
				t.Fatal(err)
			}
		}
		msgs := decodeChunked(t, r, stream, "ZESdD"[:r.IntN(6)])
		fe := pgproto3.NewFrontend(bytes.NewReader(stream), nil)
		for i, m := range msgs {
			pm, err := fe.Receive()
			if err != nil {
				t.Fatalf("seed %d: pgproto3 message %d: %v", seed, i, err)
			}
			compareDecoded(t, seed, i, m, pm)
		}
		if _, err := fe.Receive(); err == nil {
			t.Fatalf("seed %d: pgproto3 found more messages than %d", seed, len(msgs))
		}

		// Frontend stream, read by pgproto3.Backend.
		stream = stream[:0]
		for range 200 {
			var err error
			if stream, err = randFrontendMessage(r).Encode(stream); err != nil {
				t.Fatal(err)
			}
		}
		msgs = decodeChunked(t, r, stream, "QPBd"[:r.IntN(5)])
		be := pgproto3.NewBackend(bytes.NewReader(stream), nil)
		for i, m := range msgs {
			pm, err := be.Receive()
			if err != nil {
				t.Fatalf("seed %d: pgproto3 message %d: %v", seed, i, err)
			}
			compareDecoded(t, seed, i, m, pm)
		}
		if _, err := be.Receive(); err == nil {
			t.Fatalf("seed %d: pgproto3 found more messages than %d", seed, len(msgs))
		}
	}
}

// compareDecoded checks that a message framed by Decoder is the one pgproto3 decoded: same type, and the
// body pgproto3 re-encodes from its decoded struct is the body Decoder delivered.
func compareDecoded(t *testing.T, seed uint64, i int, m message, pm pgproto3.Message) {
	t.Helper()
	enc, err := pm.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != enc[0] || !bytes.Equal(m.Body, enc[5:]) || !bytes.Equal(m.Raw, enc) {
		t.Fatalf("seed %d message %d: Decoder %q (%d bytes), pgproto3 %T %q (%d bytes)",
			seed, i, m.Type, len(m.Body), pm, enc[0], len(enc)-5)
	}
}
