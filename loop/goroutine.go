package loop

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/asyncgate/asyncgate/wire"
)

// readSize is the buffer leased for one read. Larger frames arrive over several reads and are
// streamed by the framer, so this bounds memory per active connection, not message size.
const readSize = 16 << 10

// Goroutines is the portable driver: one goroutine per connection, parked on socket readiness
// without holding a buffer, leasing one only while bytes are in flight.
type Goroutines struct {
	cfg Config

	mu     sync.Mutex
	conns  map[*gconn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewGoroutines returns the goroutine-per-connection driver.
func NewGoroutines(cfg Config) *Goroutines {
	return &Goroutines{cfg: cfg.withDefaults(), conns: make(map[*gconn]struct{})}
}

// Serve implements Driver.
func (d *Goroutines) Serve(ln net.Listener, accept func(Conn) Handler) error {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors: back off instead of spinning; clients wait in the backlog.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if !d.serveConn(nc, accept) {
			return nil
		}
	}
}

// serveConn serves an accepted connection; false (with nc closed) after Shutdown.
func (d *Goroutines) serveConn(nc net.Conn, accept func(Conn) Handler) bool {
	c := d.newConn(nc)
	if !d.track(c) {
		nc.Close()
		return false
	}
	// Under mu, as the callbacks run: the handler may hand c to other goroutines, whose Exec must
	// find c.h set.
	c.mu.Lock()
	c.h = accept(c)
	c.mu.Unlock()
	go c.run()
	return true
}

func (d *Goroutines) newConn(nc net.Conn) *gconn {
	c := &gconn{drv: d, nc: nc, rd: nc, w: nc, done: make(chan struct{})}
	c.out.Max = d.cfg.MaxOutput
	return c
}

// adopt prepares a connection that another driver hands over with its Handler already running,
// e.g. to do TLS, which needs a net.Conn. When tlsCfg is set the handshake comes first; paused
// carries over PauseReads. The caller publishes the result, then calls start.
func (d *Goroutines) adopt(nc net.Conn, h Handler, tlsCfg *tls.Config, paused bool) *gconn {
	c := d.newConn(nc)
	c.h = h
	c.tlsCfg = tlsCfg
	if paused {
		c.resume = make(chan struct{})
	}
	return c
}

// start runs an adopted connection. After Shutdown it reports false and marks c closed, so Exec
// refuses it; the caller still owns nc.
func (d *Goroutines) start(c *gconn) bool {
	if !d.track(c) {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		return false
	}
	go c.run()
	return true
}

func (d *Goroutines) track(c *gconn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.conns[c] = struct{}{}
	d.wg.Add(1)
	return true
}

func (d *Goroutines) untrack(c *gconn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
	d.wg.Done()
}

// Shutdown implements Driver.
func (d *Goroutines) Shutdown() {
	d.mu.Lock()
	d.closed = true
	for c := range d.conns {
		c.kill()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

type gconn struct {
	drv *Goroutines
	nc  net.Conn
	rd  io.Reader // nc, or the *tls.Conn once upgraded; used by the reader goroutine only
	h   Handler

	// mu serialises the handler: callbacks, Exec functions, timers.
	mu     sync.Mutex
	closed bool // OnClose has run (guarded by mu)

	out wire.Outbox

	// omu guards what both the reader and producers look at.
	omu     sync.Mutex
	w       io.Writer // nc, or the *tls.Conn once upgraded
	closing bool
	tlsConn *tls.Conn

	tlsCfg *tls.Config   // a handshake the handler asked for (guarded by mu)
	resume chan struct{} // non-nil while reads are paused (guarded by mu)
	probe  [1]byte

	done     chan struct{} // closed when the connection is being torn down
	killOnce sync.Once
}

// kill closes the socket and wakes the reader wherever it waits.
func (c *gconn) kill() {
	c.killOnce.Do(func() { close(c.done) })
	c.nc.Close()
}

func (c *gconn) PauseReads() {
	if c.resume == nil {
		c.resume = make(chan struct{})
	}
}

func (c *gconn) ResumeReads() {
	if c.resume != nil {
		close(c.resume)
		c.resume = nil
	}
}

// waitResumed blocks while the handler has paused reads.
func (c *gconn) waitResumed() error {
	c.mu.Lock()
	ch := c.resume
	c.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-c.done:
		return net.ErrClosed
	}
}

func (c *gconn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Loop implements Conn: a goroutine connection has no loop.
func (c *gconn) Loop() int { return -1 }

func (c *gconn) TLS() bool {
	c.omu.Lock()
	defer c.omu.Unlock()
	return c.tlsConn != nil
}

func (c *gconn) Write(b []byte) { c.out.Write(b) }

func (c *gconn) StartTLS(cfg *tls.Config) { c.tlsCfg = cfg }

func (c *gconn) Close() {
	c.omu.Lock()
	c.closing = true
	c.omu.Unlock()
}

func (c *gconn) Exec(f func()) bool {
	if !c.call(f) {
		return false
	}
	c.afterCall()
	return true
}

// call runs f serialised with the callbacks, unless the connection is closed.
func (c *gconn) call(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	f()
	return true
}

// afterCall sends what a call queued; it may block while the client's output is over its bound.
func (c *gconn) afterCall() {
	c.flush()
	c.h.Flush()
	c.omu.Lock()
	closing := c.closing
	c.omu.Unlock()
	if closing {
		c.kill() // the output is out; wake the reader so it ends the connection
	}
}

func (c *gconn) AfterFunc(d time.Duration, f func()) func() bool {
	t := time.AfterFunc(d, func() { c.Exec(f) })
	return t.Stop
}

// run is the connection's goroutine: park, read, dispatch, flush, until the connection ends.
func (c *gconn) run() {
	defer c.drv.untrack(c)
	err := c.serve()
	if err == errClosing {
		c.linger()
	}
	c.nc.Close()
	c.mu.Lock()
	c.closed = true
	c.h.OnClose(err)
	c.mu.Unlock()
	c.out.Fail(net.ErrClosed)
}

func (c *gconn) serve() error {
	if cfg := c.takeTLS(); cfg != nil { // adopted with a handshake to do
		if err := c.handshake(cfg); err != nil {
			return err
		}
	}
	for {
		if err := c.waitResumed(); err != nil {
			return err
		}
		if c.rd != c.nc {
			// Bytes already decrypted inside tls.Conn are invisible to the socket: take them
			// before parking, or the client hangs waiting for an answer to them.
			n, err := c.readBuffered()
			if err != nil {
				return err
			}
			if n > 0 {
				if err := c.afterEvent(); err != nil {
					return err
				}
				continue
			}
		}
		if c.rd == c.nc {
			if rc := c.rawConn(); rc != nil {
				if err := c.readRaw(rc); err != nil {
					return err
				}
				if err := c.afterEvent(); err != nil {
					return err
				}
				continue
			}
		}
		if err := c.park(); err != nil {
			return err
		}
		if _, err := c.readOnce(); err != nil {
			return err
		}
		if err := c.afterEvent(); err != nil {
			return err
		}
	}
}

// readBuffered reads what TLS holds already, without waiting for the socket.
func (c *gconn) readBuffered() (int, error) {
	c.nc.SetReadDeadline(time.Unix(1, 0))
	n, err := c.readOnce()
	c.nc.SetReadDeadline(time.Time{})
	return n, err
}

// readOnce reads what is there into a leased buffer and hands it to the handler.
func (c *gconn) readOnce() (int, error) {
	bp := wire.GetBuffer(readSize)
	defer wire.PutBuffer(bp)
	n, err := c.rd.Read(*bp)
	if n > 0 {
		c.mu.Lock()
		c.h.OnData((*bp)[:n])
		c.mu.Unlock()
	}
	if err != nil && !isTimeout(err) {
		return n, err
	}
	return n, nil
}

// afterEvent sends queued output and carries out what the handler asked for.
func (c *gconn) afterEvent() error {
	if err := c.flush(); err != nil {
		return err
	}
	c.h.Flush()
	c.omu.Lock()
	closing := c.closing
	c.omu.Unlock()
	if closing {
		return errClosing
	}
	if cfg := c.takeTLS(); cfg != nil {
		return c.handshake(cfg)
	}
	return nil
}

func (c *gconn) takeTLS() *tls.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg := c.tlsCfg
	c.tlsCfg = nil
	return cfg
}

func (c *gconn) handshake(cfg *tls.Config) error {
	tc := tls.Server(c.nc, cfg)
	c.nc.SetDeadline(time.Now().Add(c.drv.cfg.HandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		return err
	}
	c.nc.SetDeadline(time.Time{})
	c.rd = tc
	c.omu.Lock()
	c.tlsConn = tc
	c.w = tc
	c.omu.Unlock()
	return nil
}

func (c *gconn) rawConn() syscall.RawConn {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// readRaw waits for the plaintext socket to be readable and reads in the same step: the
// buffer is leased only once a read has found bytes, so a parked client holds none, and a
// request costs one read instead of a probe and a read.
func (c *gconn) readRaw(rc syscall.RawConn) error {
	var bp *[]byte
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		bp = wire.GetBuffer(readSize)
		for {
			n, rerr = unix.Read(int(fd), *bp)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			wire.PutBuffer(bp)
			bp = nil
			return false // wait for readiness, holding nothing
		}
		return true
	})
	if bp != nil {
		defer wire.PutBuffer(bp)
	}
	if err != nil {
		return err
	}
	if rerr != nil {
		return rerr
	}
	if n <= 0 {
		return io.EOF
	}
	c.mu.Lock()
	c.h.OnData((*bp)[:n])
	c.mu.Unlock()
	return nil
}

// park waits until the socket is readable without holding a buffer.
func (c *gconn) park() error {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return nil // not a socket (tests with net.Pipe): the read itself blocks
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		// Probe instead of assuming: returning false without checking loses wake-ups.
		_, _, e := unix.Recvfrom(int(fd), c.probe[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch e {
		case unix.EAGAIN:
			return false
		case nil, unix.EINTR:
			return true
		default:
			perr = e
			return true
		}
	})
	if err != nil {
		return err
	}
	return perr
}

// errClosing ends a connection the handler closed.
var errClosing = errors.New("closed by the gateway")

// lingerTime bounds how long a connection the gateway closed keeps draining the client's input.
const lingerTime = time.Second

// linger half-closes and drains what the client still sends, briefly: closing a socket with
// unread input makes the kernel send RST, and the client would lose the error we just wrote.
func (c *gconn) linger() {
	tc, ok := c.nc.(*net.TCPConn)
	if !ok {
		return
	}
	tc.CloseWrite()
	tc.SetReadDeadline(time.Now().Add(lingerTime))
	var sink [512]byte
	for {
		if _, err := tc.Read(sink[:]); err != nil {
			return
		}
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// flush sends the queued output; see wire.Outbox for how it throttles producers.
func (c *gconn) flush() error {
	c.omu.Lock()
	w := c.w
	c.omu.Unlock()
	err := c.out.Flush(w)
	if err != nil {
		c.kill() // wakes the reader so the session learns the client is gone
	}
	return err
}
