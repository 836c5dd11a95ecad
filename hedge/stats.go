package hedge

import "sync/atomic"

// Stats counts one database's hedging, for metrics and SHOW commands. The Budget counts Sent,
// Hedged and Denied; the gateway counts the outcome of each Race. Counters only grow.
type Stats struct {
	Sent       atomic.Uint64 // original requests that could have been hedged
	Hedged     atomic.Uint64 // hedges sent: after the delay, or at once after a failure
	WonByHedge atomic.Uint64 // races the hedge won
	Cancelled  atomic.Uint64 // attempts cancelled because another won or the request ended
	Denied     atomic.Uint64 // hedges the budget refused
	// Skipped counts hedges due that found no connection at hand: nothing idle on the backend
	// chosen for it nor on the primary, and no room to open one.
	Skipped atomic.Uint64
	// Retried counts reads sent again because their first attempt's connection failed before
	// any byte reached the client. A retry replaces a request that did nothing, so it takes no
	// budget; it is not counted in Hedged.
	Retried atomic.Uint64
}

// StatsSnapshot is a copy of Stats at one moment (each counter read atomically, not all of
// them together).
type StatsSnapshot struct {
	Sent, Hedged, WonByHedge, Cancelled, Denied, Skipped, Retried uint64
}

// Snapshot reads the counters.
func (s *Stats) Snapshot() StatsSnapshot {
	return StatsSnapshot{
		Sent:       s.Sent.Load(),
		Hedged:     s.Hedged.Load(),
		WonByHedge: s.WonByHedge.Load(),
		Cancelled:  s.Cancelled.Load(),
		Denied:     s.Denied.Load(),
		Skipped:    s.Skipped.Load(),
		Retried:    s.Retried.Load(),
	}
}

// Decided records a race's outcome: the winner FirstFrame reported and the attempts it or
// Abort said to cancel. winner is -1 for a race without one.
func (s *Stats) Decided(winner int, cancelled []int) {
	if winner > 0 {
		s.WonByHedge.Add(1)
	}
	if len(cancelled) > 0 {
		s.Cancelled.Add(uint64(len(cancelled)))
	}
}
