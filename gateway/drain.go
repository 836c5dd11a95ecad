package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/asyncgate/asyncgate/admission"
	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

// drainer takes over a backend whose client left while it still owed answers, sat inside a
// transaction, or had a cancel on its way. It cancels what still runs, reads until the backend
// is at ReadyForQuery, rolls back an open transaction, proves that any cancel is spent, and
// gives the backend back — or closes it if that takes longer than --cancel-drain-timeout. No
// query outlives its client, and no cancel meant for it can hit the next one.
type drainer struct {
	srv  *Server
	pool *pool.Pool
	c    *pool.Conn
	back giveBack // how the backend goes back once clean
	// The gate slot of the departed client's unit, given back with the backend: until then the
	// backend is still busy with the unit.
	ticket *admission.Ticket

	mu        sync.Mutex
	owed      int  // ReadyForQuery messages still to come
	status    byte // the last transaction status seen
	cancels   int  // cancel requests not yet delivered
	cancelled bool // a cancel was sent: it must be proven spent before release
	final     bool // the closing ROLLBACK or barrier query was sent
	finished  bool
	stopTimer func() bool
	answered  chan struct{} // if set, closed once nothing is owed or the drain ended
}

// checkAnswered closes answered when the backend owes nothing more. Called with d.mu held.
func (d *drainer) checkAnswered() {
	if d.answered != nil && (d.owed <= 0 || d.finished) {
		close(d.answered)
		d.answered = nil
	}
}

// drain hands the client's backend to a drainer, or straight back to the pool if it is clean.
func (s *session) drain(be *pool.Conn) {
	clean := s.slots.empty() && !s.unsynced && !s.copyIn && s.txStatus == 'I' && !s.cancelling && !s.barrier
	back := s.giveBack()
	ticket := s.ticket
	s.ticket = nil
	if clean && be.Frames.AtBoundary() {
		back.give(s.pool, be)
		if ticket != nil {
			ticket.Release(admission.Outcome{})
		}
		return
	}
	d := &drainer{srv: s.srv, pool: s.pool, c: be, back: back, owed: s.slots.syncs(), status: s.txStatus, cancelled: s.barrier, ticket: ticket}
	d.mu.Lock()
	defer be.Flush()
	defer d.mu.Unlock()
	d.stopTimer = time.AfterFunc(s.srv.cfg.CancelDrainTimeout, d.timeout).Stop
	if s.copyIn {
		be.Write(appendMessage(nil, 'f', []byte("client disconnected"), nil))
	}
	if s.unsynced {
		be.Write([]byte{'S', 0, 0, 0, 4})
		d.owed++
	}
	if wait := s.cancelDone; wait != nil {
		d.cancels++
		go func() { <-wait; d.cancelDelivered() }()
	}
	if d.owed > 0 {
		d.cancels++
		go func() {
			cancelBackend(be, s.srv.cfg.CancelTimeout)
			d.cancelDelivered()
		}()
	}
	be.SetSink(d)
	d.step()
}

func cancelBackend(be *pool.Conn, timeout time.Duration) error {
	ctx, done := context.WithTimeout(context.Background(), timeout)
	defer done()
	return be.Cancel(ctx)
}

func (d *drainer) cancelDelivered() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cancels--
	d.cancelled = true
	d.step()
	d.c.Flush()
}

// cancelSkipped stands for a cancel that turned out not to be needed: the backend answered
// first, so no barrier is due.
func (d *drainer) cancelSkipped() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cancels--
	d.step()
	d.c.Flush()
}

func (d *drainer) BackendData(c *pool.Conn, b []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := c.Frames.Feed(b, func(f *wire.Frame) error {
		if f.Type == 'Z' && f.Whole {
			d.owed--
			if status, err := wire.ReadyStatus(f.Body); err == nil {
				d.status = status
			}
		}
		return nil
	})
	if err != nil {
		d.give(false)
		return
	}
	d.checkAnswered()
	d.step()
	c.Flush()
}

func (d *drainer) BackendClosed(*pool.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.checkAnswered()
	d.finished = true
	d.stopTimer()
	d.releaseTicket()
}

func (d *drainer) releaseTicket() {
	if t := d.ticket; t != nil {
		d.ticket = nil
		t.Release(admission.Outcome{Dropped: true})
	}
}

// step moves on once nothing is owed and every cancel is delivered. Called with d.mu held.
func (d *drainer) step() {
	if d.finished || d.owed > 0 || d.cancels > 0 {
		return
	}
	if d.final {
		d.give(d.status == 'I')
		return
	}
	if d.status != 'I' || d.cancelled {
		// ROLLBACK ends an open transaction; either query also proves a delivered cancel is
		// spent, since the backend acts on the signal before it reads anything more.
		d.final = true
		d.owed++
		q := ""
		if d.status != 'I' {
			q = "ROLLBACK"
		}
		d.c.Write(wire.AppendQuery(nil, q))
		return
	}
	d.give(true)
}

// give ends the drain: the backend goes back to the pool when clean, else it is closed.
func (d *drainer) give(clean bool) {
	if d.finished {
		return
	}
	d.finished = true
	d.checkAnswered()
	d.stopTimer()
	defer d.releaseTicket()
	if !clean {
		d.pool.Discard(d.c)
		return
	}
	d.back.give(d.pool, d.c)
}

// giveBack says how a departed client's backend, once at ReadyForQuery idle, returns to the pool.
type giveBack uint8

const (
	giveReturn  giveBack = iota // as it is: transaction pooling keeps no state on it
	giveRelease                 // after the reset query: session state may be on it
	giveDiscard                 // closed: it holds state no reset removes
)

func (g giveBack) give(p *pool.Pool, c *pool.Conn) {
	switch g {
	case giveReturn:
		p.Return(c)
	case giveRelease:
		p.Release(c)
	default:
		p.Discard(c)
	}
}

// giveBack chooses for this client's backend: session state (session pooling, or a pinned
// client, or one whose unfinished work may have pinned it) goes with a reset, or with the
// connection when the reset is off or cannot undo it (LOAD).
func (s *session) giveBack() giveBack {
	state := s.mode == sessionMode
	if pt := s.pt; pt != nil && (pt.held() || len(pt.unit) > 0 || len(pt.tx) > 0) {
		if pt.loaded || s.srv.cfg.ServerResetQuery == "" {
			return giveDiscard
		}
		state = true
	}
	if state {
		return giveRelease
	}
	return giveReturn
}

func (d *drainer) timeout() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.finished {
		d.srv.log.Info("closing backend that did not come back in time after its client left",
			"backend", d.c.Addr(), "limit", "--cancel-drain-timeout")
		d.give(false)
	}
}
