package gateway

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"

	"github.com/asyncgate/asyncgate/gateway/sqlclass"
	"github.com/asyncgate/asyncgate/wire"
)

// stmt is one of a client's named prepared statements. On the backends it lives under a name
// derived from its text and parameter types, so clients preparing the same statement share it
// and a client can be served by any backend: the statement is prepared there when first used.
type stmt struct {
	backendName string
	parse       []byte          // the Parse message that prepares it under backendName
	class       *sqlclass.Class // when it may pin: what binding it does to session state
	routeClass  *sqlclass.Class // with read routing: whether binding it may run on a replica
	batch       *sqlclass.Class // with batching: whether binding it may share a backend
}

// query returns the statement's text.
func (st *stmt) query() []byte {
	_, rest, _ := cut(st.parse[5:])
	q, _, _ := cut(rest)
	return q
}

var (
	parseComplete = []byte{'1', 0, 0, 0, 4}
	closeComplete = []byte{'3', 0, 0, 0, 4}
)

// noopStatement is closed in place of a client's statement: closing a statement that does not
// exist is not an error, and the client still gets its CloseComplete in order.
const noopStatement = "asyncgate_noop"

// relayStatement rewrites a Parse, Bind, Describe or Close that names a client statement. It
// reports false for messages it leaves alone (the unnamed statement, portals).
func (s *session) relayStatement(f *wire.Frame) bool {
	switch f.Type {
	case 'P':
		name, rest, ok := cut(f.Body)
		if !ok || len(name) == 0 {
			return false
		}
		st := newStmt(rest)
		if q, _, ok := cut(rest); ok {
			st.class = s.classifySQL(q)
			if s.routing() {
				st.routeClass = s.readClass(q)
			}
			if s.batchOK && s.srv.classifier != nil {
				st.batch = s.srv.classifier.Classify(string(bytes.TrimRight(q, "\x00")))
			}
		}
		if s.stmts == nil {
			s.stmts = make(map[string]*stmt) // only clients that prepare statements pay for it
		}
		s.stmts[string(name)] = st
		if s.be.StmtPrepared(st.backendName) {
			s.answer('P', parseComplete)
			return true
		}
		s.prepare(st, actForward)
		return true
	case 'B':
		portal, rest, ok := cut(f.Body)
		if !ok {
			return false
		}
		name, params, ok := cut(rest)
		st := s.stmts[string(name)]
		if !ok || st == nil {
			return false
		}
		s.ensurePrepared(st)
		s.slots.push(slot{kind: 'B'})
		s.be.Write(appendMessage(nil, 'B', portal, []byte(st.backendName), params))
		return true
	case 'D':
		if len(f.Body) < 2 || f.Body[0] != 'S' {
			return false
		}
		name, _, ok := cut(f.Body[1:])
		st := s.stmts[string(name)]
		if !ok || st == nil {
			return false
		}
		s.ensurePrepared(st)
		s.slots.push(slot{kind: 'D'})
		s.be.Write(appendMessage(nil, 'D', append([]byte{'S'}, st.backendName...), nil))
		return true
	case 'C':
		if len(f.Body) < 2 || f.Body[0] != 'S' {
			return false
		}
		name, _, ok := cut(f.Body[1:])
		if !ok || len(name) == 0 {
			return false
		}
		// The backend copy stays for other clients; it ages out of the backend's cache.
		delete(s.stmts, string(name))
		s.answer('C', closeComplete)
		return true
	}
	return false
}

// ensurePrepared prepares st on the current backend unless it is there already.
func (s *session) ensurePrepared(st *stmt) {
	if !s.be.StmtPrepared(st.backendName) {
		s.prepare(st, actSwallow)
	}
}

// prepare sends st's Parse, closing the backend's least recently used statement if the cache
// is full.
func (s *session) prepare(st *stmt, act action) {
	if evict, ok := s.be.StmtAdd(st.backendName); ok {
		s.slots.push(slot{kind: 'C', act: actSwallow})
		s.be.Write(appendMessage(nil, 'C', append([]byte{'S'}, evict...), nil))
	}
	s.slots.push(slot{kind: 'P', act: act, stmt: st.backendName})
	s.be.Write(st.parse)
}

func newStmt(queryAndTypes []byte) *stmt {
	sum := sha256.Sum256(queryAndTypes)
	name := "ag_" + hex.EncodeToString(sum[:16])
	return &stmt{backendName: name, parse: appendMessage(nil, 'P', []byte(name), queryAndTypes)}
}

// sessionCommand handles the SQL commands that act on the client's prepared statements, which
// live in the gateway in transaction and statement modes. It reports true when it answered the
// query itself.
func (s *session) sessionCommand(body []byte) bool {
	sql := strings.ToLower(strings.TrimSpace(strings.TrimRight(strings.TrimSpace(string(bytes.TrimRight(body, "\x00"))), ";")))
	switch {
	case sql == "discard all" || sql == "deallocate all" || sql == "deallocate prepare all":
		clear(s.stmts)
		return false // the server clears its side too
	case strings.HasPrefix(sql, "deallocate "):
		name := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(sql, "deallocate "), "prepare "))
		name = strings.Trim(name, `"`)
		if _, ok := s.stmts[name]; !ok {
			return false // an SQL-level PREPARE, the server's to deallocate
		}
		delete(s.stmts, name)
		msg := appendMessage(nil, 'C', []byte("DEALLOCATE"), nil)
		s.answer('Q', wire.AppendReadyForQuery(msg, s.txStatus))
		if s.slots.empty() {
			s.afterUnit()
		}
		return true
	}
	return false
}

// cut splits a NUL-terminated string off the front of b.
func cut(b []byte) (str, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// appendMessage appends a message whose body is the given NUL-terminated strings followed by
// the last part as it is.
func appendMessage(dst []byte, typ byte, parts ...[]byte) []byte {
	n := 4
	for i, p := range parts {
		n += len(p)
		if i < len(parts)-1 {
			n++
		}
	}
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	for i, p := range parts {
		dst = append(dst, p...)
		if i < len(parts)-1 {
			dst = append(dst, 0)
		}
	}
	return dst
}
