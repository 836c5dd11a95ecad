package admission

import (
	"fmt"
	"sync"
	"time"

	"github.com/asyncgate/asyncgate/wire"
)

// Config is one gate's settings. A gate sits in front of one pool.
type Config struct {
	Name        string        // pool name for messages, "database/user"
	Limit       int           // units admitted at once, e.g. the pool size; below 1 is taken as 1
	MaxQueue    int           // most waiting units across all tenants (0: no bound)
	WaitTimeout time.Duration // longest wait (0: forever)
	Notify      time.Duration // after this wait, the waiter's Notify is called once (0: never)

	// Weights gives a tenant's share of the slots under contention (values below 1 count as 1;
	// nil: all 1). It is called with the gate locked, when a tenant starts waiting, so it must
	// be quick and must not call back into the gate.
	Weights func(tenant string) int

	// Aging bounds how long a tenant can go unserved while it waits: once the head of its queue
	// has waited this long since the tenant was last served, it goes ahead of the weights
	// (0: weights only).
	Aging time.Duration

	// Reserve is how many units beyond Limit may run once some unit has waited ReserveAfter,
	// as PgBouncer's reserve_pool_size and reserve_pool_timeout let a pool grow (0: none).
	Reserve      int
	ReserveAfter time.Duration

	Adaptive *AdaptiveConfig // move the limit with observed latency (nil: the limit is fixed)

	Now       func() time.Time                                   // nil: time.Now
	AfterFunc func(d time.Duration, f func()) (stop func() bool) // nil: time.AfterFunc
}

// Waiter is how a queued unit learns its fate.
type Waiter struct {
	// Deliver is called exactly once for a unit that had to wait, always on another goroutine:
	// with a Ticket, or with the reason there is none (a *wire.Error).
	Deliver func(*Ticket, error)
	// Notify, if not nil, is called once when the unit has waited Config.Notify. It may race with
	// Deliver: a unit that is already served should ignore it.
	Notify func(waited time.Duration)
	// Inline lets Deliver run on the goroutine that released the slot (after the gate is
	// unlocked), which spares a goroutine per hand-over on the busy path; Deliver must then not
	// block.
	Inline bool
}

// Outcome is what happened to an admitted unit, for the adaptive limit.
type Outcome struct {
	// Latency is the unit's time on the backend, as the caller measured it for its metrics
	// (zero: not measured, which the adaptive limit skips).
	Latency time.Duration
	// Dropped says the unit timed out or was refused because the backend was overloaded.
	Dropped bool
}

// GateStats is a snapshot of a gate.
type GateStats struct {
	Running, Waiting, Limit int
	WaitingBy               map[string]int // waiting units per tenant, for tenants that have any
	OldestWait              time.Duration  // how long the longest-waiting unit has waited (SHOW POOLS maxwait)

	Admitted        uint64 // at once or after a wait
	RejectedFull    uint64 // refused because the queue was full (53300)
	RejectedTimeout uint64 // waited WaitTimeout in vain (57014)
	RejectedEarly   uint64 // refused at once because the wait would exceed WaitTimeout (57014)
	Notified        uint64 // Notify calls
	ReserveAdmitted uint64 // admitted beyond Limit by the reserve
}

// Gate admits request units to a pool: at most Limit run at once, the rest wait in per-tenant
// FIFO queues served by deficit round robin with aging.
type Gate struct {
	cfg       Config
	now       func() time.Time
	afterFunc func(time.Duration, func()) func() bool

	mu       sync.Mutex
	limit    int
	running  int
	waiting  int
	tenants  map[string]*tenant
	ring     *tenant // tenants with waiters, starting with the one whose turn it is
	adaptive *limiter
	closed   bool
	stats    GateStats // counters only

	// The pace at which a saturated gate admits, for predicting waits: the mean time between
	// releases that found units waiting, over the releases since the gate last ran dry.
	lastRelease time.Time // zero while the gate is not saturated
	interval    float64   // ns
	intervals   int
}

// Predicting a wait: from minIntervals releases on, their mean gap (weighted 1/paceWindow at most
// per release, so that it follows a change of pace within some tens of releases) times the units
// that deficit round robin will admit before a new one.
const (
	minIntervals = 8
	paceWindow   = 32
)

// Ticket is an admitted unit's slot, held until Release.
type Ticket struct {
	g        *Gate
	waited   time.Duration
	released bool // guarded by g.mu
}

type tenant struct {
	name       string
	weight     int
	credit     int       // units left in the current round robin turn
	served     time.Time // last admission from this queue, for aging
	head, tail *waiter
	n          int
	prev, next *tenant
}

type waiter struct {
	w          Waiter
	tenant     *tenant
	enqueued   time.Time
	prev, next *waiter
	stopWait   func() bool
	stopNotify func() bool
	stopRes    func() bool
	done       bool // admitted, expired, withdrawn or failed (guarded by Gate.mu)
	ticket     Ticket
}

// NewGate returns an open gate.
func NewGate(cfg Config) *Gate {
	g := &Gate{cfg: cfg, now: cfg.Now, afterFunc: cfg.AfterFunc, limit: max(cfg.Limit, 1), tenants: make(map[string]*tenant)}
	if g.now == nil {
		g.now = time.Now
	}
	if g.afterFunc == nil {
		g.afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if cfg.Adaptive != nil {
		g.adaptive = newLimiter(*cfg.Adaptive, g.limit)
		g.limit = g.adaptive.current()
	}
	return g
}

// Acquire admits a unit for tenant. When a slot is free and nobody waits, it returns a Ticket at
// once. When the unit cannot wait the error says why (*wire.Error). Otherwise the unit waits:
// w.Deliver is called exactly once, and withdraw cancels the wait, reporting false if Deliver
// has been or is being called.
func (g *Gate) Acquire(tenant string, w Waiter) (t *Ticket, withdraw func() bool, err error) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, nil, g.closedError()
	}
	// Waiters only exist while every slot is taken, so a free slot belongs to the caller.
	if g.running < g.limit {
		g.running++
		g.stats.Admitted++
		t := &Ticket{g: g}
		g.mu.Unlock()
		return t, nil, nil
	}
	if g.cfg.MaxQueue > 0 && g.waiting >= g.cfg.MaxQueue {
		g.stats.RejectedFull++
		g.mu.Unlock()
		return nil, nil, &wire.Error{Code: "53300", Message: fmt.Sprintf(
			"pool %s: %d requests already wait for a server connection (--max-queue)", g.cfg.Name, g.cfg.MaxQueue)}
	}
	if wait, ok := g.predict(tenant); ok && wait > g.cfg.WaitTimeout {
		// Waiting would only end in the same refusal, later, after holding a place.
		g.stats.RejectedEarly++
		g.mu.Unlock()
		return nil, nil, &wire.Error{Code: "57014", Message: fmt.Sprintf(
			"query_wait_timeout: pool %s would make this request wait about %s for a server connection, longer than %s (--query-wait-timeout)",
			g.cfg.Name, wait.Round(time.Millisecond), g.cfg.WaitTimeout)}
	}
	wt := &waiter{w: w, enqueued: g.now()}
	g.enqueue(tenant, wt)
	// The timers start under the lock so that their stop functions are in place before the
	// callbacks, which take the lock, can look at them.
	if g.cfg.WaitTimeout > 0 {
		wt.stopWait = g.afterFunc(g.cfg.WaitTimeout, func() { g.expire(wt) })
	}
	if w.Notify != nil && g.cfg.Notify > 0 && (g.cfg.WaitTimeout == 0 || g.cfg.Notify < g.cfg.WaitTimeout) {
		wt.stopNotify = g.afterFunc(g.cfg.Notify, func() { g.notify(wt) })
	}
	if g.cfg.Reserve > 0 && (g.cfg.WaitTimeout == 0 || g.cfg.ReserveAfter < g.cfg.WaitTimeout) {
		wt.stopRes = g.afterFunc(g.cfg.ReserveAfter, g.reserve)
	}
	g.mu.Unlock()
	return nil, func() bool { return g.withdraw(wt) }, nil
}

// Release gives the slot back and feeds the outcome to the adaptive limit. Only the first call
// counts.
func (t *Ticket) Release(o Outcome) {
	g := t.g
	g.mu.Lock()
	if t.released {
		g.mu.Unlock()
		return
	}
	t.released = true
	inflight := g.running
	g.running--
	if g.waiting > 0 && g.cfg.WaitTimeout > 0 {
		g.pace()
	} else {
		g.lastRelease, g.intervals = time.Time{}, 0
	}
	if g.adaptive != nil {
		g.limit = g.adaptive.sample(o.Latency, o.Dropped, inflight)
	}
	admitted := g.dispatch()
	g.mu.Unlock()
	deliver(admitted)
}

// Waited is how long the unit queued before it was admitted.
func (t *Ticket) Waited() time.Duration { return t.waited }

// SetLimit changes how many units run at once; below 1 is taken as 1. With an adaptive limit the
// value is kept within its bounds and the limit moves on from there.
func (g *Gate) SetLimit(n int) {
	g.mu.Lock()
	n = max(n, 1)
	if g.adaptive != nil {
		n = g.adaptive.set(n)
	}
	g.limit = n
	admitted := g.dispatch()
	g.mu.Unlock()
	deliver(admitted)
}

// SetAdaptive starts moving the limit with observed latency, from the current limit unless
// cfg.Initial says otherwise, or stops it (nil) and keeps the limit where it is. A new config
// learns its latency baseline afresh.
func (g *Gate) SetAdaptive(cfg *AdaptiveConfig) {
	g.mu.Lock()
	g.adaptive = nil
	if cfg != nil {
		g.adaptive = newLimiter(*cfg, g.limit)
		g.limit = g.adaptive.current()
	}
	admitted := g.dispatch()
	g.mu.Unlock()
	deliver(admitted)
}

// Stats returns the gate's sizes and counters.
func (g *Gate) Stats() GateStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.Running, s.Waiting, s.Limit = g.running, g.waiting, g.limit
	s.WaitingBy = make(map[string]int, len(g.tenants))
	if len(g.tenants) == 0 {
		return s
	}
	now := g.now()
	for name, t := range g.tenants {
		s.WaitingBy[name] = t.n
		s.OldestWait = max(s.OldestWait, now.Sub(t.head.enqueued))
	}
	return s
}

// Close fails the waiters with 57P01 and refuses new units. Tickets already out may still be
// released.
func (g *Gate) Close() {
	g.mu.Lock()
	g.closed = true
	var failed []*waiter
	for g.ring != nil {
		w := g.ring.head
		g.remove(w)
		failed = append(failed, w)
	}
	g.mu.Unlock()
	err := g.closedError()
	for _, w := range failed {
		go w.w.Deliver(nil, err)
	}
}

func (g *Gate) closedError() error {
	return &wire.Error{Code: "57P01", Message: fmt.Sprintf("pool %s is shutting down", g.cfg.Name)}
}

// deliver hands tickets to units that waited. It runs after the gate is unlocked; each Deliver
// gets its own goroutine, so that callers of Release may hold their own locks, unless its waiter
// is Inline.
func deliver(admitted []*waiter) {
	for _, w := range admitted {
		if w.w.Inline {
			w.w.Deliver(&w.ticket, nil)
		} else {
			go w.w.Deliver(&w.ticket, nil)
		}
	}
}

func (g *Gate) expire(w *waiter) {
	g.mu.Lock()
	if w.done {
		g.mu.Unlock()
		return
	}
	g.remove(w)
	g.stats.RejectedTimeout++
	g.mu.Unlock()
	w.w.Deliver(nil, &wire.Error{Code: "57014", Message: fmt.Sprintf(
		"query_wait_timeout: no server connection in pool %s became free within %s (--query-wait-timeout)",
		g.cfg.Name, g.cfg.WaitTimeout)})
}

func (g *Gate) notify(w *waiter) {
	g.mu.Lock()
	if w.done {
		g.mu.Unlock()
		return
	}
	g.stats.Notified++
	waited := g.now().Sub(w.enqueued)
	g.mu.Unlock()
	w.w.Notify(waited)
}

func (g *Gate) withdraw(w *waiter) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if w.done {
		return false
	}
	g.remove(w)
	return true
}

func (g *Gate) enqueue(name string, w *waiter) {
	t := g.tenants[name]
	if t == nil {
		weight := 1
		if g.cfg.Weights != nil {
			weight = max(g.cfg.Weights(name), 1)
		}
		t = &tenant{name: name, weight: weight}
		g.tenants[name] = t
		g.join(t)
	}
	w.tenant = t
	w.prev = t.tail
	if t.tail != nil {
		t.tail.next = w
	} else {
		t.head = w
	}
	t.tail = w
	t.n++
	g.waiting++
}

// remove takes w out of its queue for good; a tenant with nothing left waiting is forgotten, so
// the gate's memory does not grow with the number of distinct tenants.
func (g *Gate) remove(w *waiter) {
	t := w.tenant
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		t.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		t.tail = w.prev
	}
	w.prev, w.next = nil, nil
	t.n--
	g.waiting--
	w.done = true
	if w.stopWait != nil {
		w.stopWait()
	}
	if w.stopNotify != nil {
		w.stopNotify()
	}
	if w.stopRes != nil {
		w.stopRes()
	}
	if t.n == 0 {
		g.leave(t)
	}
}

// join puts t at the end of the round: a tenant that starts waiting waits for its turn.
func (g *Gate) join(t *tenant) {
	if g.ring == nil {
		t.prev, t.next = t, t
		g.ring = t
		return
	}
	last := g.ring.prev
	t.prev, t.next = last, g.ring
	last.next, g.ring.prev = t, t
}

func (g *Gate) leave(t *tenant) {
	if t.next == t {
		g.ring = nil
	} else {
		t.prev.next, t.next.prev = t.next, t.prev
		if g.ring == t {
			g.ring = t.next
		}
	}
	t.prev, t.next = nil, nil
	delete(g.tenants, t.name)
}

// pace notes a release of a saturated gate. It runs under g.mu.
func (g *Gate) pace() {
	now := g.now()
	if !g.lastRelease.IsZero() {
		gap := float64(now.Sub(g.lastRelease))
		g.intervals++
		g.interval += (gap - g.interval) / float64(min(g.intervals, paceWindow))
	}
	g.lastRelease = now
}

// predict estimates how long a new unit of tenant would wait, once the gate's pace is known:
// deficit round robin admits the units already queued for tenant, and for every unit of tenant
// up to weight/tenant's weight units of each other waiting tenant, as far as it has any. It
// runs under g.mu.
//
// A reserve that opens before WaitTimeout makes the pace say nothing: a unit that waits
// ReserveAfter gets a slot beyond the limit, so no wait is predicted.
func (g *Gate) predict(tenant string) (time.Duration, bool) {
	reserveFirst := g.cfg.Reserve > 0 && g.cfg.ReserveAfter < g.cfg.WaitTimeout
	if g.cfg.WaitTimeout <= 0 || reserveFirst || g.intervals < minIntervals {
		return 0, false
	}
	own := 1.0
	weight := 1
	if t := g.tenants[tenant]; t != nil {
		own += float64(t.n)
		weight = t.weight
	} else if g.cfg.Weights != nil {
		weight = max(g.cfg.Weights(tenant), 1)
	}
	ahead := own
	if u := g.ring; u != nil {
		for {
			if u.name != tenant {
				ahead += min(float64(u.n), own*float64(u.weight)/float64(weight))
			}
			if u = u.next; u == g.ring {
				break
			}
		}
	}
	return time.Duration(ahead * g.interval), true
}

// dispatch admits waiters while slots are free. It runs under g.mu; the caller delivers.
func (g *Gate) dispatch() []*waiter {
	if g.waiting == 0 || g.running >= g.limit+g.cfg.Reserve {
		return nil
	}
	now := g.now()
	var admitted []*waiter
	for g.waiting > 0 {
		reserve := false
		if g.running >= g.limit {
			if !g.reserveDue(now) {
				break
			}
			reserve = true
		}
		w := g.next(now)
		w.ticket = Ticket{g: g, waited: now.Sub(w.enqueued)}
		g.running++
		g.stats.Admitted++
		if reserve {
			g.stats.ReserveAdmitted++
		}
		admitted = append(admitted, w)
	}
	return admitted
}

// reserveDue reports whether a unit beyond the limit may run now: the reserve has room and some
// unit has waited ReserveAfter. It runs under g.mu, only while every slot of the limit is taken.
func (g *Gate) reserveDue(now time.Time) bool {
	if g.cfg.Reserve <= 0 || g.running >= g.limit+g.cfg.Reserve || g.ring == nil {
		return false
	}
	t := g.ring
	for {
		if now.Sub(t.head.enqueued) >= g.cfg.ReserveAfter {
			return true
		}
		if t = t.next; t == g.ring {
			return false
		}
	}
}

// reserve runs when a unit has waited ReserveAfter: the reserve may admit it now.
func (g *Gate) reserve() {
	g.mu.Lock()
	admitted := g.dispatch()
	g.mu.Unlock()
	deliver(admitted)
}

// next picks the unit to admit and takes it out of its queue. A starved tenant goes first;
// otherwise deficit round robin: the tenant whose turn it is gets up to its weight in units in a
// row, then the turn passes on. All units cost the same, so the deficit is a count of units.
func (g *Gate) next(now time.Time) *waiter {
	t := g.starved(now)
	if t == nil {
		t = g.ring
		if t.credit == 0 {
			t.credit = t.weight
		}
		t.credit--
		if t.credit == 0 {
			g.ring = t.next
		}
	}
	t.served = now
	w := t.head
	g.remove(w)
	return w
}

// starved returns the tenant that has gone unserved longest beyond Aging, if any. The clock
// starts at the later of the head's arrival and the tenant's last admission, so a tenant's own
// backlog does not count as starvation: a busy tenant that is served steadily never ages, and
// cannot push a quiet one back behind its queue.
func (g *Gate) starved(now time.Time) *tenant {
	if g.cfg.Aging <= 0 {
		return nil
	}
	var oldest *tenant
	var oldestSince time.Time
	t := g.ring
	for {
		since := t.head.enqueued
		if t.served.After(since) {
			since = t.served
		}
		if now.Sub(since) > g.cfg.Aging && (oldest == nil || since.Before(oldestSince)) {
			oldest, oldestSince = t, since
		}
		if t = t.next; t == g.ring {
			return oldest
		}
	}
}
