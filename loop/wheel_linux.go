//go:build linux

package loop

import (
	"sync/atomic"
	"time"
)

// A hashed timer wheel per loop replaces a runtime timer per client deadline: arming, stopping
// and expiring are O(1) list operations on the loop goroutine, and the loop's only runtime timer
// is the deadline of its next occupied slot.
const (
	wheelTick  = 10 * time.Millisecond
	wheelSlots = 512 // one turn is 5.12 s; later timers wait in their slot for their turn
)

const (
	timerPending int32 = iota
	timerFired
	timerStopped
)

type timer struct {
	l     *eloop
	c     *econn // nil for the driver's own timers (linger), which run f directly
	f     func()
	state atomic.Int32 // CAS from pending decides between firing and Stop, on any goroutine

	// Owned by the loop goroutine.
	at         int64 // tick at which it is due
	linked     bool
	prev, next *timer
}

// stop implements the func AfterFunc returns.
func (t *timer) stop() bool {
	if !t.state.CompareAndSwap(timerPending, timerStopped) {
		return false
	}
	// Unlink now rather than when the slot comes round: per-query deadlines are re-armed often,
	// and dead timers would pile up for the whole timeout.
	if getg() == t.l.g {
		t.l.wheel.remove(t)
	} else {
		t.l.post(func(l *eloop) { l.wheel.remove(t) })
	}
	return true
}

type wheel struct {
	start time.Time
	cur   int64 // ticks expired so far
	n     int
	slots [wheelSlots]*timer
}

func (w *wheel) tickOf(t time.Time) int64 { return int64(t.Sub(w.start) / wheelTick) }

func (w *wheel) add(t *timer, due time.Time) {
	at := int64((due.Sub(w.start) + wheelTick - 1) / wheelTick)
	if at <= w.cur {
		at = w.cur + 1
	}
	t.at = at
	s := &w.slots[at%wheelSlots]
	t.prev, t.next = nil, *s
	if *s != nil {
		(*s).prev = t
	}
	*s = t
	t.linked = true
	w.n++
}

func (w *wheel) remove(t *timer) {
	if !t.linked {
		return
	}
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		w.slots[t.at%wheelSlots] = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	}
	t.prev, t.next, t.linked = nil, nil, false
	w.n--
}

// expire unlinks the timers due by now and appends them to due; the caller fires them, so
// callbacks may arm and stop timers freely.
func (w *wheel) expire(now time.Time, due []*timer) []*timer {
	end := w.tickOf(now)
	if end <= w.cur {
		return due
	}
	if w.n > 0 {
		// After a long stall every slot is visited once: t.at decides, not the slot.
		for i := int64(1); i <= min(end-w.cur, wheelSlots); i++ {
			for t := w.slots[(w.cur+i)%wheelSlots]; t != nil; {
				next := t.next
				if t.at <= end {
					w.remove(t)
					due = append(due, t)
				}
				t = next
			}
		}
	}
	w.cur = end
	return due
}

// next is when the next occupied slot is due (zero time: no timers); the loop sleeps until then.
func (w *wheel) next() time.Time {
	if w.n == 0 {
		return time.Time{}
	}
	for k := int64(1); k <= wheelSlots; k++ {
		if w.slots[(w.cur+k)%wheelSlots] != nil {
			return w.start.Add(time.Duration(w.cur+k) * wheelTick)
		}
	}
	return time.Time{}
}
