// Package pool owns backend connections: it opens and authenticates them with pgconn, takes them
// over as raw protocol streams, lends them to sessions, resets and health-checks them between
// lenders, and retires them by age and idleness.
package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sony/gobreaker/v2"

	"github.com/asyncgate/asyncgate/wire"
)

// Config is one pool's settings. A pool serves one (database, user) pair.
type Config struct {
	Name    string         // "database/user", for messages and logs
	Connect *pgconn.Config // how to reach and log into the backend

	Size     int // most connections, including ones being opened
	MinSize  int // connections kept open even when idle
	MaxQueue int // most requests waiting for a connection

	WaitTimeout    time.Duration // longest wait for a connection (0: forever)
	ConnectTimeout time.Duration // budget for opening one connection, retries included
	Lifetime       time.Duration // connections older than this are closed when released (0: no limit)
	IdleTimeout    time.Duration // idle connections beyond MinSize are closed after this (0: never)
	CheckDelay     time.Duration // a connection idle this long is checked before it is lent again (0: always)
	ResetQuery     string        // run by Release, before the next lender ("" to skip)
	MaxPrepared    int           // statements cached per connection (0: no bound)
	Poller         Poller        // serves plaintext connections on event loops (nil: goroutines)
	Breaker        BreakerConfig // stops connecting to a failing backend (zero: off)

	Log *slog.Logger
}

// Pool lends backend connections first come, first served.
type Pool struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger

	breaker  *breaker      // nil when off
	failures atomic.Uint64 // backend failures seen, breaker or not
	gen      atomic.Uint64 // bumped by Reconnect

	mu         sync.Mutex
	all        map[*Conn]struct{}
	idle       []*Conn // most recently used last
	connecting int
	checking   int // idle connections taken out for a health check
	waiters    []*waiter
	closed     bool

	wg sync.WaitGroup
}

type waiter struct {
	loop    int // the lender's loop, for locality
	passed  int // times a connection went to a waiter behind it (guarded by Pool.mu)
	deliver func(*Conn, error)
	stop    func() bool // the wait timer
	done    bool        // delivered, timed out or withdrawn (guarded by Pool.mu)
}

// New starts a pool; it opens MinSize connections in the background.
func New(cfg Config) *Pool {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{cfg: cfg, ctx: ctx, cancel: cancel, log: cfg.Log.With("pool", cfg.Name), all: make(map[*Conn]struct{})}
	p.breaker = newBreaker(cfg.Name, cfg.Breaker, func(from, to gobreaker.State) {
		p.log.Warn("circuit breaker "+to.String(), "backend", p.target(), "from", from.String())
	})
	p.wg.Add(1)
	go p.janitor()
	return p
}

// Name returns "database/user".
func (p *Pool) Name() string { return p.cfg.Name }

// Stats is a snapshot of the pool's counters.
type Stats struct {
	Open       int // connections opened and not yet closed: idle, lent, or being reset or checked
	Idle       int // of Open, those waiting to be lent
	Connecting int // connections being opened, not counted in Open
	Waiting    int // lenders waiting for a connection

	BackendFailures uint64 // failed connects, broken connections and failed health checks
	BreakerOpens    uint64 // times the circuit breaker opened
	BreakerRejects  uint64 // requests refused, and waiters failed, because it was open
}

// Stats reports the pool's current sizes and its counters since New.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{Open: len(p.all), Idle: len(p.idle), Connecting: p.connecting, Waiting: len(p.waiters)}
	p.mu.Unlock()
	s.BackendFailures = p.failures.Load()
	if b := p.breaker; b != nil {
		s.BreakerOpens, s.BreakerRejects = b.opens.Load(), b.rejects.Load()
	}
	return s
}

// Acquire lends a connection. When one is idle and nobody waits it is returned at once. When the
// request cannot be queued the error says why, with its SQLSTATE (*wire.Error). Otherwise the
// request waits: deliver is called exactly once, never from within Acquire (so callers may hold
// their own locks), with a connection or an error (*wire.Error, or a *pgconn.PgError from the
// backend), and withdraw cancels the wait, reporting false if deliver has been or is being called.
func (p *Pool) Acquire(deliver func(*Conn, error)) (c *Conn, withdraw func() bool, err error) {
	return p.AcquireOn(-1, deliver)
}

// AcquireOn is Acquire for a lender served by event loop i: a connection served by the same
// loop is preferred, since its bytes then reach the lender without a hand-off between threads.
// For such a lender (i >= 0) deliver may run on the goroutine that gives a connection back, to
// spare a goroutine per hand-over: it must pass the connection on to the loop without waiting.
// Otherwise it runs on a goroutine of its own.
func (p *Pool) AcquireOn(i int, deliver func(*Conn, error)) (c *Conn, withdraw func() bool, err error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, nil, &wire.Error{Code: "08006", Message: fmt.Sprintf("pool %s is closed", p.cfg.Name)}
	}
	if len(p.waiters) == 0 && len(p.idle) > 0 {
		k := p.pickIdle(i)
		c := p.idle[k]
		if time.Since(c.lastUsed) < p.cfg.CheckDelay {
			p.idle = append(p.idle[:k], p.idle[k+1:]...)
			p.mu.Unlock()
			return c, nil, nil
		}
	}
	if len(p.idle) == 0 && p.breaker.open() {
		// Nothing idle and no connection may be opened: queueing would only delay the error.
		p.mu.Unlock()
		return nil, nil, p.breakerError()
	}
	if p.cfg.MaxQueue > 0 && len(p.waiters) >= p.cfg.MaxQueue {
		p.mu.Unlock()
		return nil, nil, &wire.Error{Code: "53300", Message: fmt.Sprintf(
			"pool %s: %d clients already wait for a server connection (--max-queue)", p.cfg.Name, p.cfg.MaxQueue)}
	}
	w := &waiter{loop: i, deliver: deliver}
	p.waiters = append(p.waiters, w)
	if p.cfg.WaitTimeout > 0 {
		t := time.AfterFunc(p.cfg.WaitTimeout, func() { p.timeout(w) })
		w.stop = t.Stop
	}
	run := p.dispatch()
	p.mu.Unlock()
	run()
	return nil, func() bool { return p.withdraw(w) }, nil
}

// pickIdle chooses among the idle connections: the most recently used one of loop i, else the
// most recently used one.
func (p *Pool) pickIdle(i int) int {
	last := len(p.idle) - 1
	if i < 0 {
		return last
	}
	for k := last; k >= 0; k-- {
		if p.idle[k].loop == i {
			return k
		}
	}
	return last
}

// localWindow is how far down the wait queue a released connection looks for a waiter of its own
// loop: far enough to find one most of the time with a few loops, near enough that the wait
// order stays first come, first served within a handful of places. maxPassed bounds how often
// the first waiter may be passed over that way, so that no waiter starves.
const (
	localWindow = 4
	maxPassed   = 2
)

func (p *Pool) timeout(w *waiter) {
	if !p.withdraw(w) {
		return
	}
	w.deliver(nil, &wire.Error{Code: "57014", Message: fmt.Sprintf(
		"query_wait_timeout: no server connection in pool %s became free within %s (--query-wait-timeout)",
		p.cfg.Name, p.cfg.WaitTimeout)})
}

func (p *Pool) withdraw(w *waiter) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.done {
		return false
	}
	w.done = true
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			break
		}
	}
	return true
}

// dispatch matches waiters with idle connections and starts connections for the rest, within
// Size and as far as the circuit breaker lets it. It runs under p.mu and returns what must happen
// after the lock is released.
func (p *Pool) dispatch() (run func()) {
	var lend []func()
	for len(p.waiters) > 0 && len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if time.Since(c.lastUsed) >= p.cfg.CheckDelay {
			// Checked off the waiters' path; it comes back through put when healthy.
			p.checking++
			lend = append(lend, func() { p.check(c) })
			continue
		}
		w := p.popWaiterFor(c)
		lend = append(lend, func() { go w.deliver(c, nil) })
	}
	for want := len(p.waiters) - p.connecting; want > 0 && len(p.all)+p.connecting < p.cfg.Size; want-- {
		report, ok := p.breaker.allowConnect()
		if !ok {
			break // open, or half-open with its probes under way
		}
		p.connecting++
		p.wg.Add(1)
		go p.open(p.waiters[len(p.waiters)-want].loop, report)
	}
	if len(p.waiters) > p.connecting+p.checking && p.breaker.open() {
		// Only the connects and health checks already under way can still serve anyone: the
		// waiters beyond them are told now, the latest first, rather than at their wait timeout.
		for len(p.waiters) > p.connecting+p.checking {
			w := p.popWaiterAt(len(p.waiters) - 1)
			err := p.breakerError()
			lend = append(lend, func() { go w.deliver(nil, err) })
		}
	}
	return func() {
		for _, f := range lend {
			f()
		}
	}
}

func (p *Pool) popWaiter() *waiter { return p.popWaiterAt(0) }

// popWaiterFor takes the waiter c should go to: the first one of c's loop within localWindow,
// else the first.
func (p *Pool) popWaiterFor(c *Conn) *waiter {
	if c.loop >= 0 && p.waiters[0].passed < maxPassed {
		for k := range min(len(p.waiters), localWindow) {
			if p.waiters[k].loop == c.loop {
				for _, w := range p.waiters[:k] {
					w.passed++
				}
				return p.popWaiterAt(k)
			}
		}
	}
	return p.popWaiterAt(0)
}

func (p *Pool) popWaiterAt(k int) *waiter {
	w := p.waiters[k]
	if k == 0 {
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
	} else {
		p.waiters = append(p.waiters[:k], p.waiters[k+1:]...)
	}
	w.done = true
	if w.stop != nil {
		w.stop()
	}
	return w
}

// open adds one connection, served by loop i when there is a Poller, then lends it or keeps it
// idle. report tells the circuit breaker how the connect went.
func (p *Pool) open(i int, report func(error)) {
	defer p.wg.Done()
	c, err := p.connect()
	switch {
	case p.ctx.Err() != nil:
		report(errNotCounted) // our own shutdown says nothing about the backend
	case err != nil:
		p.failures.Add(1)
		report(err)
	default:
		report(nil)
	}
	p.mu.Lock()
	p.connecting--
	if err != nil {
		// With nothing open there is no connection to wait for: tell everyone now rather than at
		// their wait timeout. Otherwise only the first waiter learns, and the rest keep waiting
		// for a connection to come back.
		var failed []*waiter
		if len(p.waiters) > 0 {
			failed = append(failed, p.popWaiter())
		}
		if len(p.all) == 0 && p.connecting == 0 {
			for len(p.waiters) > 0 {
				failed = append(failed, p.popWaiter())
			}
		}
		run := func() {}
		if p.breaker.open() {
			run = p.dispatch() // fails the rest
		}
		p.mu.Unlock()
		p.log.Warn("backend connect failed", "err", err)
		for _, w := range failed {
			go w.deliver(nil, err)
		}
		run()
		return
	}
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.all[c] = struct{}{}
	p.mu.Unlock()
	p.serve(c, i)
	p.put(c, false)
	// A probe that closed a half-open breaker: the waiters queued behind it need connects too.
	p.mu.Lock()
	run := p.dispatch()
	p.mu.Unlock()
	run()
}

// serve starts reading and writing c: on loop i of the Poller when the socket is a plain one,
// else with a goroutine each.
func (p *Pool) serve(c *Conn, i int) {
	if p.cfg.Poller != nil {
		if fd, err := detach(c.nc); err == nil {
			c.nc, c.raw = nil, nil
			s, err := p.cfg.Poller.Attach(fd, i, c)
			if err == nil {
				c.stream, c.loop = s, s.Loop()
				return
			}
			unix.Close(fd)
			c.failed.Store(true) // a loop that cannot take the socket says nothing of the backend
			c.broke(err)
			return
		}
	}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		c.read()
	}()
	go func() {
		defer p.wg.Done()
		c.write()
	}()
}

// detach takes the socket out of a plain TCP or Unix connection as a non-blocking descriptor of
// its own, closing nc (which takes it out of the runtime's poller). TLS connections stay as they
// are: crypto/tls needs the net.Conn.
func detach(nc net.Conn) (int, error) {
	var sc syscall.Conn
	switch c := nc.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return -1, fmt.Errorf("pool: %T is not served by a loop", nc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("pool: dup: %w", derr)
	}
	nc.Close()
	return fd, nil
}

// put makes c available: to the first waiter, or idle. A connection that was just opened or
// checked goes to a waiter as it is; one that comes out of the idle list may need a check first.
// checked says c comes from a health check: it stops counting as one under the same lock that
// gives it to a waiter, so that an open breaker never fails the waiter it was meant for.
func (p *Pool) put(c *Conn, checked bool) {
	c.SetSink(idleSink{})
	p.mu.Lock()
	if checked {
		p.checking--
	}
	c.lastUsed = time.Now()
	if p.closed || c.Err() != nil || p.retired(c) {
		p.mu.Unlock()
		c.Close()
		return
	}
	if len(p.waiters) > 0 {
		w := p.popWaiterFor(c)
		p.mu.Unlock()
		if w.loop >= 0 {
			w.deliver(c, nil)
		} else {
			go w.deliver(c, nil)
		}
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// Release returns a connection its lender left at ReadyForQuery with status idle. It is reset
// with ResetQuery before anyone else gets it; if it is too old or the reset fails it is closed.
func (p *Pool) Release(c *Conn) {
	if p.cfg.ResetQuery == "" || p.tooOld(c) {
		p.Return(c)
		return
	}
	p.run(c, p.cfg.ResetQuery, func(err error) {
		if err != nil {
			p.log.Info("closing backend after failed reset", "backend", c.Addr(), "err", err)
			c.Close()
			return
		}
		// The reset (DISCARD ALL) dropped prepared statements and session settings.
		c.StmtClear()
		clear(c.Settings)
		p.Return(c)
	})
}

// Return gives back a connection at ReadyForQuery idle without a reset: in transaction and
// statement pooling its session state is the gateway's to manage, and its prepared statements
// are worth keeping.
func (p *Pool) Return(c *Conn) {
	p.connOK(c)
	if p.tooOld(c) {
		c.Close()
		return
	}
	p.put(c, false)
}

// tooOld reports whether c has outlived --server-lifetime.
func (p *Pool) tooOld(c *Conn) bool {
	return p.cfg.Lifetime > 0 && time.Since(c.created) > p.cfg.Lifetime
}

// check runs an empty query on a long-idle connection before lending it again.
func (p *Pool) check(c *Conn) {
	p.run(c, "", func(err error) {
		if err != nil {
			p.log.Info("closing backend that failed its health check", "backend", c.Addr(), "err", err)
			p.mu.Lock()
			p.checking--
			p.mu.Unlock()
			p.connFailed(c)
			c.Close()
			return
		}
		p.connOK(c)
		p.put(c, true)
	})
}

// Discard closes a connection whose state is unknown (mid-query, inside a transaction, broken).
func (p *Pool) Discard(c *Conn) { c.Close() }

// forget drops a closed connection; a waiter may now get a new one. failed says the backend or
// the network ended it, which the circuit breaker counts.
func (p *Pool) forget(c *Conn, failed bool) {
	p.mu.Lock()
	delete(p.all, c)
	for i, x := range p.idle {
		if x == c {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			break
		}
	}
	if failed {
		// Counted after c is out of the idle list and before dispatch: if this opens the
		// breaker, the waiters hear it now, and none is handed c.
		p.connFailed(c)
	}
	run := p.dispatch()
	p.mu.Unlock()
	run()
}

// Close fails the waiters, closes every connection and waits for the pool's goroutines.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	var failed []*waiter
	for len(p.waiters) > 0 {
		failed = append(failed, p.popWaiter())
	}
	for c := range p.all {
		c.Close()
	}
	p.mu.Unlock()
	p.cancel()
	for _, w := range failed {
		go w.deliver(nil, &wire.Error{Code: "57P01", Message: fmt.Sprintf("pool %s is shutting down", p.cfg.Name)})
	}
	p.wg.Wait()
}

// janitor retires idle connections by age and idleness and keeps MinSize open.
func (p *Pool) janitor() {
	defer p.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-tick.C:
		}
		p.mu.Lock()
		keep := p.idle[:0]
		var retire []*Conn
		for _, c := range p.idle {
			old := p.tooOld(c)
			unused := p.cfg.IdleTimeout > 0 && time.Since(c.lastUsed) > p.cfg.IdleTimeout &&
				len(p.all)-len(retire) > p.cfg.MinSize
			if old || unused {
				retire = append(retire, c)
				continue
			}
			keep = append(keep, c)
		}
		p.idle = keep
		for n := len(p.all) - len(retire) + p.connecting; n < p.cfg.MinSize && n < p.cfg.Size; n++ {
			report, ok := p.breaker.allowConnect()
			if !ok {
				break
			}
			p.connecting++
			p.wg.Add(1)
			go p.open(-1, report)
		}
		p.mu.Unlock()
		for _, c := range retire {
			c.Close()
		}
	}
}

// connect opens and authenticates one connection, retrying what is worth retrying with
// exponential backoff and jitter until ConnectTimeout.
func (p *Pool) connect() (*Conn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.ConnectTimeout)
	defer cancel()
	backoff := 25 * time.Millisecond
	for attempt := 1; ; attempt++ {
		c, err := p.dial(ctx)
		if err == nil {
			return c, nil
		}
		if !retryable(err) || ctx.Err() != nil {
			return nil, p.connectError(err, attempt)
		}
		sleep := backoff/2 + rand.N(backoff)
		backoff = min(2*backoff, 2*time.Second)
		t := time.NewTimer(sleep)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, p.connectError(err, attempt)
		}
	}
}

func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	pc, err := pgconn.ConnectConfig(ctx, p.cfg.Connect.Copy())
	if err != nil {
		return nil, err
	}
	// A slow write during the login starts pgconn's background reader, which may still sit in a
	// read of the socket: taken over then, it would swallow the first answer meant for a client.
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, err
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, err
	}
	c := &Conn{
		pool:      p,
		nc:        hc.Conn,
		loop:      -1,
		addr:      hc.Conn.RemoteAddr(),
		PID:       hc.PID,
		SecretKey: hc.SecretKey,
		Params:    hc.ParameterStatuses,
		Frames:    NewBackendDecoder(),
		created:   time.Now(),
		gen:       p.gen.Load(),
		Settings:  make(map[string]string),
		stmts:     newStmtCache(p.cfg.MaxPrepared),
		sink:      idleSink{},
		kick:      make(chan struct{}, 1),
		gone:      make(chan struct{}),
	}
	if tc, ok := hc.Conn.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			c.raw = raw
		}
	}
	return c, nil
}

// NewBackendDecoder returns a framer for a backend stream that keeps whole the messages the
// gateway reads: ReadyForQuery, ParameterStatus, ErrorResponse, BackendKeyData, CommandComplete.
func NewBackendDecoder() *wire.Decoder {
	cfg := wire.DecoderConfig{MaxMessage: 1 << 30, MaxInspect: 1 << 20}
	for _, t := range []byte{'Z', 'S', 'E', 'K', 'C'} {
		cfg.Inspect[t] = true
	}
	return wire.NewDecoder(cfg)
}

// retryable reports whether another connect attempt may succeed: network trouble, or a server
// that is starting, shutting down or full. A server that rejects the login will do so again.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P03", "53300", "57P01":
			return true
		}
		return false
	}
	return true
}

func (p *Pool) connectError(err error, attempts int) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !retryable(err) {
		return &wire.Error{Code: pgErr.Code, Message: fmt.Sprintf("backend %s for pool %s: %s",
			p.target(), p.cfg.Name, pgErr.Message)}
	}
	code := "08001"
	var ne net.Error
	if errors.As(err, &ne) && !ne.Timeout() {
		code = "08006"
	}
	return &wire.Error{Code: code, Message: fmt.Sprintf(
		"could not connect to backend %s for pool %s after %d attempts within %s (--server-connect-timeout): %v",
		p.target(), p.cfg.Name, attempts, p.cfg.ConnectTimeout, err)}
}

func (p *Pool) target() string {
	return net.JoinHostPort(p.cfg.Connect.Host, fmt.Sprint(p.cfg.Connect.Port))
}

// idleSink ignores what an idle connection receives; if the server ends it, the reader notices.
type idleSink struct{}

func (idleSink) BackendData(*Conn, []byte)  {}
func (idleSink) BackendClosed(*Conn, error) {}

// Size is the most connections the pool opens.
func (p *Pool) Size() int { return p.cfg.Size }
