package batcher

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

// Client receives one unit's outcome. Calls for one unit come in order, one at a time, never
// under the batcher's lock.
type Client interface {
	// Response delivers the next bytes of the unit's response (backend messages, the last one
	// possibly cut where the read ended); b is the callee's to keep. last: b ends with the unit's
	// ReadyForQuery, whose status is always idle.
	Response(b []byte, last bool)
	// Failed ends the unit without a ReadyForQuery of the server's: the client is owed an error
	// with code and msg. cut reports that part of the unit's response was delivered already, so
	// the client's stream may end inside a message.
	Failed(code, msg string, cut bool)
}

// Stmt is a prepared statement a unit uses under its backend name: the batcher prepares it on the
// connection the unit is written to, unless it is there already.
type Stmt struct {
	Name  string
	Parse []byte // the Parse message preparing it under Name
}

// Unit is one request unit. The caller fills Msgs, Needs and Client and must not touch the unit
// after Submit, except to pass it to Cancel or Abandon.
type Unit struct {
	Msgs   []byte // the messages, as the backend must see them (statement names rewritten)
	Needs  []Stmt
	Client Client

	// Guarded by Batcher.mu.
	state     unitState
	conn      *bconn
	queuedAt  time.Time
	swallow   []byte   // leading responses to the batcher's own Close and Parse messages
	preparing []string // statements those Parse messages prepare, forgotten if one fails
	param     string   // a ParameterStatus the unit produced: it was misclassified
	delivered bool     // some of the response went to the client
	midMsg    bool     // what was delivered ends inside a message
	canceled  bool     // 57014 came back
	cancelReq bool     // the client asked to cancel it
	cancelOut bool     // a CancelRequest for it went to the server
	hold      bool     // a cancel aimed at a unit ahead may hit it: keep its response until its end
	held      []byte
	internal  bool // the batcher's own (settings, barrier): nothing is delivered
	barrier   bool
	failedInt bool // an internal unit failed
}

type unitState uint8

const (
	stNew unitState = iota
	stQueued
	stWritten
	stDone
)

// Config is a Batcher's settings.
type Config struct {
	Pool *pool.Pool
	// Loop is the event loop the batcher's clients are served by (-1: none): its connections are
	// asked for on that loop, so that their responses reach the clients without a hand-off
	// between threads.
	Loop int
	// MaxDepth bounds the units in flight on one connection.
	MaxDepth int
	// MaxDelay is how long a queued unit may wait for others to fill a batch (0: never wait).
	MaxDelay time.Duration
	// Setup returns a query that gives a connection the settings every unit of this batcher
	// expects ("" when it has them); it runs before the first unit on each connection.
	Setup func(c *pool.Conn) string
	// MaxConns bounds the connections the batcher holds at once (0: the pool's size).
	MaxConns int
	// Group is shared by the batchers of one pool (one per event loop), so that a batcher does
	// not give connections back merely because another batcher of the pool waits for more.
	Group *Group
	// CancelTimeout bounds the delivery of one CancelRequest.
	CancelTimeout time.Duration
	Metrics       *Metrics
	Log           *slog.Logger
}

// Group counts the connection requests of the batchers sharing a pool.
type Group struct {
	waiting atomic.Int64 // batchers waiting for a connection
	starved atomic.Int64 // of those, batchers holding none
}

// Batcher queues units for one pool and pipelines them onto connections it borrows from it.
type Batcher struct {
	cfg Config

	mu        sync.Mutex
	queue     []*Unit
	qhead     int
	conns     []*bconn
	acquiring bool
	starved   bool // acquiring with no connection: counted in Group.starved
	withdraw  func() bool
	timer     *time.Timer
	closed    bool

	dirty atomic.Bool // some connection has unflushed writes
}

// bconn is one borrowed connection and the units in flight on it, oldest first.
type bconn struct {
	b          *Batcher
	c          *pool.Conn
	inflight   []*Unit
	dirty      bool
	dead       bool
	retiring   bool // stop writing: someone outside the batcher waits for a connection
	cancelling bool // a CancelRequest is on its way: nothing new is written until the barrier
	drop       bool // the rest of the backend message being read goes to nobody
}

// New returns a batcher drawing connections from cfg.Pool.
func New(cfg Config) *Batcher {
	if cfg.MaxDepth < 1 {
		cfg.MaxDepth = 1
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.CancelTimeout <= 0 {
		cfg.CancelTimeout = 10 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.Group == nil {
		cfg.Group = &Group{}
	}
	if cfg.MaxConns <= 0 || cfg.MaxConns > cfg.Pool.Size() {
		cfg.MaxConns = cfg.Pool.Size()
	}
	return &Batcher{cfg: cfg}
}

// delivery is one client callback, made after the lock is released.
type delivery struct {
	u         *Unit
	b         []byte
	last      bool
	code, msg string // Failed
	cut       bool
}

// work collects what a locked section leaves to do unlocked.
type work struct {
	out    []delivery
	give   []*pool.Conn // connections to return to the pool
	closed []*pool.Conn // connections to close
}

func (w *work) emit(u *Unit, b []byte, last bool) {
	if n := len(w.out); n > 0 && w.out[n-1].u == u && !w.out[n-1].last && w.out[n-1].code == "" {
		w.out[n-1].b = append(w.out[n-1].b, b...)
		w.out[n-1].last = last
		return
	}
	w.out = append(w.out, delivery{u: u, b: append([]byte(nil), b...), last: last})
}

func (w *work) fail(u *Unit, code, msg string) {
	if u.internal {
		return
	}
	w.out = append(w.out, delivery{u: u, code: code, msg: msg, cut: u.delivered && u.midMsg})
}

// run does what the locked section left: callbacks in order, connections back or closed, and
// pending writes flushed.
func (b *Batcher) run(w *work) {
	for _, d := range w.out {
		if d.code != "" {
			d.u.Client.Failed(d.code, d.msg, d.cut)
		} else {
			d.u.Client.Response(d.b, d.last)
		}
	}
	for _, c := range w.closed {
		c.Close()
	}
	for _, c := range w.give {
		b.cfg.Pool.Return(c)
	}
	b.Flush()
}

// Submit queues u; it is written as soon as a connection has room. Call Flush (or let the
// caller's event loop do it) to send what was written. Submit never calls a Client itself, so
// the caller may hold its client's serialisation.
func (b *Batcher) Submit(u *Unit) {
	var w work
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		go u.Client.Failed("57P01", fmt.Sprintf("pool %s is shutting down", b.cfg.Pool.Name()), false) // see below
		return
	}
	u.state = stQueued
	if b.cfg.MaxDelay > 0 {
		u.queuedAt = time.Now() // read only to hold units back (MaxDelay)
	}
	b.queue = append(b.queue, u)
	b.settle(&w)
	b.mu.Unlock()
	if len(w.out) > 0 {
		// Failures of other clients' units (the pool refused): the caller may hold its own
		// client's serialisation, and handing work to another client while holding it could
		// wait for that client doing the same towards ours.
		go b.run(&w)
	} else if len(w.give) > 0 || len(w.closed) > 0 {
		b.run(&w)
	}
}

// Flush sends what was written onto the batcher's connections. Callers on an event loop call
// it once per loop iteration, so that units of many clients go out in one write.
func (b *Batcher) Flush() {
	if !b.dirty.Swap(false) {
		return
	}
	var flush [8]*pool.Conn
	list := flush[:0]
	b.mu.Lock()
	for _, bc := range b.conns {
		if bc.dirty {
			bc.dirty = false
			list = append(list, bc.c)
		}
	}
	b.mu.Unlock()
	for _, c := range list {
		c.Flush()
	}
}

// Cancel asks to stop u for its client. It reports true when u was not written yet: it is
// dropped and the caller answers the client. Otherwise the server is asked to cancel it once
// it runs at the head of its connection, never a unit ahead of it; a cancel that lands on a
// unit behind it (too late for u) makes that unit run again.
func (b *Batcher) Cancel(u *Unit) bool {
	var w work
	b.mu.Lock()
	defer func() {
		b.mu.Unlock()
		b.run(&w)
	}()
	switch u.state {
	case stQueued:
		b.unqueue(u)
		u.state = stDone
		return true
	case stWritten:
		u.cancelReq = true
		bc := u.conn
		if len(bc.inflight) > 0 && bc.inflight[0] == u && !bc.cancelling && !u.cancelOut {
			bc.startCancel(u)
		}
	}
	return false
}

// Abandon tells the batcher u's client is gone: a queued unit is dropped; a written one runs to
// its end and its response goes nowhere.
func (b *Batcher) Abandon(u *Unit) {
	b.mu.Lock()
	if u.state == stQueued {
		b.unqueue(u)
		u.state = stDone
	}
	b.mu.Unlock()
}

// Close fails the queued units and gives the idle connections back; the pool closes the rest.
func (b *Batcher) Close() {
	var w work
	b.mu.Lock()
	b.closed = true
	for _, u := range b.queue[b.qhead:] {
		u.state = stDone
		w.fail(u, "57P01", fmt.Sprintf("pool %s is shutting down", b.cfg.Pool.Name()))
	}
	b.queue, b.qhead = nil, 0
	if b.withdraw != nil {
		if b.withdraw() {
			b.setAcquiring(false)
		}
		b.withdraw = nil
	}
	if b.timer != nil {
		b.timer.Stop()
	}
	b.mu.Unlock()
	b.run(&w)
}

func (b *Batcher) qlen() int { return len(b.queue) - b.qhead }

func (b *Batcher) unqueue(u *Unit) {
	for i := b.qhead; i < len(b.queue); i++ {
		if b.queue[i] == u {
			copy(b.queue[i:], b.queue[i+1:])
			b.queue[len(b.queue)-1] = nil
			b.queue = b.queue[:len(b.queue)-1]
			break
		}
	}
	b.compact()
}

func (b *Batcher) compact() {
	if b.qhead == len(b.queue) {
		clear(b.queue)
		b.queue, b.qhead = b.queue[:0], 0
	}
}

// requeue puts u back at the head of the queue: a cancel meant for another unit stopped it, and
// since it ran as an implicit transaction of its own nothing of it was kept.
func (b *Batcher) requeue(u *Unit) {
	u.state, u.conn = stQueued, nil
	u.swallow, u.preparing, u.param = nil, nil, ""
	u.canceled, u.cancelOut, u.hold, u.held = false, false, false, nil
	b.cfg.Metrics.requeued.Inc()
	if b.qhead > 0 {
		b.qhead--
		b.queue[b.qhead] = u
		return
	}
	b.queue = append(b.queue, nil)
	copy(b.queue[1:], b.queue)
	b.queue[0] = u
}

// pump writes queued units onto connections with room, the least loaded first, and asks the
// pool for another connection while units wait or share one.
func (b *Batcher) pump(w *work) {
	if b.closed {
		return
	}
	if d := b.cfg.MaxDelay; d > 0 && b.qlen() > 0 && b.qlen() < b.cfg.MaxDepth {
		if wait := d - time.Since(b.queue[b.qhead].queuedAt); wait > 0 {
			if b.timer == nil {
				b.timer = time.AfterFunc(wait, b.delayed)
			}
			return
		}
	}
	shared := false
	for b.qlen() > 0 {
		bc := b.pick()
		if bc == nil {
			break
		}
		u := b.queue[b.qhead]
		b.queue[b.qhead] = nil
		b.qhead++
		if len(bc.inflight) > 0 {
			shared = true
		}
		bc.write(u)
	}
	b.compact()
	if (b.qlen() > 0 || shared) && !b.acquiring && len(b.conns) < b.cfg.MaxConns {
		b.acquire(w)
	}
}

// settle writes what it can, gives back connections the queue does not need, and asks for one
// if units wait with none.
func (b *Batcher) settle(w *work) {
	b.pump(w)
	b.release(w)
	if b.qlen() > 0 && !b.acquiring && !b.closed && len(b.conns) == 0 {
		b.acquire(w)
	}
}

func (b *Batcher) delayed() {
	var w work
	b.mu.Lock()
	b.timer = nil
	b.settle(&w)
	b.mu.Unlock()
	b.run(&w)
}

// pick returns the usable connection with the fewest units in flight, if one has room.
func (b *Batcher) pick() *bconn {
	var best *bconn
	for _, bc := range b.conns {
		if bc.dead || bc.retiring || bc.cancelling || len(bc.inflight) >= b.cfg.MaxDepth {
			continue
		}
		if best == nil || len(bc.inflight) < len(best.inflight) {
			best = bc
		}
	}
	return best
}

// setAcquiring notes that a connection request is outstanding, or no longer, in the group's
// counts as well.
func (b *Batcher) setAcquiring(on bool) {
	if on == b.acquiring {
		return
	}
	b.acquiring = on
	g := b.cfg.Group
	if on {
		g.waiting.Add(1)
		if len(b.conns) == 0 {
			b.starved = true
			g.starved.Add(1)
		}
		return
	}
	g.waiting.Add(-1)
	if b.starved {
		b.starved = false
		g.starved.Add(-1)
	}
}

func (b *Batcher) acquire(w *work) {
	b.setAcquiring(true)
	c, withdraw, err := b.cfg.Pool.AcquireOn(b.cfg.Loop, b.acquired)
	switch {
	case err != nil:
		b.setAcquiring(false)
		b.acquireFailed(err)
		w.out = append(w.out, b.failQueued(err)...)
	case c != nil:
		b.setAcquiring(false)
		b.adopt(c)
		b.pump(w)
	default:
		b.withdraw = withdraw
	}
}

// acquired is the pool's answer to a waiting acquire. It may run on the goroutine that gave the
// connection back, which must not wait for a client: failures are handed over from a goroutine
// of their own.
func (b *Batcher) acquired(c *pool.Conn, err error) {
	var w work
	b.mu.Lock()
	b.setAcquiring(false)
	b.withdraw = nil
	switch {
	case b.closed:
		if c != nil {
			w.give = append(w.give, c)
		}
	case err != nil:
		b.acquireFailed(err)
		w.out = append(w.out, b.failQueued(err)...)
	default:
		b.adopt(c)
		b.settle(&w)
	}
	b.mu.Unlock()
	if len(w.out) > 0 {
		go b.run(&w)
		return
	}
	b.run(&w)
}

// acquireFailed: with no connection of its own the queue cannot move, so it fails; otherwise the
// connections it has serve it.
func (b *Batcher) acquireFailed(err error) {
	b.cfg.Log.Debug("batcher: no connection", "pool", b.cfg.Pool.Name(), "err", err)
}

func (b *Batcher) failQueued(err error) []delivery {
	if len(b.conns) > 0 {
		return nil
	}
	code, msg := "08006", err.Error()
	var we *wire.Error
	if errors.As(err, &we) {
		code, msg = we.Code, we.Message
	}
	var out []delivery
	for _, u := range b.queue[b.qhead:] {
		u.state = stDone
		out = append(out, delivery{u: u, code: code, msg: msg})
	}
	clear(b.queue)
	b.queue, b.qhead = b.queue[:0], 0
	return out
}

func (b *Batcher) adopt(c *pool.Conn) {
	bc := &bconn{b: b, c: c}
	c.SetSink(bc)
	b.conns = append(b.conns, bc)
	if b.cfg.Setup != nil {
		if q := b.cfg.Setup(c); q != "" {
			bc.write(&Unit{internal: true, Msgs: wire.AppendQuery(nil, q)})
		}
	}
}

// release gives back the connections with nothing in flight that the queue does not need, and
// closes the dead ones' accounts.
func (b *Batcher) release(w *work) {
	keep := b.conns[:0]
	for _, bc := range b.conns {
		if !bc.dead && len(bc.inflight) == 0 && !bc.cancelling && (b.qlen() == 0 || bc.retiring || b.closed) {
			bc.dead = true // no longer ours
			w.give = append(w.give, bc.c)
			continue
		}
		if bc.dead {
			continue
		}
		keep = append(keep, bc)
	}
	clear(b.conns[len(keep):])
	b.conns = keep
	if b.acquiring && !b.starved && len(b.conns) == 0 {
		b.starved = true // it lost the connections it had while it asked for more
		b.cfg.Group.starved.Add(1)
	}
}

// write sends u after the statements it needs, noting the responses that are the batcher's own.
func (bc *bconn) write(u *Unit) {
	c := bc.c
	for _, st := range u.Needs {
		if c.StmtPrepared(st.Name) {
			continue
		}
		if evict, ok := c.StmtAdd(st.Name); ok {
			c.Write(appendClose(nil, evict))
			u.swallow = append(u.swallow, '3')
		}
		c.Write(st.Parse)
		u.swallow = append(u.swallow, '1')
		u.preparing = append(u.preparing, st.Name)
	}
	c.Write(u.Msgs)
	u.state, u.conn = stWritten, bc
	bc.inflight = append(bc.inflight, u)
	bc.dirty = true
	bc.b.dirty.Store(true)
	if !u.internal {
		bc.b.cfg.Metrics.observeDepth(len(bc.inflight))
	}
}

func appendClose(dst []byte, name string) []byte {
	dst = append(dst, 'C')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+1+len(name)+1))
	dst = append(dst, 'S')
	dst = append(dst, name...)
	return append(dst, 0)
}

// BackendData implements pool.Sink: the response stream is cut at each ReadyForQuery and each
// piece goes to its unit's client.
func (bc *bconn) BackendData(c *pool.Conn, data []byte) {
	b := bc.b
	var w work
	b.mu.Lock()
	if bc.dead {
		b.mu.Unlock()
		return
	}
	err := c.Frames.Feed(data, func(f *wire.Frame) error { return bc.frame(f, &w) })
	if err != nil && !errors.Is(err, errStop) {
		bc.kill(&w, "08006", fmt.Sprintf("server connection failed: %v", err))
	}
	b.settle(&w)
	b.mu.Unlock()
	b.run(&w)
}

var errStop = errors.New("batcher: connection closed")

func (bc *bconn) frame(f *wire.Frame, w *work) error {
	if len(bc.inflight) == 0 {
		return fmt.Errorf("backend sent %q with no request in flight", f.Type)
	}
	u := bc.inflight[0]
	if f.First {
		bc.drop = u.internal
		switch f.Type {
		case 'A': // a notification: no batched unit listens
			bc.drop = true
		case 'S':
			bc.drop = true
			if name, value, err := wire.ParseParameterStatus(f.Body); err == nil {
				bc.c.Params[string(name)] = string(value)
				if !u.internal && u.param == "" {
					u.param = string(name)
				}
			}
		case 'E':
			if len(u.swallow) > 0 {
				// A Parse of the batcher's failed: the server skips to Sync, and the client
				// sees the error where it expected its own messages' answers.
				for _, name := range u.preparing {
					bc.c.StmtForget(name)
				}
				u.swallow, u.preparing = nil, nil
			}
			if _, code, msg, err := wire.ErrorFields(f.Body); err == nil {
				if string(code) == "57014" {
					u.canceled = true
				}
				if u.internal {
					u.failedInt = true
					bc.b.cfg.Log.Warn("batcher: setup query failed on backend", "backend", bc.c.Addr(), "code", string(code), "err", string(msg))
				}
			}
		case 'Z':
			return bc.ready(u, f, w)
		default:
			if len(u.swallow) > 0 && f.Type == u.swallow[0] {
				u.swallow = u.swallow[1:]
				bc.drop = true
			}
		}
	}
	if !bc.drop {
		u.midMsg = !f.Last
		bc.deliver(u, f.Raw, false, w)
	}
	return nil
}

// holdLimit bounds what is kept of a response that a stray cancel may still void; past it the
// response goes to its client and the unit can no longer be run again.
const holdLimit = 256 << 10

func (bc *bconn) deliver(u *Unit, raw []byte, last bool, w *work) {
	if u.hold {
		u.held = append(u.held, raw...)
		if len(u.held) <= holdLimit && !last {
			return
		}
		raw, u.held, u.hold = u.held, nil, false
	}
	u.delivered = true
	w.emit(u, raw, last)
}

// ready ends the unit at the head: the guard against misclassified units, the cancel
// bookkeeping, and the next unit's turn.
func (bc *bconn) ready(u *Unit, f *wire.Frame, w *work) error {
	b := bc.b
	status, _ := wire.ReadyStatus(f.Body)
	bc.inflight[0] = nil
	bc.inflight = bc.inflight[1:]
	u.state = stDone
	if u.internal {
		if u.failedInt {
			bc.kill(w, "08006", "server connection closed: the gateway could not apply the client's settings to it")
			return errStop
		}
		if u.barrier {
			bc.endHazard(w)
		}
		return bc.next(w)
	}
	if status != 'I' || u.param != "" {
		// The unit changed what the next one would run in: nothing later on this connection
		// may be delivered, and the connection must not be reused.
		var why string
		if status != 'I' {
			why = "it left a transaction open, so the server connection was closed and nothing of the transaction was committed"
		} else {
			why = fmt.Sprintf("it changed the session parameter %q, so the server connection was closed and the change is lost", u.param)
		}
		b.cfg.Metrics.guardTrips.Inc()
		w.fail(u, "0A000", "a batched statement changed session or transaction state: "+why+
			"; run such statements outside batching (--batch)")
		bc.kill(w, "08006", "server connection closed: a statement batched ahead of this one on it changed session or transaction state (--batch); this one's outcome is unknown")
		return errStop
	}
	if u.hold && u.canceled && !u.cancelReq {
		// A cancel meant for a unit ahead landed here: nothing of it was committed, and nothing
		// of it was delivered; it runs again. PostgreSQL signals a backend twice per
		// CancelRequest (the process and its group), so a second unit may be hit too: every
		// held unit stays held until the barrier behind them.
		b.requeue(u)
		return bc.next(w)
	}
	bc.deliver(u, f.Raw, true, w)
	b.cfg.Metrics.batched.Inc()
	return bc.next(w)
}

// endHazard: no cancel is pending on the connection any more, so responses held for fear of it
// go to their clients.
func (bc *bconn) endHazard(w *work) {
	for _, v := range bc.inflight {
		if v.hold {
			v.hold = false
			if len(v.held) > 0 {
				held := v.held
				v.held = nil
				v.delivered = true
				w.emit(v, held, false)
			}
		}
	}
}

// next starts a cancel that waited for its unit to reach the head, and decides whether the
// connection should drain and go back to the pool: one at a time while others wait for it.
func (bc *bconn) next(w *work) error {
	if len(bc.inflight) > 0 {
		if h := bc.inflight[0]; h.cancelReq && !h.cancelOut && !bc.cancelling {
			bc.startCancel(h)
		}
	}
	if !bc.retiring && !bc.b.anyRetiring() && bc.b.othersWait() {
		bc.retiring = true
	}
	return nil
}

func (b *Batcher) anyRetiring() bool {
	for _, bc := range b.conns {
		if bc.retiring && !bc.dead {
			return true
		}
	}
	return false
}

// othersWait reports whether others wait for the pool: lenders outside the batchers, or another
// batcher of the group holding no connection. A connection then stops taking units and goes
// back once its pipeline is empty, so that units that cannot be batched are not starved.
// Batchers that hold some connections already do not take them from each other: MaxConns
// shares the pool between them.
func (b *Batcher) othersWait() bool {
	g := b.cfg.Group
	n := int64(b.cfg.Pool.Stats().Waiting) - g.waiting.Load() + g.starved.Load()
	if b.starved {
		n--
	}
	return n > 0
}

// startCancel sends a CancelRequest for u, the unit at the head. Until the server has taken it
// nothing new is written to the connection, and the units already behind u keep their responses
// until it is known the cancel did not hit them. After it, an empty query marks the point past
// which no cancel can land.
func (bc *bconn) startCancel(u *Unit) {
	b := bc.b
	bc.cancelling = true
	u.cancelOut = true
	for _, v := range bc.inflight[1:] {
		if !v.internal {
			v.hold = true
		}
	}
	c := bc.c
	b.cfg.Metrics.cancels.Inc()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), b.cfg.CancelTimeout)
		err := c.Cancel(ctx)
		cancel()
		if err != nil {
			b.cfg.Log.Warn("batcher: cancel failed", "backend", c.Addr(), "err", err)
		}
		var w work
		b.mu.Lock()
		bc.cancelling = false
		if !bc.dead {
			bc.write(&Unit{internal: true, barrier: true, Msgs: wire.AppendQuery(nil, "")})
			if len(bc.inflight) > 0 {
				if h := bc.inflight[0]; h.cancelReq && !h.cancelOut && !h.internal {
					bc.startCancel(h)
				}
			}
		}
		b.settle(&w)
		b.mu.Unlock()
		b.run(&w)
	}()
}

// kill closes the connection and fails every unit still in flight on it.
func (bc *bconn) kill(w *work, code, msg string) {
	if bc.dead {
		return
	}
	bc.dead = true
	for _, u := range bc.inflight {
		if u.state == stWritten {
			u.state = stDone
			w.fail(u, code, msg)
		}
	}
	bc.inflight = nil
	w.closed = append(w.closed, bc.c)
}

// BackendClosed implements pool.Sink.
func (bc *bconn) BackendClosed(c *pool.Conn, err error) {
	b := bc.b
	var w work
	b.mu.Lock()
	bc.kill(&w, "08006", fmt.Sprintf("server connection closed (%s): %v", c.Addr(), err))
	w.closed = nil // closed already
	b.settle(&w)
	b.mu.Unlock()
	b.run(&w)
}
