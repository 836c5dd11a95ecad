package benchmarks

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Clock is the time source of the load loops; tests substitute a fake one.
type Clock interface {
	Now() time.Time
	// SleepUntil returns when t has come, or with ctx's error.
	SleepUntil(ctx context.Context, t time.Time) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) SleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Schedule hands out the intended start times of an open-loop run: a Poisson process of the
// given rate, i.e. exponentially distributed gaps. Clients take times in order, so when all are
// busy the next free one takes the oldest overdue arrival, and its latency — measured from the
// intended time — includes the queueing a real user would have suffered (no coordinated omission).
type Schedule struct {
	mu   sync.Mutex
	next time.Time
	mean float64 // nanoseconds between arrivals
	rng  *rand.Rand
}

// NewSchedule starts a schedule at start with rate arrivals per second.
func NewSchedule(start time.Time, rate float64, rng *rand.Rand) *Schedule {
	return &Schedule{next: start, mean: float64(time.Second) / rate, rng: rng}
}

// Next returns the next intended start time.
func (s *Schedule) Next() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.next
	s.next = s.next.Add(time.Duration(s.rng.ExpFloat64() * s.mean))
	return t
}

// countBefore consumes and counts the arrivals before end: the ones nobody got to send.
func (s *Schedule) countBefore(end time.Time) int64 {
	var n int64
	for s.Next().Before(end) {
		n++
	}
	return n
}

// loop is one client's driver: it starts transactions until the deadline, in a closed loop
// (sched nil: the next starts when the previous ends) or an open loop (at the schedule's times).
type loop struct {
	clock    Clock
	sched    *Schedule
	deadline time.Time
	// exec runs one transaction.
	exec func(ctx context.Context) error
	// done receives each transaction's latency from its intended start, and its error; a failed
	// one's latency counts from when it was sent: how fast the target answered what it refused,
	// apart from any wait for a free client.
	done func(latency time.Duration, err error)
}

// run returns the number of arrivals it took from the schedule but never sent because the
// deadline had passed.
func (l *loop) run(ctx context.Context) (unsent int64) {
	for ctx.Err() == nil {
		var intended time.Time
		if l.sched == nil {
			intended = l.clock.Now()
			if !intended.Before(l.deadline) {
				return 0
			}
		} else {
			intended = l.sched.Next()
			if !intended.Before(l.deadline) {
				return 0
			}
			if err := l.clock.SleepUntil(ctx, intended); err != nil {
				return 1
			}
			if !l.clock.Now().Before(l.deadline) {
				// Overdue arrival found after the end: it never ran, and Run reports it.
				return 1
			}
		}
		sent := l.clock.Now()
		err := l.exec(ctx)
		if err != nil {
			intended = sent
		}
		l.done(l.clock.Now().Sub(intended), err)
	}
	return 0
}
