// Package admission decides which request units may use a pool's backends, when, and which are
// turned away. It is pure logic: no I/O, no goroutines but those that fire timers and deliver
// answers, and a clock that tests can replace.
//
// # The gate
//
// Each pool has a Gate. A unit (a query, an extended-protocol group up to Sync, or a
// transaction) takes a slot with Acquire and gives it back with Ticket.Release. At most Limit
// units hold slots; the rest wait. Acquire never blocks, because sessions run on event loops: it
// answers at once when it can, and otherwise calls the waiter's Deliver later, on another
// goroutine, exactly as pool.Acquire does.
//
// # Failing fast
//
// A queue in front of a saturated backend only adds latency: the backend serves no more units
// for their waiting, and clients that gave up long ago still hold places. So every wait is
// bounded twice. A unit that finds MaxQueue units already waiting is refused at once with
// SQLSTATE 53300, and one that waits WaitTimeout gets 57014; both messages name the flag that
// sets the limit. A unit that would wait longer than WaitTimeout is refused with 57014 at once
// rather than at the timeout: while the gate is saturated it learns the pace at which it admits
// (the mean gap between releases), and a new unit's wait is about that gap times the units
// deficit round robin admits before it, counting for each other tenant only the units its
// weight lets go ahead. A flooding tenant is thus refused early while a quiet one still queues. A refusal in microseconds lets the client retry elsewhere or shed load, and
// keeps the gateway's memory independent of the offered load.
//
// # Fairness between tenants
//
// Waiting units are kept in one FIFO queue per tenant (for example per user), and queues take
// turns by deficit round robin with a quantum of the tenant's weight: in a round, a tenant of
// weight w gets up to w units admitted. A tenant that floods the gate only lengthens its own
// queue; everyone else still gets their turn, so under contention slots are shared in
// proportion to the weights, whatever each tenant offers. The alternatives do worse: one FIFO
// lets the heaviest sender take the pool, strict priorities starve the low ones, and weighted
// fair queueing proper keeps a virtual finish time per unit for no gain when, as here, every
// unit costs the same (the gateway cannot know a query's cost before running it). With unit
// costs, deficit round robin is O(1) per admission.
//
// Weights alone bound a tenant's wait only in units, not in time: behind tenants of weight 100
// a tenant of weight 1 can wait a long round. Aging puts a time bound on it. A tenant that has
// gone unserved for longer than Aging while it waits (counted from the later of its head unit's
// arrival and its last admission) is served before the weights are consulted, longest-starved
// first. A busy tenant served steadily never ages however deep its backlog, so aging helps
// exactly the tenants that weights alone would hold back.
//
// # Rate limits
//
// RateLimits caps the rate of units per tenant with a token bucket (--rate-limit user=N/s).
// It is checked before the gate, so a tenant over its rate never takes a place in the queue;
// refusals carry SQLSTATE 53400 (see CodeRateLimited).
//
// # Adaptive limit
//
// A pool's size is a guess at how much concurrency the backend absorbs usefully. With an
// AdaptiveConfig the gate checks the guess against latency, in the manner of TCP Vegas and
// Netflix's Gradient2 limiter: once units take much longer than the long-term baseline, more
// concurrency is only queueing inside the backend, so the limit shrinks toward what the backend
// can serve; when latency is back near the baseline and the limit is being used, it grows by
// one per window. Dropped units (timeouts, overload errors) cut the limit multiplicatively. The
// limit stays within [Min, Max], Max normally being the pool size.
//
// The baseline is learned from traffic. It follows latency quickly when the gate cannot be the
// cause (few units in flight, or the limit at Min) and only slowly while the gate is saturated,
// where a slower window may be queueing the limit should undo and a faster one may be noise.
// The price is that sustained overload is taken for normal after some thousands of windows and
// the limit drifts back toward Max: the limiter then fails open, as if there were none, rather
// than throttling a healthy backend on noise. A gateway that starts under overload learns the
// overloaded latency as its baseline, so Min should be a concurrency the backend is known to
// handle.
package admission
