package admission

import (
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	for in, want := range map[string]Rate{
		"100/s":  {100, time.Second},
		"6000/m": {6000, time.Minute},
		"1/h":    {1, time.Hour},
	} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), in)
		}
	}
	for _, in := range []string{"", "100", "100/d", "0/s", "-1/s", "x/s", "1.5/s", "100/"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) accepted", in)
		}
	}
	if r := (Rate{N: 30, Per: time.Minute}).PerSecond(); r != 0.5 {
		t.Errorf("30/m is %v per second, want 0.5", r)
	}
}

func TestRateLimiterBurstAndRefill(t *testing.T) {
	clock := newFakeClock()
	r := NewRateLimiter(100, 5, clock.Now)
	for i := range 5 {
		if !r.Allow() {
			t.Fatalf("unit %d of the burst refused", i)
		}
	}
	if r.Allow() {
		t.Fatal("allowed beyond the burst")
	}
	clock.Advance(10*time.Millisecond - time.Nanosecond)
	if r.Allow() {
		t.Fatal("allowed before a token came back")
	}
	clock.Advance(time.Nanosecond)
	if !r.Allow() || r.Allow() {
		t.Fatal("want exactly one unit after 10ms at 100/s")
	}
	clock.Advance(time.Hour)
	allowed := 0
	for range 20 {
		if r.Allow() {
			allowed++
		}
	}
	if allowed != 5 {
		t.Fatalf("after an hour idle %d allowed, want the burst of 5", allowed)
	}
	if got := r.Rejected(); got != 1+1+1+15 {
		t.Fatalf("rejected %d, want 18", got)
	}
}

// Over a long run the rate is exact, with no drift from rounding.
func TestRateLimiterSteadyRate(t *testing.T) {
	clock := newFakeClock()
	r := NewRateLimiter(3, 1, clock.Now) // a third of a second does not divide evenly
	allowed := 0
	for range 60 * 1000 {
		clock.Advance(time.Millisecond)
		if r.Allow() {
			allowed++
		}
	}
	if allowed < 179 || allowed > 181 {
		t.Fatalf("%d allowed in 60s at 3/s, want 180", allowed)
	}
}

func TestRateLimits(t *testing.T) {
	clock := newFakeClock()
	limits := NewRateLimits(map[string]Rate{"alice": {2, time.Second}}, clock.Now)
	for range 2 {
		if err := limits.Check("alice"); err != nil {
			t.Fatal(err)
		}
	}
	err := limits.Check("alice")
	if sqlstate(err) != CodeRateLimited || !strings.Contains(err.Error(), "--rate-limit") ||
		!strings.Contains(err.Error(), `"alice"`) || !strings.Contains(err.Error(), "2/s") {
		t.Fatalf("over the rate: got %v, want 53400 naming alice, 2/s and --rate-limit", err)
	}
	for range 100 {
		if err := limits.Check("bob"); err != nil {
			t.Fatalf("bob has no rate limit: %v", err)
		}
	}
	clock.Advance(500 * time.Millisecond)
	if err := limits.Check("alice"); err != nil {
		t.Fatalf("after half a second at 2/s: %v", err)
	}
	if got := limits.Rejected(); len(got) != 1 || got["alice"] != 1 {
		t.Fatalf("rejected %v, want alice 1", got)
	}
	var none *RateLimits
	if none.Check("alice") != nil || none.Rejected() != nil {
		t.Fatal("a nil RateLimits must allow everything")
	}
}
