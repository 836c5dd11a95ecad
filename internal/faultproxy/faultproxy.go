// Package faultproxy is a TCP proxy that injects network faults between a
// client and a server: latency with random spikes, a bandwidth limit, a hung
// server (blackhole), a dead server (refused connections) and connection
// resets. Tests and the benchmark suite put it between the gateway and a
// PostgreSQL backend; faults can be changed at any time with Set.
//
// Each proxied connection has a reader and a writer per direction, joined by
// a bounded queue of timestamped chunks. Readers never wait on a fault, so a
// delay neither stops the socket from being drained nor limits pipelined
// throughput; writers release chunks in order once their time has come, so
// a delayed chunk delays the ones behind it and bytes are never reordered.
package faultproxy

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Faults describes the faults to inject. The zero value forwards everything
// unchanged.
type Faults struct {
	// Delay is added to every chunk of data read from the target (server
	// responses). With probability SpikeP a chunk gets Spike on top, drawn
	// per chunk: PostgreSQL usually answers one request with one chunk, so
	// SpikeP 0.02 and Spike 50ms delay about 2% of responses by 50 ms.
	Delay  time.Duration
	SpikeP float64
	Spike  time.Duration

	// UpDelay is added to every chunk of data from the client to the target.
	UpDelay time.Duration

	// Blackhole makes the proxy a hung server: data is still read in both
	// directions but discarded, so nothing is forwarded and nothing is
	// answered, on new and existing connections alike. Discarding rather
	// than holding keeps memory bounded; when Blackhole is switched off only
	// data read from then on is forwarded, so a PostgreSQL connection that
	// lost bytes this way is out of step and should be dropped, as a client
	// would after timing out anyway. End of stream still passes, so a
	// connection whose peer closes it still winds down.
	Blackhole bool

	// Refuse makes the proxy a dead server: new connections are accepted
	// and reset at once, so a client's first read fails, or even its
	// connect when the reset wins the race. Existing connections are left
	// alone.
	Refuse bool

	// BandwidthDown limits target→client traffic to this many bytes per
	// second on each connection (token bucket; 0 means unlimited).
	BandwidthDown int

	// Seed seeds the spike draws; 0 picks a random seed. The draws restart
	// from Seed whenever Set changes it.
	Seed uint64
}

// Stats are counters since Start.
type Stats struct {
	Accepted      int64 // connections accepted, refused ones included
	Refused       int64 // reset at accept: Refuse was set or the target could not be dialled
	Resets        int64 // connections reset by Reset
	BytesUp       int64 // bytes written to the target
	BytesDown     int64 // bytes written to clients
	DelayedChunks int64 // chunks held back by Delay, UpDelay or a spike
}

const (
	chunkSize = 32 << 10
	// queueLen bounds each direction's delay queue. A full queue stops the
	// reader and TCP throttles the sender; since a reader that falls behind
	// reads bigger chunks, throughput under a delay d is bounded by
	// queueLen*chunkSize/d (160 MiB/s at 50 ms), well above what tests need.
	queueLen    = 256
	dialTimeout = 5 * time.Second
)

// Proxy forwards connections accepted on a local address to a target
// address, injecting the current Faults.
type Proxy struct {
	ln     net.Listener
	target string
	ctx    context.Context // cancelled by Close to abort dials
	cancel context.CancelFunc
	wg     sync.WaitGroup

	faults atomic.Pointer[Faults]

	rngMu sync.Mutex
	rng   *rand.Rand

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool

	closeOnce sync.Once
	closeErr  error

	accepted, refused, resets   atomic.Int64
	bytesUp, bytesDown, delayed atomic.Int64
}

// Start listens on 127.0.0.1 on a free port and forwards each accepted
// connection to target.
func Start(target string) (*Proxy, error) {
	return Listen("127.0.0.1:0", target)
}

// Listen is Start on a given address, for the command.
func Listen(addr, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:     ln,
		target: target,
		ctx:    ctx,
		cancel: cancel,
		rng:    newRand(0),
		conns:  make(map[*conn]struct{}),
	}
	p.faults.Store(&Faults{})
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the listening address as "host:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Host returns the listening IP address.
func (p *Proxy) Host() string { return p.ln.Addr().(*net.TCPAddr).IP.String() }

// Port returns the listening port.
func (p *Proxy) Port() uint16 { return uint16(p.ln.Addr().(*net.TCPAddr).Port) }

// Set replaces the faults. It takes effect at once on new and existing
// connections, except that a chunk already queued keeps the delay it was
// given when it was read.
func (p *Proxy) Set(f Faults) {
	f.Delay = max(f.Delay, 0)
	f.Spike = max(f.Spike, 0)
	f.UpDelay = max(f.UpDelay, 0)
	f.SpikeP = min(max(f.SpikeP, 0), 1)
	f.BandwidthDown = max(f.BandwidthDown, 0)

	p.rngMu.Lock()
	defer p.rngMu.Unlock()
	if f.Seed != p.faults.Load().Seed {
		p.rng = newRand(f.Seed)
	}
	p.faults.Store(&f)
}

// Faults returns the current faults.
func (p *Proxy) Faults() Faults { return *p.faults.Load() }

// Reset resets every current connection on both sides (SO_LINGER 0, then
// close), as a crashed server or a network failure would: the peers see
// ECONNRESET, or EOF if they had nothing left to read.
func (p *Proxy) Reset() {
	for _, c := range p.takeConns() {
		c.shutdown(true)
		p.resets.Add(1)
	}
}

// Conns returns the number of current proxied connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Accepted:      p.accepted.Load(),
		Refused:       p.refused.Load(),
		Resets:        p.resets.Load(),
		BytesUp:       p.bytesUp.Load(),
		BytesDown:     p.bytesDown.Load(),
		DelayedChunks: p.delayed.Load(),
	}
}

// Close stops listening, closes every proxied connection, dropping data
// still queued, and waits for all of the proxy's goroutines to exit.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.closeErr = p.ln.Close()
		p.cancel()
		for _, c := range p.takeConns() {
			c.shutdown(false)
		}
		p.wg.Wait()
	})
	return p.closeErr
}

// takeConns empties the connection set so that Conns is 0 as soon as Reset
// or Close returns, before the connections' goroutines have noticed.
func (p *Proxy) takeConns() []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
		delete(p.conns, c)
	}
	return cs
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http
			// does instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
				continue
			case <-p.ctx.Done():
				return
			}
		}
		backoff = 0
		p.accepted.Add(1)
		client := nc.(*net.TCPConn)
		if p.faults.Load().Refuse {
			p.refused.Add(1)
			rst(client)
			continue
		}
		c := &conn{p: p, client: client, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go c.serve()
	}
}

func (p *Proxy) forget(c *conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// delayFor returns the delay for a chunk just read in one direction.
func (p *Proxy) delayFor(down bool) time.Duration {
	f := p.faults.Load()
	if !down {
		return f.UpDelay
	}
	d := f.Delay
	if f.SpikeP > 0 {
		p.rngMu.Lock()
		spike := p.rng.Float64() < f.SpikeP
		p.rngMu.Unlock()
		if spike {
			d += f.Spike
		}
	}
	return d
}

func newRand(seed uint64) *rand.Rand {
	if seed == 0 {
		seed = rand.Uint64()
	}
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// rst closes c so that the peer gets a reset rather than an orderly FIN.
func rst(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// conn is one proxied connection.
type conn struct {
	p      *Proxy
	client *net.TCPConn

	mu     sync.Mutex
	server *net.TCPConn // nil until dialled
	once   sync.Once
	done   chan struct{} // closed by shutdown
}

type chunk struct {
	b  []byte
	at time.Time // release time
}

func (c *conn) serve() {
	defer c.p.wg.Done()
	defer c.p.forget(c)

	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(c.p.ctx, "tcp", c.p.target)
	if err != nil {
		// To the client a target that cannot be reached looks like a dead
		// server.
		if c.p.ctx.Err() == nil {
			c.p.refused.Add(1)
		}
		c.shutdown(true)
		return
	}
	if !c.setServer(nc.(*net.TCPConn)) {
		return
	}

	up := make(chan chunk, queueLen)
	down := make(chan chunk, queueLen)
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); c.read(c.client, up, false) }()
	go func() { defer wg.Done(); c.write(c.server, up, false) }()
	go func() { defer wg.Done(); c.read(c.server, down, true) }()
	go func() { defer wg.Done(); c.write(c.client, down, true) }()
	wg.Wait()
	c.shutdown(false)
}

// setServer records the dialled target connection, or closes it and
// reports false when the connection was shut down during the dial.
func (c *conn) setServer(s *net.TCPConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done:
		s.Close()
		return false
	default:
	}
	c.server = s
	return true
}

// shutdown closes both sockets, with a reset if rst is set, which unblocks
// every goroutine of the connection.
func (c *conn) shutdown(reset bool) {
	c.once.Do(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, s := range []*net.TCPConn{c.client, c.server} {
			switch {
			case s == nil:
			case reset:
				rst(s)
			default:
				s.Close()
			}
		}
		close(c.done)
	})
}

// read queues chunks read from src with their release time. It closes q at
// end of stream so that the writer passes the half-close on; on any other
// error the whole connection is reset, as the network would.
func (c *conn) read(src *net.TCPConn, q chan<- chunk, down bool) {
	buf := make([]byte, chunkSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			ch := chunk{b: append([]byte(nil), buf[:n]...), at: time.Now()}
			if d := c.p.delayFor(down); d > 0 {
				ch.at = ch.at.Add(d)
				c.p.delayed.Add(1)
			}
			select {
			case q <- ch:
			case <-c.done:
				return
			}
		}
		if err == io.EOF {
			close(q)
			return
		}
		if err != nil {
			c.shutdown(true)
			return
		}
	}
}

// write sends queued chunks to dst once their time has come, applying the
// faults current at that moment.
func (c *conn) write(dst *net.TCPConn, q <-chan chunk, down bool) {
	w := waiter{done: c.done}
	defer w.stop()
	var tb bucket
	for {
		var ch chunk
		var ok bool
		select {
		case ch, ok = <-q:
		case <-c.done:
			return
		}
		if !ok {
			dst.CloseWrite()
			return
		}
		if !w.wait(time.Until(ch.at)) {
			return
		}
		for b := ch.b; len(b) > 0; {
			f := c.p.faults.Load()
			if f.Blackhole {
				break
			}
			piece := b
			if down && f.BandwidthDown > 0 {
				var d time.Duration
				piece, d = tb.take(b, f.BandwidthDown, time.Now())
				if !w.wait(d) {
					return
				}
			}
			n, err := dst.Write(piece)
			if down {
				c.p.bytesDown.Add(int64(n))
			} else {
				c.p.bytesUp.Add(int64(n))
			}
			if err != nil {
				c.shutdown(true)
				return
			}
			b = b[n:]
		}
	}
}

// waiter sleeps on one reusable timer, cut short by the connection's end.
type waiter struct {
	t    *time.Timer
	done <-chan struct{}
}

// wait reports false if the connection ended first.
func (w *waiter) wait(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	if w.t == nil {
		w.t = time.NewTimer(d)
	} else {
		w.t.Reset(d)
	}
	select {
	case <-w.t.C:
		return true
	case <-w.done:
		return false
	}
}

func (w *waiter) stop() {
	if w.t != nil {
		w.t.Stop()
	}
}

// bucket is a token bucket for one connection's downstream bandwidth. It
// runs into debt rather than refusing: take returns how long to wait before
// writing, which keeps the writer a simple loop.
type bucket struct {
	rate   int
	burst  int
	tokens float64
	last   time.Time
}

// take splits off the next piece of b to write at rate bytes/s and returns
// how long to wait before writing it.
func (tb *bucket) take(b []byte, rate int, now time.Time) ([]byte, time.Duration) {
	if rate != tb.rate {
		// A burst of 1/100 s keeps writes smooth without making each one
		// tiny; the cap keeps a 1 MiB transfer within 2% of its ideal time.
		tb.rate = rate
		tb.burst = min(max(rate/100, 1), 16<<10)
		tb.tokens = float64(tb.burst)
		tb.last = now
	}
	tb.tokens = min(float64(tb.burst), tb.tokens+now.Sub(tb.last).Seconds()*float64(rate))
	tb.last = now
	piece := b[:min(len(b), tb.burst)]
	tb.tokens -= float64(len(piece))
	if tb.tokens >= 0 {
		return piece, 0
	}
	return piece, time.Duration(-tb.tokens / float64(rate) * float64(time.Second))
}
