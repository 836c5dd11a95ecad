package pool

import "time"

// TryAcquire lends an idle connection at once, preferring one served by loop i, or returns nil
// when none is idle, others wait for one, or the idle ones are due for a health check. It never
// waits and never opens a connection: it is for optional work, such as a hedged read, that is
// only worth doing while the pool has capacity to spare.
func (p *Pool) TryAcquire(i int) *Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tryIdle(i)
}

// tryIdle takes a fresh idle connection when nobody waits; it runs under p.mu.
func (p *Pool) tryIdle(i int) *Conn {
	if p.closed || len(p.waiters) > 0 || len(p.idle) == 0 {
		return nil
	}
	k := p.pickIdle(i)
	c := p.idle[k]
	if time.Since(c.lastUsed) >= p.cfg.CheckDelay {
		return nil
	}
	p.idle = append(p.idle[:k], p.idle[k+1:]...)
	return c
}

// TryAcquireOrOpen is TryAcquire that, when nothing is idle but the pool is below its Size and
// nobody waits, opens a connection for the caller instead of giving up: optional work then
// grows a pool that has room, rather than being skipped until ordinary lenders have grown it.
// It returns an idle connection; or nil and a withdraw func when one is being opened, which
// deliver gets as AcquireOn's deliver would (it may also get one released meanwhile), and
// which withdraw gives up (the connection then serves the next lender, or waits idle); or
// nil, nil when neither is possible now: the pool is full, others wait, or the circuit breaker
// is open.
func (p *Pool) TryAcquireOrOpen(i int, deliver func(*Conn, error)) (*Conn, func() bool) {
	p.mu.Lock()
	if c := p.tryIdle(i); c != nil {
		p.mu.Unlock()
		return c, nil
	}
	room := !p.closed && len(p.waiters) == 0 && len(p.all)+p.connecting < p.cfg.Size && !p.breaker.open()
	p.mu.Unlock()
	if !room {
		return nil, nil
	}
	c, withdraw, err := p.AcquireOn(i, deliver)
	switch {
	case err != nil:
		return nil, nil
	case c != nil: // one came back in between
		return c, nil
	}
	return nil, withdraw
}

// DiscardFailed closes a connection the backend ended with an error of its own (a FATAL such
// as 57P01 admin shutdown), counting it as a backend failure as a broken connection is.
func (p *Pool) DiscardFailed(c *Conn) {
	p.connFailed(c)
	c.Close()
}
