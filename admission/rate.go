package admission

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asyncgate/asyncgate/wire"
)

// CodeRateLimited is the SQLSTATE of a unit refused by a rate limit: 53400,
// configuration_limit_exceeded. Not 53300 (too_many_connections), which the gate uses for a full
// queue: a full queue means the gateway is busy and a retry elsewhere may succeed, while a rate
// limit is the tenant's own quota and only slowing down helps. Both are class 53, so clients that
// back off on insufficient resources treat them alike.
const CodeRateLimited = "53400"

// Rate is N units per Per, as written in --rate-limit user=N/s.
type Rate struct {
	N   int
	Per time.Duration
}

// ParseRate reads "100/s", "6000/m" or "10/h".
func ParseRate(s string) (Rate, error) {
	num, unit, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/s, N/m or N/h", s)
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 {
		return Rate{}, fmt.Errorf("rate %q: N must be a positive integer", s)
	}
	per, ok := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: unit must be s, m or h", s)
	}
	return Rate{N: n, Per: per}, nil
}

func (r Rate) String() string {
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h"}[r.Per]
	if unit == "" {
		return fmt.Sprintf("%d/%s", r.N, r.Per)
	}
	return fmt.Sprintf("%d/%s", r.N, unit)
}

// PerSecond is the rate in units per second.
func (r Rate) PerSecond() float64 { return float64(r.N) / r.Per.Seconds() }

// RateLimiter is a token bucket: it allows rate units a second on average, and bursts of up to
// burst units. It keeps the bucket as a GCRA does, as the time it will be full again rather than
// a token count, so refills are exact to the nanosecond and cost no division per call.
type RateLimiter struct {
	interval time.Duration // between units at the steady rate
	slack    time.Duration // how far ahead of the rate a burst may run
	now      func() time.Time

	mu       sync.Mutex
	tat      time.Time // when the bucket will be full again
	rejected uint64
}

// NewRateLimiter returns a full bucket. rate must be positive; a burst below 1 means one
// second's worth (at least 1). now nil means time.Now.
func NewRateLimiter(rate float64, burst int, now func() time.Time) *RateLimiter {
	if rate <= 0 {
		panic("admission: rate must be positive")
	}
	if now == nil {
		now = time.Now
	}
	if burst < 1 {
		burst = max(1, int(rate))
	}
	interval := time.Duration(float64(time.Second) / rate)
	return &RateLimiter{interval: interval, slack: time.Duration(burst-1) * interval, now: now}
}

// Allow takes a token if there is one.
func (r *RateLimiter) Allow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	tat := r.tat
	if tat.Before(now) {
		tat = now
	}
	if tat.Sub(now) > r.slack {
		r.rejected++
		return false
	}
	r.tat = tat.Add(r.interval)
	return true
}

// Rejected counts the calls to Allow that returned false.
func (r *RateLimiter) Rejected() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rejected
}

// RateLimits holds one token bucket per tenant with a configured rate. It is immutable but for
// the buckets themselves: on reload, build a new one (buckets then start full).
type RateLimits struct {
	rates    map[string]Rate
	limiters map[string]*RateLimiter
}

// NewRateLimits makes a bucket per tenant in rates, each with a burst of N.
func NewRateLimits(rates map[string]Rate, now func() time.Time) *RateLimits {
	l := &RateLimits{rates: make(map[string]Rate, len(rates)), limiters: make(map[string]*RateLimiter, len(rates))}
	for tenant, r := range rates {
		l.rates[tenant] = r
		l.limiters[tenant] = NewRateLimiter(r.PerSecond(), r.N, now)
	}
	return l
}

// Check takes a token from tenant's bucket. It returns nil when the unit may go on, including
// for tenants without a rate and for a nil RateLimits, and otherwise the *wire.Error to send.
func (l *RateLimits) Check(tenant string) error {
	if l == nil {
		return nil
	}
	r, ok := l.limiters[tenant]
	if !ok || r.Allow() {
		return nil
	}
	return RateError(tenant, l.rates[tenant])
}

// Rejected returns the rejections so far per tenant with a rate.
func (l *RateLimits) Rejected() map[string]uint64 {
	if l == nil {
		return nil
	}
	out := make(map[string]uint64, len(l.limiters))
	for tenant, r := range l.limiters {
		out[tenant] = r.Rejected()
	}
	return out
}

// RateError is the ErrorResponse for a unit refused by tenant's rate limit.
func RateError(tenant string, r Rate) *wire.Error {
	return &wire.Error{Code: CodeRateLimited, Message: fmt.Sprintf(
		"user %q is over its rate limit of %s requests (--rate-limit)", tenant, r)}
}
