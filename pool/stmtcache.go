package pool

import "container/list"

// stmtCache is the set of statements prepared on one backend connection, in LRU order, so the
// gateway can prepare a client's statement lazily and evict under a bound. The owner of the
// connection uses it from the reader's serialisation, like Frames.
type stmtCache struct {
	max   int
	order *list.List               // of string, least recently used first
	index map[string]*list.Element // name → element
}

func newStmtCache(max int) *stmtCache {
	return &stmtCache{max: max, order: list.New(), index: make(map[string]*list.Element)}
}

// StmtPrepared reports whether name is prepared on the connection, marking it used.
func (c *Conn) StmtPrepared(name string) bool {
	e, ok := c.stmts.index[name]
	if ok {
		c.stmts.order.MoveToBack(e)
	}
	return ok
}

// StmtAdd records that name is being prepared. If that takes the cache over its bound it
// returns the least recently used statement, which the caller must close on the server.
func (c *Conn) StmtAdd(name string) (evict string, ok bool) {
	if _, exists := c.stmts.index[name]; exists {
		return "", false
	}
	c.stmts.index[name] = c.stmts.order.PushBack(name)
	if c.stmts.max > 0 && c.stmts.order.Len() > c.stmts.max {
		e := c.stmts.order.Front()
		c.stmts.order.Remove(e)
		evict = e.Value.(string)
		delete(c.stmts.index, evict)
		return evict, true
	}
	return "", false
}

// StmtForget drops name, e.g. after its Parse failed.
func (c *Conn) StmtForget(name string) {
	if e, ok := c.stmts.index[name]; ok {
		c.stmts.order.Remove(e)
		delete(c.stmts.index, name)
	}
}

// StmtClear forgets every statement, after DISCARD ALL or DEALLOCATE ALL ran on the server.
func (c *Conn) StmtClear() {
	c.stmts.order.Init()
	clear(c.stmts.index)
}

// StmtCount reports how many statements are prepared on the connection.
func (c *Conn) StmtCount() int { return c.stmts.order.Len() }
