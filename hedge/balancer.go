package hedge

import "sync/atomic"

// Balancer picks a backend for an attempt by the power of two random choices: draw two
// distinct eligible backends at random and take the one with fewer outstanding requests. It
// gets most of the benefit of always taking the least loaded backend (placing n requests on n
// backends, the busiest gets O(log log n) instead of the O(log n / log log n) of one random
// choice) without the herd behaviour of that rule, where every session that saw the same
// counts piles onto the same backend at once; and it reads two counters instead of n.
//
// It is safe for concurrent use and allocation-free. The random draws come from a SplitMix64
// sequence over an atomic counter, so a given seed repeats exactly in a single-goroutine test;
// in production seed it with math/rand/v2's Uint64. The zero Balancer is seeded with 0.
type Balancer struct {
	state atomic.Uint64
}

// NewBalancer returns a Balancer whose draws follow seed.
func NewBalancer(seed uint64) *Balancer {
	b := new(Balancer)
	b.state.Store(seed)
	return b
}

// Pick chooses among backends 0..n-1 the one for an attempt, never exclude (the backend of the
// first attempt when picking for the hedge; -1 for none). outstanding(i) is backend i's count
// of requests in flight; Pick calls it at most twice. Ties go to the first draw, itself
// uniform. Pick returns -1 when no backend is eligible: n < 1, or n = 1 with that backend
// excluded.
func (b *Balancer) Pick(n int, outstanding func(i int) int, exclude int) int {
	if exclude < 0 || exclude >= n {
		exclude = -1
	}
	m := n // eligible backends
	if exclude >= 0 {
		m--
	}
	switch {
	case m < 1:
		return -1
	case m == 1:
		if exclude == 0 {
			return 1
		}
		return 0
	}
	// Two draws from one 64-bit number, each by multiply-shift (Lemire): 32 bits each leave a
	// bias of m/2^32, nothing for a handful of replicas.
	r := b.next()
	i := int((r >> 32) * uint64(m) >> 32)
	j := int((r & (1<<32 - 1)) * uint64(m-1) >> 32)
	if j >= i { // j from the m-1 others, so i != j
		j++
	}
	if exclude >= 0 { // map positions among the eligible back to backend numbers
		if i >= exclude {
			i++
		}
		if j >= exclude {
			j++
		}
	}
	if outstanding(j) < outstanding(i) {
		return j
	}
	return i
}

// next is SplitMix64: a counter stepped by the golden ratio, then mixed.
func (b *Balancer) next() uint64 {
	z := b.state.Add(0x9e3779b97f4a7c15)
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}
