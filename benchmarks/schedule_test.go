package benchmarks

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// fakeClock only moves when told to, or when a loop sleeps until a later time.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) SleepUntil(ctx context.Context, t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	return ctx.Err()
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func TestScheduleIsPoissonAtRate(t *testing.T) {
	const rate = 500.0
	s := NewSchedule(epoch, rate, rand.New(rand.NewPCG(7, 7)))
	const n = 50000
	prev := s.Next()
	if !prev.Equal(epoch) {
		t.Fatalf("first arrival at %v, want the start", prev)
	}
	var sum, sumSq float64
	for range n {
		next := s.Next()
		gap := next.Sub(prev).Seconds()
		if gap < 0 {
			t.Fatal("arrival times went backwards")
		}
		sum += gap
		sumSq += gap * gap
		prev = next
	}
	mean := sum / n
	if want := 1 / rate; math.Abs(mean-want)/want > 0.02 {
		t.Errorf("mean gap %.6fs, want %.6fs ±2%% (rate %.1f/s)", mean, want, 1/mean)
	}
	// Exponential gaps have a standard deviation equal to their mean; fixed gaps would give 0.
	sd := math.Sqrt(sumSq/n - mean*mean)
	if cv := sd / mean; math.Abs(cv-1) > 0.05 {
		t.Errorf("coefficient of variation %.3f, want ≈1 for Poisson arrivals", cv)
	}
}

// A stalled client must not hide the stall: every arrival queued behind it is charged the time
// it waited since its intended start, exactly as a user arriving then would see it.
func TestOpenLoopChargesQueueingFromIntendedStart(t *testing.T) {
	const rate = 100.0
	const stall = 500 * time.Millisecond
	const service = time.Millisecond
	clock := &fakeClock{now: epoch}
	l := loop{
		clock:    clock,
		sched:    NewSchedule(epoch, rate, rand.New(rand.NewPCG(1, 2))),
		deadline: epoch.Add(2 * time.Second),
	}
	calls := 0
	l.exec = func(context.Context) error {
		calls++
		if calls == 1 {
			clock.advance(stall)
		} else {
			clock.advance(service)
		}
		return nil
	}
	var got []time.Duration
	l.done = func(d time.Duration, err error) {
		if err != nil {
			t.Errorf("unexpected error %v", err)
		}
		got = append(got, d)
	}
	if unsent := l.run(context.Background()); unsent != 0 {
		t.Errorf("unsent = %d, want 0 (the loop caught up before the deadline)", unsent)
	}

	// Replay the same arrivals: a single server, FIFO, starting each at max(arrival, free).
	replay := NewSchedule(epoch, rate, rand.New(rand.NewPCG(1, 2)))
	var free time.Time
	var want []time.Duration
	for i := 0; ; i++ {
		at := replay.Next()
		if !at.Before(l.deadline) {
			break
		}
		begin := at
		if free.After(begin) {
			begin = free
		}
		d := service
		if i == 0 {
			d = stall
		}
		free = begin.Add(d)
		want = append(want, free.Sub(at))
	}
	if len(got) != len(want) {
		t.Fatalf("ran %d transactions, want %d (all arrivals before the deadline)", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("transaction %d: latency %v, want %v", i, got[i], want[i])
		}
	}
	if got[0] != stall {
		t.Errorf("stalled transaction latency %v, want %v", got[0], stall)
	}
	// The second arrival came within ~10ms of the start but could only start after the stall.
	if got[1] < stall-100*time.Millisecond {
		t.Errorf("second transaction latency %v: waiting behind the stall was not counted", got[1])
	}
	if last := got[len(got)-1]; last != service {
		t.Errorf("last latency %v, want %v once the backlog drained", last, service)
	}
}

func TestOpenLoopCountsUnsentArrivals(t *testing.T) {
	clock := &fakeClock{now: epoch}
	deadline := epoch.Add(time.Second)
	sched := NewSchedule(epoch, 100, rand.New(rand.NewPCG(3, 4)))
	ran := 0
	l := loop{
		clock: clock, sched: sched, deadline: deadline,
		// The first transaction outlives the deadline; everything due meanwhile is never sent.
		exec: func(context.Context) error { ran++; clock.advance(2 * time.Second); return nil },
		done: func(time.Duration, error) {},
	}
	unsent := l.run(context.Background()) + sched.countBefore(deadline)

	replay := NewSchedule(epoch, 100, rand.New(rand.NewPCG(3, 4)))
	due := replay.countBefore(deadline)
	if ran != 1 {
		t.Errorf("ran %d transactions, want 1", ran)
	}
	if unsent != due-1 {
		t.Errorf("unsent = %d, want %d (all due arrivals but the one that ran)", unsent, due-1)
	}
}

func TestClosedLoopMeasuresServiceTime(t *testing.T) {
	clock := &fakeClock{now: epoch}
	l := loop{
		clock:    clock,
		deadline: epoch.Add(time.Second),
		exec:     func(context.Context) error { clock.advance(300 * time.Millisecond); return nil },
	}
	var got []time.Duration
	l.done = func(d time.Duration, _ error) { got = append(got, d) }
	l.run(context.Background())
	// Starts at 0, 300, 600 and 900ms; none after the deadline.
	if len(got) != 4 {
		t.Fatalf("ran %d transactions, want 4", len(got))
	}
	for _, d := range got {
		if d != 300*time.Millisecond {
			t.Errorf("latency %v, want 300ms", d)
		}
	}
}

func TestLoopStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	clock := &fakeClock{now: epoch}
	n := 0
	l := loop{
		clock: clock, deadline: epoch.Add(time.Hour),
		exec: func(context.Context) error {
			n++
			clock.advance(time.Millisecond)
			if n == 3 {
				cancel()
			}
			return nil
		},
		done: func(time.Duration, error) {},
	}
	l.run(ctx)
	if n != 3 {
		t.Errorf("ran %d transactions after cancel at 3", n)
	}
}
