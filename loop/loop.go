// Package loop runs client connections: it reads their bytes, hands them to a Handler, and writes
// what the handler produced. Drivers differ in how they wait for sockets; the Handler does not see
// the difference.
//
// Concurrency contract: every Handler callback and every function passed to Conn.Exec for one
// connection runs while no other does (one goroutine at a time), so a session's state needs no
// locks of its own. Writes queued by a callback are sent after it returns, outside that
// serialisation, so a slow peer never blocks the session's other events.
package loop

import (
	"crypto/tls"
	"net"
	"time"
)

// Handler receives one connection's events.
type Handler interface {
	// OnData is called with bytes read from the client. b is valid only until OnData returns.
	OnData(b []byte)
	// OnClose is called exactly once, when the connection is gone (peer closed, error, or Close).
	OnClose(err error)
	// Flush is called after each callback and Exec function (after the client's output was handed
	// to the socket): the handler kicks off sending what it queued for other streams (its backend).
	// It must not block; a handler whose other streams are full pauses the client's reads instead.
	Flush()
}

// Conn is the driver's side of one client connection.
type Conn interface {
	// Write queues b (copied) for the client. Call only from a callback or an Exec function.
	Write(b []byte)
	// Exec runs f serialised with the connection's callbacks, then sends what f queued. It reports
	// false, without running f, once the connection is closed. Safe from any goroutine; it blocks
	// while the client's output is over its bound, which is how backpressure reaches producers.
	Exec(f func()) bool
	// AfterFunc runs f serialised with the callbacks after d, unless stop is called first.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
	// StartTLS makes the driver run a server-side TLS handshake once the current callback returns
	// and its output is sent; later bytes are read and written through TLS.
	StartTLS(cfg *tls.Config)
	// TLS reports whether the connection has completed a TLS handshake.
	TLS() bool
	// PauseReads stops OnData until ResumeReads: the client's bytes wait in the kernel and TCP
	// throttles the client. Call from a callback or an Exec function.
	PauseReads()
	ResumeReads()
	// Close closes the connection once the queued output is sent.
	Close()
	RemoteAddr() net.Addr
	// Loop names the event loop serving the connection (0 to loops-1), or -1 when it has none
	// of its own (goroutine driver, TLS). Streams attached to the same loop reach it without a
	// hand-off between threads.
	Loop() int
}

// StreamHandler receives the events of an outbound socket served by a loop: a backend
// connection. Calls run on the socket's loop goroutine, one at a time.
type StreamHandler interface {
	// OnData delivers bytes read from the socket. b stays valid until OnData returns or, when
	// OnData handed work to a connection with Conn.Exec, until that work has run; the stream
	// reads nothing more meanwhile, nor while that connection's output is over its bound, which
	// is how a slow client's backpressure reaches the stream's peer.
	OnData(b []byte)
	// OnWritable reports, once per WantWrite, that the socket takes writes again.
	OnWritable()
	// OnClose is called once, when the socket is gone (peer closed, error, or Close).
	OnClose(err error)
}

// Stream is the driver's side of an outbound socket. Its methods are safe from any goroutine.
type Stream interface {
	// Write writes what the socket takes now, without blocking: 0 and nil when it is full.
	Write(b []byte) (int, error)
	// WantWrite asks for one OnWritable as soon as the socket takes writes.
	WantWrite()
	// Close closes the socket; OnClose follows on the loop.
	Close()
	// Loop names the loop serving the socket.
	Loop() int
}

// StreamServer is implemented by drivers that serve outbound sockets on their loops.
type StreamServer interface {
	// AttachStream takes over fd, a connected non-blocking socket, and serves it on loop i
	// (i outside 0 to loops-1: the loop with the fewest streams). The driver closes fd.
	AttachStream(fd int, i int, h StreamHandler) (Stream, error)
}

// Driver serves connections accepted from listeners.
type Driver interface {
	// Serve accepts connections from ln until ln is closed, creating a Handler for each.
	Serve(ln net.Listener, accept func(Conn) Handler) error
	// Shutdown closes every connection and waits for their goroutines to end.
	Shutdown()
}

// Config bounds a driver's per-connection resources.
type Config struct {
	// Loops is the number of event loops of the epoll driver (0: GOMAXPROCS).
	Loops int
	// MaxOutput is how many bytes may wait for a slow client before producers block (Exec).
	MaxOutput int
	// HandshakeTimeout bounds a TLS handshake.
	HandshakeTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.MaxOutput <= 0 {
		c.MaxOutput = 1 << 20
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	return c
}
