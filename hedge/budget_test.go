package hedge

import (
	"math"
	"sync"
	"sync/atomic"
	"testing"
)

func TestBudgetBurstAndRefill(t *testing.T) {
	var stats Stats
	b := NewBudget(BudgetConfig{Ratio: 0.1, Burst: 3, Stats: &stats})
	for i := range 3 {
		if !b.TryHedge() {
			t.Fatalf("hedge %d of the burst denied", i)
		}
	}
	if b.TryHedge() {
		t.Fatal("hedged beyond the burst")
	}
	for range 9 {
		b.Request()
	}
	if b.TryHedge() {
		t.Fatalf("hedged with %v tokens", b.Tokens())
	}
	b.Request() // the tenth request completes a token, exactly
	if !b.TryHedge() || b.TryHedge() {
		t.Fatal("want exactly one hedge after ten requests at 10%")
	}
	for range 1000 {
		b.Request()
	}
	if got := b.Tokens(); got != 3 {
		t.Fatalf("after many requests %v tokens, want the burst of 3", got)
	}
	requests, hedges, denied := b.Counts()
	if requests != 1010 || hedges != 4 || denied != 3 {
		t.Fatalf("counts %d requests, %d hedges, %d denied; want 1010, 4, 3", requests, hedges, denied)
	}
	if s := stats.Snapshot(); s.Sent != 1010 || s.Hedged != 4 || s.Denied != 3 {
		t.Fatalf("stats %+v", s)
	}
}

// A long run in which every request also asks for a hedge: hedges come to the ratio of
// requests, plus the burst spent at the start.
func TestBudgetLongRun(t *testing.T) {
	for _, tc := range []struct {
		ratio float64
		burst int
	}{
		{0.1, 10}, {0.05, 1}, {0.01, 50}, {0.5, 10}, {1.0 / 3, 5}, {0.000001, 1},
	} {
		b := NewBudget(BudgetConfig{Ratio: tc.ratio, Burst: tc.burst})
		const n = 100_000
		hedges := 0
		for range n {
			b.Request()
			if b.TryHedge() {
				hedges++
			}
		}
		// Only the first request's tokens are lost, to the bucket being full at the start.
		want := float64(tc.burst) + tc.ratio*(n-1)
		if math.Abs(float64(hedges)-want) > 1 {
			t.Errorf("ratio %v burst %d: %d hedges in %d requests, want %.1f", tc.ratio, tc.burst, hedges, n, want)
		}
	}
}

// At 100% every request may be hedged, and no more.
func TestBudgetFull(t *testing.T) {
	b := NewBudget(BudgetConfig{Ratio: 1, Burst: 2})
	for i := range 1000 {
		b.Request()
		if !b.TryHedge() {
			t.Fatalf("hedge %d denied at 100%%", i)
		}
	}
	if b.Tokens() != 1 {
		t.Fatalf("%v tokens left, want the burst less one", b.Tokens())
	}
}

// Eight goroutines requesting and hedging at once, and one watching: tokens never go below
// zero or above the burst, and the hedges stay within the budget.
func TestBudgetConcurrent(t *testing.T) {
	const (
		goroutines = 8
		perG       = 20_000
		burst      = 10
	)
	b := NewBudget(BudgetConfig{Ratio: 0.1, Burst: burst})
	var hedges atomic.Int64
	var done atomic.Bool
	var watcher sync.WaitGroup
	watcher.Go(func() {
		for !done.Load() {
			if tok := b.Tokens(); tok < 0 || tok > burst {
				t.Errorf("%v tokens", tok)
				return
			}
		}
	})
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range perG {
				b.Request()
				if b.TryHedge() {
					hedges.Add(1)
				}
			}
		})
	}
	wg.Wait()
	done.Store(true)
	watcher.Wait()

	requests, allowed, denied := b.Counts()
	if requests != goroutines*perG || allowed+denied != goroutines*perG || int64(allowed) != hedges.Load() {
		t.Fatalf("counts %d, %d, %d; %d hedges seen", requests, allowed, denied, hedges.Load())
	}
	// Every token earned is either spent, still in the bucket, or was cut off by a full bucket,
	// which with everyone hedging happens only at the very start.
	limit := burst + 0.1*float64(requests)
	if float64(allowed)+b.Tokens() > limit+1e-9 || float64(allowed) < limit-burst-1 {
		t.Fatalf("%d hedges and %v tokens left for %d requests, want about %.0f in all", allowed, b.Tokens(), requests, limit)
	}
}

func TestNewBudgetRefuses(t *testing.T) {
	for _, ratio := range []float64{0, -0.1, 1.5, math.NaN(), 1e-9} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewBudget(ratio %v) did not panic", ratio)
				}
			}()
			NewBudget(BudgetConfig{Ratio: ratio})
		}()
	}
	if got := NewBudget(BudgetConfig{Ratio: 0.1}).Tokens(); got != DefaultBurst {
		t.Fatalf("a new budget holds %v tokens, want DefaultBurst", got)
	}
}

func TestParseBudget(t *testing.T) {
	for in, want := range map[string]float64{"10%": 0.1, "2.5%": 0.025, "100%": 1, "0.1%": 0.001} {
		if got, err := ParseBudget(in); err != nil || got != want {
			t.Errorf("ParseBudget(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "%", "10", "0.1", "0%", "-5%", "101%", "NaN%", "Inf%", "10 %", "10%%", "0.00001%"} {
		if got, err := ParseBudget(in); err == nil {
			t.Errorf("ParseBudget(%q) = %v; want an error", in, got)
		}
	}
}

func FuzzParseBudget(f *testing.F) {
	for _, s := range []string{"10%", "0.0001%", "100%", "1e2%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if r, err := ParseBudget(s); err == nil {
			NewBudget(BudgetConfig{Ratio: r}) // must not panic
		}
	})
}
