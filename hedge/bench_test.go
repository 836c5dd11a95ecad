package hedge

import (
	"sync/atomic"
	"testing"
	"time"
)

// What every read pays, against a floor of one atomic add.
func BenchmarkDelay(b *testing.B) {
	b.Run("baseline/atomic-add", func(b *testing.B) {
		var n atomic.Int64
		b.ReportAllocs()
		for b.Loop() {
			n.Add(1)
		}
	})
	b.Run("observe+current", func(b *testing.B) {
		d := NewDelay(DelayConfig{})
		// Seven latencies in turn, so that the read overwritten, 1,024 reads back, is mostly
		// in another bucket: the dearer case.
		lat := []time.Duration{900 * time.Microsecond, 2 * time.Millisecond, 3 * time.Millisecond,
			5 * time.Millisecond, 8 * time.Millisecond, 13 * time.Millisecond, 40 * time.Millisecond}
		i := 0
		b.ReportAllocs()
		for b.Loop() {
			d.Observe(lat[i%len(lat)])
			_ = d.Current()
			i++
		}
	})
	b.Run("observe+current/parallel", func(b *testing.B) {
		d := NewDelay(DelayConfig{})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				d.Observe(time.Duration(i%1000) * 10 * time.Microsecond)
				_ = d.Current()
				i++
			}
		})
	})
}

func BenchmarkBudget(b *testing.B) {
	b.Run("request+tryhedge", func(b *testing.B) {
		bu := NewBudget(BudgetConfig{Ratio: 0.1})
		b.ReportAllocs()
		for b.Loop() {
			bu.Request()
			bu.TryHedge()
		}
	})
	b.Run("request+tryhedge/parallel", func(b *testing.B) {
		bu := NewBudget(BudgetConfig{Ratio: 0.1})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				bu.Request()
				bu.TryHedge()
			}
		})
	})
}

func BenchmarkBalancerPick(b *testing.B) {
	bal := NewBalancer(1)
	load := []int{3, 1, 4, 1, 5}
	outstanding := func(i int) int { return load[i] }
	b.ReportAllocs()
	for b.Loop() {
		bal.Pick(len(load), outstanding, 2)
	}
}

func BenchmarkRace(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		var r Race
		r.Start()
		r.Hedge()
		if won, losers := r.FirstFrame(1); !won || len(losers) != 1 {
			b.Fatal("hedge lost")
		}
	}
}
