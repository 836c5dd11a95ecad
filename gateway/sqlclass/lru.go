package sqlclass

import (
	"container/list"
	"sync"
)

// lru maps query text to its Class. One mutex is enough: a hit is a map
// lookup and a list splice, far cheaper than the parse a miss costs, and
// the gateway calls it once per query, not per row.
type lru struct {
	mu    sync.Mutex
	max   int
	items map[string]*list.Element
	order list.List // most recently used at the front
}

type lruEntry struct {
	key   string
	class *Class
}

func newLRU(max int) *lru {
	return &lru{max: max, items: make(map[string]*list.Element, max)}
}

func (c *lru) get(key string) (*Class, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[key]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*lruEntry).class, true
}

// add stores class under key unless another caller got there first, and
// returns the stored one, so that every caller ends up with the same pointer.
func (c *lru) add(key string, class *Class) *Class {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		c.order.MoveToFront(e)
		return e.Value.(*lruEntry).class
	}
	c.items[key] = c.order.PushFront(&lruEntry{key: key, class: class})
	if c.order.Len() > c.max {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.items, oldest.Value.(*lruEntry).key)
	}
	return class
}

func (c *lru) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.items)
	c.order.Init()
}

func (c *lru) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
