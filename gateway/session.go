package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/gateway/auth"
	"github.com/asyncgate/asyncgate/loop"
	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

type state uint8

const (
	stStartup state = iota // waiting for the startup packet (again after SSLRequest)
	stAuth                 // authentication exchange in progress
	stWaiting              // authenticated, waiting for a backend connection
	stSetup                // backend linked, applying the client's startup parameters
	stLinked               // relaying between client and backend
	stClosed
)

// maxEarly bounds what a client may send before it has seen ReadyForQuery.
const maxEarly = 64 << 10

// session is one client's protocol state machine. It does no I/O: events arrive through its
// methods (client bytes, backend bytes, pool answers, timers), all serialised by the loop, and it
// answers by queueing bytes on io or on its backend connection.
type session struct {
	srv *Server
	io  loop.Conn
	in  *wire.Decoder

	state      state
	tlsPending bool // answered 'S' to SSLRequest; nothing may follow until the handshake
	counted    bool // holds a --max-client-conn slot
	stopLogin  func() bool

	user     string
	db       *database
	startup  map[string]string
	exchange *auth.Exchange

	pool     *pool.Pool
	withdraw func() bool
	be       *pool.Conn
	flushBe  atomic.Pointer[pool.Conn] // be, for Flush, which runs outside the serialisation
	early    []byte                    // client bytes that came before ReadyForQuery

	key      cancelKey
	keyed    bool
	paused   bool // client reads paused until the backend drains what we queued for it
	active   bool // the client has sent work the backend has not finished (cancel applies)
	pending  int  // Query/Sync/FunctionCall sent and not yet answered by ReadyForQuery
	txStatus byte
}

func newSession(srv *Server, io loop.Conn) *session {
	s := &session{srv: srv, io: io, txStatus: 'I'}
	cfg := wire.DecoderConfig{MaxMessage: srv.cfg.MaxPacketSize, MaxInspect: auth.MaxMessageLen}
	cfg.Inspect['p'] = true
	cfg.Inspect['X'] = true
	s.in = wire.NewDecoder(cfg)
	s.in.ExpectStartup()
	if d := srv.cfg.ClientLoginTimeout; d > 0 {
		s.stopLogin = io.AfterFunc(d, func() {
			if s.state < stLinked {
				s.fatal("08P01", fmt.Sprintf("login not completed within %s (--client-login-timeout)", d))
			}
		})
	}
	return s
}

// OnData implements loop.Handler.
func (s *session) OnData(b []byte) {
	if s.state == stClosed {
		return
	}
	if s.tlsPending {
		if !s.io.TLS() {
			s.fatal("08P01", "received unencrypted data after SSL request")
			return
		}
		s.tlsPending = false
	}
	err := s.in.Feed(b, s.clientFrame)
	if s.be != nil && !s.paused && s.be.Buffered() > s.srv.cfg.MaxOutput {
		// The backend reads slower than the client writes: let TCP hold the client back.
		s.paused = true
		s.io.PauseReads()
	}
	if err != nil && s.state != stClosed {
		var we *wire.Error
		if errors.As(err, &we) {
			s.fatal(we.Code, we.Message)
			return
		}
		s.fatal("08P01", err.Error())
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
		s.relayToBackend(f)
	}
	if s.state == stClosed {
		return errStop
	}
	return nil
}

func (s *session) startupPacket(body []byte) {
	st, err := wire.ParseStartup(body)
	if err != nil {
		var we *wire.Error
		if errors.As(err, &we) {
			s.fatal(we.Code, we.Message)
		} else {
			s.fatal("08P01", err.Error())
		}
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
		s.fatal("53300", fmt.Sprintf("no more connections allowed: %d clients connected (--max-client-conn)", s.srv.cfg.MaxClientConn))
		return
	}
	s.counted = true
	if st.Version != wire.ProtocolVersion30 {
		var unknown []string
		for k := range st.Params {
			if strings.HasPrefix(k, "_pq_.") {
				unknown = append(unknown, k)
			}
		}
		s.io.Write(wire.AppendNegotiateProtocolVersion(nil, 0, unknown))
	}
	if st.Params["replication"] != "" && st.Params["replication"] != "false" && st.Params["replication"] != "0" {
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

// authenticated routes the client to its pool and asks for a backend.
func (s *session) authenticated() {
	name := s.startup["database"]
	db, ok := s.srv.dbs[name]
	if !ok {
		s.fatal("3D000", fmt.Sprintf("database %q does not exist (no --database %s=… is configured)", name, name))
		return
	}
	p, err := s.srv.pool(db, s.user)
	if err != nil {
		s.fatal("08006", err.Error())
		return
	}
	s.db, s.pool, s.state = db, p, stWaiting
	c, withdraw, err := p.Acquire(func(c *pool.Conn, err error) {
		if !s.io.Exec(func() { s.backendReady(c, err) }) && c != nil {
			p.Release(c) // the client left while waiting; the connection is untouched
		}
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
	s.withdraw = nil
	if s.state != stWaiting {
		if c != nil {
			s.pool.Release(c)
		}
		return
	}
	if err != nil {
		code, msg := errorFields(err)
		s.fatal(code, msg)
		return
	}
	s.be = c
	s.flushBe.Store(c)
	c.SetSink(backendSink{s})
	s.state = stSetup
	if set := s.startupSettings(c.Params); set != "" {
		s.active = true
		s.pending++
		c.Write(wire.AppendQuery(nil, set))
		return
	}
	s.ready()
}

// startupSettings turns the client's startup parameters into SET commands for those the
// backend does not already have, so the session starts as it would on a direct connection.
func (s *session) startupSettings(have map[string]string) string {
	var b strings.Builder
	set := func(name, value string) {
		for k, v := range have {
			if strings.EqualFold(k, name) && v == value {
				return
			}
		}
		fmt.Fprintf(&b, "SET %s = %s;", quoteIdent(name), quoteLiteral(value))
	}
	for name, value := range s.startup {
		switch name {
		case "user", "database", "replication":
		case "options":
			for name, value := range parseOptions(value) {
				set(name, value)
			}
		default:
			set(name, value)
		}
	}
	return b.String()
}

// ready completes the login: the server's parameters, our own cancel key, ReadyForQuery.
func (s *session) ready() {
	if s.stopLogin != nil {
		s.stopLogin()
	}
	for name, value := range s.be.Params {
		s.io.Write(wire.AppendParameterStatus(nil, name, value))
	}
	s.key, s.keyed = s.srv.register(s), true
	s.io.Write(wire.AppendBackendKeyData(nil, s.key.pid, s.key.secretBytes()))
	s.io.Write(wire.AppendReadyForQuery(nil, s.txStatus))
	s.state = stLinked
	if len(s.early) > 0 {
		s.be.Write(s.early)
		s.early = nil
	}
}

// relayToBackend forwards a client message, noting what the gateway must know about it. What a
// client sends before it has seen ReadyForQuery waits, bounded, until the backend is set up.
func (s *session) relayToBackend(f *wire.Frame) {
	if f.First {
		switch f.Type {
		case 'X':
			s.state = stClosed
			s.io.Close()
			return
		case 'Q', 'S', 'F':
			s.pending++
		}
		s.active = true
	}
	if s.state == stLinked {
		s.be.Write(f.Raw)
		return
	}
	if len(s.early)+len(f.Raw) > maxEarly {
		s.fatal("08P01", "client sent too much before the server was ready")
		return
	}
	s.early = append(s.early, f.Raw...)
}

// backendData is what the backend sent, on the backend reader's goroutine, serialised by Exec.
func (s *session) backendData(c *pool.Conn, b []byte) {
	if c != s.be {
		return
	}
	err := c.Frames.Feed(b, func(f *wire.Frame) error {
		if f.Whole {
			s.backendMessage(c, f)
		} else if s.state == stLinked {
			s.io.Write(f.Raw)
		}
		if s.state == stClosed {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		s.srv.log.Warn("backend protocol error", "backend", c.Addr(), "err", err)
		s.fatal("08006", fmt.Sprintf("server connection failed: %v", err))
	}
}

func (s *session) backendMessage(c *pool.Conn, f *wire.Frame) {
	switch f.Type {
	case 'S':
		if name, value, err := wire.ParseParameterStatus(f.Body); err == nil {
			c.Params[string(name)] = string(value)
		}
	case 'Z':
		if status, err := wire.ReadyStatus(f.Body); err == nil {
			s.txStatus = status
		}
		if s.pending > 0 {
			s.pending--
		}
		s.active = s.pending > 0
		if s.state == stSetup {
			s.ready()
			return
		}
	case 'E':
		if s.state == stSetup {
			// A startup parameter the server refused: the client learns as from PostgreSQL.
			_, code, msg, _ := wire.ErrorFields(f.Body)
			s.fatal(string(code), string(msg))
			return
		}
	}
	if s.state == stLinked {
		s.io.Write(f.Raw)
	}
}

func (s *session) backendClosed(c *pool.Conn, err error) {
	if c != s.be || s.state == stClosed {
		return
	}
	s.be = nil
	s.flushBe.Store(nil)
	s.fatal("08006", fmt.Sprintf("server connection closed (%s): %v", c.Addr(), err))
}

// Flush implements loop.Handler: it sends what the session queued for its backend.
func (s *session) Flush() {
	if be := s.flushBe.Load(); be != nil {
		be.Flush()
	}
}

// OnClose implements loop.Handler: the client is gone, so give back or discard what it held.
func (s *session) OnClose(error) {
	s.state = stClosed
	if s.stopLogin != nil {
		s.stopLogin()
	}
	if s.withdraw != nil && s.withdraw() {
		s.withdraw = nil
	}
	if s.keyed {
		s.srv.unregister(s.key)
	}
	if s.counted {
		s.srv.clients.Add(-1)
	}
	s.in.Reset()
	if be := s.be; be != nil {
		s.be = nil
		s.flushBe.Store(nil)
		s.releaseBackend(be)
	}
}

// releaseBackend gives the backend back when it is known to be clean; otherwise it cancels what
// still runs there and closes it, so no query outlives its client.
func (s *session) releaseBackend(be *pool.Conn) {
	if !s.active && s.txStatus == 'I' && be.Frames.AtBoundary() {
		s.pool.Release(be)
		return
	}
	if s.active {
		go func() {
			ctx, done := context.WithTimeout(context.Background(), s.srv.cfg.CancelTimeout)
			defer done()
			be.Cancel(ctx)
			s.pool.Discard(be)
		}()
		return
	}
	s.pool.Discard(be)
}

// fatal sends a FATAL error and closes the client.
func (s *session) fatal(code, msg string) {
	if s.state == stClosed {
		return
	}
	s.state = stClosed
	s.io.Write(wire.AppendError(nil, "FATAL", code, msg))
	s.io.Close()
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
	b.s.io.Exec(func() { b.s.backendData(c, data) })
}

// Drained resumes a client paused because its backend was slow to read.
func (b backendSink) Drained(c *pool.Conn) {
	b.s.io.Exec(func() {
		if b.s.paused && c == b.s.be {
			b.s.paused = false
			b.s.io.ResumeReads()
		}
	})
}

func (b backendSink) BackendClosed(c *pool.Conn, err error) {
	b.s.io.Exec(func() { b.s.backendClosed(c, err) })
}
