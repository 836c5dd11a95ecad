package admission

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/asyncgate/asyncgate/wire"
)

// harness drives a gate on a fake clock and collects what it delivers.
type harness struct {
	t     *testing.T
	clock *fakeClock
	g     *Gate
	got   chan delivery
}

type delivery struct {
	tenant string
	ticket *Ticket
	err    error
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	clock := newFakeClock()
	cfg.Now, cfg.AfterFunc = clock.Now, clock.AfterFunc
	if cfg.Name == "" {
		cfg.Name = "db/user"
	}
	return &harness{t: t, clock: clock, g: NewGate(cfg), got: make(chan delivery, 10000)}
}

// acquire returns the ticket admitted at once, or nil and the withdraw function of a unit that
// waits; its answer comes through h.got.
func (h *harness) acquire(tenant string) (*Ticket, func() bool) {
	h.t.Helper()
	tk, withdraw, err := h.g.Acquire(tenant, Waiter{Deliver: func(tk *Ticket, err error) {
		h.got <- delivery{tenant, tk, err}
	}})
	if err != nil {
		h.t.Fatalf("acquire for %s: %v", tenant, err)
	}
	return tk, withdraw
}

func (h *harness) mustWait(tenant string) func() bool {
	h.t.Helper()
	tk, withdraw := h.acquire(tenant)
	if tk != nil {
		h.t.Fatalf("%s was admitted at once, want a wait", tenant)
	}
	return withdraw
}

func (h *harness) next() delivery {
	h.t.Helper()
	select {
	case d := <-h.got:
		return d
	case <-time.After(10 * time.Second):
		h.t.Fatal("nothing delivered after 10s")
		return delivery{}
	}
}

// serve releases cur and returns the delivery it makes room for, which must be a ticket.
func (h *harness) serve(cur *Ticket) delivery {
	h.t.Helper()
	cur.Release(Outcome{})
	d := h.next()
	if d.err != nil {
		h.t.Fatalf("delivery to %s: %v", d.tenant, d.err)
	}
	return d
}

func (h *harness) stats() GateStats { return h.g.Stats() }

func sqlstate(err error) string {
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code
	}
	return ""
}

func TestFastPath(t *testing.T) {
	h := newHarness(t, Config{Limit: 2})
	a, _ := h.acquire("a")
	b, _ := h.acquire("b")
	if a == nil || b == nil {
		t.Fatal("units within the limit must be admitted at once")
	}
	if a.Waited() != 0 {
		t.Errorf("Waited = %s, want 0 for a unit admitted at once", a.Waited())
	}
	h.mustWait("c")
	a.Release(Outcome{})
	a.Release(Outcome{}) // a second release must not free a second slot
	c := h.next()
	if s := h.stats(); s.Running != 2 || s.Waiting != 0 || s.Admitted != 3 {
		t.Fatalf("stats %+v, want 2 running, 0 waiting, 3 admitted", s)
	}
	b.Release(Outcome{})
	c.ticket.Release(Outcome{})
	if s := h.stats(); s.Running != 0 {
		t.Fatalf("running %d after every release, want 0", s.Running)
	}
}

// A tenant flooding the gate with ten times the units of another does not hold the other back:
// with equal weights and one slot, service alternates while both wait.
func TestFloodDoesNotDelayOthers(t *testing.T) {
	h := newHarness(t, Config{Limit: 1})
	cur, _ := h.acquire("flood")
	for range 100 {
		h.mustWait("flood")
	}
	for range 10 {
		h.mustWait("quiet")
	}
	if s := h.stats(); s.WaitingBy["flood"] != 100 || s.WaitingBy["quiet"] != 10 {
		t.Fatalf("waiting by tenant %v, want flood 100, quiet 10", s.WaitingBy)
	}
	var order strings.Builder
	for range 20 {
		d := h.serve(cur)
		order.WriteString(d.tenant[:1])
		cur = d.ticket
	}
	if got, want := order.String(), strings.Repeat("fq", 10); got != want {
		t.Fatalf("service order %s, want %s", got, want)
	}
	for range 90 {
		cur = h.serve(cur).ticket
	}
	cur.Release(Outcome{})
}

// Under saturation, weights 4:1 give 4:1 service.
func TestWeightsShareSlots(t *testing.T) {
	weights := map[string]int{"big": 4, "small": 1}
	h := newHarness(t, Config{Limit: 3, Weights: func(tenant string) int { return weights[tenant] }})
	var running []*Ticket
	for range 3 {
		tk, _ := h.acquire("big")
		running = append(running, tk)
	}
	// Both keep a backlog: each served unit is replaced by another of the same tenant.
	for range 50 {
		h.mustWait("big")
		h.mustWait("small")
	}
	served := map[string]int{}
	for i := range 500 {
		d := h.serve(running[i%3])
		running[i%3] = d.ticket
		served[d.tenant]++
		h.mustWait(d.tenant)
	}
	if served["big"] != 400 || served["small"] != 100 {
		t.Fatalf("served %v, want big 400, small 100", served)
	}
	h.g.Close()
	for range 100 {
		if d := h.next(); sqlstate(d.err) != "57P01" {
			t.Fatalf("waiter after close: got %v, want 57P01", d.err)
		}
	}
	for _, tk := range running {
		tk.Release(Outcome{})
	}
}

// A weight-1 tenant behind sustained weight-100 load is served within Aging (plus the time for
// a slot to come free); without aging it waits most of a round of 100.
func TestAgingBoundsWait(t *testing.T) {
	const (
		service = time.Millisecond
		aging   = 10 * time.Millisecond
	)
	for _, tc := range []struct {
		aging   time.Duration
		minWait time.Duration // the worst light wait must reach this
		maxWait time.Duration // and stay within this
	}{
		{aging: aging, maxWait: aging + service},
		{aging: 0, minWait: 50 * service, maxWait: 101 * service},
	} {
		t.Run(fmt.Sprint("aging=", tc.aging), func(t *testing.T) {
			h := newHarness(t, Config{Limit: 1, Aging: tc.aging, Weights: func(tenant string) int {
				if tenant == "heavy" {
					return 100
				}
				return 1
			}})
			cur, _ := h.acquire("heavy")
			for range 30 {
				h.mustWait("heavy")
			}
			var worst time.Duration
			lightServed, lightWaiting := 0, false
			heavyServed := 0
			for step := range 3000 {
				if !lightWaiting && step%37 == 0 {
					h.mustWait("light")
					lightWaiting = true
				}
				h.clock.Advance(service)
				d := h.serve(cur)
				cur = d.ticket
				if d.tenant == "heavy" {
					heavyServed++
					h.mustWait("heavy")
					continue
				}
				lightServed++
				lightWaiting = false
				worst = max(worst, d.ticket.Waited())
			}
			cur.Release(Outcome{})
			waiting := h.stats().Waiting
			h.g.Close()
			for range waiting {
				h.next()
			}
			if worst > tc.maxWait || worst < tc.minWait {
				t.Fatalf("worst light wait %s, want within [%s, %s]", worst, tc.minWait, tc.maxWait)
			}
			if lightServed < 20 || heavyServed < 2500 {
				t.Fatalf("served light %d, heavy %d: both must progress", lightServed, heavyServed)
			}
		})
	}
}

// When several tenants are starved, the one starved longest goes first, and a tenant served a
// moment ago, however long its backlog, waits for the starved ones.
func TestAgingServesLongestStarvedFirst(t *testing.T) {
	h := newHarness(t, Config{Limit: 1, Aging: 5 * time.Millisecond})
	cur, _ := h.acquire("heavy")
	for range 3 {
		h.mustWait("heavy")
	}
	h.clock.Advance(time.Millisecond)
	for i := range 20 {
		h.mustWait(fmt.Sprint("light", i))
		h.clock.Advance(time.Microsecond)
	}
	h.clock.Advance(100 * time.Millisecond) // everyone is starved now
	var order []string
	for range 23 {
		d := h.serve(cur)
		order = append(order, d.tenant)
		cur = d.ticket
	}
	cur.Release(Outcome{})
	want := []string{"heavy"}
	for i := range 20 {
		want = append(want, fmt.Sprint("light", i))
	}
	want = append(want, "heavy", "heavy")
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("order %v, want %v", order, want)
	}
}

func TestQueueFull(t *testing.T) {
	h := newHarness(t, Config{Name: "app/alice", Limit: 1, MaxQueue: 2})
	cur, _ := h.acquire("a")
	h.mustWait("a")
	h.mustWait("b")
	tk, withdraw, err := h.g.Acquire("c", Waiter{Deliver: func(*Ticket, error) { t.Error("refused unit got a delivery") }})
	if tk != nil || withdraw != nil || sqlstate(err) != "53300" ||
		!strings.Contains(err.Error(), "--max-queue") || !strings.Contains(err.Error(), "app/alice") {
		t.Fatalf("full queue: got %v, want 53300 naming the pool and --max-queue", err)
	}
	if s := h.stats(); s.RejectedFull != 1 || s.Waiting != 2 {
		t.Fatalf("stats %+v, want 1 rejected, 2 waiting", s)
	}
	for range 2 {
		cur = h.serve(cur).ticket
	}
	cur.Release(Outcome{})
}

func TestWaitTimeout(t *testing.T) {
	const timeout = 3 * time.Second
	h := newHarness(t, Config{Limit: 1, WaitTimeout: timeout})
	cur, _ := h.acquire("a")
	h.mustWait("a")
	h.clock.Advance(timeout - time.Nanosecond)
	if s := h.stats(); s.Waiting != 1 || len(h.got) != 0 {
		t.Fatalf("before the timeout: %+v, %d delivered", s, len(h.got))
	}
	h.clock.Advance(time.Nanosecond)
	// The timer delivers on its own goroutine, which the fake clock makes the caller's.
	if len(h.got) != 1 {
		t.Fatalf("%d delivered at the timeout, want 1", len(h.got))
	}
	d := <-h.got
	if d.ticket != nil || sqlstate(d.err) != "57014" || !strings.Contains(d.err.Error(), "--query-wait-timeout") {
		t.Fatalf("at the timeout: got %v, want 57014 naming --query-wait-timeout", d.err)
	}
	if s := h.stats(); s.Waiting != 0 || s.RejectedTimeout != 1 || s.Running != 1 {
		t.Fatalf("stats %+v, want nothing waiting, 1 timed out, 1 running", s)
	}
	cur.Release(Outcome{})
	if s := h.stats(); s.Running != 0 {
		t.Fatalf("running %d, want 0: a timed-out waiter holds no slot", s.Running)
	}
}

func TestNotifyOnce(t *testing.T) {
	h := newHarness(t, Config{Limit: 1, Notify: 5 * time.Second, WaitTimeout: 20 * time.Second})
	cur, _ := h.acquire("a")
	var notes []time.Duration
	_, _, err := h.g.Acquire("b", Waiter{
		Deliver: func(tk *Ticket, err error) { h.got <- delivery{"b", tk, err} },
		Notify:  func(waited time.Duration) { notes = append(notes, waited) }, // the fake clock's goroutine
	})
	if err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(5*time.Second - time.Nanosecond)
	if len(notes) != 0 {
		t.Fatalf("notified %v before the notify delay", notes)
	}
	h.clock.Advance(time.Nanosecond)
	h.clock.Advance(10 * time.Second)
	if len(notes) != 1 || notes[0] != 5*time.Second {
		t.Fatalf("notified %v, want once after 5s", notes)
	}
	if s := h.stats(); s.OldestWait != 15*time.Second {
		t.Fatalf("oldest wait %s, want 15s", s.OldestWait)
	}
	d := h.serve(cur)
	if d.ticket.Waited() != 15*time.Second {
		t.Errorf("Waited = %s, want 15s", d.ticket.Waited())
	}
	h.clock.Advance(time.Minute)
	d.ticket.Release(Outcome{})
	if s := h.stats(); len(notes) != 1 || s.Notified != 1 || s.RejectedTimeout != 0 {
		t.Fatalf("after service: notes %v, stats %+v; want one notification and no timeout", notes, s)
	}
}

func TestWithdraw(t *testing.T) {
	h := newHarness(t, Config{Limit: 1, WaitTimeout: time.Second})
	cur, _ := h.acquire("a")
	withdraw := h.mustWait("b")
	h.mustWait("c")
	if !withdraw() {
		t.Fatal("withdraw of a waiting unit reported false")
	}
	if withdraw() {
		t.Fatal("second withdraw reported true")
	}
	if s := h.stats(); s.Waiting != 1 || s.WaitingBy["b"] != 0 {
		t.Fatalf("stats %+v, want only c waiting", s)
	}
	d := h.serve(cur)
	if d.tenant != "c" {
		t.Fatalf("served %s, want c", d.tenant)
	}
	h.clock.Advance(time.Hour) // b's timer was stopped: nothing more arrives
	d.ticket.Release(Outcome{})
	if len(h.got) != 0 {
		t.Fatalf("withdrawn unit got %+v", <-h.got)
	}
}

func TestSetLimitAdmitsWaiters(t *testing.T) {
	h := newHarness(t, Config{Limit: 1})
	cur, _ := h.acquire("a")
	for range 3 {
		h.mustWait("a")
	}
	h.g.SetLimit(3)
	tickets := []*Ticket{cur, h.next().ticket, h.next().ticket}
	if s := h.stats(); s.Running != 3 || s.Waiting != 1 || s.Limit != 3 {
		t.Fatalf("stats %+v, want 3 running, 1 waiting, limit 3", s)
	}
	h.g.SetLimit(1)
	tickets[0].Release(Outcome{})
	tickets[1].Release(Outcome{})
	if s := h.stats(); s.Running != 1 || s.Waiting != 1 {
		t.Fatalf("stats %+v: above the new limit, releases must not admit", s)
	}
	d := h.serve(tickets[2])
	d.ticket.Release(Outcome{})
}

func TestClose(t *testing.T) {
	h := newHarness(t, Config{Name: "app/bob", Limit: 1, WaitTimeout: time.Second})
	cur, _ := h.acquire("a")
	h.mustWait("a")
	h.mustWait("b")
	h.g.Close()
	for range 2 {
		if d := h.next(); sqlstate(d.err) != "57P01" || d.ticket != nil {
			t.Fatalf("waiter at close: got %v, want 57P01", d.err)
		}
	}
	if _, _, err := h.g.Acquire("a", Waiter{}); sqlstate(err) != "57P01" {
		t.Fatalf("acquire after close: got %v, want 57P01", err)
	}
	h.clock.Advance(time.Hour) // the wait timers were stopped
	cur.Release(Outcome{})
	if s := h.stats(); s.Running != 0 || s.Waiting != 0 || len(h.got) != 0 {
		t.Fatalf("after close: %+v, %d more deliveries", s, len(h.got))
	}
}

// Withdrawals race with releases, which hand the slot to the withdrawing unit. Whatever wins,
// the unit hears once or not at all, and no slot is lost.
func TestWithdrawRacesDelivery(t *testing.T) {
	before := goleak.IgnoreCurrent()
	g := NewGate(Config{Name: "db/user", Limit: 1})
	var delivered, withdrawn atomic.Int64
	for range 5000 {
		hold, _, _ := g.Acquire("a", Waiter{})
		var calls atomic.Int32
		done := make(chan struct{})
		_, withdraw, err := g.Acquire("b", Waiter{Deliver: func(tk *Ticket, err error) {
			if calls.Add(1) != 1 {
				t.Error("delivered twice")
			}
			delivered.Add(1)
			tk.Release(Outcome{})
			close(done)
		}})
		if err != nil || withdraw == nil {
			t.Fatalf("second unit: %v, want a wait", err)
		}
		var wg sync.WaitGroup
		var ok bool
		wg.Go(func() { hold.Release(Outcome{}) })
		wg.Go(func() { ok = withdraw() })
		wg.Wait()
		if ok {
			withdrawn.Add(1)
		} else {
			<-done
		}
		if s := g.Stats(); s.Running != 0 || s.Waiting != 0 {
			t.Fatalf("after the race: %+v, want nothing running or waiting", s)
		}
	}
	goleak.VerifyNone(t, before) // waits out any delivery still running, so that it is counted
	if delivered.Load()+withdrawn.Load() != 5000 {
		t.Fatalf("%d delivered + %d withdrawn, want 5000", delivered.Load(), withdrawn.Load())
	}
	t.Logf("%d delivered, %d withdrawn", delivered.Load(), withdrawn.Load())
}

// Many goroutines acquire, release, withdraw and time out at once on real timers; at the end
// every unit has heard exactly once or withdrawn, and every slot is back.
func TestConcurrentChurn(t *testing.T) {
	g := NewGate(Config{Name: "db/user", Limit: 2, MaxQueue: 4, WaitTimeout: 200 * time.Microsecond, Aging: 100 * time.Microsecond,
		Weights: func(tenant string) int { return len(tenant) }})
	// A unit holds its slot for a moment now and then, long enough for waits to time out.
	work := func(rng *rand.Rand) {
		if rng.IntN(10) == 0 {
			time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
		}
	}
	var answered, withdrawn, refused, fast atomic.Int64
	var wg sync.WaitGroup
	for worker := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(worker), 1))
			for range 1000 {
				tenant := strings.Repeat("t", 1+rng.IntN(4))
				var calls atomic.Int32
				done := make(chan struct{})
				hold := rand.New(rand.NewPCG(rng.Uint64(), 2))
				tk, withdraw, err := g.Acquire(tenant, Waiter{Deliver: func(tk *Ticket, err error) {
					if calls.Add(1) != 1 {
						t.Error("delivered twice")
					}
					if tk != nil {
						work(hold)
						tk.Release(Outcome{})
					}
					answered.Add(1)
					close(done)
				}})
				switch {
				case err != nil:
					refused.Add(1)
				case tk != nil:
					fast.Add(1)
					work(rng)
					tk.Release(Outcome{})
				case rng.IntN(3) == 0 && withdraw():
					withdrawn.Add(1)
				default:
					<-done
				}
			}
		})
	}
	wg.Wait()
	s := g.Stats()
	if s.Running != 0 || s.Waiting != 0 || len(s.WaitingBy) != 0 {
		t.Fatalf("after the churn: %+v, want nothing running or waiting", s)
	}
	if total := answered.Load() + withdrawn.Load() + refused.Load() + fast.Load(); total != 8000 {
		t.Fatalf("%d units accounted for, want 8000", total)
	}
	if s.RejectedFull+s.RejectedEarly != uint64(refused.Load()) || s.Admitted+s.RejectedTimeout != uint64(fast.Load()+answered.Load()) {
		t.Fatalf("counters %+v disagree with %d fast, %d answered, %d refused", s, fast.Load(), answered.Load(), refused.Load())
	}
	t.Logf("fast %d, answered %d (timeouts %d), withdrawn %d, refused %d",
		fast.Load(), answered.Load(), s.RejectedTimeout, withdrawn.Load(), refused.Load())
}

// The reserve lets the gate run units beyond its limit once one has waited ReserveAfter, up to
// Reserve more, and no further; a unit that has not waited that long still waits for a slot.
func TestReserve(t *testing.T) {
	const after = 5 * time.Second
	h := newHarness(t, Config{Limit: 1, Reserve: 1, ReserveAfter: after})
	cur, _ := h.acquire("a")
	h.mustWait("a")
	h.clock.Advance(after - time.Nanosecond)
	if s := h.stats(); s.Running != 1 || s.Waiting != 1 {
		t.Fatalf("before the reserve timeout: %+v", s)
	}
	h.clock.Advance(time.Nanosecond)
	extra := h.next()
	if extra.ticket == nil {
		t.Fatalf("after the reserve timeout: %v, want a ticket", extra.err)
	}
	h.mustWait("b")
	h.clock.Advance(after)
	if s := h.stats(); s.Running != 2 || s.Waiting != 1 || s.ReserveAdmitted != 1 {
		t.Fatalf("with the reserve in use: %+v, want 2 running, 1 waiting, 1 admitted by the reserve", s)
	}
	// Releasing one of two running units leaves the limit taken: the waiter (past the reserve
	// timeout) goes through the reserve again.
	cur.Release(Outcome{})
	d := h.next()
	if d.ticket == nil || d.tenant != "b" {
		t.Fatalf("after a release: %+v", d)
	}
	extra.ticket.Release(Outcome{})
	d.ticket.Release(Outcome{})
	if s := h.stats(); s.Running != 0 || s.ReserveAdmitted != 2 {
		t.Fatalf("at the end: %+v", s)
	}
}

// Once a saturated gate's pace is known, a unit whose wait would exceed WaitTimeout is refused at
// once with 57014, counting what deficit round robin admits before it: a tenant behind a long
// queue of its own is refused, one with nothing queued still waits its turn.
func TestPredictedWaitRefusedAtOnce(t *testing.T) {
	const gap = 100 * time.Millisecond
	h := newHarness(t, Config{Limit: 1, WaitTimeout: 2 * time.Second})
	cur, _ := h.acquire("flood")
	for range 30 {
		h.mustWait("flood")
	}
	// Ten releases 100 ms apart, each admitting the next flood unit.
	for range 10 {
		h.clock.Advance(gap)
		cur = h.serve(cur).ticket
	}
	if s := h.stats(); s.Waiting != 20 || s.RejectedEarly != 0 {
		t.Fatalf("before predicting: %+v", s)
	}
	_, _, err := h.g.Acquire("flood", Waiter{Deliver: func(*Ticket, error) { t.Error("refused unit got a delivery") }})
	if sqlstate(err) != "57014" || !strings.Contains(err.Error(), "--query-wait-timeout") || !strings.Contains(err.Error(), "wait about 2.1s") {
		t.Fatalf("flood unit behind 20 of its own at 100 ms each: got %v, want 57014 predicting about 2.1s", err)
	}
	// A quiet tenant goes after at most one flood unit: about 200 ms.
	withdraw := h.mustWait("quiet")
	if s := h.stats(); s.RejectedEarly != 1 {
		t.Fatalf("stats %+v, want 1 refused early", s)
	}
	withdraw()
	// With a reserve pool, the same queue waits: the reserve may admit it before the timeout.
	hr := newHarness(t, Config{Limit: 1, WaitTimeout: 2 * time.Second, Reserve: 1, ReserveAfter: 1500 * time.Millisecond})
	rcur, _ := hr.acquire("flood")
	for range 30 {
		hr.mustWait("flood")
	}
	for range 10 {
		hr.clock.Advance(gap)
		rcur = hr.serve(rcur).ticket
	}
	hr.mustWait("flood")
	if s := hr.stats(); s.RejectedEarly != 0 {
		t.Fatalf("with a reserve pool: %+v, want nothing refused early", s)
	}
	hr.g.Close()
	// A release that finds nobody waiting forgets the pace.
	h2 := newHarness(t, Config{Limit: 1, WaitTimeout: time.Second})
	tk, _ := h2.acquire("a")
	tk.Release(Outcome{})
	if h2.g.intervals != 0 {
		t.Fatalf("pace kept without waiters")
	}
	h.g.Close()
	cur.Release(Outcome{})
	for range 20 {
		if d := h.next(); sqlstate(d.err) != "57P01" {
			t.Fatalf("at close: %+v", d)
		}
	}
}
