package gateway

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Request-unit statistics per (database, user): the latency histograms of /metrics and
// PgBouncer's totals and averages in SHOW STATS, fed from the same measurements.
//
// The hot path pays a few time.Now calls and, once per unit, a handful of atomic adds and three
// histogram observations on observers resolved when the client logged in: no label lookups and
// no locks per query. Byte counts accumulate in the session and are added at the end of a unit.

// latencyBuckets span 50 µs to about 13 s, doubling: a pooled SELECT to a slow report.
var latencyBuckets = prometheus.ExponentialBuckets(50e-6, 2, 19)

// unitMetrics holds the histogram vectors; one set per Server, shared by its MetricsHandlers.
type unitMetrics struct {
	queueWait, backend, total *prometheus.HistogramVec
	errors                    *prometheus.CounterVec
}

func newUnitMetrics() *unitMetrics {
	h := func(name, help string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: name, Help: help, Buckets: latencyBuckets,
		}, []string{"database", "user"})
	}
	return &unitMetrics{
		queueWait: h("asyncgate_queue_wait_seconds",
			"Time a request unit waited from ready to run until it had a backend connection (0 when the client already held one)."),
		backend: h("asyncgate_backend_seconds",
			"Time from the first message of a request unit sent to the backend until its last ReadyForQuery."),
		total: h("asyncgate_request_seconds",
			"Time from the first client message of a request unit until its last ReadyForQuery: queue wait, gateway and backend time."),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "asyncgate_errors_total",
			Help: "Errors sent to clients, by database, by who raised them (source: backend for the server's ErrorResponses, gateway for the gateway's own) and by SQLSTATE class (first two characters).",
		}, []string{"database", "source", "sqlstate_class"}),
	}
}

// unitStats are one (database, user)'s counters and its pre-resolved histogram observers.
type unitStats struct {
	database, user string

	queueWait, backend, total prometheus.Observer

	// PgBouncer's SHOW STATS totals; times in microseconds.
	xacts, queries, recv, sent, xactTime, queryTime, waitTime, assignments atomic.Int64
}

// statsKey names a unitStats.
type statsKey struct{ database, user string }

// unitStatsSet holds the Server's unitStats and the snapshot SHOW STATS_AVERAGES compares with.
type unitStatsSet struct {
	mu     sync.Mutex
	m      map[statsKey]*unitStats
	prev   map[string]statsTotalsRow // database totals at prevAt
	prevAt time.Time                 // start of the averages' window
	avg    map[string]statsTotalsRow // the averages over the last whole window
}

// statsPeriod is how often the averages are recomputed, as PgBouncer's stats_period.
const statsPeriod = 15 * time.Second

// unitStatsFor returns the stats of (database, user), creating them on first use.
func (s *Server) unitStatsFor(database, user string) *unitStats {
	k := statsKey{database, user}
	t := &s.stats
	t.mu.Lock()
	defer t.mu.Unlock()
	if st, ok := t.m[k]; ok {
		return st
	}
	if t.m == nil {
		t.m = make(map[statsKey]*unitStats)
	}
	m := s.metrics
	st := &unitStats{
		database: database, user: user,
		queueWait: m.queueWait.WithLabelValues(database, user),
		backend:   m.backend.WithLabelValues(database, user),
		total:     m.total.WithLabelValues(database, user),
	}
	t.m[k] = st
	return st
}

// statsTotalsRow is one row of totals, as SHOW STATS_TOTALS lists them.
type statsTotalsRow struct {
	assignments, xacts, queries, recv, sent, xactTime, queryTime, waitTime int64
}

func (st *unitStats) totals() statsTotalsRow {
	return statsTotalsRow{st.assignments.Load(), st.xacts.Load(), st.queries.Load(), st.recv.Load(),
		st.sent.Load(), st.xactTime.Load(), st.queryTime.Load(), st.waitTime.Load()}
}

func (r *statsTotalsRow) add(o statsTotalsRow) {
	r.assignments += o.assignments
	r.xacts += o.xacts
	r.queries += o.queries
	r.recv += o.recv
	r.sent += o.sent
	r.xactTime += o.xactTime
	r.queryTime += o.queryTime
	r.waitTime += o.waitTime
}

// databaseTotals sums the totals of every user of each database.
func (s *Server) databaseTotals() map[string]statsTotalsRow {
	t := &s.stats
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]statsTotalsRow)
	for k, st := range t.m {
		r := out[k.database]
		r.add(st.totals())
		out[k.database] = r
	}
	return out
}

// databaseAverages is PgBouncer's STATS_AVERAGES per database: counts and bytes per second, and
// times per transaction, per query and per assignment (wait), in microseconds. The window is
// the statsPeriod that ended last, or the time since the gateway started while the first one
// runs. It rolls when asked, so an idle gateway does no work for it.
func (s *Server) databaseAverages() map[string]statsTotalsRow {
	now := time.Now()
	cur := s.databaseTotals()
	t := &s.stats
	t.mu.Lock()
	defer t.mu.Unlock()
	d := now.Sub(t.prevAt)
	if t.avg != nil && d < statsPeriod {
		return t.avg
	}
	secs := max(d.Seconds(), 1e-3)
	per := func(v int64) int64 { return int64(float64(v) / secs) }
	div := func(a, b int64) int64 {
		if b <= 0 {
			return 0
		}
		return a / b
	}
	avg := make(map[string]statsTotalsRow, len(cur))
	for db, c := range cur {
		p := t.prev[db]
		avg[db] = statsTotalsRow{
			assignments: per(c.assignments - p.assignments),
			xacts:       per(c.xacts - p.xacts),
			queries:     per(c.queries - p.queries),
			recv:        per(c.recv - p.recv),
			sent:        per(c.sent - p.sent),
			xactTime:    div(c.xactTime-p.xactTime, c.xacts-p.xacts),
			queryTime:   div(c.queryTime-p.queryTime, c.queries-p.queries),
			waitTime:    div(c.waitTime-p.waitTime, c.assignments-p.assignments),
		}
	}
	if d >= statsPeriod {
		t.prev, t.prevAt, t.avg = cur, now, avg
	}
	return avg
}

// unitEnded runs when the client's backend owes nothing more and nothing waits to be sent: the
// request unit in progress, if any, is measured.
func (s *session) unitEnded() {
	st := s.st
	if !s.waiting {
		s.waitStart = 0 // a refused unit's wait ended with it
	}
	if st == nil || s.unitStart.IsZero() {
		s.unitWait = 0
		return
	}
	now := s.now()
	if s.srv.tracer != nil {
		s.traceUnit(s.unitStart, now, s.unitWait, s.busyStart)
		*s.traceState() = unitTrace{}
	}
	st.total.Observe(now.Sub(s.unitStart).Seconds())
	st.queueWait.Observe(s.unitWait.Seconds())
	if !s.busyStart.IsZero() {
		d := now.Sub(s.busyStart)
		st.backend.Observe(d.Seconds())
		st.queryTime.Add(d.Microseconds())
	}
	s.unitStart, s.busyStart, s.unitWait = 0, 0, 0
	s.flushBytes()
}

// now is the time of the event the session is handling: one clock reading serves every time
// stamp taken while it handles one batch of client or backend bytes (a reading costs about as
// much as the rest of the accounting). The busy entry points (OnData, backendData, a backend
// handed over) mark the event; elsewhere now reads the clock each time.
func (s *session) now() instant {
	if !s.inEvent {
		return clockNow()
	}
	if s.clock.IsZero() {
		s.clock = clockNow()
	}
	return s.clock
}

func (s *session) endEvent() { s.inEvent, s.clock = false, 0 }

// flushBytes adds the bytes counted in the session to its database's totals.
func (s *session) flushBytes() {
	if st := s.st; st != nil {
		if s.recvBytes != 0 {
			st.recv.Add(s.recvBytes)
			s.recvBytes = 0
		}
		if s.sentBytes != 0 {
			st.sent.Add(s.sentBytes)
			s.sentBytes = 0
		}
	}
}

// countError counts an error sent to a client of db (nil before the client was routed).
func (s *Server) countError(db *database, source, code string) {
	name := ""
	if db != nil {
		name = db.name
	}
	class := code
	if len(class) > 2 {
		class = class[:2]
	}
	s.metrics.errors.WithLabelValues(name, source, class).Inc()
}

// requestFailed counts and logs a request that got an ERROR while the client stays connected.
// The server's errors for the application's own SQL (a unique violation, a syntax error) are
// logged at debug, since they are the application's business and can be frequent; those that
// say the server or the gateway is in trouble (connection, resources, operator intervention,
// system and internal errors) and the gateway's own refusals are logged at info.
func (s *session) requestFailed(source, code, msg string) {
	s.srv.countError(s.db, source, code)
	if s.srv.tracer != nil {
		s.traceState().err = code
	}
	level := slog.LevelDebug
	if source == "gateway" || serverTrouble(code) {
		level = slog.LevelInfo
	}
	if !s.srv.log.Enabled(context.Background(), level) {
		return
	}
	args := []any{"user", s.user, "database", s.dbName(), "addr", s.io.RemoteAddr(), "source", source, "code", code, "reason", msg}
	if s.tr != nil && s.tr.parent.IsValid() {
		args = append(args, "trace_id", s.tr.parent.TraceID().String())
	}
	s.srv.log.Log(context.Background(), level, "request failed", args...)
}

// serverTrouble reports whether a SQLSTATE's class says the server, not the SQL, failed.
func serverTrouble(code string) bool {
	if len(code) < 2 {
		return true
	}
	switch code[:2] {
	case "08", "53", "54", "55", "57", "58", "XX":
		return true
	}
	return false
}

// allUnitStats lists every (database, user)'s stats.
func (s *Server) allUnitStats() []*unitStats {
	t := &s.stats
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*unitStats, 0, len(t.m))
	for _, st := range t.m {
		out = append(out, st)
	}
	return out
}
