package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// piece is a copy of a Frame, safe to keep after the callback.
type piece struct {
	Type     byte
	Len      int
	Whole    bool
	First    bool
	Last     bool
	Body     []byte
	Raw      []byte
	Trailing int
}

// message is a message reassembled from pieces.
type message struct {
	Type  byte
	Body  []byte
	Raw   []byte
	Whole bool // delivered as a single Whole frame
}

// collector records pieces and checks the framing invariants as they arrive.
type collector struct {
	pieces []piece
	msgs   []message
	cur    *message // message being streamed
	curLen int
}

func (c *collector) add(f *Frame) error {
	p := piece{
		Type: f.Type, Len: f.Len, Whole: f.Whole, First: f.First, Last: f.Last,
		Body: bytes.Clone(f.Body), Raw: bytes.Clone(f.Raw), Trailing: f.Trailing,
	}
	c.pieces = append(c.pieces, p)

	hl := 5
	if f.Type == 0 {
		hl = 4
	}
	if f.Whole {
		switch {
		case c.cur != nil:
			return errors.New("Whole frame inside a streamed message")
		case !f.First || !f.Last:
			return errors.New("Whole frame without First and Last")
		case len(f.Body) != f.Len:
			return fmt.Errorf("Whole frame body %d bytes, Len %d", len(f.Body), f.Len)
		case len(f.Raw) != hl+f.Len:
			return fmt.Errorf("Whole frame raw %d bytes, want %d", len(f.Raw), hl+f.Len)
		case !bytes.Equal(f.Raw[hl:], f.Body):
			return errors.New("Whole frame body is not the tail of raw")
		}
		if err := checkHeader(f.Raw, f.Type, f.Len, hl); err != nil {
			return err
		}
		c.msgs = append(c.msgs, message{Type: f.Type, Body: p.Body, Raw: p.Raw, Whole: true})
		return nil
	}

	if f.Type == 0 {
		return errors.New("startup packet streamed")
	}
	if f.First {
		if c.cur != nil {
			return errors.New("First piece inside a streamed message")
		}
		if len(f.Raw) < hl || !bytes.Equal(f.Raw[hl:], f.Body) {
			return errors.New("First piece raw is not header+body")
		}
		if err := checkHeader(f.Raw, f.Type, f.Len, hl); err != nil {
			return err
		}
		if f.Len == 0 {
			return errors.New("empty message streamed")
		}
		c.cur = &message{Type: f.Type, Raw: bytes.Clone(f.Raw), Body: bytes.Clone(f.Body)}
		c.curLen = f.Len
	} else {
		if c.cur == nil {
			return errors.New("continuation piece outside a message")
		}
		if c.cur.Type != f.Type || c.curLen != f.Len {
			return errors.New("continuation piece changed Type/Len")
		}
		if !bytes.Equal(f.Raw, f.Body) {
			return errors.New("continuation raw differs from body")
		}
		if len(f.Raw) == 0 {
			return errors.New("empty continuation piece")
		}
		c.cur.Raw = append(c.cur.Raw, f.Raw...)
		c.cur.Body = append(c.cur.Body, f.Body...)
	}
	if len(c.cur.Body) > c.curLen {
		return errors.New("streamed body longer than Len")
	}
	if f.Last != (len(c.cur.Body) == c.curLen) {
		return fmt.Errorf("Last=%v with %d of %d body bytes", f.Last, len(c.cur.Body), c.curLen)
	}
	if f.Last {
		c.msgs = append(c.msgs, *c.cur)
		c.cur = nil
	}
	return nil
}

func checkHeader(raw []byte, typ byte, n, hl int) error {
	if hl == 5 && raw[0] != typ {
		return fmt.Errorf("raw type %q, Type %q", raw[0], typ)
	}
	if l := int(binary.BigEndian.Uint32(raw[hl-4:])); l != n+4 {
		return fmt.Errorf("raw length %d, Len %d", l, n)
	}
	return nil
}

// raw concatenates the Raw of all pieces.
func (c *collector) raw() []byte {
	var b []byte
	for _, p := range c.pieces {
		b = append(b, p.Raw...)
	}
	return b
}

// pending returns the bytes buffered in the decoder (not yet emitted as Raw).
func (d *Decoder) pendingBytes() []byte {
	if d.acc != nil {
		return (*d.acc)[:d.accN]
	}
	return d.hdr[:d.hdrN]
}

func typed(typ byte, body []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)+4))
	return append(b, body...)
}

func header(typ byte, length int32) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(length))
	return b
}

func untyped(body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
	return append(b, body...)
}

func wantCode(err error, code string) error {
	var we *Error
	if !errors.As(err, &we) {
		return fmt.Errorf("error %v is not *Error", err)
	}
	if we.Code != code {
		return fmt.Errorf("error %v: code %s, want %s", err, we.Code, code)
	}
	return nil
}
