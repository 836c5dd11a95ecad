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
