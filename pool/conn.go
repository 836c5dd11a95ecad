package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/asyncgate/asyncgate/wire"
)

// Sink receives what one backend connection reads. Calls come from the connection's reader
// goroutine, one at a time; blocking in them stops reading from the backend, which is how a slow
// client's backpressure reaches the server.
type Sink interface {
	// BackendData delivers bytes read from the backend; b is valid only during the call.
	BackendData(c *Conn, b []byte)
	// BackendClosed reports that the connection is gone; it is the last call.
	BackendClosed(c *Conn, err error)
}

// Drainer is a Sink that wants to hear when a connection's queued output has been written, to
// resume a producer it paused.
type Drainer interface {
	Drained(c *Conn)
}

// Poller serves backend sockets on event loops (the epoll driver's loop.StreamServer, through a
// small adapter): a connection served on the loop of the session it is lent to needs no reader
// goroutine and no hand-off between threads.
type Poller interface {
	// Attach takes over fd and serves it on loop i (out of range: the loop's choice).
	Attach(fd int, i int, h StreamHandler) (Stream, error)
}

// StreamHandler is the connection's side of a polled socket (see loop.StreamHandler).
type StreamHandler interface {
	OnData(b []byte)
	OnWritable()
	OnClose(err error)
}

// Stream is the poller's side of a polled socket (see loop.Stream).
type Stream interface {
	Write(b []byte) (int, error)
	WantWrite()
	Close()
	Loop() int
}

// Conn is one authenticated backend connection used as a raw protocol stream. It is served either
// by a Poller's loop or by a reader and a writer goroutine of its own (TLS, or no Poller).
type Conn struct {
	pool   *Pool
	nc     net.Conn // goroutine mode
	stream Stream   // loop mode
	loop   int      // the loop serving stream, -1 in goroutine mode
	addr   net.Addr

	// PID and SecretKey are the backend's cancel key, never shown to clients.
	PID       uint32
	SecretKey []byte
	// Params holds the server's parameters as last reported. Whoever owns the connection
	// (the session it is lent to, or the pool) keeps it current from ParameterStatus messages.
	Params map[string]string
	// Frames cuts what the backend sends; used by the current owner from the reader goroutine.
	Frames *wire.Decoder
	// Settings holds values the gateway set on this connection for parameters the server does
	// not report (search_path before PostgreSQL 18, …); used by the owner like Frames.
	Settings map[string]string

	stmts *stmtCache

	out      wire.Outbox
	raw      syscall.RawConn // the socket, for non-blocking writes; nil under TLS
	kick     chan struct{}   // wakes the writer
	gone     chan struct{}   // closed when the connection broke
	created  time.Time
	gen      uint64    // the pool's generation when it was opened: older ones retire (Reconnect)
	lastUsed time.Time // guarded by pool.mu

	mu   sync.Mutex
	sink Sink
	err  error // why it broke; set once

	closing atomic.Bool // Close was called: a close that follows is the pool's doing
	failed  atomic.Bool // counted as a backend failure already
}

// Addr names the backend in messages.
func (c *Conn) Addr() string { return c.addr.String() }

// Loop names the loop serving the connection, or -1.
func (c *Conn) Loop() int { return c.loop }

// Pool returns the pool the connection belongs to.
func (c *Conn) Pool() *Pool { return c.pool }

// SetSink directs what the backend sends from now on.
func (c *Conn) SetSink(s Sink) {
	c.mu.Lock()
	c.sink = s
	c.mu.Unlock()
}

// Write queues b (copied) for the backend; Flush sends it.
func (c *Conn) Write(b []byte) { c.out.Write(b) }

// Flush has the writer send what Write queued; it never blocks. A write error closes the
// connection, which the sink learns through BackendClosed.
func (c *Conn) Flush() {
	if c.out.Buffered() == 0 {
		return
	}
	if c.stream != nil {
		if empty, err := c.out.TryFlush(c.stream.Write); !empty && err == nil {
			c.stream.WantWrite()
		} else if err != nil {
			c.stream.Close()
		}
		return
	}
	if c.raw != nil {
		// Most flushes fit in the socket buffer: write them here and spare the writer
		// goroutine's wake-up; only what does not fit waits for it.
		if empty, err := c.out.TryFlush(c.writeNow); empty || err != nil {
			if err != nil {
				c.nc.Close()
			}
			return
		}
	}
	select {
	case c.kick <- struct{}{}:
	default: // the writer is awake already and will see the new bytes
	}
}

// writeNow writes without blocking: what the socket does not take now is left for the writer.
func (c *Conn) writeNow(b []byte) (int, error) {
	var n int
	var werr error
	err := c.raw.Write(func(fd uintptr) bool {
		n, werr = unix.Write(int(fd), b)
		return true // one attempt: never wait for the socket here
	})
	if werr == unix.EAGAIN || werr == unix.EINTR {
		return 0, nil
	}
	if n < 0 {
		n = 0
	}
	if err == nil {
		err = werr
	}
	return n, err
}

// Buffered reports how many bytes wait for the backend. A lender that keeps it over its bound
// should stop reading its own producer until the sink hears Drained.
func (c *Conn) Buffered() int { return c.out.Buffered() }

// write is the connection's writer goroutine. Writing on its own goroutine keeps a backend that
// is slow to read from stalling the loop that produced the bytes; the backend may itself be
// waiting for us to read its output first.
func (c *Conn) write() {
	for {
		select {
		case <-c.kick:
		case <-c.gone:
			return
		}
		if c.out.Buffered() == 0 {
			continue
		}
		if err := c.out.Flush(c.nc); err != nil {
			c.nc.Close()
			return
		}
		if d, ok := c.currentSink().(Drainer); ok {
			d.Drained(c)
		}
	}
}

// Err reports why the connection broke, or nil while it works.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Cancel asks the backend to cancel what this connection is running, over a new connection, as
// PostgreSQL's CancelRequest requires. It waits until the server has taken the request.
func (c *Conn) Cancel(ctx context.Context) error {
	var d net.Dialer
	addr := c.addr
	nc, err := d.DialContext(ctx, addr.Network(), addr.String())
	if err != nil {
		return fmt.Errorf("pool %s: cancel on %s: %w", c.pool.cfg.Name, addr, err)
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if _, err := nc.Write(wire.AppendCancelRequest(nil, c.PID, c.SecretKey)); err != nil {
		return fmt.Errorf("pool %s: cancel on %s: %w", c.pool.cfg.Name, addr, err)
	}
	// The server closes the connection once it has read the request; waiting for that keeps a
	// following query from overtaking the cancel.
	var b [1]byte
	nc.Read(b[:])
	return nil
}

// Close closes the connection; the pool forgets it when its reader sees the close.
func (c *Conn) Close() {
	c.closing.Store(true)
	if c.stream != nil {
		c.stream.Close()
		return
	}
	if c.nc != nil { // nil when a loop could not take the socket over (serve)
		c.nc.Close()
	}
}

// OnData implements StreamHandler.
func (c *Conn) OnData(b []byte) { c.currentSink().BackendData(c, b) }

// OnWritable implements StreamHandler: the rest of what Flush could not write goes now.
func (c *Conn) OnWritable() {
	empty, err := c.out.TryFlush(c.stream.Write)
	switch {
	case err != nil:
		c.stream.Close()
	case !empty:
		c.stream.WantWrite()
	default:
		if d, ok := c.currentSink().(Drainer); ok {
			d.Drained(c)
		}
	}
}

// OnClose implements StreamHandler.
func (c *Conn) OnClose(err error) { c.broke(err) }

// read is the connection's reader goroutine: it reads continuously (a proxy that stops reading
// while it writes can deadlock against PostgreSQL) and hands the bytes to the current sink.
func (c *Conn) read() {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.nc.Read(buf)
		if n > 0 {
			c.currentSink().BackendData(c, buf[:n])
		}
		if err != nil {
			c.broke(err)
			return
		}
	}
}

// Sink returns the current sink.
func (c *Conn) Sink() Sink { return c.currentSink() }

func (c *Conn) currentSink() Sink {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sink
}

func (c *Conn) broke(err error) {
	if c.nc != nil {
		c.nc.Close()
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("backend %s: %w", c.Addr(), err)
	}
	s := c.sink
	c.mu.Unlock()
	c.out.Fail(err)
	close(c.gone)
	s.BackendClosed(c, err)
	// A close of our own (Close, Discard: the reader then sees net.ErrClosed) is no failure; an end
	// the server or the network chose is, also when the reader saw it before a lender's Close
	// (a FATAL answer, then EOF). A failed write closes the socket without Close, and counts.
	c.pool.forget(c, !c.closing.Load() || !errors.Is(err, net.ErrClosed))
}
