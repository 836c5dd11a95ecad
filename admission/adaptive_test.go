package admission

import (
	"math/rand/v2"
	"testing"
	"time"
)

// sim is a closed loop of clients in front of a simulated backend, on the fake clock. The
// backend runs capacity units at base latency; beyond that units share it, so a unit admitted
// with c units in flight takes base × c/capacity, ±10%.
type sim struct {
	t        *testing.T
	h        *harness
	capacity int
	base     time.Duration
	drop     bool // units report Dropped
	expo     bool // exponentially distributed latency instead of ±10%
	rng      *rand.Rand
	jobs     []job
	limits   []int // the limit after each completion
}

type job struct {
	end     time.Time
	latency time.Duration
	ticket  *Ticket
}

func newSim(t *testing.T, adaptive AdaptiveConfig, limit int) *sim {
	h := newHarness(t, Config{Limit: limit, Adaptive: &adaptive})
	return &sim{t: t, h: h, capacity: 8, base: 10 * time.Millisecond, rng: rand.New(rand.NewPCG(1, 2))}
}

// client adds a client, which sends its first unit now.
func (s *sim) client() {
	if tk, _ := s.h.acquire("app"); tk != nil {
		s.start(tk)
	}
}

func (s *sim) start(tk *Ticket) {
	c := float64(s.h.stats().Running)
	stretch := max(1, c/float64(s.capacity)) * (0.9 + 0.2*s.rng.Float64())
	if s.expo {
		stretch = max(1, c/float64(s.capacity)) * s.rng.ExpFloat64()
	}
	latency := time.Duration(float64(s.base) * stretch)
	s.jobs = append(s.jobs, job{end: s.h.clock.Now().Add(latency), latency: latency, ticket: tk})
}

// run completes n units; each client sends its next unit as soon as the last one is done.
func (s *sim) run(n int) {
	for range n {
		first := 0
		for i, j := range s.jobs {
			if j.end.Before(s.jobs[first].end) {
				first = i
			}
		}
		j := s.jobs[first]
		s.jobs = append(s.jobs[:first], s.jobs[first+1:]...)
		s.h.clock.Advance(j.end.Sub(s.h.clock.Now()))
		waiting := s.h.stats().Waiting
		j.ticket.Release(Outcome{Latency: j.latency, Dropped: s.drop})
		for range waiting - s.h.stats().Waiting {
			d := s.h.next()
			s.start(d.ticket)
		}
		s.limits = append(s.limits, s.h.stats().Limit)
		s.client()
	}
}

func (s *sim) close() {
	for _, j := range s.jobs {
		j.ticket.Release(Outcome{})
	}
	waiting := s.h.stats().Waiting
	s.h.g.Close()
	for range waiting {
		s.h.next()
	}
}

func (s *sim) limitsSince(i int) (lo, hi int, mean float64) {
	lo, hi = s.limits[i], s.limits[i]
	for _, l := range s.limits[i:] {
		lo, hi = min(lo, l), max(hi, l)
		mean += float64(l)
	}
	return lo, hi, mean / float64(len(s.limits)-i)
}

// Latency that grows with concurrency beyond 8 brings the limit down from 32 to near 8; when
// latency no longer grows, the limit climbs back to the maximum.
func TestAdaptiveConverges(t *testing.T) {
	s := newSim(t, AdaptiveConfig{Min: 2, Max: 32}, 32)
	defer s.close()

	// Light load teaches the baseline and leaves the limit alone.
	for range 4 {
		s.client()
	}
	s.run(500)
	if lo, _, _ := s.limitsSince(0); lo != 32 {
		t.Fatalf("light load moved the limit down to %d", lo)
	}

	// 64 clients: at 32 units in flight latency is four times the baseline.
	for range 60 {
		s.client()
	}
	start := len(s.limits)
	s.run(6000)
	lo, hi, mean := s.limitsSince(start + 3000)
	t.Logf("overloaded: limit %d..%d, mean %.1f", lo, hi, mean)
	if lo < 8 || hi > 12 {
		t.Errorf("overloaded: limit ranged %d..%d, want within 8..12", lo, hi)
	}
	settled := len(s.limits)
	for i, l := range s.limits[start:] {
		if l <= 12 {
			settled = start + i
			break
		}
	}
	t.Logf("down to 12 after %d units", settled-start)

	// The backend stops queueing: latency is the baseline at any concurrency.
	s.capacity = 1000
	start = len(s.limits)
	s.run(3000)
	lo, hi, mean = s.limitsSince(start + 2000)
	t.Logf("recovered: limit %d..%d, mean %.1f", lo, hi, mean)
	if lo < 30 {
		t.Errorf("recovered: limit fell to %d, want back near 32", lo)
	}
	if lo, hi, _ := s.limitsSince(0); lo < 2 || hi > 32 {
		t.Errorf("limit ranged %d..%d, outside [2, 32]", lo, hi)
	}
}

// Noisy latency alone, with exponentially distributed unit times, moves neither the limit down
// nor the baseline away from the mean, over a long run of saturated windows.
func TestAdaptiveIgnoresNoise(t *testing.T) {
	s := newSim(t, AdaptiveConfig{Min: 2, Max: 32}, 32)
	defer s.close()
	s.capacity, s.expo = 1000, true
	for range 64 {
		s.client()
	}
	s.run(20000)
	lo, _, mean := s.limitsSince(0)
	t.Logf("limit %d..32, mean %.1f", lo, mean)
	if lo < 28 {
		t.Errorf("limit fell to %d without any overload", lo)
	}
	s.h.g.mu.Lock()
	baseline := time.Duration(s.h.g.adaptive.baseline)
	s.h.g.mu.Unlock()
	if baseline < 8*time.Millisecond || baseline > 12*time.Millisecond {
		t.Errorf("baseline %s, want near the mean latency of 10ms", baseline)
	}
}

// With heavy-tailed latency the limit still settles near what the backend serves.
func TestAdaptiveConvergesWithNoise(t *testing.T) {
	s := newSim(t, AdaptiveConfig{Min: 2, Max: 32}, 32)
	defer s.close()
	s.expo = true
	for range 4 {
		s.client()
	}
	s.run(500)
	for range 60 {
		s.client()
	}
	start := len(s.limits)
	s.run(6000)
	lo, hi, mean := s.limitsSince(start + 3000)
	t.Logf("overloaded: limit %d..%d, mean %.1f", lo, hi, mean)
	if lo < 8 || hi > 16 || mean > 14 {
		t.Errorf("overloaded: limit ranged %d..%d, mean %.1f; want within 8..16, mean at most 14", lo, hi, mean)
	}
}

// Dropped units cut the limit once per window down to Min, never below.
func TestAdaptiveBacksOffOnDrops(t *testing.T) {
	s := newSim(t, AdaptiveConfig{Min: 4, Max: 20, Window: 10}, 20)
	defer s.close()
	for range 40 {
		s.client()
	}
	s.drop = true
	s.run(20)
	if l := s.limits[len(s.limits)-1]; l != 18 {
		// One window of 20 samples: 20 × 0.9.
		t.Errorf("after one window of drops the limit is %d, want 18", l)
	}
	s.run(2000)
	if lo, hi, _ := s.limitsSince(0); lo != 4 || hi != 20 {
		t.Errorf("limit ranged %d..%d, want down to exactly 4 from 20", lo, hi)
	}
}

// The limit stays within its bounds whatever it is fed, and SetLimit respects them too.
func TestAdaptiveBounds(t *testing.T) {
	l := newLimiter(AdaptiveConfig{Min: 3, Max: 9, Window: 5}, 50)
	if l.current() != 9 {
		t.Fatalf("initial limit %d, want the gate's 50 held to Max 9", l.current())
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 100000 {
		latency := time.Duration(rng.ExpFloat64() * float64(time.Millisecond) * float64(1+i/10000))
		n := l.sample(latency, rng.IntN(50) == 0, rng.IntN(12))
		if n < 3 || n > 9 {
			t.Fatalf("sample %d: limit %d outside [3, 9]", i, n)
		}
	}
	if l.set(1) != 3 || l.set(100) != 9 {
		t.Fatal("set does not keep the limit within its bounds")
	}

	h := newHarness(t, Config{Limit: 16})
	h.g.SetAdaptive(&AdaptiveConfig{Min: 2})
	if got := h.stats().Limit; got != 16 {
		t.Fatalf("attached with Max 0: limit %d, want the pool's 16", got)
	}
	h.g.SetLimit(100)
	if got := h.stats().Limit; got != 16 {
		t.Fatalf("SetLimit(100) with adaptive Max 16: limit %d", got)
	}
	h.g.SetAdaptive(nil)
	h.g.SetLimit(100)
	if got := h.stats().Limit; got != 100 {
		t.Fatalf("SetLimit(100) after detaching: limit %d", got)
	}
}

// Releases without a latency count toward the window but not toward its mean.
func TestAdaptiveSkipsUnmeasured(t *testing.T) {
	h := newHarness(t, Config{Limit: 1, Adaptive: &AdaptiveConfig{Window: 2}})
	for _, latency := range []time.Duration{0, 7 * time.Millisecond} {
		tk, _ := h.acquire("a")
		tk.Release(Outcome{Latency: latency})
	}
	h.g.mu.Lock()
	baseline := time.Duration(h.g.adaptive.baseline)
	h.g.mu.Unlock()
	if baseline != 7*time.Millisecond {
		t.Fatalf("baseline %s after units of 0 (unmeasured) and 7ms", baseline)
	}
}
