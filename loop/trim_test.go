package loop

import (
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Memory is given back once after the connection count settles from a large change, not while it
// moves, and not for small changes.
func TestTrimmerTrimsOnceSettled(t *testing.T) {
	defer goleak.VerifyNone(t)
	var n, trims atomic.Int64
	tr := &trimmer{every: time.Millisecond, stable: 3, change: 100,
		count: func() int { return int(n.Load()) }, free: func() { trims.Add(1) }}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); tr.run(quit) }()
	defer func() { close(quit); <-done }()

	for i := range 50 { // small changes: no trim
		n.Store(int64(i))
		time.Sleep(2 * time.Millisecond) // moves while the trimmer looks: not a wait for it
	}
	n.Store(1000)
	waitFor(t, "a trim after the count settled", func() bool { return trims.Load() == 1 })
	for range 20 {
		time.Sleep(2 * time.Millisecond) // stays settled: no second trim
	}
	if got := trims.Load(); got != 1 {
		t.Fatalf("%d trims for one settled change, want 1", got)
	}
	n.Store(0) // everyone left: worth another
	waitFor(t, "a trim after the clients left", func() bool { return trims.Load() == 2 })
}
