package hedge

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Defaults for DelayConfig's zero fields.
const (
	DefaultPercentile = 0.95
	DefaultMinDelay   = time.Millisecond
	DefaultMaxDelay   = time.Second
	DefaultWindow     = 1024
	MaxWindow         = 1 << 16

	// warmSamples is how many reads the auto delay waits for before it trusts the window. A
	// p95 of fewer reads is decided by two or three of them.
	warmSamples = 50
	// refreshes is how many times per window the percentile is recomputed: often enough that it
	// lags the window by a thirty-second of it, rarely enough that the scan is a few ns a read.
	refreshes = 32
)

// DelayConfig is one database's hedge delay (--hedge-delay and friends).
type DelayConfig struct {
	// Fixed, when positive, is the delay, whatever the latencies (--hedge-delay 20ms). Min and
	// Max do not apply to it.
	Fixed time.Duration
	// Percentile of recent time-to-first-frame latencies that the auto delay follows, in (0, 1]
	// (0: DefaultPercentile). At p95 about one read in twenty is still waiting when the delay
	// runs out, so hedges add at most about 5% to the load before the budget even applies.
	Percentile float64
	// Min and Max bound the auto delay (0: DefaultMinDelay and DefaultMaxDelay, each moved to
	// the other if it would cross it). Max is also the delay until the window has warmSamples
	// reads: while it learns, the gateway hedges little.
	Min, Max time.Duration
	// Window is how many recent reads the auto delay looks at, rounded up to a power of two
	// (0: DefaultWindow; at most MaxWindow).
	Window int
}

// Validate reports settings NewDelay would refuse, with the flag to change.
func (c DelayConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Fixed < 0:
		return fmt.Errorf("--hedge-delay %s: must be positive", c.Fixed)
	case !(c.Percentile > 0 && c.Percentile <= 1):
		return fmt.Errorf("--hedge-delay-percentile %v: must be above 0 and at most 100", c.Percentile*100)
	case c.Min < 0 || c.Max < 0:
		return fmt.Errorf("--hedge-delay-min %s, --hedge-delay-max %s: must not be negative", c.Min, c.Max)
	case c.Min > c.Max:
		return fmt.Errorf("--hedge-delay-min %s is above --hedge-delay-max %s", c.Min, c.Max)
	case c.Window < 0 || c.Window > MaxWindow:
		return fmt.Errorf("hedge window %d: must be between 1 and %d", c.Window, MaxWindow)
	}
	return nil
}

func (c DelayConfig) withDefaults() DelayConfig {
	if c.Percentile == 0 {
		c.Percentile = DefaultPercentile
	}
	switch {
	case c.Min == 0 && c.Max == 0:
		c.Min, c.Max = DefaultMinDelay, DefaultMaxDelay
	case c.Min == 0:
		c.Min = min(DefaultMinDelay, c.Max)
	case c.Max == 0:
		c.Max = max(DefaultMaxDelay, c.Min)
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	return c
}

// Delay is how long a read waits for its first response frame before it is hedged. It is safe
// for concurrent use; Observe and Current are a few atomic operations each, without locks or
// allocations, because both run on every read.
//
// The auto delay keeps the last Window latencies in a ring, and beside it a histogram of the
// same reads: each Observe adds the new read to its bucket and takes the read it overwrites out
// of its own, so the histogram always counts exactly the window and no sample ever has to be
// sorted. Buckets are log-linear, 16 to each power of two of microseconds (up to 67 s), so a
// percentile read from them is never below the true one and at most 1/16 (and 1 µs) above it.
// Erring high means hedging slightly less than asked, never more.
//
// Only latencies between Min and Max need telling apart, since the delay is clamped to them:
// reads below Min's bucket share one bucket, as do reads in Max's bucket or above. With the
// default bounds that is 161 buckets. Every Window/32 reads, the read that completes the
// stride walks them (a few hundred ns) and caches the percentile for Current, so staleness is
// bounded by a fraction of the window at any request rate, and no clock is read on the hot
// path.
type Delay struct {
	fixed    time.Duration
	min, max time.Duration
	p        float64
	mask     uint64 // window size - 1, the window being a power of two
	warm     uint64 // reads before the percentile is trusted
	stride   uint64 // reads between recomputations, a power of two
	base     int    // the bucket of hist[0]: below Min's, or 0

	current atomic.Int64  // the delay Current returns, in ns
	count   atomic.Uint64 // reads observed, ever
	ring    []atomic.Uint32
	hist    []atomic.Int32 // reads in the window per bucket, from base to Max's bucket
}

// NewDelay returns a delay policy. It panics on settings Validate refuses: flags are checked
// when they are read.
func NewDelay(cfg DelayConfig) *Delay {
	if err := cfg.Validate(); err != nil {
		panic("hedge: " + err.Error())
	}
	cfg = cfg.withDefaults()
	d := &Delay{fixed: cfg.Fixed, min: cfg.Min, max: cfg.Max, p: cfg.Percentile}
	if d.fixed > 0 {
		d.current.Store(int64(d.fixed))
		return d
	}
	size := uint64(1) << bits.Len(uint(cfg.Window-1))
	d.mask = size - 1
	d.warm = min(warmSamples, size)
	d.stride = max(1, size/refreshes)
	d.ring = make([]atomic.Uint32, size)
	d.base = max(bucketOf(d.min)-1, 0)
	d.hist = make([]atomic.Int32, bucketOf(d.max)-d.base+1)
	d.current.Store(int64(d.max))
	return d
}

// Current is the delay to arm the hedge timer with.
func (d *Delay) Current() time.Duration { return time.Duration(d.current.Load()) }

// Observe records one read's time to its first response frame. A fixed delay ignores it.
func (d *Delay) Observe(latency time.Duration) {
	if d.fixed > 0 {
		return
	}
	b := min(max(bucketOf(latency)-d.base, 0), len(d.hist)-1)
	n := d.count.Add(1)
	// Slots hold bucket+1 so that 0 means empty. Swap hands each overwritten read to exactly
	// one caller, so concurrent Observes never remove the same read twice. A reader of hist
	// between the two Adds sees one read too many or too few, which the percentile absorbs.
	// In steady traffic the read overwritten is often in the same bucket: nothing to move.
	if old := d.ring[(n-1)&d.mask].Swap(uint32(b) + 1); old != uint32(b)+1 {
		if old != 0 {
			d.hist[old-1].Add(-1)
		}
		d.hist[b].Add(1)
	}
	if n >= d.warm && (n == d.warm || n&(d.stride-1) == 0) {
		d.refresh(min(n, d.mask+1))
	}
}

// refresh recomputes the cached delay from the histogram of the last total reads.
func (d *Delay) refresh(total uint64) {
	rank := int64(math.Ceil(d.p * float64(total))) // 1-based: the rank-th fastest read
	rank = min(max(rank, 1), int64(total))
	var seen int64
	last := -1
	for i := range d.hist {
		c := int64(d.hist[i].Load())
		if c <= 0 { // empty, or transiently negative while an Observe is halfway
			continue
		}
		last = i
		if seen += c; seen >= rank {
			break
		}
	}
	if last < 0 {
		return
	}
	// If concurrent Observes left the walk short of rank, the slowest bucket seen stands in.
	// Two refreshes racing may store in either order; either result is at most a stride old.
	d.current.Store(int64(min(max(bucketCeil(d.base+last), d.min), d.max)))
}

// The histogram's buckets, in microseconds: below 16 µs one per microsecond; above, each power
// of two [2^k, 2^(k+1)) is cut into 16 equal buckets, so a bucket is at most 1/16 of its values
// wide. Latencies above maxMicros share the last bucket.
const (
	subBits    = 4
	subBuckets = 1 << subBits
	maxMicros  = 1<<26 - 1 // about 67 s, far beyond any sensible hedge delay
	numBuckets = (26-subBits)<<subBits + subBuckets
)

func bucketOf(latency time.Duration) int {
	us := uint64(max(latency, 0) / time.Microsecond)
	us = min(us, maxMicros)
	if us < subBuckets {
		return int(us)
	}
	shift := bits.Len64(us) - 1 - subBits
	return (shift+1)<<subBits + int(us>>shift&(subBuckets-1))
}

// bucketCeil is the bucket's upper bound (exclusive), at or above every latency in it.
func bucketCeil(i int) time.Duration {
	if i < subBuckets {
		return time.Duration(i+1) * time.Microsecond
	}
	shift := i>>subBits - 1
	lower := (subBuckets + i&(subBuckets-1)) << shift
	return time.Duration(lower+1<<shift) * time.Microsecond
}

// ParseDelay reads --hedge-delay: "auto", a Go duration ("20ms"), or plain seconds ("0.02").
// Zero is refused rather than taken to mean "no hedging" or "hedge at once": --hedge off says
// the first, and the second would double every read up to the budget.
func ParseDelay(s string) (fixed time.Duration, auto bool, err error) {
	if s == "auto" {
		return 0, true, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || math.IsNaN(secs) || math.IsInf(secs, 0) {
			return 0, false, fmt.Errorf("--hedge-delay %q: want auto, a duration such as 20ms, or seconds such as 0.02", s)
		}
		if secs*float64(time.Second) >= math.MaxInt64 {
			return 0, false, fmt.Errorf("--hedge-delay %q: too long", s)
		}
		d = time.Duration(math.Round(secs * float64(time.Second)))
	}
	if d <= 0 {
		return 0, false, fmt.Errorf("--hedge-delay %q: must be positive (--hedge off turns hedging off)", s)
	}
	return d, false, nil
}

// ParsePercentile reads --hedge-delay-percentile: "95", "p95" or "99.9", as a fraction. Below
// the median is refused: a delay most reads outlast hedges nearly every read.
func ParsePercentile(s string) (float64, error) {
	p, err := strconv.ParseFloat(strings.TrimPrefix(s, "p"), 64)
	if err != nil || !(p >= 50 && p <= 100) {
		return 0, fmt.Errorf("--hedge-delay-percentile %q: want a percentile from 50 to 100, such as 95 or p99", s)
	}
	return p / 100, nil
}
