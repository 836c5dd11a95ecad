package mysql

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgtype"
)

// column is a result column as the Postgres client sees it.
type column struct {
	name   string
	oid    uint32
	size   int16 // typlen
	binary bool  // the client asked for the binary format
}

// pgType maps go-sql-driver's database type name to a Postgres type OID and length.
func pgType(mysqlType string) (uint32, int16) {
	switch strings.TrimPrefix(mysqlType, "UNSIGNED ") {
	case "TINYINT", "YEAR":
		return pgtype.Int2OID, 2
	case "SMALLINT":
		if strings.HasPrefix(mysqlType, "UNSIGNED") {
			return pgtype.Int4OID, 4 // up to 65535
		}
		return pgtype.Int2OID, 2
	case "MEDIUMINT":
		return pgtype.Int4OID, 4
	case "INT":
		if strings.HasPrefix(mysqlType, "UNSIGNED") {
			return pgtype.Int8OID, 8
		}
		return pgtype.Int4OID, 4
	case "BIGINT":
		if strings.HasPrefix(mysqlType, "UNSIGNED") {
			return pgtype.NumericOID, -1 // beyond int8
		}
		return pgtype.Int8OID, 8
	case "DECIMAL":
		return pgtype.NumericOID, -1
	case "FLOAT":
		return pgtype.Float4OID, 4
	case "DOUBLE":
		return pgtype.Float8OID, 8
	case "DATE":
		return pgtype.DateOID, 4
	case "DATETIME", "TIMESTAMP":
		return pgtype.TimestampOID, 8
	case "JSON":
		return pgtype.JSONOID, -1
	case "BLOB", "TINYBLOB", "MEDIUMBLOB", "LONGBLOB", "BINARY", "VARBINARY", "BIT", "GEOMETRY":
		return pgtype.ByteaOID, -1
	}
	// CHAR, VARCHAR, TEXT and its sizes, ENUM, SET, TIME (which may exceed a day), NULL.
	return pgtype.TextOID, -1
}

func appendInt16(b []byte, v int16) []byte   { return binary.BigEndian.AppendUint16(b, uint16(v)) }
func appendInt32(b []byte, v int32) []byte   { return binary.BigEndian.AppendUint32(b, uint32(v)) }
func appendUint32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }

// appendRowDescription encodes a RowDescription for cols.
func appendRowDescription(b []byte, cols []column) []byte {
	b = append(b, 'T', 0, 0, 0, 0)
	start := len(b) - 4
	b = appendInt16(b, int16(len(cols)))
	for _, c := range cols {
		b = append(b, c.name...)
		b = append(b, 0)
		b = appendUint32(b, 0) // table OID
		b = appendInt16(b, 0)  // attribute number
		b = appendUint32(b, c.oid)
		b = appendInt16(b, c.size)
		b = appendInt32(b, -1) // type modifier
		if c.binary {
			b = appendInt16(b, 1)
		} else {
			b = appendInt16(b, 0)
		}
	}
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// appendText appends the Postgres text form of a value go-sql-driver returned for a column.
func appendText(b []byte, v any, oid uint32) []byte {
	switch x := v.(type) {
	case []byte:
		if oid == pgtype.ByteaOID {
			b = append(b, '\\', 'x')
			return hex.AppendEncode(b, x)
		}
		return append(b, x...)
	case string:
		return append(b, x...)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case uint64:
		return strconv.AppendUint(b, x, 10)
	case float32:
		return appendFloat(b, float64(x), 32)
	case float64:
		return appendFloat(b, x, 64)
	case bool:
		if x {
			return append(b, '1')
		}
		return append(b, '0')
	case time.Time:
		if oid == pgtype.DateOID {
			return x.AppendFormat(b, "2006-01-02")
		}
		return x.AppendFormat(b, "2006-01-02 15:04:05.999999")
	case gomysql.NullTime:
		return appendText(b, x.Time, oid)
	}
	return b
}

func appendFloat(b []byte, f float64, bits int) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(b, "Infinity"...)
	case math.IsInf(f, -1):
		return append(b, "-Infinity"...)
	case math.IsNaN(f):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bits)
}
