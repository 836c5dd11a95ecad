package gateway

import (
	"bytes"
	"fmt"
	"reflect"
	"runtime"
	"strings"

	"github.com/asyncgate/asyncgate/batcher"
	"github.com/asyncgate/asyncgate/gateway/sqlclass"
	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

// Batching (--batch): autocommit units that cannot change session or transaction state are
// pipelined with other clients' units onto shared backend connections by the batcher. A session
// collects each unit whole while it has no backend, then either submits it to the batcher of its
// pool and settings or asks for a backend of its own as without batching.

// batchKey names a batcher: the clients of one pool whose tracked settings are the same shared
// map (see settingsTable), so that a connection set up once serves all of them.
type batchKey struct {
	pool     *pool.Pool
	settings uintptr
	loop     int // the clients' event loop: one batcher per loop keeps responses on their loop
}

// batchOn reports whether --batch (or batch= in the DSN) covers the client's database and user.
func (s *Server) batchOn(db *database, user string) bool {
	if db.batch != nil {
		return *db.batch
	}
	for _, e := range s.cfg.Batch {
		d, u, hasUser := strings.Cut(e, "/")
		if (d == "*" || d == db.name) && (!hasUser || u == "*" || u == user) {
			return true
		}
	}
	return false
}

// batcherFor returns the batcher of pool p for the clients of event loop loop whose tracked
// settings are want. A batcher per loop: its connections are served by that loop too, so a
// response goes to its client without a hand-off between loops, during which the connection
// would stop reading for everyone pipelined on it.
func (s *Server) batcherFor(p *pool.Pool, want map[string]string, loop int) *batcher.Batcher {
	key := batchKey{pool: p, settings: uintptr(reflect.ValueOf(want).UnsafePointer()), loop: loop}
	s.batchMu.Lock()
	defer s.batchMu.Unlock()
	if b := s.batchers[key]; b != nil {
		return b
	}
	if s.batchers == nil {
		s.batchers = make(map[batchKey]*batcher.Batcher)
	}
	// The loops' batchers of one pool and settings share it, at most their share each.
	gkey := key
	gkey.loop = -2
	g := s.batchGroups[gkey]
	if g == nil {
		g = &batcher.Group{}
		if s.batchGroups == nil {
			s.batchGroups = make(map[batchKey]*batcher.Group)
		}
		s.batchGroups[gkey] = g
	}
	share := 0
	if loop >= 0 {
		loops := s.cfg.Loops
		if loops <= 0 {
			loops = runtime.GOMAXPROCS(0)
		}
		share = (p.Size() + loops - 1) / loops
	}
	b := batcher.New(batcher.Config{
		Pool:          p,
		Loop:          loop,
		MaxConns:      share,
		Group:         g,
		MaxDepth:      s.cfg.BatchMaxDepth,
		MaxDelay:      s.cfg.BatchMaxDelay,
		Setup:         func(c *pool.Conn) string { return settingsFor(c, want) },
		CancelTimeout: s.cfg.CancelTimeout,
		Metrics:       s.batchMetrics,
		Log:           s.log,
	})
	s.batchers[key] = b
	return b
}

// closeBatchers fails what waits in the batchers, at shutdown.
func (s *Server) closeBatchers() {
	s.batchMu.Lock()
	bs := s.batchers
	s.batchers = nil
	s.batchMu.Unlock()
	for _, b := range bs {
		b.Close()
	}
}

// batchable reports a statement text that may share a backend with other clients' units.
func (s *session) batchable(text []byte) bool {
	text = bytes.TrimRight(text, "\x00")
	if plainDML(text) {
		return true
	}
	return batchableClass(s.srv.classifier.Classify(string(text)))
}

// plainDML reports, without the parser, a text that is one SELECT, WITH, VALUES, TABLE, INSERT,
// UPDATE or DELETE statement mentioning none of the words a session change needs (see mayPin).
// Such a statement cannot open or end a transaction, and a function it calls that hides a
// session change is caught by the batcher's guard. Simple queries carry their literals, so
// nearly every text is new to the parser's cache: this keeps the parser off their path. Anything
// it is unsure of (a ';' before the end, a comment inside) goes to the parser.
func plainDML(sql []byte) bool {
	i := 0
	for i < len(sql) && (sql[i] == ' ' || sql[i] == '\t' || sql[i] == '\n' || sql[i] == '\r') {
		i++
	}
	start := i
	for i < len(sql) && ('a' <= sql[i]|0x20 && sql[i]|0x20 <= 'z') {
		i++
	}
	switch strings.ToLower(string(sql[start:i])) {
	case "select", "with", "values", "table", "insert", "update", "delete":
	default:
		return false
	}
	end := len(sql)
	for end > i && (sql[end-1] == ' ' || sql[end-1] == '\t' || sql[end-1] == '\n' || sql[end-1] == '\r' || sql[end-1] == ';') {
		end--
	}
	body := sql[i:end]
	if bytes.IndexByte(body, ';') >= 0 || bytes.Contains(body, []byte("--")) || bytes.Contains(body, []byte("/*")) {
		return false
	}
	return !mayPin(sql)
}

func batchableClass(c *sqlclass.Class) bool {
	return c != nil && c.Batchable && !c.TxControl && !c.ParseError && !c.TooComplex && len(c.Effects) == 0
}

type unitVerdict uint8

const (
	unitIncomplete unitVerdict = iota // wait for more of it
	unitAlone                         // runs on a backend of its own
	unitBatched                       // submitted
)

// startUnit finds a backend for the queued unit: the batcher's pipeline when it is eligible,
// else one of its own.
func (s *session) startUnit() {
	if s.batchOK {
		switch s.batchUnit() {
		case unitIncomplete, unitBatched:
			return
		}
		s.srv.batchMetrics.Unbatched()
	}
	if s.unitReady() {
		s.acquire()
	}
}

// batchUnit submits the first queued unit to the batcher if it is whole and eligible.
func (s *session) batchUnit() unitVerdict {
	if s.state != stLinked || s.txStatus != 'I' || s.pinned() || s.routing() || s.hubWait || s.cancelling ||
		s.barrier || !s.desiredShared || s.srv.classifier == nil {
		return unitAlone
	}
	var msgs []byte
	var needs []batcher.Stmt
	unnamed := false // the unit parses the unnamed statement before using it
	need := func(st *stmt) {
		for _, n := range needs {
			if n.Name == st.backendName {
				return
			}
		}
		needs = append(needs, batcher.Stmt{Name: st.backendName, Parse: st.parse})
	}
	frames, complete := 0, false
	for _, q := range s.queued {
		if !q.whole {
			return unitAlone
		}
		body := q.raw[len(q.raw)-q.length:]
		frames++
		switch q.typ {
		case 'Q':
			if frames > 1 || !s.batchable(body) {
				return unitAlone
			}
			msgs, complete = q.raw, true
		case 'P':
			name, rest, ok := cut(body)
			query, _, _ := cut(rest)
			if !ok || len(name) > 0 || !s.batchable(query) {
				return unitAlone // a named statement is prepared on a backend of its own, once
			}
			unnamed = true
			msgs = append(msgs, q.raw...)
		case 'B':
			portal, rest, ok := cut(body)
			name, params, ok2 := cut(rest)
			if !ok || !ok2 {
				return unitAlone
			}
			if len(name) == 0 {
				if !unnamed {
					return unitAlone
				}
				msgs = append(msgs, q.raw...)
				break
			}
			st := s.stmts[string(name)]
			if st == nil || !batchableClass(st.batch) {
				return unitAlone
			}
			need(st)
			msgs = appendMessage(msgs, 'B', portal, []byte(st.backendName), params)
		case 'D':
			if len(body) < 2 {
				return unitAlone
			}
			if body[0] == 'S' {
				name, _, ok := cut(body[1:])
				if !ok {
					return unitAlone
				}
				if len(name) > 0 {
					st := s.stmts[string(name)]
					if st == nil || !batchableClass(st.batch) {
						return unitAlone
					}
					need(st)
					msgs = appendMessage(msgs, 'D', append([]byte{'S'}, st.backendName...), nil)
					break
				}
				if !unnamed {
					return unitAlone
				}
			}
			msgs = append(msgs, q.raw...)
		case 'E':
			msgs = append(msgs, q.raw...)
		case 'S':
			msgs, complete = append(msgs, q.raw...), true
		default: // Flush, Close, FunctionCall, COPY: alone
			return unitAlone
		}
		if complete {
			break
		}
	}
	if !complete {
		if s.queuedBytes > maxQueued/2 {
			return unitAlone
		}
		return unitIncomplete
	}
	for range frames {
		s.queuedBytes -= len(s.queued[0].raw)
		s.queued[0] = queuedFrame{}
		s.queued = s.queued[1:]
	}
	if len(s.queued) == 0 {
		s.queued = nil
	}
	b := s.srv.batcherFor(s.pool, s.desired, s.io.Loop())
	u := &batcher.Unit{Msgs: msgs, Needs: needs}
	u.Client = batchClient{s, u}
	s.bunit, s.bat = u, b
	s.flushBat.Store(b)
	s.startWork()
	b.Submit(u)
	s.unthrottle()
	return unitBatched
}

// batchClient passes a batched unit's outcome to its session's loop. A callback for a unit
// that is no longer the session's (answered as cancelled before it was written) is dropped.
type batchClient struct {
	s *session
	u *batcher.Unit
}

func (c batchClient) Response(b []byte, last bool) {
	c.s.io.Exec(func() { c.s.batchResponse(c.u, b, last) })
}

func (c batchClient) Failed(code, msg string, cut bool) {
	c.s.io.Exec(func() { c.s.batchFailed(c.u, code, msg, cut) })
}

func (s *session) batchResponse(u *batcher.Unit, b []byte, last bool) {
	if s.state == stClosed || s.bunit != u {
		return
	}
	s.io.Write(b)
	s.sentBytes += int64(len(b))
	if last {
		s.txStatus = 'I'
		s.batchDone()
	}
}

func (s *session) batchFailed(u *batcher.Unit, code, msg string, cut bool) {
	if s.state == stClosed || s.bunit != u {
		return
	}
	if cut {
		s.bunit = nil
		s.fatal(code, msg)
		return
	}
	s.io.Write(wire.AppendError(nil, "ERROR", code, msg))
	s.io.Write(wire.AppendReadyForQuery(nil, 'I'))
	s.txStatus = 'I'
	s.batchDone()
}

// batchDone follows the end of a batched unit: the next queued unit, or what afterUnit does.
func (s *session) batchDone() {
	s.bunit = nil
	if st := s.st; st != nil {
		st.queries.Add(1)
		if !s.xactStart.IsZero() {
			st.xacts.Add(1)
			st.xactTime.Add(s.now().Sub(s.xactStart).Microseconds())
			s.xactStart = 0
		}
	}
	s.disarm()
	if len(s.queued) > 0 {
		s.startUnit()
	} else {
		s.afterUnit()
	}
	s.unthrottle()
}

// cancelBatched handles a CancelRequest (or --query-timeout) for the unit in the batcher.
func (s *session) cancelBatched() {
	if !s.bat.Cancel(s.bunit) {
		return // on its way to the server, which answers
	}
	msg := "canceling statement due to user request"
	if s.timedOut {
		msg = fmt.Sprintf("canceling statement due to query timeout (--query-timeout %s)", s.srv.cfg.QueryTimeout)
	}
	s.io.Write(wire.AppendError(nil, "ERROR", "57014", msg))
	s.io.Write(wire.AppendReadyForQuery(nil, 'I'))
	s.batchDone()
}

// batchConfigured reports whether any client may have batching on, so the classifier is needed.
func (s *Server) batchConfigured() bool {
	if len(s.cfg.Batch) > 0 {
		return true
	}
	for _, dsn := range s.cfg.Databases {
		if strings.Contains(dsn, "batch=") {
			return true
		}
	}
	return false
}
