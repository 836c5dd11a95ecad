// Package hedge decides when a read sent to a replica is also sent to a second backend, which
// backend, which answer the client gets, and how many extra requests that may cost. It is the
// policy only: no I/O, no goroutines, no clock. The gateway owns the sockets and timers and
// asks this package at each step.
//
// # The model
//
// Only units that are safe to run twice are hedged: autocommit reads routed to replicas
// (never writes, never anything inside a transaction), and only while no byte of the answer
// has reached the client. For such a unit the gateway
//
//  1. counts it against the budget (Budget.Request), picks a backend (Balancer.Pick with
//     exclude -1), sends attempt 0 (Race.Start) and arms a timer for Delay.Current();
//  2. if no response frame has arrived when the timer fires, and the budget has a token
//     (Budget.TryHedge), sends the same request to another backend (Balancer.Pick excluding
//     the first, then Race.Hedge);
//  3. passes on the frames of whichever attempt delivers one first (Race.FirstFrame) and
//     cancels the others; their late frames are discarded;
//  4. if attempt 0's connection fails before anything reached the client, hedges at once
//     (Race.Failed says so), again within the budget; if every attempt fails, the client gets
//     the last error.
//
// This is the hedged request of Dean and Barroso's "The Tail at Scale": waiting until the p95
// latency before hedging sends a second request for about one read in twenty, and cuts the
// tail that one slow replica (a vacuum, a checkpoint, a cold cache, a lost packet) adds to
// everyone who happened to be routed to it. Nothing is hedged after the first frame: by then
// the client may hold part of the answer, and a replica's delay shows in the time to first
// frame, while the rest mostly follows the size of the result.
//
// # Delay
//
// Delay is the hedge delay of one database. With --hedge-delay auto it follows a percentile
// (p95 unless --hedge-delay-percentile says otherwise) of the time to first response frame of
// the last 1,024 reads, bounded by --hedge-delay-min and --hedge-delay-max. Until 50 reads have
// been seen it is the maximum, so a gateway that has just started hedges little while it
// learns. A fixed delay (--hedge-delay 20ms) ignores latencies and the bounds.
//
// It learns from the original attempts: the gateway observes each one's time to its first
// frame, and for an original cancelled because its hedge won, the time until it was
// cancelled. That is short of its true latency, but already above the delay, which is all a
// high percentile needs to know about it; leaving such reads out, or observing the hedges
// that beat them, would teach the delay that reads are faster than they are, and it would
// ratchet down.
//
// The minimum keeps fast databases from hedging on noise: when reads take 300 µs, the p95 is
// a matter of scheduling, and the replica round trip alone costs about as much as a hedge can
// save. The maximum caps the wait when a database is slow across the board, so that hedges
// still cut the worst waits; the budget keeps that from costing more than it allows.
//
// # Budget
//
// Hedges add load exactly when backends are slow, which is how hedging turns a slow replica
// into two overloaded ones. Budget bounds the extra load the way gRPC throttles retries: each
// original request earns a fraction of a token (--hedge-budget 10% earns 0.1), each hedge
// costs a whole one, and at most 10 are saved up. Over n requests at most 10 + n×10% hedges
// go out, whatever the latencies; hedges for failures are counted the same way.
//
// # Choosing backends
//
// Balancer sends each attempt to the less loaded of two backends drawn at random (power of
// two choices), never the first attempt's backend for a hedge.
//
// # Knobs
//
// Each flag has a config-file key of the same name.
//
//	--hedge on|off                   hedge reads to replicas (default off: hedging spends capacity)
//	--hedge-delay auto|DURATION      "auto", or a fixed delay such as 20ms or 0.02 (seconds); default auto
//	--hedge-delay-percentile N       the percentile auto follows, 50 to 100 (default 95)
//	--hedge-delay-min DURATION       least auto delay (default 1ms)
//	--hedge-delay-max DURATION       most auto delay, and the delay while learning (default 1s)
//	--hedge-budget PERCENT           most extra requests from hedges, such as 10% (default 10%)
//
// ParseDelay, ParsePercentile and ParseBudget read the values; DelayConfig.Validate checks
// them together.
//
// # Concurrency
//
// Delay, Budget, Balancer and Stats are shared by all sessions of a database and safe for
// concurrent use, without locks or allocations. A Race belongs to one session and is used by
// one goroutine at a time.
package hedge
