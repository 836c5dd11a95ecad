package pool

// Changes at run time (a configuration reload, the admin console's RECONNECT).

// Resize changes the pool's Size and MinSize. A smaller pool closes idle connections beyond its
// size now and lent ones as they come back; a larger one opens connections for its waiters at
// once. Clients keep their connections meanwhile.
func (p *Pool) Resize(size, minSize int) {
	p.mu.Lock()
	p.cfg.Size, p.cfg.MinSize = size, minSize
	var retire []*Conn
	for n := len(p.all); n > size && len(p.idle) > 0; n-- {
		retire = append(retire, p.idle[0]) // the least recently used
		p.idle = p.idle[1:]
	}
	run := p.dispatch()
	p.mu.Unlock()
	run()
	for _, c := range retire {
		c.Close()
	}
}

// Reconnect retires every connection open now: idle ones are closed at once, lent ones when they
// come back, and new ones are opened as needed (PgBouncer's RECONNECT: after a failover, or a
// change of the backend's address or settings).
func (p *Pool) Reconnect() {
	p.gen.Add(1)
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// retired reports, under p.mu, whether c must close rather than be lent again: it predates a
// Reconnect, or the pool shrank below the connections it has.
func (p *Pool) retired(c *Conn) bool {
	return c.gen != p.gen.Load() || len(p.all) > p.cfg.Size
}
