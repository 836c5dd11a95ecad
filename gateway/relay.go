package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"maps"

	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

// relay sends one client frame to the backend, noting what the backend will owe for it.
func (s *session) relay(f *wire.Frame) {
	if !f.First {
		s.be.Write(f.Raw) // the rest of a message streamed through
		return
	}
	wasIdle := s.slots.empty()
	switch f.Type {
	case 'Q':
		if f.Whole && s.mode != sessionMode && s.sessionCommand(f.Body) {
			break
		}
		if f.Whole {
			s.noteEffects(s.classifySQL(f.Body), f.Body)
		}
		s.slots.push(slot{kind: 'Q'})
		s.be.Write(f.Raw)
	case 'P', 'B', 'D', 'C':
		s.unsynced = true
		if f.Whole && (f.Type == 'P' || f.Type == 'B') {
			s.noteStatement(f)
		}
		if s.mode != sessionMode && f.Whole && s.relayStatement(f) {
			break
		}
		s.slots.push(slot{kind: f.Type})
		s.be.Write(f.Raw)
	case 'E':
		s.unsynced = true
		s.slots.push(slot{kind: 'E'})
		s.be.Write(f.Raw)
	case 'S':
		s.unsynced = false
		s.slots.push(slot{kind: 'S'})
		s.be.Write(f.Raw)
	case 'F':
		s.slots.push(slot{kind: 'F'})
		s.be.Write(f.Raw)
	case 'c', 'f': // CopyDone, CopyFail: the backend answers within the COPY's own slot
		s.copyIn = false
		s.be.Write(f.Raw)
	default: // CopyData, Flush, …
		s.be.Write(f.Raw)
	}
	if wasIdle && !s.slots.empty() {
		s.startWork()
	}
}

// startWork arms the query timeout when the client starts waiting for the backend.
func (s *session) startWork() {
	s.timedOut = false
	if s.st != nil {
		now := s.now()
		if s.busyStart.IsZero() {
			s.busyStart = now
		}
		if s.xactStart.IsZero() {
			s.xactStart = now
		}
	}
	if d := s.srv.conf().QueryTimeout; d > 0 {
		s.arm(d, func() {
			s.timedOut = true
			s.requestCancel()
		})
		return
	}
	s.disarm()
}

// internalQuery runs a query of the gateway's own on the backend, ahead of what follows.
func (s *session) internalQuery(sql string) {
	s.slots.push(slot{kind: 'Q', act: actSwallow})
	s.be.Write(wire.AppendQuery(nil, sql))
}

// answer queues a response the gateway gives in the backend's place, in stream order.
func (s *session) answer(kind byte, msg []byte) {
	if s.slots.empty() {
		s.io.Write(msg)
		return
	}
	s.slots.push(slot{kind: kind, act: actSynthetic, synth: msg})
}

// backendData is what the backend sent, on the backend reader's goroutine, serialised by Exec.
func (s *session) backendData(c *pool.Conn, b []byte) {
	if c != s.be {
		strayData(c, b)
		return
	}
	if hr := s.hedge; hr != nil && !s.firstData(hr, c, b) {
		return
	}
	s.inEvent = true
	err := c.Frames.Feed(b, s.backendFrame)
	s.endEvent()
	if err != nil && !errors.Is(err, errStop) {
		s.srv.log.Warn("backend protocol error", "backend", c.Addr(), "err", err)
		s.fatal("08006", fmt.Sprintf("server connection failed: %v", err))
	}
	if s.overflowed && c.Frames.AtBoundary() {
		s.overflowed = false
		s.notificationsOverflowed()
	}
	s.unthrottle()
}

func (s *session) backendFrame(f *wire.Frame) error {
	if s.be == nil {
		return nil // given back at its last ReadyForQuery; a backend sends nothing after that
	}
	if f.First {
		s.fwd = s.classify(f)
	}
	if s.fwd {
		s.io.Write(f.Raw)
		s.sentBytes += int64(len(f.Raw))
	}
	if f.Last {
		s.complete(f)
	}
	return nil
}

// classify decides, at the start of a backend message, whether the client gets it.
func (s *session) classify(f *wire.Frame) bool {
	head := s.slots.peek()
	internal := head != nil && head.act == actSwallow
	linked := s.state == stLinked
	switch f.Type {
	case 'A': // NotificationResponse: always the client's
		return linked
	case 'S':
		name, value, err := wire.ParseParameterStatus(f.Body)
		if err == nil {
			s.be.Params[string(name)] = string(value)
			if !internal && linked && s.desired != nil && s.desired[string(name)] != string(value) {
				if s.desiredShared {
					s.desired, s.desiredShared = maps.Clone(s.desired), false
				}
				s.desired[string(name)] = string(value)
			}
		}
		return linked && !internal
	case 'E':
		if s.timedOut && !internal {
			if _, code, _, err := wire.ErrorFields(f.Body); err == nil && string(code) == "57014" {
				msg := fmt.Sprintf("canceling statement due to query timeout (--query-timeout %s)", s.srv.conf().QueryTimeout)
				s.io.Write(wire.AppendError(nil, "ERROR", "57014", msg))
				s.requestFailed("gateway", "57014", msg)
				return false
			}
		}
		return linked && (!internal || head.kind == 'P')
	case 'Z':
		if linked && !internal && s.mode == statementMode {
			if status, err := wire.ReadyStatus(f.Body); err == nil && status != 'I' {
				return false // replaced in complete: statement mode refuses transactions
			}
		}
	}
	return linked && !internal
}

// complete handles the end of a backend message: slot accounting and state.
func (s *session) complete(f *wire.Frame) {
	head := s.slots.peek()
	switch f.Type {
	case 'E':
		s.backendError(f, head)
	case 'Z':
		s.readyForQuery(f, head)
		return
	case 'G': // CopyInResponse: the client sends data now
		s.copyIn = true
	case 'C':
		if s.mode != sessionMode && f.Whole {
			if tag := f.Body; bytes.HasPrefix(tag, []byte("DISCARD ALL")) || bytes.HasPrefix(tag, []byte("DEALLOCATE ALL")) {
				s.be.StmtClear()
			}
			if bytes.HasPrefix(f.Body, []byte("DISCARD ALL")) && (head == nil || head.act != actSwallow) {
				s.dropSubscriptions() // DISCARD ALL includes UNLISTEN *
			}
			if s.pt != nil && (head == nil || head.act != actSwallow) {
				s.pt.lastRollback = bytes.Equal(bytes.TrimRight(f.Body, "\x00"), []byte("ROLLBACK"))
			}
		}
	}
	if head != nil && head.done(f.Type) {
		s.slots.pop()
	}
	s.answerSynthetic()
}

func (s *session) backendError(f *wire.Frame, head *slot) {
	_, code, msg, _ := wire.ErrorFields(f.Body)
	if s.state == stSetup {
		// A startup parameter the server refused: the client learns as from PostgreSQL.
		s.fatal(string(code), string(msg))
		return
	}
	if head == nil {
		return // a FATAL of the server's own; the connection ends next
	}
	if head.act == actSwallow && head.kind == 'Q' {
		s.srv.log.Warn("gateway query failed on backend", "backend", s.be.Addr(), "code", string(code), "err", string(msg))
	}
	if head.act != actSwallow && !(s.timedOut && string(code) == "57014") {
		s.requestFailed("backend", string(code), string(msg))
	}
	if s.pt != nil && head.act != actSwallow {
		s.pt.unitFailed = true
	}
	if head.endsAtSync() {
		return
	}
	// The server skips extended messages up to Sync: so do the slots, and what the gateway
	// would have answered for them the client would not have seen either.
	for head := s.slots.peek(); head != nil && !head.endsAtSync(); head = s.slots.peek() {
		if head.kind == 'P' && head.stmt != "" {
			s.be.StmtForget(head.stmt)
		}
		s.slots.pop()
	}
}

func (s *session) readyForQuery(f *wire.Frame, head *slot) {
	status, _ := wire.ReadyStatus(f.Body)
	internal := head != nil && head.act == actSwallow
	if head != nil && head.endsAtSync() {
		s.slots.pop()
	}
	s.txStatus = status
	s.copyIn = false
	if !internal {
		s.settlePins(status)
		if st := s.st; st != nil && s.state == stLinked {
			st.queries.Add(1)
			if status == 'I' && !s.xactStart.IsZero() {
				st.xacts.Add(1)
				st.xactTime.Add(s.now().Sub(s.xactStart).Microseconds())
				s.xactStart = 0
			}
		}
	}
	if s.state == stSetup {
		if s.slots.empty() {
			s.ready()
		}
		return
	}
	if s.mode == statementMode && !internal && status != 'I' {
		const msg = "transaction blocks are not allowed in statement pooling mode (--pool-mode statement); the transaction was rolled back"
		s.io.Write(wire.AppendError(nil, "ERROR", "0A000", msg))
		s.requestFailed("gateway", "0A000", msg)
		s.io.Write(wire.AppendReadyForQuery(nil, 'I'))
		s.internalQuery("ROLLBACK")
		return
	}
	s.answerSynthetic()
	s.afterUnit()
}

// answerSynthetic writes the gateway's own answers that have reached the head of the queue.
func (s *session) answerSynthetic() {
	for head := s.slots.peek(); head != nil && head.act == actSynthetic; head = s.slots.peek() {
		s.io.Write(head.synth)
		s.slots.pop()
	}
}
