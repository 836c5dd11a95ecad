package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/asyncgate/asyncgate/gateway/sqlclass"
	"github.com/asyncgate/asyncgate/wire"
)

// LISTEN fan-out (--listen-fanout on): in transaction and statement modes a client's LISTEN
// would tie it to the backend that listens for it. Instead, one hub per database alias keeps a
// connection of its own that listens on the union of the channels its clients want, and copies
// each notification to every client subscribed to its channel. The clients stay unpinned.

// Bounds on what may wait for one client: beyond either, the client is disconnected (53400)
// rather than lose notifications without knowing.
const (
	maxPendingNotifications = 1000
	maxPendingBytes         = 1 << 20
)

// Reconnect delays of a hub's listener connection: doubled after each failure, with jitter.
const (
	minListenBackoff = 50 * time.Millisecond
	maxListenBackoff = 5 * time.Second
)

// hub owns one database alias's listener connection and its clients' subscriptions.
//
// Its goroutine is the only user of the connection: it alternates between bringing the
// connection's LISTEN set in line with what subscribers want and waiting for notifications; a
// change of subscriptions interrupts the wait by cancelling its context. Notifications are copied
// to each subscriber's mailbox without blocking (see subscriber), so a slow client never holds
// up the hub or the other clients.
type hub struct {
	srv  *Server
	name string
	cfg  *pgconn.Config

	ctx  context.Context
	stop context.CancelFunc
	done chan struct{}

	listening atomic.Int64 // channels LISTENed on the current connection

	mu        sync.Mutex
	subs      map[string]map[*subscriber]struct{} // channel → its subscribers
	live      map[string]bool                     // channels the connection listens on and keeps
	waiters   map[string][]waiter                 // LISTENs to answer once their channel is live
	dirty     bool                                // subs changed since the last reconcile
	interrupt context.CancelFunc                  // ends the wait for notifications, if waiting
}

// waiter is a client's LISTEN waiting for the listener connection.
type waiter struct {
	sub   *subscriber
	fresh bool // the LISTEN created the subscription: a failure removes it
}

func newHub(srv *Server, name string, cfg *pgconn.Config) *hub {
	h := &hub{
		srv:     srv,
		name:    name,
		cfg:     cfg,
		done:    make(chan struct{}),
		subs:    make(map[string]map[*subscriber]struct{}),
		live:    make(map[string]bool),
		waiters: make(map[string][]waiter),
	}
	cfg.OnNotification = h.notification
	// Ending a wait must only set a deadline (pgconn's default today): a cancel request sent for
	// it could land on the next LISTEN instead.
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "asyncgate listen fan-out"
	}
	h.ctx, h.stop = context.WithCancel(context.Background())
	go h.run()
	return h
}

func (h *hub) close() {
	h.stop()
	<-h.done
}

// subscribe adds sub to channel ch. It reports true when the listener connection listens on ch
// already; otherwise the session is answered (listenAnswered) once it does, or cannot.
func (h *hub) subscribe(sub *subscriber, ch string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	fresh := !sub.channels[ch]
	if fresh {
		if h.subs[ch] == nil {
			h.subs[ch] = make(map[*subscriber]struct{})
		}
		h.subs[ch][sub] = struct{}{}
		if sub.channels == nil {
			sub.channels = make(map[string]bool)
		}
		sub.channels[ch] = true
	}
	if h.live[ch] {
		return true
	}
	h.waiters[ch] = append(h.waiters[ch], waiter{sub: sub, fresh: fresh})
	h.wake()
	return false
}

// unsubscribe removes sub from channel ch. Nothing for ch reaches its mailbox afterwards.
func (h *hub) unsubscribe(sub *subscriber, ch string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.remove(sub, ch)
}

// unsubscribeAll removes sub from every channel.
func (h *hub) unsubscribeAll(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range sub.channels {
		h.remove(sub, ch)
	}
}

// remove takes sub off ch and out of ch's waiters. Called with h.mu held.
func (h *hub) remove(sub *subscriber, ch string) {
	if !sub.channels[ch] {
		return
	}
	delete(sub.channels, ch)
	if subs := h.subs[ch]; subs != nil {
		delete(subs, sub)
		if len(subs) == 0 {
			delete(h.subs, ch)
			h.wake() // the connection stops listening on ch
		}
	}
	ws := h.waiters[ch]
	for i, w := range ws {
		if w.sub == sub {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(h.waiters, ch)
	} else {
		h.waiters[ch] = ws
	}
}

// wake makes the hub goroutine reconcile soon. Called with h.mu held.
func (h *hub) wake() {
	h.dirty = true
	if h.interrupt != nil {
		h.interrupt()
		h.interrupt = nil
	}
}

// notification copies a notification to the mailbox of every subscriber of its channel. It runs
// on the hub goroutine, inside pgconn, and never blocks on a client.
func (h *hub) notification(_ *pgconn.PgConn, n *pgconn.Notification) {
	msg := appendNotification(nil, n.PID, n.Channel, n.Payload)
	var over []*subscriber
	h.mu.Lock()
	for sub := range h.subs[n.Channel] {
		if sub.push(msg) {
			over = append(over, sub)
		}
	}
	for _, sub := range over {
		for ch := range sub.channels {
			h.remove(sub, ch)
		}
	}
	h.mu.Unlock()
	for _, sub := range over {
		h.srv.log.Warn("client disconnected: LISTEN notifications overflowed (--listen-fanout)",
			"database", h.name, "user", sub.s.user, "limit", maxPendingNotifications, "limit_bytes", maxPendingBytes)
	}
}

// run keeps a listener connection open while the hub lives, reconnecting with backoff.
func (h *hub) run() {
	defer close(h.done)
	var delay time.Duration
	for {
		if delay > 0 && !h.sleep(delay) {
			return
		}
		conn, err := h.connect()
		if err != nil {
			if h.ctx.Err() != nil {
				return
			}
			h.srv.log.Warn("LISTEN fan-out: cannot open the listener connection", "database", h.name, "err", err)
			h.failWaiters(err)
			delay = nextBackoff(delay)
			continue
		}
		start := time.Now()
		err = h.serve(conn)
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn.Close(closeCtx)
		cancel()
		if h.ctx.Err() != nil {
			return
		}
		h.lost(err)
		if time.Since(start) > maxListenBackoff {
			delay = 0 // a connection that served a while: reconnect at once
		} else {
			delay = nextBackoff(delay)
		}
	}
}

func nextBackoff(d time.Duration) time.Duration {
	return min(max(2*d, minListenBackoff), maxListenBackoff)
}

// sleep waits about d (jittered so that hubs do not reconnect in step); false if the hub stops.
func (h *hub) sleep(d time.Duration) bool {
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-h.ctx.Done():
		return false
	}
}

func (h *hub) connect() (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(h.ctx, h.srv.cfg.ServerConnectTimeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, h.cfg.Copy())
	if err != nil {
		return nil, fmt.Errorf("connect for LISTEN fan-out: %w", err)
	}
	return conn, nil
}

// serve runs one listener connection until it fails or the hub stops.
func (h *hub) serve(conn *pgconn.PgConn) error {
	have := make(map[string]bool) // channels LISTENed on conn
	defer h.listening.Store(0)
	for {
		if err := h.reconcile(conn, have); err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(h.ctx)
		h.mu.Lock()
		if h.dirty {
			h.mu.Unlock()
			cancel()
			continue
		}
		h.interrupt = cancel
		h.mu.Unlock()
		err := conn.WaitForNotification(ctx)
		h.mu.Lock()
		h.interrupt = nil
		h.mu.Unlock()
		interrupted := ctx.Err() != nil
		cancel()
		switch {
		case h.ctx.Err() != nil:
			return h.ctx.Err()
		case err != nil && !interrupted:
			return fmt.Errorf("wait for notifications: %w", err)
		}
		// A notification (already handed out by OnNotification), or a change to reconcile.
	}
}

// reconcile brings the connection's LISTEN set in line with the channels subscribers want.
func (h *hub) reconcile(conn *pgconn.PgConn, have map[string]bool) error {
	var listen, unlisten []string
	h.mu.Lock()
	h.dirty = false
	for ch := range h.subs {
		if !have[ch] {
			listen = append(listen, ch)
		}
	}
	for ch := range have {
		if _, ok := h.subs[ch]; !ok {
			unlisten = append(unlisten, ch)
			// No longer live from now: a subscriber arriving meanwhile waits for a new LISTEN.
			delete(h.live, ch)
		}
	}
	h.mu.Unlock()

	for _, ch := range unlisten {
		if err := h.exec(conn, "UNLISTEN "+quoteIdent(ch)); err != nil {
			return err
		}
		delete(have, ch)
		h.listening.Store(int64(len(have)))
	}
	for _, ch := range listen {
		err := h.exec(conn, "LISTEN "+quoteIdent(ch))
		var pe *pgconn.PgError
		if errors.As(err, &pe) && !conn.IsClosed() {
			h.refuse(ch, err) // the server refused this channel (a standby, …); the connection is fine
			continue
		}
		if err != nil {
			return err
		}
		have[ch] = true
		h.listening.Store(int64(len(have)))
		h.confirm(ch)
	}
	return nil
}

func (h *hub) exec(conn *pgconn.PgConn, sql string) error {
	ctx, cancel := context.WithTimeout(h.ctx, h.srv.cfg.ServerConnectTimeout)
	defer cancel()
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("%s on the listener connection: %w", sql, err)
	}
	return nil
}

// confirm makes ch live and answers the LISTENs that waited for it.
func (h *hub) confirm(ch string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.live[ch] = true
	for _, w := range h.waiters[ch] {
		w.sub.answer(nil)
	}
	delete(h.waiters, ch)
}

// refuse drops channel ch, which the server would not LISTEN on: waiting LISTENs get the error,
// and clients subscribed before (on a previous connection) are told nothing but logged.
func (h *hub) refuse(ch string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	answered := make(map[*subscriber]bool)
	for _, w := range h.waiters[ch] {
		w.sub.answer(err)
		answered[w.sub] = true
	}
	delete(h.waiters, ch)
	lost := 0
	for sub := range h.subs[ch] {
		if !answered[sub] {
			lost++
		}
		delete(sub.channels, ch)
	}
	delete(h.subs, ch)
	h.srv.log.Warn("LISTEN fan-out: the server refused a channel", "database", h.name, "channel", ch,
		"subscribers_dropped", lost, "err", err)
}

// failWaiters answers every waiting LISTEN with err; subscriptions they created are removed.
func (h *hub) failWaiters(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch, ws := range h.waiters {
		for _, w := range ws {
			w.sub.answer(err)
			if w.fresh {
				delete(w.sub.channels, ch)
				if subs := h.subs[ch]; subs != nil {
					delete(subs, w.sub)
					if len(subs) == 0 {
						delete(h.subs, ch)
					}
				}
			}
		}
	}
	clear(h.waiters)
}

// lost records that the listener connection failed: nothing is live until the next one has
// LISTENed again, and what was notified meanwhile is lost, as it would be for a client whose own
// connection dropped.
func (h *hub) lost(err error) {
	h.mu.Lock()
	clear(h.live)
	subscribers := make(map[*subscriber]bool)
	for _, subs := range h.subs {
		for sub := range subs {
			subscribers[sub] = true
		}
	}
	channels := len(h.subs)
	h.mu.Unlock()
	h.srv.log.Warn("LISTEN fan-out: listener connection lost; notifications sent until it is back are lost",
		"database", h.name, "subscribers", len(subscribers), "channels", channels, "err", err)
	h.failWaiters(err)
}

// subscriber is one client's side of a hub: its channels and its mailbox.
//
// The hub puts notifications in the mailbox without blocking; getting them to the client takes
// an Exec on the client's connection, which blocks while the client's output is over its bound.
// So a short-lived goroutine per subscriber does the Exec, and while the client is inside a
// transaction the notifications stay in the mailbox until the session, back between
// transactions, takes them itself. A client that does not keep up fills its mailbox and is
// disconnected; the hub and the other clients never wait for it. The disconnect goes through the
// same goroutine, after the Exec it may be blocked in: one Exec at a time per subscriber keeps the
// error whole and after the notifications already written, whichever loop driver serves the
// client.
type subscriber struct {
	s        *session
	hub      *hub
	channels map[string]bool // guarded by hub.mu

	mu         sync.Mutex
	pending    [][]byte // NotificationResponse messages not yet handed to the session
	bytes      int
	running    bool // a delivery goroutine is on its way
	held       bool // the client is in a transaction: the session takes the mail when it ends
	overflowed bool
}

// push adds a notification to the mailbox and makes sure it gets delivered. It reports true when
// the mailbox overflowed: its content is dropped and the client must be disconnected.
func (sub *subscriber) push(msg []byte) (overflow bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.overflowed {
		return false
	}
	overflow = len(sub.pending) >= maxPendingNotifications || sub.bytes+len(msg) > maxPendingBytes
	if overflow {
		sub.overflowed, sub.pending, sub.bytes = true, nil, 0
	} else {
		sub.pending = append(sub.pending, msg)
		sub.bytes += len(msg)
	}
	if !sub.running && (overflow || !sub.held) {
		sub.running = true
		go sub.deliver()
	}
	return overflow
}

// deliver hands the mailbox to the session until it is empty or the session holds it, or
// disconnects the client once it overflowed.
func (sub *subscriber) deliver() {
	s := sub.s
	for {
		sub.mu.Lock()
		over, more := sub.overflowed, len(sub.pending) > 0 && !sub.held
		if !over && !more {
			sub.running = false
			sub.mu.Unlock()
			return
		}
		sub.mu.Unlock()
		if over {
			s.io.Exec(s.notificationsOverflowed)
			return // still running: nothing more goes to this client
		}
		if !s.io.Exec(s.deliverNotifications) {
			return // the client is gone
		}
	}
}

// take empties the mailbox.
func (sub *subscriber) take() [][]byte {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	msgs := sub.pending
	sub.pending, sub.bytes, sub.held = nil, 0, false
	return msgs
}

// hold keeps what arrives in the mailbox until take.
func (sub *subscriber) hold() {
	sub.mu.Lock()
	sub.held = true
	sub.mu.Unlock()
}

// answer tells the session how its waiting LISTEN went, from a goroutine of its own since Exec
// may block.
func (sub *subscriber) answer(err error) {
	s := sub.s
	go s.io.Exec(func() { s.listenAnswered(err) })
}

// appendNotification appends a NotificationResponse.
func appendNotification(dst []byte, pid uint32, channel, payload string) []byte {
	dst = append(dst, 'A')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+4+len(channel)+1+len(payload)+1))
	dst = binary.BigEndian.AppendUint32(dst, pid)
	dst = append(dst, channel...)
	dst = append(dst, 0)
	dst = append(dst, payload...)
	return append(dst, 0)
}

// The session's side of the fan-out. Everything below runs serialised with the session's other
// events.

// hubCommand reports whether f is a LISTEN, UNLISTEN or UNLISTEN * for the hub (with
// --listen-fanout on, in transaction and statement modes): a simple Query holding that one
// statement, sent while the client waits for nothing. Other forms (inside a transaction block,
// among other statements, through the extended protocol) go to the backend and pin the client.
func (s *session) hubCommand(f *wire.Frame) (sqlclass.Effect, bool) {
	if !s.srv.cfg.ListenFanout || s.mode == sessionMode || f.Type != 'Q' || !f.First || !f.Whole || !s.between() {
		return sqlclass.Effect{}, false
	}
	if s.pt != nil && len(s.pt.listens) > 0 {
		// It listens on its backend already: its LISTENs go there too, so that it never gets a
		// notification twice, from there and from the hub.
		return sqlclass.Effect{}, false
	}
	if s.srv.classifier == nil || indexFold(f.Body, []byte("listen"), 0) < 0 {
		return sqlclass.Effect{}, false
	}
	c := s.srv.classifier.Classify(string(bytes.TrimRight(f.Body, "\x00")))
	if c.Statements != 1 || len(c.Effects) != 1 {
		return sqlclass.Effect{}, false
	}
	switch e := c.Effects[0]; e.Kind {
	case sqlclass.Listen, sqlclass.Unlisten, sqlclass.UnlistenAll:
		return e, true
	}
	return sqlclass.Effect{}, false
}

// runHubCommand carries out what hubCommand found, answering as PostgreSQL does.
func (s *session) runHubCommand(e sqlclass.Effect) {
	switch e.Kind {
	case sqlclass.Unlisten:
		if s.sub != nil {
			s.sub.hub.unsubscribe(s.sub, channelName(e.Name))
		}
	case sqlclass.UnlistenAll:
		if s.sub != nil {
			s.sub.hub.unsubscribeAll(s.sub)
		}
	}
	// What arrived before the statement took effect comes before its answer.
	s.deliverNotifications()
	if e.Kind != sqlclass.Listen {
		s.hubAnswer("UNLISTEN")
		return
	}
	if s.sub == nil {
		h := s.srv.hub(s.db, s.user)
		if h == nil {
			s.io.Write(wire.AppendError(nil, "ERROR", "57P01", "LISTEN refused: the gateway is shutting down (--listen-fanout)"))
			s.io.Write(wire.AppendReadyForQuery(nil, s.txStatus))
			s.afterUnit()
			return
		}
		s.sub = &subscriber{s: s, hub: h}
	}
	if s.sub.hub.subscribe(s.sub, channelName(e.Name)) {
		s.hubAnswer("LISTEN")
		return
	}
	// The listener connection is not listening on the channel yet. Until it is, what the client
	// sends next waits (queued), and its deadlines are the hub's: connecting and LISTEN are
	// bounded by --server-connect-timeout.
	s.hubWait = true
	s.disarm()
}

// hubAnswer completes a statement the hub carried out.
func (s *session) hubAnswer(tag string) {
	s.io.Write(wire.AppendReadyForQuery(appendMessage(nil, 'C', []byte(tag), nil), s.txStatus))
	s.afterUnit()
}

// listenAnswered is the hub's answer to a LISTEN that waited for its listener connection.
func (s *session) listenAnswered(err error) {
	if !s.hubWait || s.state == stClosed {
		return
	}
	s.hubWait = false
	if err != nil {
		code, msg := errorFields(err)
		s.io.Write(wire.AppendError(nil, "ERROR", code, fmt.Sprintf(
			"LISTEN failed on the gateway's listener connection (--listen-fanout): %s", msg)))
		s.io.Write(wire.AppendReadyForQuery(nil, s.txStatus))
	} else {
		s.io.Write(wire.AppendReadyForQuery(appendMessage(nil, 'C', []byte("LISTEN"), nil), s.txStatus))
	}
	if len(s.queued) > 0 {
		s.sendQueued()
		return
	}
	s.afterUnit()
}

// between reports whether the client is between transactions with no answer under way, where
// PostgreSQL delivers notifications. Frames waiting for a backend have had no answer yet.
func (s *session) between() bool {
	return s.state == stLinked && s.txStatus == 'I' && s.slots.empty() && !s.unsynced && !s.copyIn && !s.hubWait && s.bunit == nil
}

// deliverNotifications writes the notifications waiting for the client if it is between
// transactions; otherwise they wait for the ReadyForQuery that ends its transaction (afterUnit
// calls again).
func (s *session) deliverNotifications() {
	if s.sub == nil {
		return
	}
	if !s.between() {
		s.sub.hold()
		return
	}
	for _, msg := range s.sub.take() {
		s.io.Write(msg)
	}
}

// dropSubscriptions ends every hub subscription of the client (DISCARD ALL) and forgets what
// waited for it: those notifications were for channels it no longer listens on.
func (s *session) dropSubscriptions() {
	if s.sub != nil {
		s.sub.hub.unsubscribeAll(s.sub)
		s.sub.take()
	}
}

// hubEffect applies a committed LISTEN or UNLISTEN the backend ran (a form the hub leaves to the
// backend) to the client's hub subscriptions: UNLISTEN means the hub's channels too, and a
// channel now listened on the backend leaves the hub so it is not delivered twice.
func (s *session) hubEffect(e sqlclass.Effect) {
	if s.sub == nil {
		return
	}
	switch e.Kind {
	case sqlclass.Listen, sqlclass.Unlisten:
		s.sub.hub.unsubscribe(s.sub, channelName(e.Name))
	case sqlclass.UnlistenAll:
		s.sub.hub.unsubscribeAll(s.sub)
	}
}

// notificationsOverflowed disconnects a client whose mailbox overflowed.
func (s *session) notificationsOverflowed() {
	if s.state == stClosed {
		return
	}
	if s.be != nil && !s.be.Frames.AtBoundary() {
		// Part of a backend message has gone to the client: the error goes after its end.
		s.overflowed = true
		return
	}
	s.fatal("53400", fmt.Sprintf("terminating connection because notifications overflowed: more than %d "+
		"notifications or %d bytes were waiting for this client (--listen-fanout); read them sooner or listen on fewer channels",
		maxPendingNotifications, maxPendingBytes))
}

// channelName is a channel as PostgreSQL keeps it: at most NAMEDATALEN-1 (63) bytes, cut at a
// character boundary.
func channelName(name string) string {
	const max = 63
	if len(name) <= max {
		return name
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return name[:cut]
}
