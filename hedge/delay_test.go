package hedge

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestBuckets(t *testing.T) {
	// Every latency lies below its bucket's ceiling and within 1/16 (or 1 µs) of it, and
	// buckets are in order: the properties the percentile's error bound rests on.
	prev := -1
	for us := time.Duration(0); us <= 1<<20; us++ {
		d := us * time.Microsecond
		b := bucketOf(d)
		if b < prev || b > prev+1 {
			t.Fatalf("%v in bucket %d after %d: buckets must be contiguous", d, b, prev)
		}
		prev = b
		ceil := bucketCeil(b)
		if ceil <= d || ceil-d > max(d/subBuckets, time.Microsecond) {
			t.Fatalf("%v in bucket %d with ceiling %v", d, b, ceil)
		}
	}
	if got := bucketOf(time.Hour); got != numBuckets-1 {
		t.Fatalf("an hour is in bucket %d, want the last, %d", got, numBuckets-1)
	}
	if got := bucketOf(maxMicros * time.Microsecond); got != numBuckets-1 {
		t.Fatalf("the largest tracked latency is in bucket %d, want %d", got, numBuckets-1)
	}
	if got := bucketOf(-time.Second); got != 0 {
		t.Fatalf("a negative latency is in bucket %d, want 0", got)
	}
}

func TestDelayKnownDistribution(t *testing.T) {
	// 98% of reads at 5 ms and 2% at 50 ms, shuffled.
	samples := make([]time.Duration, 0, 1024)
	for i := range 1024 {
		if i < 1004 {
			samples = append(samples, 5*time.Millisecond)
		} else {
			samples = append(samples, 50*time.Millisecond)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(samples), func(i, j int) { samples[i], samples[j] = samples[j], samples[i] })

	for _, tc := range []struct {
		p        float64
		min, max time.Duration
		want     time.Duration
	}{
		{0.95, 0, 0, 5 * time.Millisecond},
		{0.99, 0, 0, 50 * time.Millisecond},
		{0.5, 0, 0, 5 * time.Millisecond},
		{1, 0, 0, 50 * time.Millisecond},
		{0.95, 10 * time.Millisecond, 0, 10 * time.Millisecond}, // raised to Min
		{0.99, 0, 20 * time.Millisecond, 20 * time.Millisecond}, // cut to Max
	} {
		d := NewDelay(DelayConfig{Percentile: tc.p, Min: tc.min, Max: tc.max})
		for _, s := range samples {
			d.Observe(s)
		}
		got := d.Current()
		if got < tc.want || got > tc.want+tc.want/subBuckets {
			t.Errorf("p%v in [%v, %v]: %v, want %v (+1/16)", tc.p*100, tc.min, tc.max, got, tc.want)
		}
	}
}

// Against the exact percentile of the window, for several distributions: never below it, at
// most a bucket above it.
func TestDelayTracksExactPercentile(t *testing.T) {
	dists := map[string]func(*rand.Rand) time.Duration{
		"uniform 1-10ms": func(r *rand.Rand) time.Duration {
			return time.Millisecond + time.Duration(r.Int64N(int64(9*time.Millisecond)))
		},
		"exponential mean 2ms": func(r *rand.Rand) time.Duration {
			return time.Duration(r.ExpFloat64() * float64(2*time.Millisecond))
		},
		"bimodal 200us/30ms": func(r *rand.Rand) time.Duration {
			if r.IntN(100) < 90 {
				return 200*time.Microsecond + time.Duration(r.Int64N(int64(50*time.Microsecond)))
			}
			return 30 * time.Millisecond
		},
	}
	for name, draw := range dists {
		for _, p := range []float64{0.5, 0.9, 0.95, 0.99} {
			rng := rand.New(rand.NewPCG(7, uint64(p*1000)))
			d := NewDelay(DelayConfig{Percentile: p, Min: time.Microsecond, Max: time.Minute, Window: 512})
			var all []time.Duration
			for round := range 40 {
				for range 512 / refreshes { // one stride: Current is fresh after it
					s := draw(rng)
					all = append(all, s)
					d.Observe(s)
				}
				if round < 5 {
					continue
				}
				window := slices.Clone(all[max(0, len(all)-512):])
				slices.Sort(window)
				rank := int(float64(len(window))*p+0.999999) - 1
				exact := window[rank]
				got := d.Current()
				if got < exact || got > exact+exact/subBuckets+time.Microsecond {
					t.Fatalf("%s p%v after %d reads: %v, exact %v", name, p*100, len(all), got, exact)
				}
			}
		}
	}
}

func TestDelayWarmUpAndWindow(t *testing.T) {
	d := NewDelay(DelayConfig{Min: time.Millisecond, Max: 200 * time.Millisecond})
	for i := range warmSamples - 1 {
		d.Observe(2 * time.Millisecond)
		if got := d.Current(); got != 200*time.Millisecond {
			t.Fatalf("after %d reads the delay is %v, want Max while learning", i+1, got)
		}
	}
	d.Observe(2 * time.Millisecond)
	if got := d.Current(); got < 2*time.Millisecond || got > 2125*time.Microsecond {
		t.Fatalf("after %d reads at 2ms the delay is %v", warmSamples, got)
	}
	// A window later, the old latencies are gone entirely.
	for range DefaultWindow {
		d.Observe(20 * time.Millisecond)
	}
	if got := d.Current(); got < 20*time.Millisecond || got > 21250*time.Microsecond {
		t.Fatalf("after a window at 20ms the delay is %v", got)
	}
	var sum int32
	for i := range d.hist {
		sum += d.hist[i].Load()
	}
	if sum != DefaultWindow {
		t.Fatalf("the histogram counts %d reads, want the window of %d", sum, DefaultWindow)
	}
	// Far below Min and far above Max.
	for range DefaultWindow {
		d.Observe(10 * time.Microsecond)
	}
	if got := d.Current(); got != time.Millisecond {
		t.Fatalf("fast reads: delay %v, want Min", got)
	}
	for range DefaultWindow {
		d.Observe(time.Hour)
	}
	if got := d.Current(); got != 200*time.Millisecond {
		t.Fatalf("slow reads: delay %v, want Max", got)
	}
}

// Latencies outside [Min, Max] share the end buckets, which still give exactly Min and Max.
func TestDelayBucketRange(t *testing.T) {
	d := NewDelay(DelayConfig{})
	if len(d.hist) != 161 {
		t.Fatalf("%d buckets for the default bounds, want 161", len(d.hist))
	}
	for _, tc := range []struct {
		lat, want time.Duration
	}{
		{0, time.Millisecond},
		{990 * time.Microsecond, time.Millisecond},        // the bucket below 1ms's
		{999 * time.Microsecond, 1024 * time.Microsecond}, // 1ms's bucket, [992µs, 1024µs)
		{time.Millisecond, 1024 * time.Microsecond},
		{999 * time.Millisecond, time.Second},
		{time.Second, time.Second},
		{time.Hour, time.Second},
	} {
		d := NewDelay(DelayConfig{Window: 64})
		for range 64 {
			d.Observe(tc.lat)
		}
		if got := d.Current(); got != tc.want {
			t.Errorf("reads at %v: delay %v, want %v", tc.lat, got, tc.want)
		}
	}
}

func TestDelayFixed(t *testing.T) {
	d := NewDelay(DelayConfig{Fixed: 20 * time.Millisecond, Min: time.Second, Max: time.Minute})
	for range 5000 {
		d.Observe(time.Millisecond)
	}
	if got := d.Current(); got != 20*time.Millisecond {
		t.Fatalf("fixed delay is %v, want 20ms", got)
	}
}

func TestDelayConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg      DelayConfig
		min, max time.Duration
		window   int
		ok       bool
	}{
		{DelayConfig{}, DefaultMinDelay, DefaultMaxDelay, DefaultWindow, true},
		{DelayConfig{Max: 500 * time.Microsecond}, 500 * time.Microsecond, 500 * time.Microsecond, DefaultWindow, true},
		{DelayConfig{Min: 2 * time.Second}, 2 * time.Second, 2 * time.Second, DefaultWindow, true},
		{DelayConfig{Window: 1000}, DefaultMinDelay, DefaultMaxDelay, 1024, true},
		{DelayConfig{Window: 1}, DefaultMinDelay, DefaultMaxDelay, 1, true},
		{DelayConfig{Min: 2 * time.Second, Max: time.Second}, 0, 0, 0, false},
		{DelayConfig{Min: -1}, 0, 0, 0, false},
		{DelayConfig{Fixed: -1}, 0, 0, 0, false},
		{DelayConfig{Percentile: 1.5}, 0, 0, 0, false},
		{DelayConfig{Percentile: -0.5}, 0, 0, 0, false},
		{DelayConfig{Window: MaxWindow + 1}, 0, 0, 0, false},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%+v: Validate = %v, want ok %v", tc.cfg, err, tc.ok)
			continue
		}
		if !tc.ok {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("%+v: NewDelay did not panic", tc.cfg)
					}
				}()
				NewDelay(tc.cfg)
			}()
			continue
		}
		d := NewDelay(tc.cfg)
		if d.min != tc.min || d.max != tc.max || len(d.ring) != tc.window || d.Current() != tc.max {
			t.Errorf("%+v: min %v max %v window %d current %v; want %v %v %d", tc.cfg, d.min, d.max, len(d.ring), d.Current(), tc.min, tc.max, tc.window)
		}
	}
	// A window smaller than the warm-up is trusted once full.
	d := NewDelay(DelayConfig{Window: 8})
	for range 8 {
		d.Observe(3 * time.Millisecond)
	}
	if got := d.Current(); got < 3*time.Millisecond || got > 3250*time.Microsecond {
		t.Fatalf("window of 8: delay %v after 8 reads", got)
	}
}

// Concurrent readers and writers: the delay stays within its bounds and the histogram ends up
// counting exactly the window.
func TestDelayConcurrent(t *testing.T) {
	d := NewDelay(DelayConfig{Min: time.Millisecond, Max: 100 * time.Millisecond, Window: 256})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 99))
			for range 5000 {
				d.Observe(time.Duration(rng.Int64N(int64(200 * time.Millisecond))))
				if c := d.Current(); c < time.Millisecond || c > 100*time.Millisecond {
					t.Errorf("delay %v outside [1ms, 100ms]", c)
					return
				}
			}
		})
	}
	wg.Wait()
	var sum int32
	for i := range d.hist {
		if c := d.hist[i].Load(); c < 0 {
			t.Fatalf("bucket %d counts %d", i, c)
		} else {
			sum += c
		}
	}
	if sum != 256 {
		t.Fatalf("the histogram counts %d reads, want 256", sum)
	}
}

func TestParseDelay(t *testing.T) {
	for _, tc := range []struct {
		in    string
		fixed time.Duration
		auto  bool
	}{
		{"auto", 0, true},
		{"20ms", 20 * time.Millisecond, false},
		{"1.5s", 1500 * time.Millisecond, false},
		{"0.02", 20 * time.Millisecond, false},
		{"2", 2 * time.Second, false},
		{"250us", 250 * time.Microsecond, false},
	} {
		fixed, auto, err := ParseDelay(tc.in)
		if err != nil || fixed != tc.fixed || auto != tc.auto {
			t.Errorf("ParseDelay(%q) = %v, %v, %v; want %v, %v", tc.in, fixed, auto, err, tc.fixed, tc.auto)
		}
	}
	for _, in := range []string{"", "0", "0ms", "-5ms", "-0.1", "AUTO", "off", "ms", "NaN", "Inf", "1e300", "20 ms", "0.0000000001"} {
		if fixed, auto, err := ParseDelay(in); err == nil {
			t.Errorf("ParseDelay(%q) = %v, %v; want an error", in, fixed, auto)
		}
	}
}

func TestParsePercentile(t *testing.T) {
	for in, want := range map[string]float64{"95": 0.95, "p99": 0.99, "99.9": 0.999, "p50": 0.5, "100": 1} {
		if got, err := ParsePercentile(in); err != nil || math.Abs(got-want) > 1e-12 {
			t.Errorf("ParsePercentile(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "p", "0.95", "49", "101", "NaN", "95%", "pp95"} {
		if got, err := ParsePercentile(in); err == nil {
			t.Errorf("ParsePercentile(%q) = %v; want an error", in, got)
		}
	}
}

func FuzzParseDelay(f *testing.F) {
	for _, s := range []string{"auto", "20ms", "0.02", "1e9", "-1", "9223372036s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fixed, auto, err := ParseDelay(s)
		switch {
		case err != nil:
			if fixed != 0 || auto {
				t.Fatalf("%q: error %v with %v, %v", s, err, fixed, auto)
			}
		case auto:
			if fixed != 0 {
				t.Fatalf("%q: auto with %v", s, fixed)
			}
		case fixed <= 0:
			t.Fatalf("%q: accepted %v", s, fixed)
		default:
			NewDelay(DelayConfig{Fixed: fixed}) // must not panic
		}
	})
}

func FuzzParsePercentile(f *testing.F) {
	for _, s := range []string{"95", "p99", "50", "100.0000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePercentile(s)
		if err == nil {
			NewDelay(DelayConfig{Percentile: p}) // must not panic
		}
	})
}
