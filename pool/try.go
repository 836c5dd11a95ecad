package pool

import "time"

// TryAcquire lends an idle connection at once, preferring one served by loop i, or returns nil
// when none is idle, others wait for one, or the idle ones are due for a health check. It never
// waits and never opens a connection: it is for optional work, such as a hedged read, that is
// only worth doing while the pool has capacity to spare.
func (p *Pool) TryAcquire(i int) *Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
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
