// Package mysql is the MySQL/MariaDB counterpart of the pool package: it owns pooled connections
// to a MySQL server (opened with go-sql-driver/mysql), lends one to a client for a request unit or
// for the span of its transaction, and runs the client's Postgres request units on it, answering
// with Postgres protocol bytes. The gateway's session treats it like a backend that speaks
// Postgres: it hands over whole client messages and relays what comes back.
//
// go-sql-driver is blocking, so a unit runs on a goroutine of its own and hands its output to the
// session through a callback (the session posts it to its loop). Queries are cancelled with
// KILL QUERY on a side connection, never by closing the connection, which the server would not
// notice until the query ends.
package mysql

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

// Config is one MySQL pool's settings; the fields mean what they mean for pool.Config.
type Config struct {
	Name string          // "database/user"
	DSN  *gomysql.Config // how to reach and log into the server

	Size           int
	MaxQueue       int
	WaitTimeout    time.Duration
	ConnectTimeout time.Duration
	Lifetime       time.Duration
	IdleTimeout    time.Duration
	CancelTimeout  time.Duration // bound on a KILL QUERY, its connect included
	MaxPrepared    int           // server-side prepared statements cached per connection (0: no bound)
	Breaker        pool.BreakerConfig

	Log *slog.Logger
}

// Pool lends MySQL connections first come, first served, to at most Size lenders at once.
type Pool struct {
	cfg       Config
	connector driver.Connector
	breaker   *pool.Breaker
	log       *slog.Logger

	mu      sync.Mutex
	idle    []*Conn // most recently used last
	open    int     // connections open or being opened
	conns   int     // of open, those opened
	waiters []*waiter
	closed  bool

	failures atomic.Uint64
}

type waiter struct {
	ch chan *Conn // buffered: the connection handed over, or nil for "you may open one"
}

// Conn is one MySQL connection with its server-side prepared statements.
type Conn struct {
	dc       driver.Conn
	id       int64 // CONNECTION_ID(), for KILL QUERY
	created  time.Time
	lastUsed time.Time
	broken   bool
	stmts    map[string]*cachedStmt
	useSeq   uint64
}

type cachedStmt struct {
	st   driver.Stmt
	used uint64
}

// Stats is a snapshot of the pool, with the same meaning as pool.Stats.
type Stats = pool.Stats

// New makes a pool; connections are opened on demand.
func New(cfg Config) (*Pool, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	dsn := cfg.DSN.Clone()
	// Dates come as text, which is what the Postgres text format wants; parameters are sent to
	// server-side prepared statements, never interpolated into the SQL.
	dsn.ParseTime = false
	dsn.InterpolateParams = false
	dsn.MultiStatements = false
	dsn.ClientFoundRows = true // UPDATE n counts the rows matched, as PostgreSQL does
	if cfg.ConnectTimeout > 0 && dsn.Timeout == 0 {
		dsn.Timeout = cfg.ConnectTimeout
	}
	connector, err := gomysql.NewConnector(dsn)
	if err != nil {
		return nil, fmt.Errorf("mysql pool %s: %w", cfg.Name, err)
	}
	p := &Pool{cfg: cfg, connector: connector, log: cfg.Log.With("pool", cfg.Name)}
	p.breaker = pool.NewBreaker(cfg.Name, dsn.Addr, cfg.Breaker, cfg.Log)
	return p, nil
}

// Name returns "database/user".
func (p *Pool) Name() string { return p.cfg.Name }

// Addr is the server's address, for messages.
func (p *Pool) Addr() string { return p.cfg.DSN.Addr }

// BreakerState reports the circuit breaker's state, as pool.Pool.BreakerState does.
func (p *Pool) BreakerState() string { return p.breaker.State() }

// Stats reports the pool's sizes and counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{Open: p.conns, Idle: len(p.idle), Connecting: p.open - p.conns, Waiting: len(p.waiters)}
	p.mu.Unlock()
	s.BackendFailures = p.failures.Load()
	s.BreakerOpens, s.BreakerRejects = p.breaker.Counts()
	return s
}

// Acquire lends a connection, waiting at most WaitTimeout (and while ctx lasts). Its errors are
// *wire.Error with the SQLSTATE a Postgres client expects, as the pool package's are.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	for {
		c, err := p.acquire(ctx)
		if err != nil || c != nil {
			return c, err
		}
	}
}

// acquire returns a connection, or nil when an idle one it took turned out too old.
func (p *Pool) acquire(ctx context.Context) (*Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, p.closedError()
	}
	if len(p.waiters) == 0 && len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		p.mu.Unlock()
		return p.fresh(c), nil
	}
	if len(p.waiters) == 0 && p.open < p.cfg.Size {
		if p.breaker.Open() {
			p.mu.Unlock()
			return nil, p.breakerError()
		}
		p.open++
		p.mu.Unlock()
		return p.connect(ctx)
	}
	if len(p.idle) == 0 && p.breaker.Open() && p.open == p.conns && p.conns == 0 {
		p.mu.Unlock()
		return nil, p.breakerError()
	}
	if p.cfg.MaxQueue > 0 && len(p.waiters) >= p.cfg.MaxQueue {
		p.mu.Unlock()
		return nil, &wire.Error{Code: "53300", Message: fmt.Sprintf(
			"pool %s: %d clients already wait for a server connection (--max-queue)", p.cfg.Name, p.cfg.MaxQueue)}
	}
	w := &waiter{ch: make(chan *Conn, 1)}
	p.waiters = append(p.waiters, w)
	p.mu.Unlock()

	var timeout <-chan time.Time
	if p.cfg.WaitTimeout > 0 {
		t := time.NewTimer(p.cfg.WaitTimeout)
		defer t.Stop()
		timeout = t.C
	}
	var werr error
	select {
	case c := <-w.ch:
		return p.handed(ctx, c)
	case <-timeout:
		werr = &wire.Error{Code: "57014", Message: fmt.Sprintf(
			"query_wait_timeout: no server connection in pool %s became free within %s (--query-wait-timeout)",
			p.cfg.Name, p.cfg.WaitTimeout)}
	case <-ctx.Done():
		werr = &wire.Error{Code: "57014", Message: "canceled while waiting for a server connection"}
	}
	p.mu.Lock()
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			p.mu.Unlock()
			return nil, werr
		}
	}
	closed := p.closed
	p.mu.Unlock()
	// Handed something just as the wait ended: give it back rather than lose it. A slot is
	// freed, not filled with a connection nobody waits for; Close's hand-outs hold no slot.
	if c := <-w.ch; c != nil {
		p.Return(c)
	} else if !closed {
		p.slotFreed()
	}
	return nil, werr
}

// handed takes what a waiter was given: a connection, or (nil) a slot to open one in, or (nil
// from Close) word that the pool closed.
func (p *Pool) handed(ctx context.Context, c *Conn) (*Conn, error) {
	if c != nil {
		return p.fresh(c), nil
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, p.closedError()
	}
	return p.connect(ctx)
}

func (p *Pool) closedError() error {
	return &wire.Error{Code: "08006", Message: fmt.Sprintf("pool %s is closed", p.cfg.Name)}
}

// fresh checks a connection taken from idle: too old, idle too long or dead, it is replaced.
func (p *Pool) fresh(c *Conn) *Conn {
	now := time.Now()
	if (p.cfg.Lifetime > 0 && now.Sub(c.created) > p.cfg.Lifetime) ||
		(p.cfg.IdleTimeout > 0 && now.Sub(c.lastUsed) > p.cfg.IdleTimeout) {
		p.closeConn(c, false)
		return nil
	}
	// go-sql-driver's liveness check (a non-blocking read): a connection the server closed while
	// it sat idle (wait_timeout, a restart, KILL) is replaced before anything is sent on it.
	if r, ok := c.dc.(driver.SessionResetter); ok && r.ResetSession(context.Background()) != nil {
		p.closeConn(c, true)
		return nil
	}
	return c
}

// connect opens a connection in a slot already counted in p.open.
func (p *Pool) connect(ctx context.Context) (*Conn, error) {
	report, ok := p.breaker.AllowConnect()
	if !ok {
		p.slotFreed()
		return nil, p.breakerError()
	}
	cctx := ctx
	if d := p.cfg.ConnectTimeout; d > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	c, err := p.dial(cctx)
	if err != nil {
		if ctx.Err() != nil {
			report(nil) // the client left; says nothing about the server
		} else {
			p.failures.Add(1)
			report(err)
		}
		p.slotFreed()
		var me *gomysql.MySQLError
		if errors.As(err, &me) {
			return nil, mysqlError(me)
		}
		return nil, &wire.Error{Code: "08006", Message: fmt.Sprintf("could not connect to MySQL server %s for pool %s: %v", p.cfg.DSN.Addr, p.cfg.Name, err)}
	}
	report(nil)
	p.mu.Lock()
	p.conns++
	p.mu.Unlock()
	return c, nil
}

func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	dc, err := p.connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	c := &Conn{dc: dc, created: time.Now(), lastUsed: time.Now(), stmts: map[string]*cachedStmt{}}
	rows, err := dc.(driver.QueryerContext).QueryContext(context.Background(), "SELECT CONNECTION_ID()", nil)
	if err == nil {
		v := make([]driver.Value, 1)
		if err = rows.Next(v); err == nil {
			switch x := v[0].(type) {
			case int64:
				c.id = x
			case []byte:
				_, err = fmt.Sscan(string(x), &c.id)
			default:
				err = fmt.Errorf("CONNECTION_ID() returned %T", x)
			}
		}
		rows.Close()
	}
	if err != nil {
		dc.Close()
		return nil, fmt.Errorf("reading CONNECTION_ID(): %w", err)
	}
	return c, nil
}

// slotFreed gives a slot of p.open back: to the first waiter, to open a connection in.
func (p *Pool) slotFreed() {
	p.mu.Lock()
	if len(p.waiters) > 0 && !p.closed {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		w.ch <- nil
		return
	}
	p.open--
	p.mu.Unlock()
}

// Return gives a connection back. A broken one is closed and counted as a backend failure.
func (p *Pool) Return(c *Conn) {
	if c == nil {
		return
	}
	if c.broken {
		p.closeConn(c, true)
		return
	}
	c.lastUsed = time.Now()
	if p.cfg.Lifetime > 0 && c.lastUsed.Sub(c.created) > p.cfg.Lifetime {
		p.closeConn(c, false)
		return
	}
	p.breaker.Succeeded()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.closeConn(c, false)
		return
	}
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		w.ch <- c
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// closeConn closes c and frees its slot; failed counts it against the breaker.
func (p *Pool) closeConn(c *Conn, failed bool) {
	if failed {
		p.failures.Add(1)
		p.breaker.Failed()
	}
	for _, s := range c.stmts {
		s.st.Close()
	}
	c.dc.Close()
	p.mu.Lock()
	p.conns--
	p.mu.Unlock()
	p.slotFreed()
}

// Close closes the idle connections and refuses new work; lent ones close when returned.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	waiters := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	for _, w := range waiters {
		w.ch <- nil // handed finds the pool closed and answers 08006
	}
	for _, c := range idle {
		p.closeConn(c, false)
	}
}

func (p *Pool) breakerError() error {
	p.breaker.Reject()
	return &wire.Error{Code: "08006", Message: fmt.Sprintf(
		"backend %s for pool %s is unavailable (circuit breaker open after %d failures; --breaker-failures / --breaker-open-time)",
		p.cfg.DSN.Addr, p.cfg.Name, p.cfg.Breaker.Failures)}
}

// kill stops the statement connection id is running, from a side connection.
func (p *Pool) kill(id int64) error {
	ctx := context.Background()
	if d := p.cfg.CancelTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	dc, err := p.connector.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connecting to send KILL QUERY %d: %w", id, err)
	}
	defer dc.Close()
	_, err = dc.(driver.ExecerContext).ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", id), nil)
	var me *gomysql.MySQLError
	if errors.As(err, &me) && me.Number == 1094 { // unknown thread id: it ended meanwhile
		return nil
	}
	return err
}

// isBroken tells a failed connection from a statement's error: the server's errors leave the
// connection usable, anything else (I/O, protocol) does not.
func isBroken(err error) bool {
	var me *gomysql.MySQLError
	if errors.As(err, &me) {
		return false
	}
	return err != nil // I/O, protocol or driver state: the connection cannot be trusted
}
