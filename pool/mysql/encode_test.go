package mysql

import (
	"bytes"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
)

func TestPgType(t *testing.T) {
	for my, want := range map[string]uint32{
		"TINYINT": pgtype.Int2OID, "UNSIGNED TINYINT": pgtype.Int2OID, "SMALLINT": pgtype.Int2OID,
		"UNSIGNED SMALLINT": pgtype.Int4OID, "MEDIUMINT": pgtype.Int4OID, "INT": pgtype.Int4OID,
		"UNSIGNED INT": pgtype.Int8OID, "BIGINT": pgtype.Int8OID, "UNSIGNED BIGINT": pgtype.NumericOID,
		"DECIMAL": pgtype.NumericOID, "FLOAT": pgtype.Float4OID, "DOUBLE": pgtype.Float8OID,
		"DATE": pgtype.DateOID, "DATETIME": pgtype.TimestampOID, "TIMESTAMP": pgtype.TimestampOID,
		"JSON": pgtype.JSONOID, "BLOB": pgtype.ByteaOID, "VARBINARY": pgtype.ByteaOID, "BIT": pgtype.ByteaOID,
		"VARCHAR": pgtype.TextOID, "TEXT": pgtype.TextOID, "LONGTEXT": pgtype.TextOID, "ENUM": pgtype.TextOID,
		"TIME": pgtype.TextOID, "NULL": pgtype.TextOID, "YEAR": pgtype.Int2OID,
	} {
		if got, _ := pgType(my); got != want {
			t.Errorf("%s → %d, want %d", my, got, want)
		}
	}
}

func TestAppendText(t *testing.T) {
	for _, c := range []struct {
		v    any
		oid  uint32
		want string
	}{
		{int64(-5), pgtype.Int8OID, "-5"},
		{uint64(18446744073709551615), pgtype.NumericOID, "18446744073709551615"},
		{float32(0.1), pgtype.Float4OID, "0.1"},
		{float64(1e300), pgtype.Float8OID, "1e+300"},
		{[]byte{0, 0xab}, pgtype.ByteaOID, `\x00ab`},
		{[]byte("hi"), pgtype.TextOID, "hi"},
		{time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC), pgtype.TimestampOID, "2024-01-02 03:04:05.000006"},
		{time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC), pgtype.DateOID, "2024-01-02"},
	} {
		if got := string(appendText(nil, c.v, c.oid)); got != c.want {
			t.Errorf("%#v → %q, want %q", c.v, got, c.want)
		}
	}
}

// The hand-built messages decode as pgproto3 reads them.
func TestMessagesDecode(t *testing.T) {
	b := appendRowDescription(nil, []column{{name: "a", oid: pgtype.Int4OID, size: 4}, {name: "b", oid: pgtype.TextOID, size: -1, binary: true}})
	var rd pgproto3.RowDescription
	if err := rd.Decode(b[5:]); err != nil || len(rd.Fields) != 2 || string(rd.Fields[1].Name) != "b" ||
		rd.Fields[0].DataTypeOID != pgtype.Int4OID || rd.Fields[1].Format != 1 || rd.Fields[0].TypeModifier != -1 {
		t.Errorf("RowDescription %+v %v", rd, err)
	}
	for k, want := range map[kind]string{
		{verb: "INSERT"}: "INSERT 0 3", {verb: "UPDATE"}: "UPDATE 3", {verb: "SELECT"}: "SELECT 3", {tag: "BEGIN"}: "BEGIN",
	} {
		var cc pgproto3.CommandComplete
		b := appendComplete(nil, k, 3)
		if err := cc.Decode(b[5:]); err != nil || string(cc.CommandTag) != want {
			t.Errorf("CommandComplete %q %v, want %q", cc.CommandTag, err, want)
		}
	}
}

func TestParamValue(t *testing.T) {
	for _, c := range []struct {
		oid    uint32
		format int16
		in     []byte
		want   any
	}{
		{0, 0, []byte("42"), int64(42)},
		{0, 0, []byte("007"), "007"},
		{0, 0, []byte("abc"), "abc"},
		{0, 0, []byte(`\x00ff`), []byte{0, 0xff}},
		{0, 0, []byte(`\xzz`), `\xzz`},
		{0, 0, nil, nil},
		{pgtype.TextOID, 0, []byte("42"), "42"},
		{pgtype.Int4OID, 1, []byte{0, 0, 1, 0}, int64(256)},
		{pgtype.Float8OID, 0, []byte("1.5"), 1.5},
		{pgtype.BoolOID, 0, []byte("t"), int64(1)},
	} {
		got, err := paramValue(c.oid, c.format, c.in)
		if err != nil {
			t.Errorf("%d/%d %q: %v", c.oid, c.format, c.in, err)
			continue
		}
		if gb, ok := got.([]byte); ok {
			if wb, ok := c.want.([]byte); !ok || !bytes.Equal(gb, wb) {
				t.Errorf("%d/%d %q → %q, want %#v", c.oid, c.format, c.in, gb, c.want)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%d/%d %q → %#v, want %#v", c.oid, c.format, c.in, got, c.want)
		}
	}
	if _, err := paramValue(pgtype.Int4OID, 0, []byte("x")); err == nil {
		t.Error("a bad int4 passed")
	}
}
