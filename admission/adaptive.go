package admission

import "time"

// AdaptiveConfig tunes the adaptive concurrency limit (--adaptive-limit). The limit follows the
// gradient between a unit's latency now and its long-term baseline: when units take much longer
// than usual, more concurrency is only adding queueing inside the backend, so the limit shrinks;
// when they take about as long as usual and the limit is in use, it grows by one.
type AdaptiveConfig struct {
	Min, Max int // bounds of the limit; Min below 1 is 1, Max 0 is the gate's limit (the pool size)
	Initial  int // where the limit starts (0: the gate's current limit)

	// Tolerance is how far latency may rise above the baseline before the limit shrinks
	// (1 or less: 1.5). The limit grows only while latency stays below halfway to it, so that
	// it settles in between instead of oscillating.
	Tolerance float64
	// Window is the fewest samples per adjustment (0: 50): fewer make the mean latency of a
	// window too noisy to act on. A window also spans at least as many samples as the limit,
	// about one round of the units in flight, so that each adjustment sees the effect of the
	// one before.
	Window int
	// Backoff multiplies the limit after a window in which units were dropped (0: 0.9).
	Backoff float64
}

const (
	// smoothing is the share of a window's gradient applied at once, so that one slow window
	// (a few heavy queries) costs little; at a gradient of 0.5 the limit drops 10% a window.
	smoothing = 0.2
	// follow and drift are how many windows the baseline takes to follow latency, when it is
	// clearly the backend's own and when it may be our doing.
	follow = 8
	drift  = 2000
)

// limiter is the state of an adaptive limit. It is pure arithmetic, run under the gate's lock.
type limiter struct {
	cfg      AdaptiveConfig
	limit    float64
	baseline float64 // latency in ns, 0 until the first window
	learned  int     // windows averaged into the baseline while it is new, up to follow

	// The current window.
	samples int
	timed   int     // samples with a latency, not dropped
	sum     float64 // their latency in ns
	peak    int     // most units in flight seen
	dropped bool
}

func newLimiter(cfg AdaptiveConfig, current int) *limiter {
	cfg.Min = max(cfg.Min, 1)
	if cfg.Max <= 0 {
		cfg.Max = current
	}
	cfg.Max = max(cfg.Max, cfg.Min)
	if cfg.Tolerance <= 1 {
		cfg.Tolerance = 1.5
	}
	if cfg.Window <= 0 {
		cfg.Window = 50
	}
	if cfg.Backoff <= 0 || cfg.Backoff >= 1 {
		cfg.Backoff = 0.9
	}
	l := &limiter{cfg: cfg}
	if cfg.Initial > 0 {
		current = cfg.Initial
	}
	l.set(current)
	return l
}

func (l *limiter) current() int { return int(l.limit) }

// set moves the limit to n within the bounds and returns where it landed.
func (l *limiter) set(n int) int {
	l.limit = min(max(float64(n), float64(l.cfg.Min)), float64(l.cfg.Max))
	return l.current()
}

// sample records one released unit, with the number of units in flight when it ended (itself
// included), and returns the limit.
func (l *limiter) sample(latency time.Duration, dropped bool, inflight int) int {
	l.samples++
	l.peak = max(l.peak, inflight)
	switch {
	case dropped:
		// A dropped unit's latency is a timeout, not a measurement.
		l.dropped = true
	case latency > 0:
		l.sum += float64(latency)
		l.timed++
	}
	if l.samples >= max(l.cfg.Window, l.current()) {
		l.adjust()
		l.samples, l.timed, l.sum, l.peak, l.dropped = 0, 0, 0, 0, false
	}
	return l.current()
}

// adjust ends a window.
func (l *limiter) adjust() {
	short := 0.0
	if l.timed > 0 {
		short = l.sum / float64(l.timed)
	}
	tolerance := l.cfg.Tolerance
	switch {
	case l.dropped:
		// Drops are the one unambiguous overload signal: back off at once, once per window,
		// however many units a burst of timeouts dropped together.
		l.limit *= l.cfg.Backoff
	case short == 0 || l.learned == 0:
		// Nothing to compare yet.
	case short > l.baseline*tolerance:
		gradient := max(0.5, l.baseline*tolerance/short)
		l.limit *= 1 - smoothing*(1-gradient)
	case short <= l.baseline*(1+tolerance)/2 && l.peak >= l.current():
		// Only a limit that was reached has shown it is too small.
		l.limit++
	}
	l.limit = min(max(l.limit, float64(l.cfg.Min)), float64(l.cfg.Max))

	switch {
	case short == 0:
	case l.learned < follow:
		// The first windows are averaged: the very first is biased to the fastest units,
		// which are the first to finish.
		l.learned++
		l.baseline += (short - l.baseline) / float64(l.learned)
	case l.peak*2 <= l.current() || l.limit <= float64(l.cfg.Min) || short < l.baseline/2:
		// The gate was not what kept the backend busy (few units were in flight, or the limit
		// is at its floor and cannot go lower), or latency fell far below the baseline: this
		// is the workload's own latency, worth following quickly.
		l.baseline += (short - l.baseline) / follow
	default:
		// With the gate saturated, slower windows may be our own queueing and faster ones
		// noise. Following either quickly would let sustained overload pass for normal, or
		// ratchet the baseline down to the fastest window ever seen and the limit with it.
		l.baseline += (short - l.baseline) / drift
	}
}
