package gateway

import (
	"net/http"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsHandler serves the gateway's HTTP endpoints for --metrics-listen:
//
//   - /metrics: Prometheus metrics: Go runtime and process collectors, and the gateway's own,
//     read from the server and its pools at scrape time, so the hot path pays nothing for them;
//   - /healthz: 200 while the server has not been shut down;
//   - /readyz: 200 while some configured database can take work: it has no pool open yet, or a
//     primary pool whose circuit breaker is not open.
//
// Each call builds its own registry, so several servers in one process do not collide.
func (s *Server) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&collector{s: s},
		s.metrics.queueWait, s.metrics.backend, s.metrics.total, s.metrics.errors,
		s.batchMetrics,
		admissionCollector{s: s},
		hedgeCollector{s: s},
	)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.shutdown.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.shutdown.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if !s.ready() {
			http.Error(w, "every database's primary has its circuit breaker open", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// ready reports whether some configured database can take work now: one with no primary pool
// open yet, or with a primary pool (one per user) whose circuit breaker is not open.
func (s *Server) ready() bool {
	states := map[string][]string{} // database → breaker states of its primary pools
	for _, e := range s.poolEntries() {
		if e.key.backend == 0 {
			states[e.key.database] = append(states[e.key.database], e.pool.BreakerState())
		}
	}
	for name := range s.databases() {
		st := states[name]
		if len(st) == 0 || slices.ContainsFunc(st, func(v string) bool { return v != "open" }) {
			return true
		}
	}
	return false
}

// Labels stay bounded: database alias, user (from the auth file) and backend index (0 for the
// primary, i for the i-th --replica). No query text, no client addresses.
var (
	poolLabels = []string{"database", "user", "backend"}

	descClients = prometheus.NewDesc("asyncgate_clients_connected",
		"Client connections past their startup message (logging in, logged in, or on the admin console).", nil, nil)
	descClientLimit = prometheus.NewDesc("asyncgate_clients_max",
		"--max-client-conn: the most clients connected at once.", nil, nil)
	descPinned = prometheus.NewDesc("asyncgate_clients_pinned",
		"Clients keeping their backend because of session state (--pin-on-session-state).", nil, nil)
	descListen = prometheus.NewDesc("asyncgate_listen_channels",
		"Channels the LISTEN fan-out listener connections listen on.", nil, nil)
	descReplicaReads = prometheus.NewDesc("asyncgate_replica_reads_total",
		"Request units that ran on one of the database's replicas.", []string{"database"}, nil)

	userLabels  = []string{"database", "user"}
	descQueries = prometheus.NewDesc("asyncgate_queries_total",
		"Queries answered (one per ReadyForQuery: a simple Query or an extended-protocol Sync).", userLabels, nil)
	descXacts = prometheus.NewDesc("asyncgate_transactions_total",
		"Transactions ended, autocommit statements included.", userLabels, nil)
	descRecv = prometheus.NewDesc("asyncgate_client_received_bytes_total",
		"Bytes received from clients.", userLabels, nil)
	descSent = prometheus.NewDesc("asyncgate_client_sent_bytes_total",
		"Bytes of backend responses sent to clients.", userLabels, nil)
	descAssign = prometheus.NewDesc("asyncgate_backend_assignments_total",
		"Times a client was given a backend connection.", userLabels, nil)

	descOpen = prometheus.NewDesc("asyncgate_pool_connections_open",
		"Backend connections of the pool that are open: idle, lent, or being reset or checked.", poolLabels, nil)
	descIdle = prometheus.NewDesc("asyncgate_pool_connections_idle",
		"Backend connections idle in the pool.", poolLabels, nil)
	descConnecting = prometheus.NewDesc("asyncgate_pool_connections_connecting",
		"Backend connections being opened.", poolLabels, nil)
	descActive = prometheus.NewDesc("asyncgate_pool_connections_active",
		"Backend connections lent to clients (open minus idle).", poolLabels, nil)
	descWaiting = prometheus.NewDesc("asyncgate_pool_clients_waiting",
		"Clients waiting for a connection of the pool.", poolLabels, nil)
	descFailures = prometheus.NewDesc("asyncgate_pool_backend_failures_total",
		"Failed connects, broken connections and failed health checks of the pool's backend.", poolLabels, nil)
	descBreaker = prometheus.NewDesc("asyncgate_breaker_state",
		"Circuit breaker of the pool's backend: 0 closed, 1 half-open, 2 open (absent when --breaker-failures is 0).", poolLabels, nil)
	descBreakerOpens = prometheus.NewDesc("asyncgate_breaker_opens_total",
		"Times the pool's circuit breaker opened.", poolLabels, nil)
	descBreakerRejects = prometheus.NewDesc("asyncgate_breaker_rejects_total",
		"Requests refused, and waiters failed, because the pool's circuit breaker was open.", poolLabels, nil)
)

// collector reads the gateway's numbers when Prometheus scrapes.
type collector struct{ s *Server }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClients, descClientLimit, descPinned, descListen, descReplicaReads,
		descOpen, descIdle, descConnecting, descActive, descWaiting, descFailures,
		descBreaker, descBreakerOpens, descBreakerRejects,
		descQueries, descXacts, descRecv, descSent, descAssign} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descClients, float64(s.clients.Load()))
	gauge(descClientLimit, float64(s.conf().MaxClientConn))
	gauge(descPinned, float64(s.PinnedClients()))
	gauge(descListen, float64(s.ListenChannels()))
	for _, name := range s.databaseNames() {
		if len(s.databases()[name].replicas) > 0 {
			counter(descReplicaReads, float64(s.ReplicaReads(name)), name)
		}
	}
	for _, st := range s.allUnitStats() {
		counter(descQueries, float64(st.queries.Load()), st.database, st.user)
		counter(descXacts, float64(st.xacts.Load()), st.database, st.user)
		counter(descRecv, float64(st.recv.Load()), st.database, st.user)
		counter(descSent, float64(st.sent.Load()), st.database, st.user)
		counter(descAssign, float64(st.assignments.Load()), st.database, st.user)
	}
	for _, e := range s.poolEntries() {
		l := []string{e.key.database, e.key.user, strconv.Itoa(e.key.backend)}
		st := e.stats
		gauge(descOpen, float64(st.Open), l...)
		gauge(descIdle, float64(st.Idle), l...)
		gauge(descConnecting, float64(st.Connecting), l...)
		gauge(descActive, float64(lent(st)), l...)
		gauge(descWaiting, float64(st.Waiting), l...)
		counter(descFailures, float64(st.BackendFailures), l...)
		state := e.pool.BreakerState()
		if state == "off" {
			continue
		}
		v := 0.0
		switch state {
		case "half-open":
			v = 1
		case "open":
			v = 2
		}
		gauge(descBreaker, v, l...)
		counter(descBreakerOpens, float64(st.BreakerOpens), l...)
		counter(descBreakerRejects, float64(st.BreakerRejects), l...)
	}
}
