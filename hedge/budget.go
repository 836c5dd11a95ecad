package hedge

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
)

// DefaultBurst is how many hedges a budget saves up: enough to ride out a short stall of one
// replica, few enough that a sudden slowdown of all of them adds little load.
const DefaultBurst = 10

// micro is one token in the budget's fixed-point unit. Ratios are written as percentages, so
// a millionth represents every ratio down to 0.0001% exactly and the long-run share does not
// drift with rounding.
const micro = 1_000_000

// BudgetConfig is one database's hedge budget (--hedge-budget).
type BudgetConfig struct {
	// Ratio is the tokens each original request earns, so the long-run share of extra requests
	// that hedges may add: 0.1 for --hedge-budget 10%. In (0, 1].
	Ratio float64
	// Burst is the most tokens saved up, so the most hedges in a row (below 1: DefaultBurst).
	Burst int
	// Stats counts Sent, Hedged and Denied (nil: counters of the budget's own).
	Stats *Stats
}

// Budget throttles hedges like gRPC's retry throttling: every original request adds Ratio
// tokens, up to Burst, and every hedge costs a whole one. Over any stretch of n requests at
// most Burst + Ratio×n hedges go out, however slow the backends get, which is what keeps
// hedging from doubling the load exactly when the replicas are already struggling. The bucket
// starts full. It is safe for concurrent use and allocation-free.
type Budget struct {
	tokens atomic.Int64 // in micro units, in [0, cap]
	ratio  int64
	cap    int64
	stats  *Stats
}

// NewBudget returns a full budget. It panics on a Ratio outside (0, 1]: flags are checked by
// ParseBudget.
func NewBudget(cfg BudgetConfig) *Budget {
	ratio := math.Round(cfg.Ratio * micro)
	if !(ratio >= 1 && ratio <= micro) {
		panic(fmt.Sprintf("hedge: budget ratio %v must be in (0, 1]", cfg.Ratio))
	}
	if cfg.Burst < 1 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Stats == nil {
		cfg.Stats = new(Stats)
	}
	b := &Budget{ratio: int64(ratio), cap: int64(cfg.Burst) * micro, stats: cfg.Stats}
	b.tokens.Store(b.cap)
	return b
}

// Request earns the tokens of one original request that could be hedged.
func (b *Budget) Request() {
	b.stats.Sent.Add(1)
	for {
		t := b.tokens.Load()
		if t >= b.cap {
			// Full, the usual state while hedges are rare: leave the word unwritten, so the
			// cores sharing it are not made to pass it around.
			return
		}
		if b.tokens.CompareAndSwap(t, min(t+b.ratio, b.cap)) {
			return
		}
	}
}

// TryHedge takes a token for one hedge, reporting false, and counting a denial, if there is
// not a whole one.
func (b *Budget) TryHedge() bool {
	for {
		t := b.tokens.Load()
		if t < micro {
			b.stats.Denied.Add(1)
			return false
		}
		if b.tokens.CompareAndSwap(t, t-micro) {
			b.stats.Hedged.Add(1)
			return true
		}
	}
}

// Tokens is how many hedges the budget would allow now, fractions included.
func (b *Budget) Tokens() float64 { return float64(b.tokens.Load()) / micro }

// Counts returns the requests, hedges allowed and hedges denied so far.
func (b *Budget) Counts() (requests, hedges, denied uint64) {
	return b.stats.Sent.Load(), b.stats.Hedged.Load(), b.stats.Denied.Load()
}

// ParseBudget reads --hedge-budget, a percentage of extra requests such as "10%" or "2.5%",
// as a fraction. The % is required: a bare 10 could mean 10% or ten times.
func ParseBudget(s string) (float64, error) {
	num, ok := strings.CutSuffix(s, "%")
	pct, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || !(pct > 0 && pct <= 100) || math.Round(pct*micro/100) < 1 {
		return 0, fmt.Errorf("--hedge-budget %q: want a percentage of extra requests above 0 and at most 100, such as 10%%", s)
	}
	return pct / 100, nil
}
