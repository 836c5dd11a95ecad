// Package wire frames the PostgreSQL frontend/backend protocol v3 for a gateway that forwards most bytes
// untouched.
//
// The Decoder cuts a byte stream into messages using only the 5-byte header (type byte and an int32
// length that counts itself). It never allocates according to a length a peer merely claims: messages
// that are not inspected are streamed through in pieces as their bytes arrive, and messages that must be
// inspected are accumulated in pooled buffers that grow with the bytes actually received, bounded by
// configured limits. The same Decoder serves client→gateway and backend→gateway streams.
package wire

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
)

// Protocol constants.
const (
	// MaxStartupPacket bounds the length field of an untyped startup packet, like PostgreSQL's
	// MAX_STARTUP_PACKET_LENGTH.
	MaxStartupPacket  = 10000
	ProtocolVersion30 = 196608 // 3.0
	ProtocolVersion32 = 196610 // 3.2
	SSLRequestCode    = 80877103
	GSSENCRequestCode = 80877104
	CancelRequestCode = 80877102

	// minStartupPacket is the smallest valid startup length field: length plus a 4-byte code.
	minStartupPacket = 8
)

// Decoder defaults used when a DecoderConfig bound is zero or negative.
const (
	// DefaultMaxMessage is PostgreSQL's own ceiling for a message (PQ_LARGE_MESSAGE_LIMIT + 1).
	DefaultMaxMessage = 0x3fffffff
	// DefaultMaxInspect keeps a connection's worst-case inspection buffer at 1 MiB.
	DefaultMaxInspect = 1 << 20
)

// DecoderConfig bounds what a Decoder accepts. Limits compare against the message's length field (which
// counts its own 4 bytes but not the type byte).
type DecoderConfig struct {
	MaxMessage int       // bound on any message's length field; larger → *Error 54000. <= 0: DefaultMaxMessage.
	MaxInspect int       // bound on messages buffered whole for inspection; larger → *Error 54000. <= 0: DefaultMaxInspect.
	Inspect    [256]bool // message types buffered whole
}

// Frame is one piece of a message handed to the Feed callback. Its slices alias the Feed input or the
// decoder's buffers and are valid only during the callback.
type Frame struct {
	Type  byte   // message type; 0 for a startup packet (a typed message of type 0 is rejected)
	Len   int    // body length of the whole message (length field minus 4)
	Whole bool   // the whole message is in this Frame; Body is the complete body
	Body  []byte // Whole: the complete body. Streamed: this piece's part of the body (may be empty)
	Raw   []byte // the bytes to forward for this piece, exactly as on the wire (header included when First)
	First bool   // this piece starts the message (its Raw includes the header)
	Last  bool   // this piece ends the message

	// Trailing is how many bytes of the current Feed input follow this piece. After an SSLRequest or
	// GSSENCRequest it must be zero (and the decoder not Pending): bytes sent before the handshake answer
	// were not protected by it (CVE-2021-23222 class).
	Trailing int
}

type decoderState uint8

const (
	stateHeader decoderState = iota // waiting for (the rest of) a header
	stateStream                     // forwarding the body of a streamed message
	stateAccum                      // accumulating a message to deliver it whole
)

// Decoder splits a protocol stream into frames. It is not safe for concurrent use.
type Decoder struct {
	// Every idle client holds one, so the fields are packed (112 bytes) and the Frame handed to the
	// callback is borrowed for the duration of a Feed rather than kept here.
	inspect    typeSet // a bitmap rather than [256]bool
	maxMessage int32
	maxInspect int32

	bodyLen int
	left    int // stateStream: body bytes still to come

	acc   *[]byte // stateAccum: header and body received so far
	accN  int
	total int // stateAccum: header plus body length

	err error

	state         decoderState
	expectStartup bool    // the next message is an untyped startup packet
	hdr           [5]byte // header bytes split across Feed calls
	hdrN          uint8
	hl            uint8 // header length of the current message: 5, or 4 for a startup packet
	typ           byte
}

// frames lends the Frame passed to Feed callbacks.
var frames = sync.Pool{New: func() any { return new(Frame) }}

// NewDecoder returns a Decoder for typed messages. Call ExpectStartup for the first message of a client
// connection.
func NewDecoder(cfg DecoderConfig) *Decoder {
	d := &Decoder{maxMessage: bound(cfg.MaxMessage, DefaultMaxMessage), maxInspect: bound(cfg.MaxInspect, DefaultMaxInspect)}
	for typ, on := range cfg.Inspect {
		if on {
			d.inspect.set(byte(typ), true)
		}
	}
	return d
}

// ExpectStartup makes the next message an untyped startup packet (4-byte length, no type byte), bounded
// by MaxStartupPacket and always delivered whole with Type 0. It may be called from inside the Feed
// callback; it takes effect at the next message boundary.
func (d *Decoder) ExpectStartup() { d.expectStartup = true }

// SetInspect chooses whether messages of type typ are buffered whole. It takes effect from the next
// message header.
func (d *Decoder) SetInspect(typ byte, on bool) { d.inspect.set(typ, on) }

// typeSet is a set of message types.
type typeSet [4]uint64

func (s *typeSet) set(typ byte, on bool) {
	if on {
		s[typ>>6] |= 1 << (typ & 63)
	} else {
		s[typ>>6] &^= 1 << (typ & 63)
	}
}

func (s *typeSet) has(typ byte) bool { return s[typ>>6]&(1<<(typ&63)) != 0 }

// SetMaxInspect changes the bound on inspected messages from the next message on: a gateway
// keeps it small until the client has authenticated.
func (d *Decoder) SetMaxInspect(n int) { d.maxInspect = bound(n, DefaultMaxInspect) }

// bound turns a configured limit into a length-field bound: the default when unset, and at most
// what an int32 length field can say.
func bound(n, def int) int32 {
	switch {
	case n <= 0:
		return int32(def)
	case n > math.MaxInt32:
		return math.MaxInt32
	}
	return int32(n)
}

// Pending reports whether a partial message is buffered inside the decoder (header bytes or an inspected
// message being accumulated).
func (d *Decoder) Pending() bool { return d.hdrN > 0 || d.acc != nil }

// AtBoundary reports whether the next byte fed starts a new message.
func (d *Decoder) AtBoundary() bool { return d.state == stateHeader && d.hdrN == 0 }

// Reset releases internal buffers and returns the decoder to its initial state (typed messages, no error).
// The inspect settings are kept.
func (d *Decoder) Reset() {
	d.releaseAcc()
	d.expectStartup = false
	d.state = stateHeader
	d.hdrN = 0
	d.left = 0
	d.err = nil
}

// held reports the bytes of buffer memory the decoder holds (for tests).
func (d *Decoder) held() int {
	if d.acc == nil {
		return 0
	}
	return cap(*d.acc)
}

// Feed consumes all of in and calls fn for each frame piece, in order. If fn returns an error, Feed stops
// and returns it. After any error the decoder is unusable (the stream is out of sync) and Feed keeps
// returning that error; protocol failures are *Error.
//
// fn may call ExpectStartup and SetInspect (they apply from the next message) but not Feed or Reset.
func (d *Decoder) Feed(in []byte, fn func(f *Frame) error) error {
	if d.err != nil {
		return d.err
	}
	f := frames.Get().(*Frame)
	defer frames.Put(f)
	for len(in) > 0 {
		var err error
		switch d.state {
		case stateHeader:
			in, err = d.feedHeader(in, f, fn)
		case stateStream:
			in, err = d.feedStream(in, f, fn)
		case stateAccum:
			in, err = d.feedAccum(in, f, fn)
		}
		if err != nil {
			d.releaseAcc()
			d.err = err
			return err
		}
	}
	return nil
}

func (d *Decoder) feedHeader(in []byte, f *Frame, fn func(*Frame) error) ([]byte, error) {
	if d.hdrN == 0 {
		d.hl = 5
		if d.expectStartup {
			d.hl = 4
		}
		if len(in) >= int(d.hl) {
			return d.feedContiguous(in, f, fn)
		}
	}

	// The header is split across Feed calls: keep its bytes (at most 5) until it is complete.
	c := copy(d.hdr[d.hdrN:d.hl], in)
	d.hdrN += uint8(c)
	in = in[c:]
	if d.hdrN < d.hl {
		return in, nil
	}
	d.hdrN = 0

	if err := d.startMessage(d.hdr[:d.hl]); err != nil {
		return nil, err
	}
	hdr := d.hdr[:d.hl]
	switch {
	case d.bodyLen == 0:
		// Only typed messages can be empty; startup packets are at least 8 bytes.
		return in, d.emit(f, fn, true, hdr, hdr[d.hl:], true, true, len(in))
	case d.wantsWhole():
		d.beginAccum(hdr, int(d.hl)+min(len(in), d.bodyLen))
		return in, nil
	default:
		d.state = stateStream
		d.left = d.bodyLen
		return in, d.emit(f, fn, false, hdr, hdr[d.hl:], true, false, len(in))
	}
}

// feedContiguous handles a message whose header starts at in[0] and is entirely inside in: the common,
// zero-copy path.
func (d *Decoder) feedContiguous(in []byte, f *Frame, fn func(*Frame) error) ([]byte, error) {
	var total int
	for {
		if err := d.startMessage(in[:d.hl]); err != nil {
			return nil, err
		}
		total = int(d.hl) + d.bodyLen
		if len(in) < total {
			break
		}
		err := d.emit(f, fn, true, in[:total], in[d.hl:total], true, true, len(in)-total)
		in = in[total:]
		// Stay in this loop for runs of complete typed messages, the bulk of the traffic.
		if err != nil || len(in) < 5 || d.expectStartup {
			return in, err
		}
		d.hl = 5
	}
	if d.wantsWhole() {
		d.beginAccum(in, len(in))
		return nil, nil
	}
	d.state = stateStream
	d.left = total - len(in)
	return nil, d.emit(f, fn, false, in, in[d.hl:], true, false, 0)
}

func (d *Decoder) feedStream(in []byte, f *Frame, fn func(*Frame) error) ([]byte, error) {
	k := min(len(in), d.left)
	d.left -= k
	last := d.left == 0
	if last {
		d.state = stateHeader
	}
	return in[k:], d.emit(f, fn, false, in[:k], in[:k], false, last, len(in)-k)
}

func (d *Decoder) feedAccum(in []byte, f *Frame, fn func(*Frame) error) ([]byte, error) {
	k := min(len(in), d.total-d.accN)
	d.grow(d.accN + k)
	d.accN += copy((*d.acc)[d.accN:], in[:k])
	in = in[k:]
	if d.accN < d.total {
		return in, nil
	}
	d.state = stateHeader
	buf := (*d.acc)[:d.total]
	err := d.emit(f, fn, true, buf, buf[d.hl:], true, true, len(in))
	d.releaseAcc()
	return in, err
}

// startMessage validates a complete header and records the message it announces.
func (d *Decoder) startMessage(hdr []byte) error {
	if d.hl == 4 {
		// The length was read as a startup packet, so the next message is typed again. Clearing the flag
		// here lets the callback re-arm it (after answering an SSLRequest) while handling this packet.
		d.expectStartup = false
		n := int64(int32(binary.BigEndian.Uint32(hdr)))
		if n < minStartupPacket || n > MaxStartupPacket {
			return protocolViolation("invalid length of startup packet")
		}
		d.typ = 0
		d.bodyLen = int(n) - 4
		return nil
	}

	typ := hdr[0]
	if typ == 0 {
		// No protocol message has type 0, and rejecting it keeps Frame.Type 0 meaning a startup packet.
		return protocolViolation("invalid message type 0")
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[1:])))
	if n < 4 {
		return protocolViolation("invalid message length %d for message type %q", n, typ)
	}
	if n > int64(d.maxMessage) {
		return &Error{
			Code:    CodeProgramLimitExceeded,
			Message: fmt.Sprintf("message type %q of length %d exceeds the limit of %d bytes", typ, n, d.maxMessage),
		}
	}
	if d.inspect.has(typ) && n > int64(d.maxInspect) {
		return &Error{
			Code:    CodeProgramLimitExceeded,
			Message: fmt.Sprintf("message type %q of length %d exceeds the inspection limit of %d bytes", typ, n, d.maxInspect),
		}
	}
	d.typ = typ
	d.bodyLen = int(n) - 4
	return nil
}

func (d *Decoder) wantsWhole() bool { return d.hl == 4 || d.inspect.has(d.typ) }

// beginAccum starts accumulating the current message with the header (and any body bytes) in got.
// Capacity is leased for want bytes, what has actually arrived, not for what the header claims.
func (d *Decoder) beginAccum(got []byte, want int) {
	d.state = stateAccum
	d.total = int(d.hl) + d.bodyLen
	d.accN = 0
	d.grow(want)
	d.accN = copy(*d.acc, got)
}

// grow makes the accumulation buffer hold at least n bytes, n <= d.total.
func (d *Decoder) grow(n int) {
	if d.acc != nil && n <= cap(*d.acc) {
		return
	}
	size := n
	if size > MaxPooledBuffer && d.acc != nil {
		// Beyond the pooled classes, double to keep copying linear, but never past the message itself.
		size = min(max(n, 2*cap(*d.acc)), d.total)
	}
	nb := GetBuffer(size)
	if d.acc != nil {
		copy(*nb, (*d.acc)[:d.accN])
		PutBuffer(d.acc)
	}
	d.acc = nb
}

func (d *Decoder) releaseAcc() {
	if d.acc != nil {
		PutBuffer(d.acc)
		d.acc = nil
		d.accN = 0
	}
}

func (d *Decoder) emit(f *Frame, fn func(*Frame) error, whole bool, raw, body []byte, first, last bool, trailing int) error {
	// Field-by-field stores: building a Frame literal and copying it costs a store-forwarding stall that
	// showed up as the hottest line of the small-message benchmark.
	f.Type = d.typ
	f.Len = d.bodyLen
	f.Whole = whole
	f.Body = body
	f.Raw = raw
	f.First = first
	f.Last = last
	f.Trailing = trailing
	err := fn(f)
	f.Body, f.Raw = nil, nil // drop references to the caller's input
	return err
}
