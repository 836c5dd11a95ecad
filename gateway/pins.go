package gateway

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/asyncgate/asyncgate/gateway/sqlclass"
	"github.com/asyncgate/asyncgate/wire"
)

// pins is the session state a client created on its backend that cannot follow it to another
// one. While any is left, the client keeps its backend between transactions (transaction and
// statement modes), as it would keep its own connection.
type pins struct {
	temps    map[string]bool // temporary relations ("" for ones no DROP names: functions, types)
	advisory map[string]int  // session-level advisory locks held, by function and keys
	cursors  map[string]bool // WITH HOLD cursors
	prepared map[string]bool // SQL-level prepared statements
	settings map[string]bool // parameters set that do not follow the client
	listens  map[string]bool // channels listened on
	loaded   bool            // a LOAD: a library stays loaded for the life of the backend

	since time.Time // when the client was first pinned, for --max-pinned-time
}

func (p *pins) held() bool {
	return p.loaded || len(p.temps) > 0 || len(p.advisory) > 0 || len(p.cursors) > 0 ||
		len(p.prepared) > 0 || len(p.settings) > 0 || len(p.listens) > 0
}

// apply records one effect. tracked tells parameters that follow the client from those that pin.
func (p *pins) apply(e sqlclass.Effect, tracked func(string) bool) {
	switch e.Kind {
	case sqlclass.TempCreate:
		p.temps = add(p.temps, e.Name)
	case sqlclass.TempDrop:
		delete(p.temps, e.Name)
	case sqlclass.DiscardTemp:
		p.temps = nil
	case sqlclass.AdvisoryLock:
		if p.advisory == nil {
			p.advisory = make(map[string]int)
		}
		p.advisory[lockKey(e)]++
	case sqlclass.AdvisoryUnlock:
		p.unlock(e)
	case sqlclass.AdvisoryUnlockAll:
		p.advisory = nil
	case sqlclass.HoldCursor:
		p.cursors = add(p.cursors, e.Name)
	case sqlclass.CursorClose:
		delete(p.cursors, e.Name)
	case sqlclass.CursorCloseAll:
		p.cursors = nil
	case sqlclass.Prepare:
		p.prepared = add(p.prepared, e.Name)
	case sqlclass.Deallocate:
		delete(p.prepared, e.Name)
	case sqlclass.DeallocateAll:
		p.prepared = nil
	case sqlclass.Set:
		if !e.Local && !tracked(e.Name) {
			p.settings = add(p.settings, e.Name)
		}
	case sqlclass.Reset:
		if !e.Local { // SET LOCAL … TO DEFAULT: the session value comes back at commit
			delete(p.settings, e.Name)
		}
	case sqlclass.ResetAll:
		p.settings = nil
	case sqlclass.Load:
		p.loaded = true
	case sqlclass.Listen:
		p.listens = add(p.listens, e.Name)
	case sqlclass.Unlisten:
		delete(p.listens, e.Name)
	case sqlclass.UnlistenAll:
		p.listens = nil
	case sqlclass.DiscardAll:
		// DISCARD ALL is CLOSE ALL, RESET ALL, DEALLOCATE ALL, UNLISTEN *, the advisory
		// unlock, and DISCARD PLANS, SEQUENCES and TEMP; a loaded library stays.
		loaded := p.loaded
		*p = pins{loaded: loaded, since: p.since}
	}
}

// releases reports whether e can end a pin: such effects count only once their unit succeeded.
func releases(e sqlclass.Effect) bool {
	switch e.Kind {
	case sqlclass.TempCreate, sqlclass.AdvisoryLock, sqlclass.HoldCursor, sqlclass.Prepare,
		sqlclass.Set, sqlclass.Load, sqlclass.Listen:
		return false
	}
	return true
}

// survivesRollback reports whether e takes effect even when its transaction rolls back: advisory
// locks and SQL prepared statements belong to the session, not the transaction, and a library
// once loaded stays.
func survivesRollback(e sqlclass.Effect) bool {
	switch e.Kind {
	case sqlclass.AdvisoryLock, sqlclass.AdvisoryUnlock, sqlclass.AdvisoryUnlockAll,
		sqlclass.Prepare, sqlclass.Deallocate, sqlclass.DeallocateAll, sqlclass.Load:
		return true
	}
	return false
}

// lockKey names a lock by mode and constant keys; keys given as parameters are unknown ("?").
func lockKey(e sqlclass.Effect) string {
	return lockMode(e) + e.Value
}

func lockMode(e sqlclass.Effect) string {
	// pg_advisory_lock and pg_try_advisory_lock take the same lock; shared locks are apart.
	if strings.Contains(e.Name, "shared") {
		return "s:"
	}
	return "x:"
}

// unlock releases the lock e names; one whose keys are unknown, on either side, matches any lock
// of its mode. Counting that way may end a pin early only for a client that unlocks a lock it
// does not hold, which PostgreSQL warns about.
func (p *pins) unlock(e sqlclass.Effect) {
	k := lockKey(e)
	if p.advisory[k] == 0 {
		k = ""
		for held := range p.advisory {
			if strings.HasPrefix(held, lockMode(e)) && (e.Value == "" || held == lockMode(e)) {
				k = held
				break
			}
		}
		if k == "" {
			return
		}
	}
	if p.advisory[k]--; p.advisory[k] == 0 {
		delete(p.advisory, k)
	}
}

func add(m map[string]bool, name string) map[string]bool {
	if m == nil {
		m = make(map[string]bool)
	}
	m[name] = true
	return m
}

// pinWords are words one of which every statement that creates or ends pinned state contains
// (SET and RESET are looked for apart, at the start of a statement). Text with none of them is
// not given to the parser, which keeps it off the path of ordinary queries whose literals make
// every text new to the parser's cache. A keyword cannot be spelled with escapes; a function name
// can, inside a Unicode-escaped identifier, hence "u&".
var pinWords = [][]byte{
	[]byte("temp"), []byte("advisory"), []byte("hold"), []byte("prepare"), []byte("deallocate"),
	[]byte("set_config"), []byte("load"), []byte("listen"), []byte("discard"), []byte("close"), []byte("drop"),
	[]byte("u&"),
}

var setWords = [][]byte{[]byte("set"), []byte("reset")}

// mayPin reports whether sql could create or end pinned state.
func mayPin(sql []byte) bool {
	// One pass over the text, trying only the words that start with the letter at hand: this
	// runs on every query of every client in transaction mode.
	for i := 0; i < len(sql); i++ {
		for _, w := range wordsByFirst[lowerASCII(sql[i])] {
			if i+len(w.text) > len(sql) || !bytes.EqualFold(sql[i:i+len(w.text)], w.text) {
				continue
			}
			if !w.atStart || startsStatement(sql, i) && !identChar(sql, i+len(w.text)) {
				return true
			}
		}
	}
	return false
}

type pinWord struct {
	text    []byte
	atStart bool // counts only as a statement's first word
}

// wordsByFirst indexes pinWords and setWords by their first letter.
var wordsByFirst = func() (t [256][]pinWord) {
	for _, w := range pinWords {
		t[w[0]] = append(t[w[0]], pinWord{text: w})
	}
	for _, w := range setWords {
		t[w[0]] = append(t[w[0]], pinWord{text: w, atStart: true})
	}
	return t
}()

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// startsStatement reports whether the word at i may be a statement's first: only blanks separate
// it from the start of the text, a ';', the end of a comment or a line break (after a comment).
func startsStatement(sql []byte, i int) bool {
	for i--; i >= 0; i-- {
		switch sql[i] {
		case ' ', '\t', '\r':
			continue
		case ';', '/', '\n':
			return true
		}
		return false
	}
	return true
}

func identChar(sql []byte, i int) bool {
	if i >= len(sql) {
		return false
	}
	c := sql[i] | 0x20
	return 'a' <= c && c <= 'z' || '0' <= sql[i] && sql[i] <= '9' || sql[i] == '_' || sql[i] == '$' || sql[i] >= 0x80
}

// indexFold is the first index at or after from of a lower-case ASCII needle in s, in any case.
func indexFold(s, lower []byte, from int) int {
	first, upper := lower[0], lower[0]
	if 'a' <= first && first <= 'z' {
		upper = first - 'a' + 'A'
	}
	for i := from; i+len(lower) <= len(s); i++ {
		if c := s[i]; c != first && c != upper {
			continue
		}
		if bytes.EqualFold(s[i:i+len(lower)], lower) {
			return i
		}
	}
	return -1
}

// pinTrack is a session's bookkeeping of pinned state, allocated when a client first sends a
// statement that may create some: most clients never do, and idle ones should stay small.
type pinTrack struct {
	pins
	unit         []sqlclass.Effect // effects of the request unit in flight
	unitText     string            // its first statement that may pin, for the log
	unitFailed   bool
	tx           []sqlclass.Effect // effects of the open transaction's finished units
	txText       string
	lastRollback bool            // the last command completed was a ROLLBACK
	unnamed      *sqlclass.Class // the unnamed prepared statement's class
	unnamedText  string
	logged       bool // the pinning was logged
	counted      bool // counted in Server.pinned
}

// classify classifies statement text that may pin, or returns nil.
func (s *session) classifySQL(text []byte) *sqlclass.Class {
	if !s.srv.cfg.PinOnSessionState || s.srv.classifier == nil || s.mode == sessionMode || !mayPin(text) {
		return nil
	}
	return s.srv.classifier.Classify(string(bytes.TrimRight(text, "\x00")))
}

// noteEffects adds a statement's effects to the request unit in flight.
func (s *session) noteEffects(c *sqlclass.Class, text []byte) {
	if c == nil || len(c.Effects) == 0 && !c.TooComplex {
		return
	}
	pt := s.pinTrack()
	if c.TooComplex {
		// Nothing is known about it: assume it created state no statement can be shown to end.
		pt.unit = append(pt.unit, sqlclass.Effect{Kind: sqlclass.Load, Name: "(statement too complex to analyze)"})
	}
	pt.unit = append(pt.unit, c.Effects...)
	if pt.unitText == "" {
		pt.unitText = logText(text)
	}
}

func (s *session) pinTrack() *pinTrack {
	if s.pt == nil {
		s.pt = &pinTrack{}
	}
	return s.pt
}

// settlePins applies the effects of a finished request unit, at its ReadyForQuery: inside a
// transaction they wait for its end; at the end they count if it committed, and otherwise only
// what a rollback does not undo. A unit that failed never ends a pin (what it would have ended
// may still be there) but may still have started one.
func (s *session) settlePins(status byte) {
	pt := s.pt
	if pt == nil {
		return
	}
	for _, e := range pt.unit {
		if !pt.unitFailed || !releases(e) {
			pt.tx = append(pt.tx, e)
		}
	}
	if pt.txText == "" {
		pt.txText = pt.unitText
	}
	failed := pt.unitFailed
	pt.unit, pt.unitText, pt.unitFailed = pt.unit[:0], "", false
	if status != 'I' {
		return
	}
	// Back at idle after an error (an autocommit unit, a COMMIT that failed) or a ROLLBACK, the
	// transaction's own work is undone.
	rolledBack := failed || pt.lastRollback
	was := pt.held()
	for _, e := range pt.tx {
		if rolledBack && !survivesRollback(e) {
			continue
		}
		pt.apply(e, s.tracksParameter)
		s.hubEffect(e)
	}
	text := pt.txText
	pt.tx, pt.txText, pt.lastRollback = pt.tx[:0], "", false
	switch now := pt.held(); {
	case now && !was:
		pt.since = time.Now()
		if !pt.counted {
			pt.counted = true
			s.srv.pinned.Add(1)
			s.pinnedNow.Store(true)
		}
		if !pt.logged {
			pt.logged = true
			s.srv.log.Warn("client pinned to its server connection by session state (--pin-on-session-state)",
				"user", s.user, "database", s.db.name, "statement", text)
		}
	case !now && pt.counted:
		pt.counted = false
		s.srv.pinned.Add(-1)
		s.pinnedNow.Store(false)
	}
}

// pinned reports whether the client holds session state that keeps its backend.
func (s *session) pinned() bool { return s.pt != nil && s.pt.held() }

// tracksParameter reports whether a parameter follows the client between backends, so that
// setting it does not pin. Following relies on the server reporting the new value
// (ParameterStatus): a tracked parameter it does not report (search_path before PostgreSQL 18)
// pins like any other, or the next backend would miss the client's value and keep it for the
// next client.
func (s *session) tracksParameter(name string) bool {
	if s.be == nil || !reported(s.be.Params, name) {
		return false
	}
	for _, t := range trackedParameters {
		if strings.EqualFold(t, name) {
			return true
		}
	}
	for _, t := range s.srv.cfg.TrackExtraParameters {
		if strings.EqualFold(t, name) {
			return true
		}
	}
	for t := range s.desired {
		if strings.EqualFold(t, name) {
			return true
		}
	}
	return false
}

func reported(params map[string]string, name string) bool {
	for k := range params {
		if strings.EqualFold(k, name) {
			return true
		}
	}
	return false
}

// logText shortens a statement for a log line.
func logText(b []byte) string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// noteStatement tracks the classes of prepared statements, whose effects happen when they are
// bound (each execution binds again), not when they are parsed.
func (s *session) noteStatement(f *wire.Frame) {
	switch f.Type {
	case 'P':
		name, rest, ok := cut(f.Body)
		if !ok || len(name) > 0 {
			return // a named statement's class is kept with it (see relayStatement)
		}
		query, _, _ := cut(rest)
		if c := s.classifySQL(query); c != nil || s.pt != nil {
			s.pinTrack().unnamed, s.pt.unnamedText = c, logText(query)
		}
	case 'B':
		_, rest, ok := cut(f.Body)
		if !ok {
			return
		}
		name, _, _ := cut(rest)
		if len(name) == 0 {
			if s.pt != nil {
				s.noteEffects(s.pt.unnamed, []byte(s.pt.unnamedText))
			}
			return
		}
		if st := s.stmts[string(name)]; st != nil {
			s.noteEffects(st.class, st.query())
		}
	}
}

// holdPinned keeps a pinned client's backend past the end of its transaction, for at most
// --max-pinned-time.
func (s *session) holdPinned() {
	limit := s.srv.cfg.MaxPinnedTime
	if limit <= 0 {
		return
	}
	expire := func() {
		s.fatal("53400", fmt.Sprintf("terminating connection: pinned to its server connection by session state "+
			"for more than %s (--max-pinned-time); release temporary tables, advisory locks, WITH HOLD cursors, "+
			"prepared statements, LISTEN and settings sooner", limit))
	}
	left := limit - time.Since(s.pt.since)
	if left <= 0 {
		expire()
		return
	}
	if idle := s.srv.conf().ClientIdleTimeout; idle <= 0 || left < idle {
		s.arm(left, func() {
			if s.pinned() && s.slots.empty() {
				expire()
			}
		})
	}
}
