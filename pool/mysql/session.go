package mysql

import (
	"context"
	"database/sql/driver"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"sync"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/asyncgate/asyncgate/wire"
)

// Report measures one unit, for the gateway's statistics.
type Report struct {
	Wait     time.Duration // waiting for a connection
	Lent     int           // connections lent to the unit (0 when the client held one)
	Backend  time.Duration // statements running on the server
	Held     time.Duration // connections held by transactions that ended in the unit
	Queries  int           // statements run
	Xacts    int           // transactions ended: an autocommit statement, COMMIT, ROLLBACK
	Failures []Failure     // the ErrorResponses sent
}

// Failure is one ErrorResponse of a unit: Gateway when the gateway raised it (a limit, a
// cancel, a lost connection), else MySQL did.
type Failure struct {
	Code, Message string
	Gateway       bool
}

// Msg is one whole client message: its type byte and body.
type Msg struct {
	Type byte
	Body []byte
}

// Session is one client's side of a MySQL pool: its prepared statements and portals, the
// connection it holds while in a transaction, and the statement running, for Cancel. Run and
// Close are called one at a time, never concurrently; Cancel and Abort from any goroutine.
type Session struct {
	p    *Pool
	ctx  context.Context // ends when the client leaves: stops a wait for a connection
	stop context.CancelFunc

	conn    *Conn // held for the transaction (between units only while tx != 'I')
	tx      byte  // 'I' or 'T', as ReadyForQuery reports it
	skip    bool  // an extended-protocol error: messages are ignored up to Sync
	stmts   map[string]*prepared
	portals map[string]*portal
	types   *pgtype.Map // for the binary result format; not safe to share between sessions
	rep     *Report     // of the unit running
	since   time.Time   // when the connection held was lent

	mu      sync.Mutex
	active  bool   // a Run is in progress
	running *Conn  // the connection running a statement of Run's
	killed  bool   // KILL QUERY was sent for the statement running
	reason  string // why the unit was cancelled ("" while it was not)
}

type prepared struct {
	sql     string // with MySQL's ? placeholders
	order   []int  // the parameter each ? takes
	oids    []uint32
	kind    kind
	empty   bool
	numArgs int
}

type portal struct {
	st      *prepared
	args    []driver.NamedValue
	formats []int16 // result column formats as Bind gave them
	done    bool    // ran already, when Describe was followed by its Execute
	result  []byte  // ran at Describe: what its Execute sends
}

// NewSession starts a client's session on p.
func (p *Pool) NewSession() *Session {
	s := &Session{p: p, tx: 'I', stmts: map[string]*prepared{}, portals: map[string]*portal{}}
	s.ctx, s.stop = context.WithCancel(context.Background())
	return s
}

// TxStatus is the ReadyForQuery status after the last unit.
func (s *Session) TxStatus() byte { return s.tx }

// Cancel stops the statement the current unit runs (KILL QUERY on a side connection), or the
// next one the unit would start; reason becomes the error's message. A unit not started yet is
// not affected. The connection cannot pass to another client while the KILL is in flight.
func (s *Session) Cancel(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		return
	}
	if s.reason == "" {
		s.reason = reason
	}
	if c := s.running; c != nil && !s.killed {
		s.killed = true
		if err := s.p.kill(c.id); err != nil {
			s.p.log.Warn("cancel failed", "backend", s.p.Addr(), "err", err)
		}
	}
}

// Abort is Cancel for a client that left: it also stops a wait for a connection.
func (s *Session) Abort() {
	s.stop()
	s.Cancel("client disconnected")
}

// Close gives back the connection held, rolling back an open transaction first. Call it after the
// last Run has returned.
func (s *Session) Close() {
	s.stop()
	if c := s.conn; c != nil {
		s.conn = nil
		if s.tx != 'I' {
			if _, err := c.dc.(driver.ExecerContext).ExecContext(context.Background(), "ROLLBACK", nil); err != nil {
				c.broken = isBroken(err)
				if !c.broken {
					c.broken = true // a transaction that would not roll back must not reach another client
				}
			}
		}
		s.p.Return(c)
	}
	s.tx = 'I'
}

// Run runs one request unit: the client's messages up to and including a Query, Sync or Flush.
// It blocks; emit receives the Postgres response in order, in chunks, and reports false once the
// client is gone.
func (s *Session) Run(msgs []Msg, emit func([]byte) bool) Report {
	var rep Report
	s.rep = &rep
	defer func() { s.rep = nil }()
	w := &writer{emit: emit}
	s.mu.Lock()
	s.active, s.reason, s.killed = true, "", false
	s.mu.Unlock()
	for i, m := range msgs {
		if w.gone {
			break
		}
		switch m.Type {
		case 'Q':
			s.simpleQuery(w, m.Body)
		case 'S':
			s.skip = false
			s.endUnit(true)
			w.buf = wire.AppendReadyForQuery(w.buf, s.tx)
		case 'H': // Flush: the output goes out when the unit ends, right after this
		case 'P', 'B', 'D', 'E', 'C':
			if s.skip {
				continue
			}
			var next *Msg
			if i+1 < len(msgs) {
				next = &msgs[i+1]
			}
			if err := s.extended(w, m, next); err != nil {
				s.fail(w, err)
				s.skip = true
			}
		default:
			s.fail(w, &wire.Error{Code: "0A000", Message: fmt.Sprintf("message type %q is not supported on a MySQL database", m.Type)})
			s.skip = true
		}
		w.maybeFlush()
	}
	s.mu.Lock()
	s.active, s.running = false, nil
	s.mu.Unlock()
	s.endUnit(false)
	w.flush()
	return rep
}

// endUnit gives the connection back once no transaction holds it; at a Sync or Query, the
// portals end with their transaction.
func (s *Session) endUnit(portals bool) {
	if s.tx == 'I' {
		if s.conn != nil {
			if s.rep != nil {
				s.rep.Held += time.Since(s.since)
			}
			s.p.Return(s.conn)
			s.conn = nil
		}
		if portals {
			clear(s.portals)
		}
	}
}

func (s *Session) simpleQuery(w *writer, body []byte) {
	q, err := wire.QueryText(body)
	if err != nil {
		s.fail(w, err)
	} else if stmts := splitStatements(string(q)); len(stmts) == 0 {
		w.buf = append(w.buf, 'I', 0, 0, 0, 4) // EmptyQueryResponse
	} else {
		for _, st := range stmts {
			if err := s.run(w, &w.buf, st, classify(st), nil, nil, true); err != nil {
				s.fail(w, err)
				break
			}
			w.maybeFlush()
		}
	}
	s.endUnit(true)
	w.buf = wire.AppendReadyForQuery(w.buf, s.tx)
}

func (s *Session) extended(w *writer, m Msg, next *Msg) error {
	switch m.Type {
	case 'P':
		var msg pgproto3.Parse
		if err := msg.Decode(m.Body); err != nil {
			return &wire.Error{Code: "08P01", Message: "invalid Parse message: " + err.Error()}
		}
		if _, ok := s.stmts[msg.Name]; ok && msg.Name != "" {
			return &wire.Error{Code: "42P05", Message: fmt.Sprintf("prepared statement %q already exists", msg.Name)}
		}
		parts := splitStatements(msg.Query)
		if len(parts) > 1 {
			return &wire.Error{Code: "42601", Message: "cannot insert multiple commands into a prepared statement"}
		}
		st := &prepared{empty: len(parts) == 0}
		if !st.empty {
			st.sql, st.order, st.numArgs = rewritePlaceholders(parts[0])
			st.kind = classify(parts[0])
		}
		st.numArgs = max(st.numArgs, len(msg.ParameterOIDs))
		st.oids = make([]uint32, st.numArgs)
		copy(st.oids, msg.ParameterOIDs)
		s.stmts[msg.Name] = st
		w.buf = append(w.buf, '1', 0, 0, 0, 4)
	case 'B':
		var msg pgproto3.Bind
		if err := msg.Decode(m.Body); err != nil {
			return &wire.Error{Code: "08P01", Message: "invalid Bind message: " + err.Error()}
		}
		st, ok := s.stmts[msg.PreparedStatement]
		if !ok {
			return &wire.Error{Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", msg.PreparedStatement)}
		}
		if msg.DestinationPortal != "" {
			if _, ok := s.portals[msg.DestinationPortal]; ok {
				return &wire.Error{Code: "42P03", Message: fmt.Sprintf("portal %q already exists", msg.DestinationPortal)}
			}
		}
		args, err := bindArgs(st, msg.ParameterFormatCodes, msg.Parameters)
		if err != nil {
			return err
		}
		s.portals[msg.DestinationPortal] = &portal{st: st, args: args, formats: msg.ResultFormatCodes}
		w.buf = append(w.buf, '2', 0, 0, 0, 4)
	case 'D':
		var msg pgproto3.Describe
		if err := msg.Decode(m.Body); err != nil {
			return &wire.Error{Code: "08P01", Message: "invalid Describe message: " + err.Error()}
		}
		if msg.ObjectType == 'S' {
			st, ok := s.stmts[msg.Name]
			if !ok {
				return &wire.Error{Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", msg.Name)}
			}
			w.buf = mustAppend(w.buf, &pgproto3.ParameterDescription{ParameterOIDs: st.oids})
			// MySQL tells a statement's columns only by running it: the portal's Describe,
			// which comes after Bind, answers with them.
			w.buf = append(w.buf, 'n', 0, 0, 0, 4)
			return nil
		}
		pt, ok := s.portals[msg.Name]
		if !ok {
			return &wire.Error{Code: "34000", Message: fmt.Sprintf("portal %q does not exist", msg.Name)}
		}
		if pt.st.empty || !pt.st.kind.rows || pt.done || pt.result != nil {
			if !pt.st.empty && pt.st.kind.rows {
				return &wire.Error{Code: "0A000", Message: "describing a portal twice is not supported on a MySQL database"}
			}
			w.buf = append(w.buf, 'n', 0, 0, 0, 4)
			return nil
		}
		if next != nil && next.Type == 'E' {
			var e pgproto3.Execute
			if e.Decode(next.Body) == nil && e.Portal == msg.Name {
				// Run it now, straight to the client: its Execute, next, has nothing left to do.
				pt.done = true
				return s.run(w, &w.buf, pt.st.sql, pt.st.kind, pt.args, pt.formats, true)
			}
		}
		var rest []byte
		if err := s.runSplit(w, &rest, pt); err != nil {
			return err
		}
		pt.result = rest
	case 'E':
		var msg pgproto3.Execute
		if err := msg.Decode(m.Body); err != nil {
			return &wire.Error{Code: "08P01", Message: "invalid Execute message: " + err.Error()}
		}
		pt, ok := s.portals[msg.Portal]
		if !ok {
			return &wire.Error{Code: "34000", Message: fmt.Sprintf("portal %q does not exist", msg.Portal)}
		}
		switch {
		case pt.st.empty:
			w.buf = append(w.buf, 'I', 0, 0, 0, 4)
		case pt.done:
			pt.done = false // a second Execute runs it again
		case pt.result != nil:
			w.buf = append(w.buf, pt.result...)
			pt.result = nil
		default:
			return s.run(w, &w.buf, pt.st.sql, pt.st.kind, pt.args, pt.formats, false)
		}
	case 'C':
		var msg pgproto3.Close
		if err := msg.Decode(m.Body); err != nil {
			return &wire.Error{Code: "08P01", Message: "invalid Close message: " + err.Error()}
		}
		if msg.ObjectType == 'S' {
			delete(s.stmts, msg.Name)
		} else {
			delete(s.portals, msg.Name)
		}
		w.buf = append(w.buf, '3', 0, 0, 0, 4)
	}
	return nil
}

// runSplit runs a portal for its Describe: the RowDescription goes to the client, the rest
// waits in *rest for the portal's Execute.
func (s *Session) runSplit(w *writer, rest *[]byte, pt *portal) error {
	var out []byte
	if err := s.run(w, &out, pt.st.sql, pt.st.kind, pt.args, pt.formats, true); err != nil {
		return err
	}
	if len(out) > 0 && out[0] == 'T' {
		n := int(binary.BigEndian.Uint32(out[1:])) + 1
		w.buf = append(w.buf, out[:n]...)
		out = out[n:]
	} else {
		w.buf = append(w.buf, 'n', 0, 0, 0, 4)
	}
	*rest = append([]byte{}, out...)
	return nil
}

// fail sends err as an ErrorResponse.
func (s *Session) fail(w *writer, err error) {
	code, msg, detail := errorFields(err)
	if s.rep != nil {
		var me *gomysql.MySQLError
		s.rep.Failures = append(s.rep.Failures, Failure{Code: code, Message: msg, Gateway: !errors.As(err, &me)})
	}
	w.buf = mustAppend(w.buf, &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg, Detail: detail})
}

func errorFields(err error) (code, msg, detail string) {
	var we *wire.Error
	var me *gomysql.MySQLError
	switch {
	case errors.As(err, &we):
		return we.Code, we.Message, ""
	case errors.As(err, &me):
		code = string(me.SQLState[:])
		if me.SQLState == [5]byte{} {
			code = "HY000"
		}
		return code, me.Message, fmt.Sprintf("MySQL error %d", me.Number)
	}
	return "08006", err.Error(), ""
}

func mysqlError(me *gomysql.MySQLError) error {
	code, msg, _ := errorFields(me)
	return &wire.Error{Code: code, Message: msg}
}

// acquire returns the connection the session holds, or lends one.
func (s *Session) acquire() (*Conn, error) {
	if s.conn != nil {
		return s.conn, nil
	}
	start := time.Now()
	c, err := s.p.Acquire(s.ctx)
	s.since = time.Now()
	if s.rep != nil {
		s.rep.Wait += s.since.Sub(start)
	}
	if err != nil {
		return nil, err
	}
	if s.rep != nil {
		s.rep.Lent++
	}
	s.conn = c
	return c, nil
}

// begin marks c as running a statement of the unit's, unless the unit was cancelled.
func (s *Session) begin(c *Conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reason != "" {
		return &wire.Error{Code: "57014", Message: s.reason}
	}
	s.running, s.killed = c, false
	return nil
}

// end clears what begin set, and reports why the statement was killed ("" if it was not).
func (s *Session) end() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running = nil
	if s.killed {
		s.killed = false
		return s.reason
	}
	return ""
}

// run runs one statement, appending its response to *out (RowDescription when describe, then
// DataRows and CommandComplete).
func (s *Session) run(w *writer, out *[]byte, sql string, k kind, args []driver.NamedValue, formats []int16, describe bool) error {
	held := s.conn != nil
	c, err := s.acquire()
	if err != nil {
		return err
	}
	if err := s.begin(c); err != nil {
		return err
	}
	start := time.Now()
	mark := len(*out)
	err = s.exec(w, out, c, sql, k, args, formats, describe)
	if errors.Is(err, driver.ErrBadConn) && !held && len(*out) == mark {
		// go-sql-driver found the connection dead before sending anything (the server closed
		// it while idle, after wait_timeout): the statement goes to another connection, once.
		s.end()
		c.broken = true
		s.conn = nil
		s.p.Return(c)
		if c, err = s.acquire(); err != nil {
			return err
		}
		if err := s.begin(c); err != nil {
			return err
		}
		err = s.exec(w, out, c, sql, k, args, formats, describe)
	}
	if s.rep != nil {
		s.rep.Backend += time.Since(start)
		s.rep.Queries++
		if k.txSet == 'I' || s.tx == 'I' && k.txSet == 0 {
			s.rep.Xacts++
		}
	}
	if reason := s.end(); reason != "" {
		return &wire.Error{Code: "57014", Message: reason}
	}
	var me *gomysql.MySQLError
	if errors.As(err, &me) && me.Number == 1317 { // ER_QUERY_INTERRUPTED from someone else's KILL
		return &wire.Error{Code: "57014", Message: "canceling statement due to user request: " + me.Message}
	}
	if err != nil && isBroken(err) && !errors.As(err, new(*wire.Error)) {
		c.broken = true
		s.conn = nil
		wasTx := s.tx != 'I'
		s.tx = 'I'
		s.p.Return(c)
		msg := fmt.Sprintf("lost the connection to MySQL server %s: %v", s.p.Addr(), err)
		if wasTx {
			msg += "; the transaction was rolled back"
		}
		return &wire.Error{Code: "08006", Message: msg}
	}
	if err == nil && k.txSet != 0 {
		s.tx = k.txSet
	}
	return err
}

func (s *Session) exec(w *writer, out *[]byte, c *Conn, sql string, k kind, args []driver.NamedValue, formats []int16, describe bool) error {
	bg := context.Background() // go-sql-driver closes the connection when a context ends: cancel by KILL QUERY
	if !k.rows {
		var res driver.Result
		var err error
		if len(args) == 0 {
			res, err = c.dc.(driver.ExecerContext).ExecContext(bg, sql, nil)
		} else {
			var st driver.Stmt
			if st, err = s.prepare(c, sql); err == nil {
				res, err = st.(driver.StmtExecContext).ExecContext(bg, args)
			}
		}
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		*out = appendComplete(*out, k, n)
		return nil
	}
	var rows driver.Rows
	var err error
	if len(args) == 0 {
		rows, err = c.dc.(driver.QueryerContext).QueryContext(bg, sql, nil)
	} else {
		var st driver.Stmt
		if st, err = s.prepare(c, sql); err == nil {
			rows, err = st.(driver.StmtQueryContext).QueryContext(bg, args)
		}
	}
	if err != nil {
		return err
	}
	defer rows.Close()
	names := rows.Columns()
	if len(names) == 0 {
		*out = appendComplete(*out, kind{tag: "SELECT 0"}, 0)
		return nil
	}
	cols := make([]column, len(names))
	typed, _ := rows.(driver.RowsColumnTypeDatabaseTypeName)
	for i, n := range names {
		t := "VARCHAR"
		if typed != nil {
			t = typed.ColumnTypeDatabaseTypeName(i)
		}
		cols[i] = column{name: n}
		cols[i].oid, cols[i].size = pgType(t)
		switch {
		case len(formats) == 1:
			cols[i].binary = formats[0] == 1
		case i < len(formats):
			cols[i].binary = formats[i] == 1
		}
	}
	if describe {
		*out = appendRowDescription(*out, cols)
	}
	vals := make([]driver.Value, len(cols))
	var n int64
	var scratch []byte
	for {
		if err := rows.Next(vals); err != nil {
			if err == io.EOF {
				break
			}
			return err
		}
		n++
		b := append(*out, 'D', 0, 0, 0, 0)
		start := len(b) - 4
		b = appendInt16(b, int16(len(cols)))
		for i, v := range vals {
			if v == nil {
				b = appendInt32(b, -1)
				continue
			}
			b = append(b, 0, 0, 0, 0)
			at := len(b)
			if cols[i].binary {
				scratch = appendText(scratch[:0], v, cols[i].oid)
				if b, err = s.appendBinary(b, cols[i].oid, scratch); err != nil {
					return err
				}
			} else {
				b = appendText(b, v, cols[i].oid)
			}
			binary.BigEndian.PutUint32(b[at-4:], uint32(len(b)-at))
		}
		binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start))
		*out = b
		if out == &w.buf {
			w.maybeFlush()
		}
	}
	*out = appendComplete(*out, k, n)
	return nil
}

// appendBinary converts a value from its text form to the binary format the client asked for.
func (s *Session) appendBinary(b []byte, oid uint32, text []byte) ([]byte, error) {
	switch oid {
	case pgtype.TextOID, pgtype.JSONOID:
		return append(b, text...), nil
	case pgtype.ByteaOID:
		raw, err := hex.AppendDecode(b, text[2:])
		if err != nil {
			return nil, &wire.Error{Code: "22P03", Message: err.Error()}
		}
		return raw, nil
	}
	if s.types == nil {
		s.types = pgtype.NewMap()
	}
	t, ok := s.types.TypeForOID(oid)
	if !ok {
		return nil, &wire.Error{Code: "0A000", Message: fmt.Sprintf("binary format for type OID %d is not supported", oid)}
	}
	v, err := t.Codec.DecodeValue(s.types, oid, pgtype.TextFormatCode, text)
	if err == nil {
		b, err = s.types.Encode(oid, pgtype.BinaryFormatCode, v, b)
	}
	if err != nil {
		return nil, &wire.Error{Code: "22P03", Message: fmt.Sprintf("cannot send %q in binary format for type OID %d: %v", text, oid, err)}
	}
	return b, nil
}

// prepare returns c's server-side prepared statement for sql, preparing it on first use. At
// most MaxPrepared are kept per connection; the least recently used one goes.
func (s *Session) prepare(c *Conn, sql string) (driver.Stmt, error) {
	c.useSeq++
	if cs, ok := c.stmts[sql]; ok {
		cs.used = c.useSeq
		return cs.st, nil
	}
	if max := s.p.cfg.MaxPrepared; max > 0 && len(c.stmts) >= max {
		var oldest string
		var used uint64 = math.MaxUint64
		for k, cs := range c.stmts {
			if cs.used < used {
				oldest, used = k, cs.used
			}
		}
		c.stmts[oldest].st.Close()
		delete(c.stmts, oldest)
	}
	st, err := c.dc.(driver.ConnPrepareContext).PrepareContext(context.Background(), sql)
	if err != nil {
		return nil, err
	}
	c.stmts[sql] = &cachedStmt{st: st, used: c.useSeq}
	return st, nil
}

func appendComplete(b []byte, k kind, n int64) []byte {
	b = append(b, 'C', 0, 0, 0, 0)
	start := len(b) - 4
	switch k.verb {
	case "INSERT":
		b = append(b, "INSERT 0 "...)
		b = strconv.AppendInt(b, n, 10)
	case "UPDATE", "DELETE", "SELECT":
		b = append(b, k.verb...)
		b = append(b, ' ')
		b = strconv.AppendInt(b, n, 10)
	default:
		b = append(b, k.tag...)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// bindArgs turns Bind's parameter values into MySQL arguments, in the order of the ?s.
func bindArgs(st *prepared, formats []int16, vals [][]byte) ([]driver.NamedValue, error) {
	if len(vals) != st.numArgs {
		return nil, &wire.Error{Code: "08P01", Message: fmt.Sprintf(
			"bind message supplies %d parameters, but prepared statement requires %d", len(vals), st.numArgs)}
	}
	if len(formats) > 1 && len(formats) != len(vals) {
		return nil, &wire.Error{Code: "08P01", Message: fmt.Sprintf(
			"bind message has %d parameter formats but %d parameters", len(formats), len(vals))}
	}
	conv := make([]any, len(vals))
	for i, v := range vals {
		var f int16
		switch {
		case len(formats) == 1:
			f = formats[0]
		case len(formats) > 1:
			f = formats[i]
		}
		var err error
		if conv[i], err = paramValue(st.oids[i], f, v); err != nil {
			return nil, &wire.Error{Code: "22P02", Message: fmt.Sprintf("parameter $%d: %v", i+1, err)}
		}
	}
	if len(st.order) == 0 {
		return nil, nil
	}
	args := make([]driver.NamedValue, len(st.order))
	for i, j := range st.order {
		args[i] = driver.NamedValue{Ordinal: i + 1, Value: conv[j]}
	}
	return args, nil
}

// paramValue converts one parameter. Parameters are described to the client as of unknown type
// (OID 0), so drivers send them as text; an integer is passed to MySQL as one (LIMIT ? wants
// it), bytea's text form (\x and hex digits) as bytes, anything else as a string that MySQL
// converts as the statement needs.
func paramValue(oid uint32, format int16, v []byte) (any, error) {
	if v == nil {
		return nil, nil
	}
	if format == 1 {
		switch oid {
		case pgtype.Int2OID:
			if len(v) == 2 {
				return int64(int16(binary.BigEndian.Uint16(v))), nil
			}
		case pgtype.Int4OID:
			if len(v) == 4 {
				return int64(int32(binary.BigEndian.Uint32(v))), nil
			}
		case pgtype.Int8OID:
			if len(v) == 8 {
				return int64(binary.BigEndian.Uint64(v)), nil
			}
		case pgtype.Float4OID:
			if len(v) == 4 {
				return float64(math.Float32frombits(binary.BigEndian.Uint32(v))), nil
			}
		case pgtype.Float8OID:
			if len(v) == 8 {
				return math.Float64frombits(binary.BigEndian.Uint64(v)), nil
			}
		case pgtype.BoolOID:
			if len(v) == 1 {
				return int64(v[0]), nil
			}
		case 0, pgtype.ByteaOID, pgtype.TextOID, pgtype.VarcharOID, pgtype.JSONOID:
			return append([]byte{}, v...), nil
		default:
			return nil, fmt.Errorf("binary format for type OID %d is not supported on a MySQL database", oid)
		}
		return nil, fmt.Errorf("%d bytes are not a binary value of type OID %d", len(v), oid)
	}
	text := string(v)
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID:
		return strconv.ParseInt(text, 10, 64)
	case pgtype.Float4OID, pgtype.Float8OID:
		return strconv.ParseFloat(text, 64)
	case pgtype.BoolOID:
		switch text {
		case "t", "true", "on", "1", "yes":
			return int64(1), nil
		}
		return int64(0), nil
	case pgtype.ByteaOID:
		if len(text) >= 2 && text[:2] == `\x` {
			return hex.DecodeString(text[2:])
		}
		return v, nil
	case 0:
		if isInteger(text) {
			if n, err := strconv.ParseInt(text, 10, 64); err == nil {
				return n, nil
			}
		}
		// Drivers send bytes as bytea's text form: \x and hex digits (pgx does for a []byte).
		if len(text) >= 2 && text[:2] == `\x` && len(text)%2 == 0 {
			if b, err := hex.DecodeString(text[2:]); err == nil {
				return b, nil
			}
		}
	}
	return text, nil
}

// isInteger: an optional minus and digits without a leading zero, so that '007' stays a string.
func isInteger(t string) bool {
	if t != "" && t[0] == '-' {
		t = t[1:]
	}
	if t == "" || len(t) > 18 || (t[0] == '0' && len(t) > 1) {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] < '0' || t[i] > '9' {
			return false
		}
	}
	return true
}

func mustAppend(b []byte, m pgproto3.BackendMessage) []byte {
	out, err := m.Encode(b)
	if err != nil {
		panic(err) // only for messages too large for the protocol, which the gateway never builds
	}
	return out
}

// writer collects a unit's response and hands it to the session in chunks.
type writer struct {
	buf  []byte
	emit func([]byte) bool
	gone bool
}

const flushAt = 32 << 10

func (w *writer) maybeFlush() {
	if len(w.buf) >= flushAt {
		w.flush()
	}
}

func (w *writer) flush() {
	if len(w.buf) == 0 || w.gone {
		w.buf = w.buf[:0]
		return
	}
	if !w.emit(w.buf) {
		w.gone = true
	}
	w.buf = nil // emit owns what it was given
}
