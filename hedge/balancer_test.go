package hedge

import (
	"math"
	"sync"
	"testing"
)

func TestBalancerSmall(t *testing.T) {
	b := NewBalancer(1)
	load := func(int) int { return 0 }
	for _, tc := range []struct{ n, exclude, want int }{
		{0, -1, -1},
		{-3, -1, -1},
		{1, -1, 0},
		{1, 0, -1}, // the only backend already has the first attempt
		{1, 7, 0},  // an exclude out of range excludes nothing
		{2, 0, 1},
		{2, 1, 0},
	} {
		for range 20 {
			if got := b.Pick(tc.n, load, tc.exclude); got != tc.want {
				t.Fatalf("Pick(%d, exclude %d) = %d, want %d", tc.n, tc.exclude, got, tc.want)
			}
		}
	}
}

// With distinct loads, the power of two choices picks backend k (k-th least loaded, of n) when
// it is drawn and the other draw is more loaded: probability 2(n-1-k) / (n(n-1)).
func TestBalancerPrefersLessLoaded(t *testing.T) {
	const picks = 60_000
	for _, tc := range []struct {
		name    string
		load    []int
		exclude int
		want    []float64
	}{
		{"4 backends", []int{1, 2, 3, 4}, -1, []float64{3.0 / 6, 2.0 / 6, 1.0 / 6, 0}},
		{"4 backends, unordered", []int{7, 0, 9, 3}, -1, []float64{1.0 / 6, 3.0 / 6, 0, 2.0 / 6}},
		{"exclude the least loaded", []int{1, 2, 3, 4}, 0, []float64{0, 2.0 / 3, 1.0 / 3, 0}},
		{"exclude the middle", []int{1, 2, 3, 4}, 2, []float64{2.0 / 3, 1.0 / 3, 0, 0}},
		{"equal loads", []int{5, 5, 5, 5, 5}, -1, []float64{0.2, 0.2, 0.2, 0.2, 0.2}},
		{"equal loads, excluding", []int{5, 5, 5, 5, 5}, 4, []float64{0.25, 0.25, 0.25, 0.25, 0}},
	} {
		b := NewBalancer(42)
		counts := make([]int, len(tc.load))
		calls := 0
		outstanding := func(i int) int { calls++; return tc.load[i] }
		for range picks {
			before := calls
			i := b.Pick(len(tc.load), outstanding, tc.exclude)
			if calls-before != 2 {
				t.Fatalf("%s: Pick read %d loads, want 2", tc.name, calls-before)
			}
			counts[i]++
		}
		for i, c := range counts {
			got := float64(c) / picks
			// Five standard deviations of a binomial share at most 1/2: 0.01.
			if math.Abs(got-tc.want[i]) > 0.01 {
				t.Errorf("%s: backend %d picked %.3f of the time, want %.3f", tc.name, i, got, tc.want[i])
			}
			if tc.want[i] == 0 && c != 0 {
				t.Errorf("%s: backend %d picked %d times, want never", tc.name, i, c)
			}
		}
	}
}

// Whatever the loads, a pick is in range and never the excluded backend when there is another.
func TestBalancerNeverPicksExclude(t *testing.T) {
	b := NewBalancer(7)
	for n := 2; n <= 9; n++ {
		for exclude := -1; exclude < n; exclude++ {
			seen := make([]bool, n)
			for k := range 2000 {
				i := b.Pick(n, func(i int) int { return (i * 7919 * (k + 1)) % 5 }, exclude)
				if i < 0 || i >= n || i == exclude {
					t.Fatalf("n %d exclude %d: picked %d", n, exclude, i)
				}
				seen[i] = true
			}
			for i, ok := range seen {
				if !ok && i != exclude {
					// Only the busiest can never win a pair; with varying loads all get turns.
					t.Errorf("n %d exclude %d: backend %d never picked in 2000", n, exclude, i)
				}
			}
		}
	}
}

func TestBalancerSeeded(t *testing.T) {
	load := func(i int) int { return i % 3 }
	a, b, c := NewBalancer(3), NewBalancer(3), NewBalancer(4)
	same := true
	for range 1000 {
		x, y, z := a.Pick(10, load, 2), b.Pick(10, load, 2), c.Pick(10, load, 2)
		if x != y {
			t.Fatal("two balancers with the same seed diverged")
		}
		same = same && x == z
	}
	if same {
		t.Fatal("balancers with different seeds picked alike 1000 times")
	}
}

func TestBalancerConcurrent(t *testing.T) {
	var b Balancer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for k := range 10_000 {
				if i := b.Pick(3, func(i int) int { return i ^ k&3 }, 1); i == 1 || i < 0 || i > 2 {
					t.Errorf("picked %d", i)
					return
				}
			}
		})
	}
	wg.Wait()
}
