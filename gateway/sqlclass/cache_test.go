package sqlclass

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

func wantStats(t *testing.T, c *Classifier, hits, misses uint64) {
	t.Helper()
	if h, m := c.Stats(); h != hits || m != misses {
		t.Fatalf("Stats() = %d hits, %d misses, want %d, %d", h, m, hits, misses)
	}
}

func TestCacheSharesResult(t *testing.T) {
	c := New(10)
	first := c.Classify("SELECT 1")
	second := c.Classify("SELECT 1")
	if first != second {
		t.Error("second call did not return the cached *Class")
	}
	wantStats(t, c, 1, 1)
	if c.Classify("SELECT 1 ") == first {
		t.Error("texts are cached by exact text, yet a different one hit")
	}
	wantStats(t, c, 1, 2)
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c := New(2)
	a := c.Classify("SELECT 'a'")
	b := c.Classify("SELECT 'b'")
	if c.Classify("SELECT 'a'") != a { // a is now the most recent
		t.Fatal("a was not cached")
	}
	c.Classify("SELECT 'c'") // evicts b
	if got := c.cache.len(); got != 2 {
		t.Fatalf("cache holds %d entries, want 2", got)
	}
	if c.Classify("SELECT 'a'") != a {
		t.Error("a was evicted, though b was used less recently")
	}
	wantStats(t, c, 2, 3)
	if c.Classify("SELECT 'b'") == b {
		t.Error("b survived eviction")
	}
	wantStats(t, c, 2, 4)
}

func TestNoCache(t *testing.T) {
	for _, size := range []int{0, -1} {
		c := New(size)
		if c.Classify("SELECT 1") == c.Classify("SELECT 1") {
			t.Errorf("New(%d): result was cached", size)
		}
		wantStats(t, c, 0, 2)
	}
}

func TestCacheSkipsLongText(t *testing.T) {
	c := New(10)
	long := "SELECT 1 /*" + strings.Repeat("x", maxCachedLen) + "*/"
	c.Classify(long)
	c.Classify(long)
	wantStats(t, c, 0, 2)
}

func TestAllowFunctionsEmptiesCache(t *testing.T) {
	c := New(10)
	if c.Classify("SELECT f()").Read {
		t.Fatal("unknown function is Read")
	}
	c.AllowFunctions("f")
	if !c.Classify("SELECT f()").Read {
		t.Error("stale cached result after AllowFunctions")
	}
	c.DenyBatchFunctions("f")
	if c.Classify("SELECT f()").Batchable {
		t.Error("stale cached result after DenyBatchFunctions")
	}
}

// The gateway may hand over text that aliases a buffer it reuses; the cache
// must keep its own copy of the key.
func TestCacheCopiesKey(t *testing.T) {
	c := New(10)
	buf := []byte("SELECT 1")
	first := c.Classify(unsafe.String(&buf[0], len(buf)))
	copy(buf, "SET a=1;")
	if got := c.Classify("SELECT 1"); got != first {
		t.Error("cached entry lost after the caller reused its buffer")
	}
	if got := c.Classify("SET a=1;"); got.Read || len(got.Effects) != 1 {
		t.Errorf("reused buffer's new text got the old class: %+v", got)
	}
}

func TestConcurrentClassify(t *testing.T) {
	c := New(8) // smaller than the working set, so entries are evicted under load
	queries := make([]string, 20)
	for i := range queries {
		if i%2 == 0 {
			queries[i] = fmt.Sprintf("SELECT a FROM t WHERE id = %d", i)
		} else {
			queries[i] = fmt.Sprintf("SELECT pg_advisory_lock(%d)", i)
		}
	}
	const workers, rounds = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				i := (w + r*7) % len(queries)
				got := c.Classify(queries[i])
				if read := i%2 == 0; got.Read != read || len(got.Effects) != i%2 {
					t.Errorf("%s: Read %v, %d effects", queries[i], got.Read, len(got.Effects))
					return
				}
			}
		})
	}
	wg.Wait()
	if h, m := c.Stats(); h+m != workers*rounds {
		t.Errorf("hits %d + misses %d != %d calls", h, m, workers*rounds)
	}
	if n := c.cache.len(); n > 8 {
		t.Errorf("cache grew to %d entries, bound is 8", n)
	}
}
