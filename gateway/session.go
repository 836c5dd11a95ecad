package gateway

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/asyncgate/asyncgate/admission"
	"github.com/asyncgate/asyncgate/batcher"
	"github.com/asyncgate/asyncgate/gateway/auth"
	"github.com/asyncgate/asyncgate/loop"
	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

type state uint8

const (
	stStartup state = iota // waiting for the startup packet (again after SSLRequest)
	stAuth                 // authentication exchange in progress
	stWaiting              // authenticated, waiting for the first backend connection
	stSetup                // first backend linked, applying the client's startup parameters
	stLinked               // logged in: relaying request units to backends
	stClosed
)

// maxQueued bounds what a client may send while it waits for a backend before its reads pause.
const maxQueued = 64 << 10

// session is one client's protocol state machine. It does no I/O: events arrive through its
// methods (client bytes, backend bytes, pool answers, timers, cancels), all serialised by the
// loop, and it answers by queueing bytes on io or on its backend connection.
type session struct {
	srv *Server
	io  loop.Conn
	in  *wire.Decoder

	// The one-byte fields are gathered here: every idle client holds a session, and scattered
	// among the words they cost 8 bytes each.
	state         state
	mode          poolMode
	tlsPending    bool // answered 'S' to SSLRequest; nothing may follow until the handshake
	counted       bool // holds a --max-client-conn slot
	loggingIn     bool // counted in Server.logins
	waiting       bool // a gate's or a pool's Acquire is outstanding
	rejecting     bool // a refused unit's frames are dropped up to its end
	limited       bool // limitDB and limitUser were counted
	paused        bool // client reads are paused (queued frames over their bound)
	unsynced      bool // extended-protocol messages sent since the last Sync
	copyIn        bool // the backend waits for COPY data from the client
	txStatus      byte
	fwd           bool // the backend message being read goes to the client
	timedOut      bool // --query-timeout cancelled the current work
	desiredShared bool // desired is shared with other sessions: copy before changing it
	heldBack      bool // frames after those routed wait until the replica's unit ends
	unitWrites    bool // the unit may write: reads stay on the primary for a while after it
	retrying      bool // the unit being acquired for is a read sent again after its backend failed
	batchOK       bool // the client's database and user have batching on, and the pool mode allows it
	hubWait       bool // a LISTEN waits for the hub's listener connection: what follows waits too
	overflowed    bool // notifications overflowed: disconnect once the backend message being relayed ends
	cancelling    bool // a CancelRequest is on its way to the backend
	barrier       bool // a cancel was delivered: prove the backend saw it before release
	keyed         bool
	inEvent       bool        // now() may reuse clock
	pinnedNow     atomic.Bool // whether pt holds state, for the admin console on other goroutines

	timer func() bool

	user     string
	db       *database
	startup  map[string]string
	exchange *auth.Exchange

	pool     *pool.Pool  // where the backend comes from (or came from): primary, or replica's
	primary  *pool.Pool  // the database primary's pool for the client's user
	withdraw func() bool // cancels the pool's Acquire
	gateWait func() bool // cancels the gate's

	gateWaiter  admission.Waiter // how the gate answers this session
	gateBackend int              // the backend whose gate the session waits at
	waitObs     prometheus.Observer

	// The slot of the backend's gate the current unit holds, from before it asks the pool for a
	// connection until it gives the connection back (admission.go).
	ticket     *admission.Ticket
	admittedAt instant // for --adaptive-limit's latency
	limitDB    string  // the database and user counted against the per-database and
	limitUser  string  // per-user client limits (limited says whether they were)
	be         *pool.Conn
	flushBe    atomic.Pointer[pool.Conn] // be, for Flush, which may run outside the serialisation

	queued      []queuedFrame // client frames waiting for a backend
	queuedBytes int

	// What the backend owes.
	slots slotQueue

	desired map[string]string // parameters that follow the client to every backend
	stmts   map[string]*stmt  // the client's named prepared statements (not in session mode)

	pt *pinTrack // session state that pins the client to its backend; nil until it may have some

	// Read routing (--read-routing): the replica serving the current unit, nil on the primary.
	replica   *replica
	routed    int     // queued frames the choice of replica was made for, not yet relayed
	lastWrite instant // when the client's last unit that may write ended on the primary

	hedge *hedgeRace // the routed read in flight while it may still be hedged (--hedge)

	// Batching (--batch): the unit in a batcher's pipeline, nil when none.
	bunit    *batcher.Unit
	bat      *batcher.Batcher                // bunit's batcher
	flushBat atomic.Pointer[batcher.Batcher] // the last batcher used, for Flush

	sub *subscriber // LISTEN fan-out subscriptions; nil until the client's first LISTEN through the hub

	cancelDone chan struct{} // closed when a CancelRequest has been delivered
	key        cancelKey

	// Request-unit measurements (stats.go); st is nil until the client is routed to a database.
	st        *unitStats
	unitStart instant // first client message of the unit in progress
	busyStart instant // the backend started owing responses
	xactStart instant // the backend's transaction (or autocommit statement) started
	waitStart instant // a backend was asked for
	clock     instant // now(), while inEvent
	unitWait  time.Duration
	recvBytes int64 // client bytes not yet added to st
	sentBytes int64

	tr *unitTrace    // the unit's trace context (tracing on; trace.go)
	my *mysqlSession // set on a MySQL database (mysql.go)
}

// queuedFrame is a copy of a client frame kept until a backend is available.
type queuedFrame struct {
	typ                byte
	length             int
	raw                []byte
	whole, first, last bool
}

func newSession(srv *Server, io loop.Conn) *session {
	s := &session{srv: srv, io: io, txStatus: 'I', loggingIn: true}
	srv.logins.Add(1) // from accept on: a client whose startup packet is on its way counts too
	cfg := wire.DecoderConfig{MaxMessage: srv.cfg.MaxPacketSize, MaxInspect: auth.MaxMessageLen}
	cfg.Inspect['p'] = true
	cfg.Inspect['X'] = true
	s.in = wire.NewDecoder(cfg)
	s.in.ExpectStartup()
	if d := srv.conf().ClientLoginTimeout; d > 0 {
		s.arm(d, func() {
			if s.state < stLinked {
				s.fatal("08P01", fmt.Sprintf("login not completed within %s (--client-login-timeout)", d))
			}
		})
	}
	return s
}

// loginDone ends the client's count as logging in, if it was.
func (s *session) loginDone() {
	if s.loggingIn {
		s.loggingIn = false
		s.srv.logins.Add(-1)
	}
}

// arm replaces the session's one pending deadline.
func (s *session) arm(d time.Duration, f func()) {
	s.disarm()
	if d > 0 {
		s.timer = s.io.AfterFunc(d, f)
	}
}

func (s *session) disarm() {
	if s.timer != nil {
		s.timer()
		s.timer = nil
	}
}

// OnData implements loop.Handler.
func (s *session) OnData(b []byte) {
	if s.state == stClosed {
		return
	}
	if s.st != nil {
		s.recvBytes += int64(len(b))
		s.inEvent = true
		defer s.endEvent()
	}
	if s.tlsPending {
		if !s.io.TLS() {
			s.fatal("08P01", "received unencrypted data after SSL request")
			return
		}
		s.tlsPending = false
	}
	err := s.in.Feed(b, s.clientFrame)
	if err != nil && s.state != stClosed {
		var we *wire.Error
		if errors.As(err, &we) {
			s.fatal(we.Code, we.Message)
			return
		}
		s.fatal("08P01", err.Error())
		return
	}
	if s.be != nil {
		s.be.Flush() // never blocks: what the socket does not take goes to the backend's writer
	}
	s.throttle()
}

// throttle pauses the client while the backend (or the wait for one) lags behind it.
func (s *session) throttle() {
	if s.paused || s.state == stClosed {
		return
	}
	if s.queuedBytes > maxQueued || (s.be != nil && s.be.Buffered() > s.srv.cfg.MaxOutput) {
		s.paused = true
		s.io.PauseReads()
	}
}

func (s *session) unthrottle() {
	if s.paused && s.queuedBytes <= maxQueued && (s.be == nil || s.be.Buffered() <= s.srv.cfg.MaxOutput) {
		s.paused = false
		s.io.ResumeReads()
	}
}

// errStop ends a Feed early once the session has closed.
var errStop = errors.New("session closed")

func (s *session) clientFrame(f *wire.Frame) error {
	if s.tlsPending {
		s.fatal("08P01", "received unencrypted data after SSL request")
		return errStop
	}
	switch s.state {
	case stStartup:
		s.startupPacket(f.Body)
		if s.tlsPending && (f.Trailing > 0 || s.in.Pending()) {
			// Bytes sent before the handshake would be read as if they were encrypted.
			s.fatal("08P01", "received unencrypted data after SSL request")
		}
	case stAuth:
		s.authMessage(f)
	case stWaiting, stSetup, stLinked:
		s.clientMessage(f)
	case stAdmin:
		s.adminMessage(f)
	case stMySQL:
		s.mysqlMessage(f)
	}
	if s.state == stClosed {
		return errStop
	}
	return nil
}

func (s *session) startupPacket(body []byte) {
	st, err := wire.ParseStartup(body)
	if err != nil {
		code, msg := errorFields(err)
		s.fatal(code, msg)
		return
	}
	switch st.Kind {
	case wire.SSLRequest:
		if s.srv.tls != nil && s.srv.cfg.ClientTLSMode != "disable" && !s.io.TLS() {
			s.io.Write([]byte{'S'})
			s.io.StartTLS(s.srv.tls)
			s.tlsPending = true
		} else {
			s.io.Write([]byte{'N'})
		}
		s.in.ExpectStartup()
	case wire.GSSENCRequest:
		s.io.Write([]byte{'N'})
		s.in.ExpectStartup()
	case wire.CancelRequest:
		// The cancel connection gets no answer, as with PostgreSQL; forwarding may take a while.
		go s.srv.cancel(st.CancelPID, st.CancelKey)
		s.state = stClosed
		s.io.Close()
	case wire.StartupMessage:
		s.login(st)
	}
}

func (s *session) login(st *wire.Startup) {
	if s.srv.cfg.ClientTLSMode == "require" && !s.io.TLS() {
		s.fatal("28000", "SSL required (--client-tls-mode require)")
		return
	}
	if !s.srv.admitClient() {
		s.srv.reject(rejectClients, st.Params["database"], st.Params["user"])
		s.fatal("53300", fmt.Sprintf("no more connections allowed: %d clients connected (--max-client-conn)", s.srv.conf().MaxClientConn))
		return
	}
	s.counted = true
	if err := s.srv.admitLogin(st.Params["database"], st.Params["user"]); err != nil {
		s.fatal(err.Code, err.Message)
		return
	}
	s.limitDB, s.limitUser, s.limited = st.Params["database"], st.Params["user"], true
	if st.Version != wire.ProtocolVersion30 {
		var unknown []string
		for k := range st.Params {
			if strings.HasPrefix(k, "_pq_.") {
				unknown = append(unknown, k)
			}
		}
		s.io.Write(wire.AppendNegotiateProtocolVersion(nil, 0, unknown))
	}
	if r := st.Params["replication"]; r != "" && r != "false" && r != "0" && r != "off" {
		s.fatal("0A000", "replication connections are not supported by asyncgate")
		return
	}
	s.user = st.Params["user"]
	s.startup = st.Params
	s.exchange = auth.NewExchange(s.srv.cfg.AuthType, s.srv.users.Load(), s.user)
	s.state = stAuth
	out, done, err := s.exchange.Start()
	s.authStep(out, done, err)
}

func (s *session) authMessage(f *wire.Frame) {
	if f.Type != 'p' {
		s.fatal("08P01", fmt.Sprintf("expected password response, got message type %q", f.Type))
		return
	}
	out, done, err := s.exchange.Next(f.Body)
	s.authStep(out, done, err)
}

func (s *session) authStep(out []byte, done bool, err error) {
	if err != nil {
		var ae *auth.Error
		if errors.As(err, &ae) {
			if ae.Detail != "" {
				s.srv.log.Info("client authentication failed", "user", s.user, "reason", ae.Detail)
			}
			s.fatal(ae.Code, ae.Message)
			return
		}
		s.fatal("28000", err.Error())
		return
	}
	s.io.Write(out)
	if done {
		s.exchange = nil
		s.authenticated()
	}
}

// authenticated routes the client to its pool and asks for a backend: the first one tells the
// client the server's parameters and takes its startup settings.
func (s *session) authenticated() {
	name := s.startup["database"]
	if s.srv.isAdminDatabase(name) {
		s.adminLogin() // admin.go: answered by the gateway itself, no backend
		return
	}
	db, ok := s.srv.databases()[name]
	if !ok {
		s.fatal("3D000", fmt.Sprintf("database %q does not exist (no --database %s=… is configured)", name, name))
		return
	}
	if db.mysql != nil {
		s.mysqlLogin(db)
		return
	}
	p := s.srv.pool(db, s.user)
	s.db, s.pool, s.primary, s.state = db, p, p, stWaiting
	s.st = s.srv.unitStatsFor(db.name, s.user)
	s.mode = s.srv.modeFor(db, s.user)
	if s.mode != sessionMode {
		// Statements are the gateway's to track: read their messages whole, within a bound
		// that only an authenticated client gets.
		s.in.SetMaxInspect(s.srv.cfg.MaxQuerySize)
		for _, t := range []byte{'Q', 'P', 'B', 'D', 'C'} {
			s.in.SetInspect(t, true)
		}
		s.srv.startReads(db, s.user)
		s.batchOK = s.srv.batchOn(db, s.user)
	} else if s.srv.tracer != nil {
		// The trace context is in the SQL: read it whole.
		s.in.SetMaxInspect(s.srv.cfg.MaxQuerySize)
		s.in.SetInspect('Q', true)
		s.in.SetInspect('P', true)
	}
	s.acquire()
}

// acquire asks for a backend for the queued unit: from a replica if read routing allows, else
// from the primary. backendReady gets the answer.
func (s *session) acquire() {
	if s.waitStart.IsZero() && s.st != nil {
		s.waitStart = s.now()
	}
	if s.park() {
		return // the database is paused (admin console PAUSE or KILL): RESUME goes on
	}
	s.leaveReplica()
	if r := s.chooseReplica(); r != nil {
		r.outstanding.Add(1)
		s.replica, s.routed = r, len(s.queued)
		s.pool = s.srv.backendPool(s.db, s.user, r.index)
	}
	if err := s.srv.admitUnit(s.db.name, s.user); err != nil {
		s.leaveReplica()
		s.refused(err)
		return
	}
	s.admit()
}

// admit takes a slot of the gate of the backend the unit goes to; admitted gets the answer.
func (s *session) admit() {
	backend := 0
	if s.replica != nil {
		backend = s.replica.index
	}
	g := s.db.gates[backend]
	s.waiting = true
	if s.gateWaiter.Deliver == nil {
		// Made once per session, so that a unit admitted at once allocates no closures. A
		// session waits at one gate at a time, the one of s.gateBackend.
		handOver := func(t *admission.Ticket, err error) {
			if !s.io.Exec(func() { s.admitted(s.gateBackend, t, err) }) && t != nil {
				t.Release(admission.Outcome{}) // the client left while waiting
			}
		}
		s.gateWaiter = admission.Waiter{
			// On the releasing session's loop, Exec hands the ticket over without waiting, as the
			// pool hands over connections; elsewhere (a timer, a drainer's goroutine) Exec would
			// wait for this session's loop, so it gets a goroutine of its own.
			Inline: true,
			Deliver: func(t *admission.Ticket, err error) {
				if !loop.OnLoop() {
					go handOver(t, err)
					return
				}
				handOver(t, err)
			},
			Notify: func(waited time.Duration) {
				s.io.Exec(func() {
					if s.gateWait != nil && s.state != stClosed {
						s.io.Write(wire.AppendNotice(nil, "01000", fmt.Sprintf(
							"waited %s for a server connection of pool %s so far (--query-wait-notify); the wait ends at --query-wait-timeout %s",
							waited.Round(time.Millisecond), s.db.name, s.srv.cfg.QueryWaitTimeout)))
					}
				})
			},
		}
	}
	s.gateBackend = backend
	t, withdraw, err := g.Acquire(s.user, s.gateWaiter)
	switch {
	case err != nil:
		s.admitted(backend, nil, err)
	case t != nil:
		s.admitted(backend, t, nil)
	default:
		s.gateWait = withdraw
	}
}

// admitted is the gate's answer: with a slot, ask the pool for a connection.
func (s *session) admitted(backend int, t *admission.Ticket, err error) {
	s.gateWait = nil
	if s.state == stClosed {
		if t != nil {
			t.Release(admission.Outcome{})
		}
		return
	}
	if err != nil {
		s.waiting = false
		s.srv.reject(rejectReason(err), s.db.name, s.user)
		s.leaveReplica()
		s.refused(err)
		return
	}
	if backend == 0 {
		if s.waitObs == nil {
			s.waitObs = s.srv.waitObserver(s.db.name, 0, s.user)
		}
		s.waitObs.Observe(t.Waited().Seconds())
	} else {
		s.srv.waitObserver(s.db.name, backend, s.user).Observe(t.Waited().Seconds())
	}
	s.ticket = t
	if s.srv.cfg.AdaptiveLimit {
		s.admittedAt = clockNow()
	}
	s.acquireFrom(s.pool)
}

// releaseTicket gives the unit's slot back, with how long the unit held it for the adaptive limit.
func (s *session) releaseTicket() {
	t := s.ticket
	if t == nil {
		return
	}
	s.ticket = nil
	var o admission.Outcome
	if s.srv.cfg.AdaptiveLimit && s.mode != sessionMode {
		o = admission.Outcome{Latency: s.admittedAt.Since(), Dropped: s.timedOut}
	}
	t.Release(o)
}

// refused answers a unit that may not run: a client still logging in is closed, as PgBouncer
// does; a logged-in one gets an ErrorResponse for the unit and stays connected.
func (s *session) refused(err error) {
	code, msg := errorFields(err)
	if s.state != stLinked {
		s.fatal(code, msg)
		return
	}
	s.waitStart = 0 // the wait of a unit that does not run is not a backend wait
	s.requestFailed("gateway", code, msg)
	s.io.Write(wire.AppendError(nil, "ERROR", code, msg))
	s.rejecting = true
	queued := s.queued
	s.queued, s.queuedBytes = nil, 0
	for i, q := range queued {
		if !s.rejecting {
			s.queued = queued[i:]
			for _, q := range s.queued {
				s.queuedBytes += len(q.raw)
			}
			break
		}
		s.skip(q.typ, q.last)
	}
	if !s.rejecting && len(s.queued) > 0 {
		s.sendQueued() // the next unit asks for a backend of its own
		return
	}
	s.unthrottle()
	if !s.rejecting {
		s.afterUnit()
	}
}

// skip drops a frame of a refused unit; the unit's end gets the ReadyForQuery the client waits
// for, as after an error on the backend.
func (s *session) skip(typ byte, last bool) {
	if last && (typ == 'Q' || typ == 'S' || typ == 'F') {
		s.rejecting = false
		s.io.Write(wire.AppendReadyForQuery(nil, s.txStatus))
		s.unitEnded()
	}
}

func (s *session) acquireFrom(p *pool.Pool) {
	s.waiting = true
	handOver := func(c *pool.Conn, err error) {
		if !s.io.Exec(func() { s.inEvent = true; s.backendReady(c, err); s.endEvent() }) && c != nil {
			p.Return(c) // the client left while waiting; the connection is untouched
		}
	}
	c, withdraw, err := p.AcquireOn(s.io.Loop(), func(c *pool.Conn, err error) {
		if !loop.OnLoop() {
			// Exec would wait for the client's loop here, and whoever gave the connection back
			// may hold a lock that loop needs (a drainer's): never wait on the giver's goroutine.
			go handOver(c, err)
			return
		}
		handOver(c, err)
	})
	switch {
	case err != nil:
		s.backendReady(nil, err)
	case c != nil:
		s.backendReady(c, nil)
	default:
		s.withdraw = withdraw
	}
}

// backendReady is the pool's answer: link the client to c, or tell it why not.
func (s *session) backendReady(c *pool.Conn, err error) {
	s.waiting, s.withdraw = false, nil
	if c != nil && !s.waitStart.IsZero() && s.st != nil {
		w := s.now().Sub(s.waitStart)
		s.waitStart = 0
		s.unitWait += w
		s.st.assignments.Add(1)
		s.st.waitTime.Add(w.Microseconds())
	}
	if s.state == stClosed {
		if c != nil {
			c.Pool().Return(c)
		}
		s.releaseTicket()
		return
	}
	if err != nil && s.replica != nil {
		// Nothing of the unit reached the replica or the client: the primary serves it.
		s.srv.log.Debug("replica unavailable, unit goes to the primary", "database", s.db.name, "err", err)
		s.releaseTicket()
		s.leaveReplica()
		s.admit()
		return
	}
	if err != nil {
		s.releaseTicket()
		code, msg := errorFields(err)
		s.fatal(code, msg)
		return
	}
	s.be = c
	s.flushBe.Store(c)
	c.SetSink(backendSink{s})
	if s.replica != nil {
		s.db.reads.replicaRun.Add(1)
	}
	if s.state == stWaiting {
		s.state = stSetup
		if set := s.startupSettings(c); set != "" {
			s.internalQuery(set)
			return
		}
		s.ready()
		return
	}
	set := s.followSettings(c)
	if set != "" {
		s.internalQuery(set)
	}
	var hr *hedgeRace
	if set == "" && s.replica != nil && !s.retrying {
		hr = s.prepareHedge()
	}
	s.retrying = false
	s.sendQueued()
	if hr != nil {
		s.startHedge(hr, c)
	}
}

// ready completes the login: the server's parameters, our own cancel key, ReadyForQuery.
func (s *session) ready() {
	s.disarm()
	s.loginDone()
	s.srv.log.Info("login", "user", s.user, "database", s.db.name, "addr", s.io.RemoteAddr(), "pool_mode", s.mode.String())
	for name, value := range s.be.Params {
		s.io.Write(wire.AppendParameterStatus(nil, name, value))
	}
	s.key, s.keyed = s.srv.register(s), true
	s.io.Write(wire.AppendBackendKeyData(nil, s.key.pid, s.key.secretBytes()))
	s.io.Write(wire.AppendReadyForQuery(nil, s.txStatus))
	s.state = stLinked
	s.desired, s.desiredShared = s.srv.settings.intern(s.trackedSettings(s.be))
	s.startup = nil // applied and, where it must follow the client, kept in desired
	s.sendQueued()
	s.afterUnit()
}

// sendQueued passes on what the client sent while it waited for its backend or for the hub. The
// frames not yet passed on stay queued meanwhile, so that a unit the gateway answers itself does
// not give the backend back while they still need it.
func (s *session) sendQueued() {
	for len(s.queued) > 0 && !s.hubWait && s.state != stClosed {
		if s.replica != nil && s.be != nil && s.routed == 0 {
			s.heldBack = true // a later unit, which the replica was not chosen for
			break
		}
		q := s.queued[0]
		f := wire.Frame{Type: q.typ, Len: q.length, Raw: q.raw, Whole: q.whole, First: q.first, Last: q.last}
		if q.whole {
			f.Body = q.raw[len(q.raw)-q.length:]
		}
		e, hub := s.hubCommand(&f)
		if !hub && s.be == nil {
			if !s.waiting && s.bunit == nil {
				s.startUnit() // the backend went back while the hub answered
			}
			return
		}
		if s.routed > 0 {
			s.routed--
		}
		s.queued[0] = queuedFrame{}
		s.queued = s.queued[1:]
		s.queuedBytes -= len(q.raw)
		if len(s.queued) == 0 {
			s.queued = nil
		}
		if hub {
			s.runHubCommand(e)
		} else {
			s.relay(&f)
		}
	}
	s.unthrottle()
}

// clientMessage handles a frame from a logged-in client (or one still logging in).
func (s *session) clientMessage(f *wire.Frame) {
	if f.First && f.Type == 'X' {
		s.state = stClosed
		s.io.Close()
		return
	}
	if s.rejecting {
		s.skip(f.Type, f.Last)
		if !s.rejecting {
			s.afterUnit()
		}
		return
	}
	if f.First && s.unitStart.IsZero() && s.state == stLinked {
		s.unitStart = s.now()
		if s.srv.tracer != nil {
			s.noteTraceparent(f)
		}
	}
	if len(s.queued) == 0 {
		if e, ok := s.hubCommand(f); ok {
			s.runHubCommand(e) // LISTEN fan-out: no backend needed
			return
		}
	}
	if s.state == stLinked && s.be == nil && !s.waiting && len(s.queued) == 0 && !s.hubWait && f.First && !s.routing() && !s.batchOK {
		s.disarm()
		s.acquire() // often answered at once, and then f goes straight through
		if s.state == stClosed {
			return
		}
		if s.rejecting {
			s.skip(f.Type, f.Last)
			if !s.rejecting {
				s.afterUnit()
			}
			return
		}
	}
	if s.replica != nil && s.be != nil && s.routed == 0 && f.First && !s.slots.empty() && !s.unsynced {
		// A new unit while the replica still works on the one it was chosen for: it is routed
		// on its own once that one ends.
		s.heldBack = true
	}
	if s.be == nil || s.state != stLinked || len(s.queued) > 0 || s.hubWait || s.heldBack {
		s.queue(f)
		return
	}
	s.relay(f)
}

// queue keeps a copy of f until a backend is available, asking for one if needed.
func (s *session) queue(f *wire.Frame) {
	s.queued = append(s.queued, queuedFrame{
		typ: f.Type, length: f.Len, raw: append([]byte(nil), f.Raw...),
		whole: f.Whole, first: f.First, last: f.Last,
	})
	s.queuedBytes += len(f.Raw)
	if s.state == stLinked && s.be == nil && !s.waiting && !s.hubWait && s.bunit == nil {
		s.disarm()
		s.startUnit()
	}
}

// armIdle arms the deadline of a client with nothing running: idle, or idle in a transaction.
func (s *session) armIdle() {
	if s.txStatus == 'I' {
		d := s.srv.conf().ClientIdleTimeout
		s.arm(d, func() {
			s.fatal("57P05", fmt.Sprintf("terminating connection due to idle timeout (--client-idle-timeout %s)", d))
		})
		return
	}
	d := s.srv.conf().IdleTxTimeout
	s.arm(d, func() {
		s.fatal("25P03", fmt.Sprintf("terminating connection due to idle-in-transaction timeout (--idle-transaction-timeout %s)", d))
	})
}

// afterUnit runs whenever the backend may have finished all it owed: it hands the client the
// notifications that waited for the end of its transaction, gives the backend back when the pool
// mode says so, and arms the deadline that fits what the client does now.
func (s *session) afterUnit() {
	s.deliverNotifications()
	if s.state != stLinked || !s.slots.empty() || s.unsynced || s.copyIn || len(s.queued) > 0 && !s.heldBack || s.hubWait {
		return
	}
	s.unitEnded()
	if s.heldBack {
		s.nextUnit()
		return
	}
	s.armIdle()
	if s.mode == sessionMode || s.be == nil || s.txStatus != 'I' || s.cancelling {
		return
	}
	if s.pinned() {
		s.holdPinned()
		return
	}
	if s.barrier {
		// A cancel reached the backend: an empty query proves it is spent before anyone else
		// gets the connection.
		s.barrier = false
		s.internalQuery("")
		return
	}
	s.release()
}

// release gives the backend back to the pool it came from.
func (s *session) release() {
	be := s.be
	s.be = nil
	s.flushBe.Store(nil)
	s.pool.Return(be)
	s.releaseTicket()
	if s.replica == nil && s.unitWrites {
		s.lastWrite = clockNow()
	}
	s.unitWrites = false
	s.leaveReplica()
}

// nextUnit runs what waited behind a unit a replica served: on the same backend inside the
// read-only transaction that unit left open, else on a backend chosen for it.
func (s *session) nextUnit() {
	if s.cancelling {
		return // afterUnit runs again once the cancel is delivered
	}
	if s.barrier {
		s.barrier = false
		s.internalQuery("")
		return
	}
	s.heldBack = false
	if s.txStatus != 'I' || s.pinned() {
		s.routed = len(s.queued)
		s.sendQueued()
		return
	}
	s.release()
	if s.unitReady() {
		s.acquire()
	}
}

// requestCancel forwards the client's CancelRequest to its backend, if it is running the
// client's work. The backend stays with the client until the cancel has been delivered, so it
// can never hit another client's query.
func (s *session) requestCancel() {
	if s.my != nil {
		s.mysqlCancel()
		return
	}
	s.abortHedge()
	if s.bunit != nil {
		s.cancelBatched()
		return
	}
	if s.be == nil || s.slots.empty() || s.cancelling {
		return
	}
	be, done := s.be, make(chan struct{})
	s.cancelling, s.cancelDone = true, done
	timeout := s.srv.cfg.CancelTimeout
	go func() {
		if err := cancelBackend(be, timeout); err != nil {
			s.srv.log.Warn("cancel failed", "err", err)
		}
		close(done)
		s.io.Exec(func() {
			if s.cancelDone != done {
				return
			}
			s.cancelling, s.cancelDone = false, nil
			if s.be == be {
				s.barrier = true
				s.afterUnit()
			}
		})
	}()
}

// backendClosed: the server or the network ended the client's backend.
func (s *session) backendClosed(c *pool.Conn, err error) {
	if hr := s.hedge; hr != nil && s.state != stClosed && s.hedgeClosed(hr, c) {
		return
	}
	if c != s.be || s.state == stClosed {
		return
	}
	s.be = nil
	s.flushBe.Store(nil)
	s.releaseTicket()
	s.fatal("08006", fmt.Sprintf("server connection closed (%s): %v", c.Addr(), err))
}

// Flush implements loop.Handler: it kicks the backend's writer.
func (s *session) Flush() {
	if be := s.flushBe.Load(); be != nil {
		be.Flush()
	}
	if b := s.flushBat.Load(); b != nil {
		b.Flush()
	}
}

// OnClose implements loop.Handler: the client is gone, so give back or drain what it held.
func (s *session) OnClose(err error) {
	if s.keyed { // logged in; a login that failed was logged by fatal
		s.srv.log.Info("client disconnected", "user", s.user, "database", s.startup["database"]+s.dbName(),
			"addr", s.io.RemoteAddr(), "err", err)
	}
	s.state = stClosed
	s.disarm()
	if s.gateWait != nil {
		s.gateWait() // if the ticket is on its way, admitted gives it back
		s.gateWait = nil
	}
	if s.withdraw != nil {
		s.withdraw()
		s.withdraw = nil
	}
	if s.keyed {
		s.srv.unregister(s.key)
	}
	if s.counted {
		s.srv.clients.Add(-1)
	}
	if s.limited {
		s.srv.leaveLogin(s.limitDB, s.limitUser)
	}
	s.loginDone()
	if s.pt != nil && s.pt.counted {
		s.pt.counted = false
		s.srv.pinned.Add(-1)
	}
	if s.sub != nil {
		s.sub.hub.unsubscribeAll(s.sub)
	}
	s.flushBytes()
	s.in.Reset()
	if s.my != nil {
		s.mysqlClosed()
	}
	s.abortHedge()
	if u := s.bunit; u != nil {
		s.bunit = nil
		s.bat.Abandon(u) // a unit already written runs on; its answer goes nowhere
	}
	if be := s.be; be != nil {
		s.be = nil
		s.flushBe.Store(nil)
		s.drain(be) // takes the ticket: the slot is held until the backend is back
	}
	s.releaseTicket()
	s.leaveReplica()
}

// fatal sends a FATAL error and closes the client.
func (s *session) fatal(code, msg string) {
	if s.state == stClosed {
		return
	}
	s.state = stClosed
	s.srv.countError(s.db, "gateway", code)
	s.srv.log.Info("closing client", "user", s.user, "database", s.startup["database"]+s.dbName(),
		"addr", s.io.RemoteAddr(), "code", code, "reason", msg)
	s.io.Write(wire.AppendError(nil, "FATAL", code, msg))
	s.io.Close()
}

// dbName is the client's database alias once routed (startup is dropped after login).
func (s *session) dbName() string {
	if s.db != nil && s.startup == nil {
		return s.db.name
	}
	return ""
}

// errorFields gives the SQLSTATE and message to send for an error from below.
func errorFields(err error) (code, msg string) {
	var we *wire.Error
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &we):
		return we.Code, we.Message
	case errors.As(err, &pe):
		return pe.Code, pe.Message
	}
	return "08006", err.Error()
}

// backendSink delivers a backend's bytes to its session's loop.
type backendSink struct{ s *session }

func (b backendSink) BackendData(c *pool.Conn, data []byte) {
	if !b.s.io.Exec(func() { b.s.backendData(c, data) }) {
		// The client closed while these bytes were on their way; whoever took the backend
		// over (the drainer) must see every byte to keep count.
		if next := c.Sink(); next != b {
			next.BackendData(c, data)
		}
	}
}

// Drained resumes a client paused because its backend was slow to read.
func (b backendSink) Drained(c *pool.Conn) {
	b.s.io.Exec(func() {
		if c == b.s.be {
			b.s.unthrottle()
		}
	})
}

func (b backendSink) BackendClosed(c *pool.Conn, err error) {
	b.s.io.Exec(func() { b.s.backendClosed(c, err) })
}
