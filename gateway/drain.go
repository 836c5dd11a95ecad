package gateway

import (
	"context"
	"sync"
	"time"

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
	mode poolMode

	mu        sync.Mutex
	owed      int  // ReadyForQuery messages still to come
	status    byte // the last transaction status seen
	cancels   int  // cancel requests not yet delivered
	cancelled bool // a cancel was sent: it must be proven spent before release
	final     bool // the closing ROLLBACK or barrier query was sent
	finished  bool
	stopTimer func() bool
}

// drain hands the client's backend to a drainer, or straight back to the pool if it is clean.
func (s *session) drain(be *pool.Conn) {
	clean := s.slots.empty() && !s.unsynced && !s.copyIn && s.txStatus == 'I' && !s.cancelling && !s.barrier
	if clean && be.Frames.AtBoundary() {
		if s.mode == sessionMode {
			s.pool.Release(be) // runs the reset query
		} else {
			s.pool.Return(be)
		}
		return
	}
	d := &drainer{srv: s.srv, pool: s.pool, c: be, mode: s.mode, owed: s.slots.syncs(), status: s.txStatus, cancelled: s.barrier}
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
	d.step()
	c.Flush()
}

func (d *drainer) BackendClosed(*pool.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.finished = true
	d.stopTimer()
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
	d.stopTimer()
	switch {
	case !clean:
		d.pool.Discard(d.c)
	case d.mode == sessionMode:
		d.pool.Release(d.c)
	default:
		d.pool.Return(d.c)
	}
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
