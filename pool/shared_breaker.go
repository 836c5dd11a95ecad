package pool

import (
	"log/slog"

	"github.com/sony/gobreaker/v2"
)

// Breaker is the pool's circuit breaker for backends whose connections another package opens
// (pool/mysql): the same rules as BreakerConfig describes, so a MySQL backend trips exactly as a
// PostgreSQL one does. A nil *Breaker is off.
type Breaker struct{ b *breaker }

// NewBreaker returns the breaker for the backend of the pool called name, or nil when cfg leaves
// it off. State changes are logged on log.
func NewBreaker(name, target string, cfg BreakerConfig, log *slog.Logger) *Breaker {
	if log == nil {
		log = slog.Default()
	}
	b := newBreaker(name, cfg, func(from, to gobreaker.State) {
		log.Warn("circuit breaker "+to.String(), "pool", name, "backend", target, "from", from.String())
	})
	if b == nil {
		return nil
	}
	return &Breaker{b}
}

// AllowConnect asks whether a new connection may be opened; report must then be called exactly
// once with the connect's outcome.
func (b *Breaker) AllowConnect() (report func(error), ok bool) {
	if b == nil {
		return func(error) {}, true
	}
	return b.b.allowConnect()
}

// Failed records a backend failure seen outside a connect (a connection that broke).
func (b *Breaker) Failed() {
	if b != nil {
		b.b.failed()
	}
}

// Succeeded records a success seen outside a connect (a connection given back healthy).
func (b *Breaker) Succeeded() {
	if b != nil {
		b.b.succeeded()
	}
}

// Open reports whether the breaker refuses new connections for now; a refusal counts as a reject.
func (b *Breaker) Open() bool { return b != nil && b.b.open() }

// Reject counts a request refused because the breaker was open.
func (b *Breaker) Reject() {
	if b != nil {
		b.b.rejects.Add(1)
	}
}

// State is "closed", "open", "half-open", or "off".
func (b *Breaker) State() string {
	if b == nil {
		return "off"
	}
	return b.b.state()
}

// Counts reports how often the breaker opened and how many requests it refused.
func (b *Breaker) Counts() (opens, rejects uint64) {
	if b == nil {
		return 0, 0
	}
	return b.b.opens.Load(), b.b.rejects.Load()
}
