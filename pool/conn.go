package pool

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

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

// Conn is one authenticated backend connection used as a raw protocol stream.
type Conn struct {
	pool *Pool
	nc   net.Conn

	// PID and SecretKey are the backend's cancel key, never shown to clients.
	PID       uint32
	SecretKey []byte
	// Params holds the server's parameters as last reported. Whoever owns the connection
	// (the session it is lent to, or the pool) keeps it current from ParameterStatus messages.
	Params map[string]string
	// Frames cuts what the backend sends; used by the current owner from the reader goroutine.
	Frames *wire.Decoder

	out      wire.Outbox
	created  time.Time
	lastUsed time.Time // guarded by pool.mu

	mu   sync.Mutex
	sink Sink
	err  error // why it broke; set once
}

// Addr names the backend in messages.
func (c *Conn) Addr() string { return c.nc.RemoteAddr().String() }

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

// Flush sends what Write queued. Call it outside the session's serialisation: it blocks while the
// backend does not read, and the backend may be waiting for us to read its output first.
func (c *Conn) Flush() error {
	if err := c.out.Flush(c.nc); err != nil {
		c.nc.Close()
		return fmt.Errorf("pool %s: write to backend %s: %w", c.pool.cfg.Name, c.Addr(), err)
	}
	return nil
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
	addr := c.nc.RemoteAddr()
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
func (c *Conn) Close() { c.nc.Close() }

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

func (c *Conn) currentSink() Sink {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sink
}

func (c *Conn) broke(err error) {
	c.nc.Close()
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("backend %s: %w", c.Addr(), err)
	}
	s := c.sink
	c.mu.Unlock()
	c.out.Fail(err)
	s.BackendClosed(c, err)
	c.pool.forget(c)
}
