package gateway

import (
	"math/rand/v2"
	"time"

	"github.com/asyncgate/asyncgate/hedge"
	"github.com/asyncgate/asyncgate/pool"
)

// Hedged reads (--hedge): an autocommit read that read routing sent to a replica, and that has
// not answered within the hedge delay, is sent as well to a second backend: another replica, or
// the primary. The first backend to answer serves the client; the other is cancelled and
// brought back to ReadyForQuery by a drainer. The policy (delay, budget, choice of backend,
// the race) is package hedge's; this file owns the sockets and the timer.
//
// Only units that can be replayed byte for byte on any backend are hedged: simple Queries and
// extended-protocol groups on the unnamed statement, ending in Sync, each statement proven a
// read. Groups using a named prepared statement are not hedged: the second backend might lack
// the statement, and preparing it there first would put the gateway's own messages ahead of
// the race. Neither are units of a client whose settings the second backend would need first.

// hedging is one database's hedged reads, shared by its sessions.
type hedging struct {
	delay    *hedge.Delay
	budget   *hedge.Budget
	balancer *hedge.Balancer
	stats    hedge.Stats
}

// hedgeDelay is the delay policy the flags describe.
func (c *Config) hedgeDelay() hedge.DelayConfig {
	return hedge.DelayConfig{Fixed: c.HedgeDelay, Percentile: c.HedgeDelayPercentile, Min: c.HedgeDelayMin, Max: c.HedgeDelayMax}
}

// setupHedging turns hedged reads on for db when --hedge or its DSN's hedge= says so and read
// routing can send it reads.
func (s *Server) setupHedging(db *database) {
	on := s.cfg.Hedge
	if db.hedge != nil {
		on = *db.hedge
	}
	if !on || len(db.replicas) == 0 || db.reads.routing == routeOff {
		return
	}
	h := &hedging{delay: hedge.NewDelay(s.cfg.hedgeDelay()), balancer: hedge.NewBalancer(rand.Uint64())}
	ratio := s.cfg.HedgeBudget
	if ratio == 0 {
		ratio = 0.1
	}
	h.budget = hedge.NewBudget(hedge.BudgetConfig{Ratio: ratio, Stats: &h.stats})
	db.reads.hedging = h
}

// HedgeStats reports the hedged reads of database alias db: reads that could have been hedged,
// hedges sent, races the hedge won, attempts cancelled, hedges the budget refused.
func (s *Server) HedgeStats(db string) hedge.StatsSnapshot {
	if d, ok := s.dbs[db]; ok && d.reads.hedging != nil {
		return d.reads.hedging.stats.Snapshot()
	}
	return hedge.StatsSnapshot{}
}

// hedgeRace is the session's read in flight while it may still be hedged: from when it is sent
// to its replica until one backend's first response arrives (or the race ends otherwise).
type hedgeRace struct {
	h      *hedging
	race   hedge.Race
	frames [][]byte // the unit's client frames, as sent to the first backend
	owed   int      // ReadyForQuery messages the unit owes: what a loser's drainer waits for
	sent   time.Time
	stop   func() bool // the hedge delay timer

	second        *pool.Conn // attempt 1, once sent
	secondPool    *pool.Pool
	secondReplica *replica // nil for the primary
}

// prepareHedge reports whether the unit routed to the replica may be hedged and, if so, keeps
// its frames. It runs before they are relayed: they stay valid after, since relaying a queued
// frame only drops the queue's reference to its copy.
func (s *session) prepareHedge() *hedgeRace {
	h := s.db.reads.hedging
	if h == nil || s.replica == nil || s.routed == 0 || s.routed > len(s.queued) || s.txStatus != 'I' ||
		s.pinned() || !s.slots.empty() || s.unsynced || s.copyIn || s.hubWait || s.state != stLinked {
		return nil
	}
	unit := s.queued[:s.routed]
	frames := make([][]byte, 0, len(unit))
	for _, q := range unit {
		if !q.whole || !replayable(q) {
			return nil
		}
		frames = append(frames, q.raw)
	}
	if last := unit[len(unit)-1].typ; last != 'S' && last != 'Q' {
		return nil // the client waits for a Flush's answers: more of the unit is to come
	}
	all := s.queued
	s.queued = unit
	stmts, complete := s.queuedStatements()
	s.queued = all
	if !complete || !allRead(stmts) {
		return nil // a read-only transaction, or a read-only client's unit: not provably one read
	}
	return &hedgeRace{h: h, frames: frames}
}

// replayable reports a client message that means the same on every backend: it names no
// prepared statement of the client's, which the gateway renames per backend.
func replayable(q queuedFrame) bool {
	body := q.raw[len(q.raw)-q.length:]
	switch q.typ {
	case 'Q', 'E', 'S', 'H':
		return true
	case 'P':
		name, _, ok := cut(body)
		return ok && len(name) == 0
	case 'B':
		_, rest, ok := cut(body)
		if !ok {
			return false
		}
		name, _, ok := cut(rest)
		return ok && len(name) == 0
	case 'D':
		if len(body) < 2 {
			return false
		}
		if body[0] == 'P' {
			return true
		}
		name, _, ok := cut(body[1:])
		return ok && len(name) == 0
	}
	return false
}

// startHedge begins the race once the unit went to the replica, and arms the hedge delay.
func (s *session) startHedge(hr *hedgeRace, first *pool.Conn) {
	if s.be != first || s.routed != 0 || s.unsynced || s.state != stLinked || s.slots.empty() {
		return
	}
	for i := s.slots.head; i < len(s.slots.items); i++ {
		if s.slots.items[i].act != actForward {
			return // the gateway answers part of it: not the same exchange on another backend
		}
	}
	hr.owed = s.slots.syncs()
	hr.h.budget.Request()
	hr.race.Start()
	hr.sent = time.Now()
	s.hedge = hr
	hr.stop = s.io.AfterFunc(hr.h.delay.Current(), func() {
		if s.hedge == hr && s.state != stClosed {
			s.sendHedge(hr)
		}
	})
}

// sendHedge sends the unit to a second backend, if one is idle and the budget allows.
func (s *session) sendHedge(hr *hedgeRace) bool {
	c, p, r := s.hedgeBackend()
	if c == nil {
		return false
	}
	if !hr.h.budget.TryHedge() {
		p.Return(c)
		return false
	}
	if _, ok := hr.race.Hedge(); !ok {
		p.Return(c)
		return false
	}
	if r != nil {
		r.outstanding.Add(1)
	}
	hr.second, hr.secondPool, hr.secondReplica = c, p, r
	c.SetSink(hedgeSink{s})
	for _, f := range hr.frames {
		c.Write(f)
	}
	c.Flush()
	return true
}

// hedgeBackend takes an idle connection for the hedge: from another replica that may take
// reads, else from the primary. It never waits: a hedge that has to queue for a connection
// comes too late to help, and would take the connection from a unit that needs it.
func (s *session) hedgeBackend() (*pool.Conn, *pool.Pool, *replica) {
	var buf [8]*replica
	eligible := buf[:0]
	exclude := -1
	for _, r := range s.db.replicas {
		if !r.lagOK.Load() || s.srv.backendPool(s.db, s.user, r.index).BreakerState() == "open" {
			continue
		}
		if r == s.replica {
			exclude = len(eligible)
		}
		eligible = append(eligible, r)
	}
	pick := s.db.reads.hedging.balancer.Pick(len(eligible), func(i int) int { return int(eligible[i].outstanding.Load()) }, exclude)
	if pick >= 0 {
		r := eligible[pick]
		p := s.srv.backendPool(s.db, s.user, r.index)
		if c := s.tryBackend(p); c != nil {
			return c, p, r
		}
	}
	if c := s.tryBackend(s.primary); c != nil {
		return c, s.primary, nil
	}
	return nil, nil, nil
}

// tryBackend takes an idle connection of p that already has the client's settings.
func (s *session) tryBackend(p *pool.Pool) *pool.Conn {
	c := p.TryAcquire(s.io.Loop())
	if c != nil && !settingsReady(c, s.desired) {
		p.Return(c)
		return nil
	}
	return c
}

// settingsReady reports whether c has exactly the settings want, as followSettings would leave
// it, without changing what c records.
func settingsReady(c *pool.Conn, want map[string]string) bool {
	for name := range c.Settings {
		if _, _, ok := lookupIn(want, name); !ok {
			return false
		}
	}
	for name, value := range want {
		if _, have, ok := lookupSetting(c, name); !ok || have != value {
			return false
		}
	}
	return true
}

// raceFirst is the first response of the first backend: it wins unless it failed first.
func (s *session) raceFirst(hr *hedgeRace) {
	s.hedge = nil
	hr.stop()
	won, losers := hr.race.FirstFrame(0)
	if !won {
		return
	}
	hr.h.delay.Observe(time.Since(hr.sent))
	hr.h.stats.Decided(0, losers)
	if len(losers) > 0 && hr.second != nil {
		s.loseHedge(hr)
	}
}

// hedgeData is what the hedge's backend sent.
func (s *session) hedgeData(c *pool.Conn, b []byte) {
	hr := s.hedge
	if hr == nil || c != hr.second {
		s.backendData(c, b) // it won already, or lost: backendData routes it
		return
	}
	won, losers := hr.race.FirstFrame(1)
	if !won {
		return
	}
	// The original's time until it was cancelled: short of its latency, but past the delay,
	// which is what the percentile needs to know.
	hr.h.delay.Observe(time.Since(hr.sent))
	hr.h.stats.Decided(1, losers)
	s.promoteHedge(hr, len(losers) > 0)
	s.backendData(c, b)
}

// promoteHedge makes the hedge the session's backend, draining the original if it still runs.
func (s *session) promoteHedge(hr *hedgeRace, drainFirst bool) {
	s.hedge = nil
	hr.stop()
	old, oldPool := s.be, s.pool
	c := hr.second
	s.be = c
	s.flushBe.Store(c)
	c.SetSink(backendSink{s})
	if s.replica != nil {
		s.replica.outstanding.Add(-1)
	}
	s.replica, s.pool = hr.secondReplica, hr.secondPool
	if drainFirst && old != nil {
		s.drainLoser(old, oldPool, hr.owed)
	}
}

// loseHedge hands the hedge's backend, which lost, to a drainer.
func (s *session) loseHedge(hr *hedgeRace) {
	c := hr.second
	hr.second = nil
	if hr.secondReplica != nil {
		hr.secondReplica.outstanding.Add(-1)
	}
	s.drainLoser(c, hr.secondPool, hr.owed)
}

// abortHedge ends the race without a winner: the client left or cancelled its query.
func (s *session) abortHedge() {
	hr := s.hedge
	if hr == nil {
		return
	}
	s.hedge = nil
	hr.stop()
	if cancelled := hr.race.Abort("57014"); len(cancelled) > 0 {
		hr.h.stats.Cancelled.Add(uint64(len(cancelled)))
	}
	if hr.second != nil {
		s.loseHedge(hr)
	}
}

// hedgeClosed handles a backend of the race that closed before answering. It reports whether
// the session still has a backend serving the unit.
func (s *session) hedgeClosed(hr *hedgeRace, c *pool.Conn) bool {
	if c == hr.second {
		hr.race.Failed(1, true, "08006")
		hr.second = nil
		if hr.secondReplica != nil {
			hr.secondReplica.outstanding.Add(-1)
		}
		return true // the original still runs
	}
	if c != s.be {
		return false
	}
	// Nothing of the answer reached the client: the read is still safe to send elsewhere.
	if hr.race.Failed(0, true, "08006") && !s.sendHedge(hr) {
		hr.race.Abort("")
	}
	if hr.second == nil {
		s.hedge = nil
		hr.stop()
		return false
	}
	hr.h.stats.WonByHedge.Add(1)
	s.promoteHedge(hr, false)
	return true
}

// recancelEvery is how long a loser has to answer a cancel before it gets another.
const recancelEvery = 100 * time.Millisecond

// drainLoser cancels what a losing backend runs and has a drainer bring it back to
// ReadyForQuery and to its pool, as for a client that left mid-query.
func (s *session) drainLoser(c *pool.Conn, p *pool.Pool, owed int) {
	answered := make(chan struct{})
	d := &drainer{srv: s.srv, pool: p, c: c, back: giveReturn, owed: owed, status: 'I', answered: answered}
	d.mu.Lock()
	defer c.Flush()
	defer d.mu.Unlock()
	d.stopTimer = time.AfterFunc(s.srv.cfg.CancelDrainTimeout, d.timeout).Stop
	d.cancels++
	timeout := s.srv.cfg.CancelTimeout
	log := s.srv.log
	go func() {
		// PostgreSQL ignores a cancel that arrives before the backend has read the query, which
		// a loser sent a moment ago may not have: cancel again while it still owes its answer.
		// The drainer waits for this loop before its barrier query, so no cancel can outlive it.
		for {
			if err := cancelBackend(c, timeout); err != nil {
				log.Warn("could not cancel the losing attempt of a hedged read", "backend", c.Addr(), "err", err)
				break
			}
			// The connection goes back as soon as the loser has answered: waiting out the whole
			// interval held one backend per hedge for 100 ms and starved the pool of hedges.
			t := time.NewTimer(recancelEvery)
			select {
			case <-answered:
			case <-t.C:
			}
			t.Stop()
			d.mu.Lock()
			again := !d.finished && d.owed > 0
			d.mu.Unlock()
			if !again {
				break
			}
		}
		d.cancelDelivered()
	}()
	c.SetSink(d)
	d.step()
}

// strayData passes on bytes from a backend the session no longer holds, which were on their way
// when it handed the backend to a drainer: the drainer must see every byte to keep count.
func strayData(c *pool.Conn, b []byte) {
	if d, ok := c.Sink().(*drainer); ok {
		d.BackendData(c, b)
	}
}

// hedgeSink delivers the hedge's bytes to its session's loop.
type hedgeSink struct{ s *session }

func (h hedgeSink) BackendData(c *pool.Conn, data []byte) {
	if !h.s.io.Exec(func() { h.s.hedgeData(c, data) }) {
		if next := c.Sink(); next != h {
			next.BackendData(c, data)
		}
	}
}

func (h hedgeSink) BackendClosed(c *pool.Conn, err error) {
	h.s.io.Exec(func() { h.s.backendClosed(c, err) })
}
