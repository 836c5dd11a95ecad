package admission

import (
	"sync"
	"testing"
	"time"
)

// The fast path against its floor: one mutex taken and released twice, as Acquire and Release
// do.
func BenchmarkGate(b *testing.B) {
	b.Run("baseline/mutex", func(b *testing.B) {
		var mu sync.Mutex
		n := 0
		b.ReportAllocs()
		for b.Loop() {
			mu.Lock()
			n++
			mu.Unlock()
			mu.Lock()
			n--
			mu.Unlock()
		}
	})
	b.Run("fast", func(b *testing.B) {
		g := NewGate(Config{Name: "bench", Limit: 1})
		b.ReportAllocs()
		for b.Loop() {
			t, _, _ := g.Acquire("a", Waiter{})
			t.Release(Outcome{})
		}
	})
	b.Run("fast/adaptive", func(b *testing.B) {
		g := NewGate(Config{Name: "bench", Limit: 1, Adaptive: &AdaptiveConfig{}})
		b.ReportAllocs()
		for b.Loop() {
			t, _, _ := g.Acquire("a", Waiter{})
			t.Release(Outcome{Latency: time.Millisecond})
		}
	})
	b.Run("baseline/mutex/8", func(b *testing.B) {
		var mu sync.Mutex
		n := 0
		b.ReportAllocs()
		on8(b, func() {
			mu.Lock()
			n++
			mu.Unlock()
			mu.Lock()
			n--
			mu.Unlock()
		})
	})
	b.Run("fast/8", func(b *testing.B) {
		// As many slots as goroutines: every Acquire takes the fast path.
		g := NewGate(Config{Name: "bench", Limit: 8})
		b.ReportAllocs()
		on8(b, func() {
			t, _, _ := g.Acquire("a", Waiter{})
			t.Release(Outcome{})
		})
	})
	b.Run("rate", func(b *testing.B) {
		r := NewRateLimiter(1e12, 1, nil)
		b.ReportAllocs()
		for b.Loop() {
			r.Allow()
		}
	})
}

// on8 runs f b.N times in all on 8 goroutines.
func on8(b *testing.B, f func()) {
	var wg sync.WaitGroup
	for i := range 8 {
		n := b.N / 8
		if i < b.N%8 {
			n++
		}
		wg.Go(func() {
			for range n {
				f()
			}
		})
	}
	wg.Wait()
}
