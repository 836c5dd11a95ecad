package gateway

import (
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/asyncgate/asyncgate/hedge"
	"github.com/asyncgate/asyncgate/loop"
	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

// Hedged reads (--hedge): an autocommit read that read routing sent to a replica, and that has
// not answered within the hedge delay, is sent as well to a second backend: another replica, or
// the primary. The first backend to answer serves the client; the other is cancelled and
// brought back to ReadyForQuery by a drainer. The policy (delay, budget, choice of backend,
// the race) is package hedge's; this file owns the sockets and the timer.
//
// Only units that mean the same on any backend are hedged: simple Queries and extended-protocol
// groups ending in Sync, each statement proven a read. A group may bind and describe the
// client's named prepared statements: they are sent under their backend names, prepared first
// on a backend that lacks them (the gateway swallows that ParseComplete), and the hedge has
// slots of its own, which replace the session's if it wins. A group that prepares or closes a
// named statement is not hedged, nor a unit of a client whose settings the second backend
// would need first.

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
	if d, ok := s.databases()[db]; ok && d.reads.hedging != nil {
		return d.reads.hedging.stats.Snapshot()
	}
	return hedge.StatsSnapshot{}
}

// hedgeRace is the session's read in flight while it may still be hedged: from when it is sent
// to its replica until one backend's first response arrives (or the race ends otherwise).
type hedgeRace struct {
	h     *hedging
	race  hedge.Race
	unit  []queuedFrame // the unit's client frames, as the client sent them
	stmts []*stmt       // per frame of unit, the named statement it binds or describes, or nil
	owed  int           // ReadyForQuery messages the unit owes: what a loser's drainer waits for
	sent  time.Time
	stop  func() bool // the hedge delay timer

	second        *pool.Conn // attempt 1, once sent
	secondPool    *pool.Pool
	secondReplica *replica    // nil for the primary
	pending       func() bool // withdraws the connection being opened for the hedge
	secondSlots   slotQueue   // what the hedge's backend owes, for the session if it wins

	// A loser that was preparing a statement in the race is closed, not drained: a cancel
	// may or may not have stopped the Parse, so its statement cache could not be trusted.
	firstPrepares, secondPrepares bool
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
	var stmts []*stmt
	for i, q := range unit {
		if !q.whole {
			return nil
		}
		if replayable(q) {
			continue
		}
		st := s.boundStatement(q)
		if st == nil {
			return nil
		}
		if stmts == nil {
			stmts = make([]*stmt, len(unit))
		}
		stmts[i] = st
	}
	if last := unit[len(unit)-1].typ; last != 'S' && last != 'Q' {
		return nil // the client waits for a Flush's answers: more of the unit is to come
	}
	all := s.queued
	s.queued = unit
	classes, complete := s.queuedStatements()
	s.queued = all
	if !complete || !allRead(classes) {
		return nil // a read-only transaction, or a read-only client's unit: not provably one read
	}
	return &hedgeRace{h: h, unit: append([]queuedFrame(nil), unit...), stmts: stmts}
}

// boundStatement is the client's named prepared statement that a Bind or a Describe of a
// statement names, or nil for any other message.
func (s *session) boundStatement(q queuedFrame) *stmt {
	if s.mode == sessionMode {
		return nil
	}
	body := q.raw[len(q.raw)-q.length:]
	var name []byte
	var ok bool
	switch q.typ {
	case 'B':
		var rest []byte
		if _, rest, ok = cut(body); ok {
			name, _, ok = cut(rest)
		}
	case 'D':
		if len(body) >= 2 && body[0] == 'S' {
			name, _, ok = cut(body[1:])
		}
	}
	if !ok || len(name) == 0 {
		return nil
	}
	return s.stmts[string(name)]
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
		switch sl := s.slots.items[i]; {
		case sl.act == actForward:
		case sl.act == actSwallow && sl.kind == 'P' && sl.stmt != "":
			hr.firstPrepares = true // a statement the unit binds, prepared for it
		case sl.act == actSwallow && sl.kind == 'C':
			// closes a statement evicted from the backend's cache to make room
		default:
			return // the gateway answers part of it: not the same exchange on another backend
		}
	}
	hr.owed = s.slots.syncs()
	hr.h.budget.Request()
	hr.race.Start()
	hr.sent = time.Now()
	s.hedge = hr
	// A runtime timer, not the loop's: the loop's wheel ticks every 10 ms, which turned a hedge
	// delay of 2 ms into 10 to 20 ms and kept the hedged p99 near 20 ms however fast the second
	// backend answered.
	hr.stop = time.AfterFunc(hr.h.delay.Current(), func() {
		s.io.Exec(func() {
			if s.hedge == hr && s.state != stClosed {
				s.sendHedge(hr)
			}
		})
	}).Stop
}

// hedgeTarget is a backend a hedge may go to.
type hedgeTarget struct {
	pool    *pool.Pool
	replica *replica // nil for the primary
}

// hedgeTargets lists where the hedge may go, best first: another replica that may take reads,
// chosen by the power of two choices, then the primary.
func (s *session) hedgeTargets(buf []hedgeTarget) []hedgeTarget {
	var rbuf [8]*replica
	eligible := rbuf[:0]
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
		buf = append(buf, hedgeTarget{s.srv.backendPool(s.db, s.user, r.index), r})
	}
	if s.replica != nil { // a hedge of a read on the primary would only go back there
		buf = append(buf, hedgeTarget{s.primary, nil})
	}
	return buf
}

// sendHedge sends the unit to a second backend, within the budget: on an idle connection of
// the first target that has one, else on one opened for it where a pool has room. It never
// waits behind other lenders: a hedge that has to queue for a connection comes too late to
// help, and would take the connection from a unit that needs it. A hedge with no connection
// at hand is counted as skipped.
func (s *session) sendHedge(hr *hedgeRace) {
	if hr.second != nil || hr.pending != nil {
		return
	}
	if hr.h.budget.Tokens() < 1 {
		hr.h.budget.TryHedge() // refused: counts the denial
		return
	}
	var buf [2]hedgeTarget
	targets := s.hedgeTargets(buf[:0])
	for _, t := range targets {
		if c := s.tryBackend(t.pool); c != nil {
			s.launchHedge(hr, c, t)
			return
		}
	}
	for _, t := range targets {
		c, withdraw := t.pool.TryAcquireOrOpen(s.io.Loop(), s.handOver(func(c *pool.Conn, err error) {
			s.hedgeReady(hr, t, c, err)
		}))
		if c != nil {
			if settingsReady(c, s.desired) {
				s.launchHedge(hr, c, t)
				return
			}
			t.pool.Return(c)
			continue
		}
		if withdraw != nil {
			hr.pending = withdraw
			return
		}
	}
	hr.h.stats.Skipped.Add(1)
}

// handOver wraps a pool's deliver func so that f runs on the session's loop; a connection the
// session can no longer take goes back.
func (s *session) handOver(f func(*pool.Conn, error)) func(*pool.Conn, error) {
	run := func(c *pool.Conn, err error) {
		if !s.io.Exec(func() { f(c, err) }) && c != nil {
			c.Pool().Return(c) // the client left while waiting; the connection is untouched
		}
	}
	return func(c *pool.Conn, err error) {
		if !loop.OnLoop() {
			// Exec would wait for the client's loop here, and whoever gave the connection back
			// may hold a lock that loop needs (a drainer's): never wait on the giver's goroutine.
			go run(c, err)
			return
		}
		run(c, err)
	}
}

// hedgeReady is the connection opened for a hedge: the hedge goes out on it if the race still
// waits for one, else it goes back to the pool, which it has grown.
func (s *session) hedgeReady(hr *hedgeRace, t hedgeTarget, c *pool.Conn, err error) {
	if s.hedge != hr || hr.pending == nil {
		if c != nil {
			t.pool.Return(c)
		}
		return
	}
	hr.pending = nil
	switch {
	case err != nil:
		hr.h.stats.Skipped.Add(1)
	case s.state == stClosed || !settingsReady(c, s.desired):
		t.pool.Return(c)
		hr.h.stats.Skipped.Add(1)
	default:
		s.launchHedge(hr, c, t)
	}
}

// launchHedge sends the unit on c as the race's second attempt, if the budget allows.
func (s *session) launchHedge(hr *hedgeRace, c *pool.Conn, t hedgeTarget) {
	if !hr.h.budget.TryHedge() {
		t.pool.Return(c)
		return
	}
	if _, ok := hr.race.Hedge(); !ok {
		t.pool.Return(c)
		return
	}
	if t.replica != nil {
		t.replica.outstanding.Add(1)
	}
	hr.second, hr.secondPool, hr.secondReplica = c, t.pool, t.replica
	c.SetSink(hedgeSink{s})
	s.writeHedge(hr, c)
	c.Flush()
}

// writeHedge writes the unit to the hedge's backend c as relay would, naming the client's
// statements by their backend names and preparing those c lacks, and notes in the hedge's own
// slots what c will owe.
func (s *session) writeHedge(hr *hedgeRace, c *pool.Conn) {
	q := &hr.secondSlots
	for i, f := range hr.unit {
		var st *stmt
		if hr.stmts != nil {
			st = hr.stmts[i]
		}
		if st == nil {
			switch f.typ {
			case 'Q', 'P', 'B', 'D', 'E', 'S':
				q.push(slot{kind: f.typ})
			}
			c.Write(f.raw)
			continue
		}
		if !c.StmtPrepared(st.backendName) {
			if evict, ok := c.StmtAdd(st.backendName); ok {
				q.push(slot{kind: 'C', act: actSwallow})
				c.Write(appendMessage(nil, 'C', append([]byte{'S'}, evict...), nil))
			}
			q.push(slot{kind: 'P', act: actSwallow, stmt: st.backendName})
			c.Write(st.parse)
			hr.secondPrepares = true
		}
		body := f.raw[len(f.raw)-f.length:]
		q.push(slot{kind: f.typ})
		if f.typ == 'B' {
			portal, rest, _ := cut(body)
			_, params, _ := cut(rest)
			c.Write(appendMessage(nil, 'B', portal, []byte(st.backendName), params))
		} else {
			c.Write(appendMessage(nil, 'D', append([]byte{'S'}, st.backendName...), nil))
		}
	}
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

// endRace stops what a race no longer needs: its timer and a connection being opened for it.
func (hr *hedgeRace) endRace() {
	hr.stop()
	if hr.pending != nil {
		hr.pending()
		hr.pending = nil
	}
}

// raceFirst is the first response of the first backend: it wins unless it failed first.
func (s *session) raceFirst(hr *hedgeRace) {
	s.hedge = nil
	hr.endRace()
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
	if code := hedgeableFatal(b); code != "" {
		// The hedge's backend is going away (shut down, restarting): the original still runs.
		hr.race.Failed(1, true, code)
		s.dropHedge(hr)
		c.SetSink(discardSink{})
		c.Pool().DiscardFailed(c)
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

// firstData is the first response of the session's backend to a unit in a race. It reports
// false when that response is a FATAL error of the backend's own, such as 57P01 (the server
// shuts down) or 57P03 (it cannot take connections now), which ends the connection before
// anything of the answer: then, as for a connection that broke, the read goes elsewhere and
// the client never sees the error.
func (s *session) firstData(hr *hedgeRace, c *pool.Conn, b []byte) bool {
	code := hedgeableFatal(b)
	if code == "" {
		s.raceFirst(hr)
		return true
	}
	c.SetSink(discardSink{})
	s.firstFailed(hr, code)
	c.Pool().DiscardFailed(c)
	return false
}

// hedgeableFatal returns the SQLSTATE of b if b starts with a backend's last words: a whole
// ErrorResponse of severity FATAL or PANIC whose code says the backend, not the query, failed
// (hedge.Hedgeable); or the NoticeResponse (a WARNING, 57P01 or 57P02) a backend sends before
// it ends its connection in an immediate shutdown or after another backend crashed. Else "".
func hedgeableFatal(b []byte) string {
	if len(b) < 5 || b[0] != 'E' && b[0] != 'N' {
		return ""
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if n < 4 || len(b) < 1+n {
		return "" // a split message is left to the ordinary path
	}
	severity, code, _, err := wire.ErrorFields(b[5 : 1+n])
	switch {
	case err != nil:
		return ""
	case b[0] == 'E' && (string(severity) == "FATAL" || string(severity) == "PANIC") && hedge.Hedgeable(string(code)):
		return string(code)
	case b[0] == 'N' && (string(code) == "57P01" || string(code) == "57P02"):
		return string(code)
	}
	return ""
}

// promoteHedge makes the hedge the session's backend, draining the original if it still runs.
func (s *session) promoteHedge(hr *hedgeRace, drainFirst bool) {
	s.hedge = nil
	hr.endRace()
	old, oldPool := s.be, s.pool
	c := hr.second
	s.be = c
	s.flushBe.Store(c)
	c.SetSink(backendSink{s})
	if s.replica != nil {
		s.replica.outstanding.Add(-1)
	}
	s.replica, s.pool = hr.secondReplica, hr.secondPool
	// Nothing of the first backend's answer was taken: what the session owes the client is
	// now what the hedge's backend owes it.
	s.slots, hr.secondSlots = hr.secondSlots, slotQueue{}
	if drainFirst && old != nil {
		s.loser(old, oldPool, hr.owed, hr.firstPrepares)
	}
}

// dropHedge forgets the hedge's backend, which failed.
func (s *session) dropHedge(hr *hedgeRace) {
	hr.second = nil
	if hr.secondReplica != nil {
		hr.secondReplica.outstanding.Add(-1)
	}
}

// loseHedge hands the hedge's backend, which lost, to a drainer.
func (s *session) loseHedge(hr *hedgeRace) {
	c, p := hr.second, hr.secondPool
	s.dropHedge(hr)
	s.loser(c, p, hr.owed, hr.secondPrepares)
}

// loser disposes of a race's losing backend: drained back to its pool, or closed when it was
// preparing a statement, which a cancel leaves in doubt.
func (s *session) loser(c *pool.Conn, p *pool.Pool, owed int, prepares bool) {
	if prepares {
		c.SetSink(discardSink{})
		p.Discard(c)
		return
	}
	s.drainLoser(c, p, owed)
}

// abortHedge ends the race without a winner: the client left or cancelled its query.
func (s *session) abortHedge() {
	hr := s.hedge
	if hr == nil {
		return
	}
	s.hedge = nil
	hr.endRace()
	if cancelled := hr.race.Abort("57014"); len(cancelled) > 0 {
		hr.h.stats.Cancelled.Add(uint64(len(cancelled)))
	}
	if hr.second != nil {
		s.loseHedge(hr)
	}
}

// hedgeClosed handles a backend of the race that closed before answering. It reports whether
// the session still has a backend serving the unit, or is getting one.
func (s *session) hedgeClosed(hr *hedgeRace, c *pool.Conn) bool {
	if c == hr.second {
		hr.race.Failed(1, true, "08006")
		s.dropHedge(hr)
		return true // the original still runs
	}
	if c != s.be {
		return false
	}
	s.firstFailed(hr, "08006")
	return true
}

// firstFailed handles the first attempt's backend failing (closed, or a FATAL of the backend's
// own) before any byte of the answer: the session stops using it, and the hedge, if it runs,
// serves the read; else the read is sent again, to another backend. The caller closes it.
func (s *session) firstFailed(hr *hedgeRace, code string) {
	hr.race.Failed(0, true, code)
	if hr.second != nil {
		hr.h.stats.WonByHedge.Add(1)
		s.promoteHedge(hr, false)
		return
	}
	s.hedge = nil
	hr.endRace()
	hr.race.Abort("")
	s.retryRead(hr)
}

// retryRead sends a read again whose first attempt's connection failed before any byte of the
// answer reached the client: to another replica that may take reads, else to the primary. It
// is the same unit, queued again ahead of anything the client sent since; it waits for a
// connection as any unit does, and is neither hedged nor retried again. A retry replaces a
// request that did nothing, so it takes no hedge budget.
func (s *session) retryRead(hr *hedgeRace) {
	failed := s.replica
	s.be = nil
	s.flushBe.Store(nil)
	s.slots = slotQueue{}
	s.unsynced, s.fwd, s.heldBack = false, false, false
	n := 0
	for _, q := range hr.unit {
		n += len(q.raw)
	}
	s.queued = append(append([]queuedFrame(nil), hr.unit...), s.queued...)
	s.queuedBytes += n
	hr.h.stats.Retried.Add(1)
	s.leaveReplica()
	var buf [2]hedgeTarget
	for _, t := range s.hedgeTargetsExcluding(buf[:0], failed) {
		if t.replica != nil {
			t.replica.outstanding.Add(1)
			s.replica, s.pool = t.replica, t.pool
		}
		break
	}
	s.routed = len(hr.unit)
	s.retrying = true
	s.acquireFrom(s.pool)
}

// hedgeTargetsExcluding is hedgeTargets for a read whose replica was r.
func (s *session) hedgeTargetsExcluding(buf []hedgeTarget, r *replica) []hedgeTarget {
	cur := s.replica
	s.replica = r
	defer func() { s.replica = cur }()
	return s.hedgeTargets(buf)
}

// discardSink takes what a connection the gateway is closing still sends.
type discardSink struct{}

func (discardSink) BackendData(*pool.Conn, []byte)  {}
func (discardSink) BackendClosed(*pool.Conn, error) {}

// recancelEvery is how long a loser has to answer a cancel before it gets another; cancelGrace
// how long it may take to answer before it gets the first.
const (
	recancelEvery = 100 * time.Millisecond
	cancelGrace   = 100 * time.Millisecond
)

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
		// A loser that answers within cancelGrace is left alone: its answer was only late on
		// the way (a slow link, a stall), and a CancelRequest costs the server a process and
		// the drainer a barrier query, for nothing.
		t := time.NewTimer(cancelGrace)
		select {
		case <-answered:
		case <-t.C:
		}
		t.Stop()
		d.mu.Lock()
		done := d.finished || d.owed == 0
		d.mu.Unlock()
		if done {
			d.cancelSkipped()
			return
		}
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

// Hedging metrics, per database with hedged reads on, read from hedge.Stats at scrape time.
var (
	hedgeLabels     = []string{"database"}
	descHedgeReads  = prometheus.NewDesc("asyncgate_hedge_reads_total", "Reads sent to a replica that could have been hedged.", hedgeLabels, nil)
	descHedgesSent  = prometheus.NewDesc("asyncgate_hedges_total", "Hedges sent: reads sent to a second backend after the hedge delay.", hedgeLabels, nil)
	descHedgesWon   = prometheus.NewDesc("asyncgate_hedges_won_total", "Hedged reads the hedge answered first.", hedgeLabels, nil)
	descHedgeCancel = prometheus.NewDesc("asyncgate_hedge_attempts_cancelled_total", "Attempts of hedged reads cancelled: another answered first, or the client went.", hedgeLabels, nil)
	descHedgeDenied = prometheus.NewDesc("asyncgate_hedges_denied_total", "Hedges the budget refused (--hedge-budget).", hedgeLabels, nil)
	descHedgeSkip   = prometheus.NewDesc("asyncgate_hedges_skipped_total",
		"Hedges due that found no connection: none idle on the chosen backend or the primary, and no pool with room to open one.", hedgeLabels, nil)
	descHedgeRetry = prometheus.NewDesc("asyncgate_hedge_retries_total",
		"Reads sent again because their first backend failed (a broken connection, or a FATAL such as 57P01) before any byte reached the client.", hedgeLabels, nil)
	descHedgeDelay = prometheus.NewDesc("asyncgate_hedge_delay_seconds", "The hedge delay in force (--hedge-delay).", hedgeLabels, nil)
)

// hedgeCollector exports every database's hedge counters.
type hedgeCollector struct{ s *Server }

func (c hedgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHedgeReads, descHedgesSent, descHedgesWon, descHedgeCancel,
		descHedgeDenied, descHedgeSkip, descHedgeRetry, descHedgeDelay} {
		ch <- d
	}
}

func (c hedgeCollector) Collect(ch chan<- prometheus.Metric) {
	for name, db := range c.s.databases() {
		h := db.reads.hedging
		if h == nil {
			continue
		}
		st := h.stats.Snapshot()
		for d, v := range map[*prometheus.Desc]uint64{descHedgeReads: st.Sent, descHedgesSent: st.Hedged,
			descHedgesWon: st.WonByHedge, descHedgeCancel: st.Cancelled, descHedgeDenied: st.Denied,
			descHedgeSkip: st.Skipped, descHedgeRetry: st.Retried} {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), name)
		}
		ch <- prometheus.MustNewConstMetric(descHedgeDelay, prometheus.GaugeValue, h.delay.Current().Seconds(), name)
	}
}
