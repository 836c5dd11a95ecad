package pool

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/asyncgate/asyncgate/wire"
)

// BreakerConfig sets up the pool's circuit breaker, which stops opening connections to a backend
// that keeps failing and fails requests at once instead of letting them queue for it. The zero
// value leaves it off.
//
// What counts as a failure: a connect() that gave up (one per call, whatever the retries inside
// it: they ride out a restarting server within --server-connect-timeout and are not the breaker's
// business), a connection that broke while lent or idle without the pool closing it, and a failed
// health check; at most one failure per connection. What counts as a success: a connect that
// succeeded, a health check that passed, a connection given back healthy (Return, or Release
// after its reset). A client's SQL error never reaches the pool, so it never counts.
//
// While closed, Failures failures in a row open it. While open, no connection is opened; idle
// connections that need no health check are still lent, and a request that would have to wait
// fails at once with 08006, as do the waiters queued when it opens. After OpenFor it is half-open:
// up to HalfOpenMax connects are let through as probes, and only their outcome decides: when
// HalfOpenMax of them succeed in a row it closes, and the first one that fails opens it again.
type BreakerConfig struct {
	Failures    int           // consecutive backend failures that open the breaker (0: off)
	OpenFor     time.Duration // how long it stays open before half-open probing (0: 60s)
	HalfOpenMax int           // connects let through while half-open (0: 1)
	// OnStateChange hears each change of state, for logs and metrics. It runs while the breaker's
	// state is locked, sometimes under the pool's lock too: it must be quick and must not call
	// the pool.
	OnStateChange func(name string, from, to string)
}

// breaker wraps gobreaker's two-step breaker: the pool's requests are connects that finish on
// other goroutines, and the other events it reports (breaks, health checks) are not requests at
// all.
type breaker struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]

	// streak is set after a failure is recorded and cleared before a success is, so the hot
	// Return path touches the breaker's lock only when there is a run of failures to end.
	streak atomic.Bool

	opens   atomic.Uint64 // times the breaker opened
	rejects atomic.Uint64 // requests failed because it was open
}

// errNotCounted reports the outcome of a connect cut short by the pool's own shutdown: it frees
// a half-open probe slot without counting either way.
var errNotCounted = errors.New("pool: connect abandoned")

func newBreaker(name string, cfg BreakerConfig, log func(from, to gobreaker.State)) *breaker {
	if cfg.Failures <= 0 {
		return nil
	}
	b := &breaker{}
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        name,
		MaxRequests: uint32(max(cfg.HalfOpenMax, 0)),
		Timeout:     cfg.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= uint32(cfg.Failures) },
		IsExcluded:  func(err error) bool { return errors.Is(err, errNotCounted) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				b.opens.Add(1)
			}
			log(from, to)
			if cfg.OnStateChange != nil {
				cfg.OnStateChange(name, from.String(), to.String())
			}
		},
	})
	return b
}

// allowConnect asks whether a new connection may be opened. The returned report must be called
// exactly once with the connect's outcome, or a half-open breaker would wait for it forever.
func (b *breaker) allowConnect() (report func(error), ok bool) {
	if b == nil {
		return func(error) {}, true
	}
	done, err := b.cb.Allow()
	if err != nil {
		return nil, false
	}
	return func(err error) {
		if err == nil {
			b.streak.Store(false)
		}
		done(err)
		if err != nil && !errors.Is(err, errNotCounted) {
			b.streak.Store(true)
		}
	}, true
}

// failed records a failure seen outside a connect. Only a closed breaker takes it: a half-open
// one is decided by its probe connects, and an open one knows already.
func (b *breaker) failed() {
	if b == nil || b.cb.State() != gobreaker.StateClosed {
		return
	}
	if done, err := b.cb.Allow(); err == nil {
		done(errors.New("backend failure"))
	}
	b.streak.Store(true)
}

// succeeded records a success seen outside a connect, ending a run of failures; like failed, it
// counts only while the breaker is closed.
func (b *breaker) succeeded() {
	// A load first: every Return comes here, and a write would bounce the cache line between
	// cores even when there is nothing to end.
	if b == nil || !b.streak.Load() || !b.streak.Swap(false) {
		return
	}
	if b.cb.State() != gobreaker.StateClosed {
		return
	}
	if done, err := b.cb.Allow(); err == nil {
		done(nil)
	}
}

// open reports whether the breaker refuses new connections for now. A half-open breaker does not:
// requests queue for its probes.
func (b *breaker) open() bool {
	return b != nil && b.cb.State() == gobreaker.StateOpen
}

func (b *breaker) state() string {
	if b == nil {
		return "off"
	}
	return b.cb.State().String()
}

// BreakerState reports the circuit breaker's state: "closed", "open", "half-open", or "off" when
// the pool has none.
func (p *Pool) BreakerState() string { return p.breaker.state() }

// breakerError is what a request gets while the breaker is open.
func (p *Pool) breakerError() error {
	p.breaker.rejects.Add(1)
	return &wire.Error{Code: "08006", Message: fmt.Sprintf(
		"backend %s for pool %s is unavailable (circuit breaker open after %d failures; --breaker-failures / --breaker-open-time)",
		p.target(), p.cfg.Name, p.cfg.Breaker.Failures)}
}

// connOK records that c proved healthy, unless it was counted as failed: a lender may give back
// a connection that broke after its last answer.
func (p *Pool) connOK(c *Conn) {
	if !c.failed.Load() {
		p.breaker.succeeded()
	}
}

// connFailed records that c failed (broke, or failed its health check), once per connection: a
// check that fails because the connection broke is one failure, not two. If that opens the
// breaker, the dispatch that follows the connection's close fails the waiters.
func (p *Pool) connFailed(c *Conn) {
	if c.failed.Swap(true) {
		return
	}
	p.failures.Add(1)
	p.breaker.failed()
}
