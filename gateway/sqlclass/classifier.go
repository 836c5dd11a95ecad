package sqlclass

import (
	"maps"
	"strings"
	"sync"
	"sync/atomic"
)

// maxCachedLen bounds the text the cache keeps, so that its memory is bounded
// by the entry count: texts longer than this are mostly generated (bulk
// INSERTs with inline values) and rarely repeat.
const maxCachedLen = 32 << 10

// Classifier classifies query text, caching results by exact text. It is safe
// for concurrent use.
type Classifier struct {
	cache *lru // nil: no cache

	hits   atomic.Uint64
	misses atomic.Uint64

	mu     sync.Mutex // serializes policy updates
	policy atomic.Pointer[policy]
}

// policy is the function lists a classification depends on. It is replaced
// whole, never modified, so a classification in flight sees one consistent
// version.
type policy struct {
	// read holds the functions a Read statement may call, keyed by funcKey.
	read map[string]bool
	// denyBatch holds functions, beyond the built-in session-state ones,
	// whose calls make a statement not Batchable.
	denyBatch map[string]bool
}

// New returns a Classifier that caches up to cacheSize results; cacheSize <= 0
// disables the cache.
func New(cacheSize int) *Classifier {
	c := &Classifier{}
	if cacheSize > 0 {
		c.cache = newLRU(cacheSize)
	}
	p := &policy{read: make(map[string]bool, len(readFunctions)), denyBatch: map[string]bool{}}
	for _, name := range readFunctions {
		p.read[name] = true
	}
	c.policy.Store(p)
	return c
}

// AllowFunctions adds functions that a Read statement may call, for
// operators whose read-only user functions should not keep queries off the
// replicas. A name is matched as Postgres stores it (give unquoted
// identifiers in lower case); "schema.name" allows only calls qualified
// with that schema, a bare name allows unqualified and pg_catalog calls.
//
// Call it before the Classifier is in use: it empties the cache, but a
// Classify running at the same time may still store a result made with
// the old list.
func (c *Classifier) AllowFunctions(names ...string) {
	c.updatePolicy(func(p *policy) {
		for _, name := range names {
			p.read[normalizeFuncName(name)] = true
		}
	})
}

// DenyBatchFunctions adds functions known to change session or transaction
// state, so that statements calling them are not Batchable. Names are as for
// AllowFunctions. Call it before the Classifier is in use.
func (c *Classifier) DenyBatchFunctions(names ...string) {
	c.updatePolicy(func(p *policy) {
		for _, name := range names {
			p.denyBatch[normalizeFuncName(name)] = true
		}
	})
}

func (c *Classifier) updatePolicy(change func(*policy)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.policy.Load()
	p := &policy{read: maps.Clone(old.read), denyBatch: maps.Clone(old.denyBatch)}
	change(p)
	c.policy.Store(p)
	if c.cache != nil {
		c.cache.purge()
	}
}

func normalizeFuncName(name string) string {
	return strings.TrimPrefix(name, "pg_catalog.")
}

// Classify returns the classification of sql, which may hold several
// statements separated by semicolons. The result is never nil and is shared:
// do not modify it.
func (c *Classifier) Classify(sql string) *Class {
	if c.cache != nil {
		if class, ok := c.cache.get(sql); ok {
			c.hits.Add(1)
			return class
		}
	}
	c.misses.Add(1)
	class := classify(sql, c.policy.Load())
	if c.cache != nil && len(sql) <= maxCachedLen {
		// Clone: the caller's string may share memory with a reused buffer.
		class = c.cache.add(strings.Clone(sql), class)
	}
	return class
}

// Stats returns the cache hits and misses so far. Without a cache every call
// is a miss.
func (c *Classifier) Stats() (hits, misses uint64) {
	return c.hits.Load(), c.misses.Load()
}
