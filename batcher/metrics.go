package batcher

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the batchers of one gateway do. It is a prometheus.Collector; one Metrics
// is shared by all of a gateway's batchers.
type Metrics struct {
	depth      prometheus.Histogram
	batched    prometheus.Counter
	unbatched  prometheus.Counter
	guardTrips prometheus.Counter
	cancels    prometheus.Counter
	requeued   prometheus.Counter
}

// NewMetrics returns unregistered metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		depth: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "asyncgate_batch_depth",
			Help:    "Units in flight on a backend connection when a batched unit is written to it, that unit included.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128},
		}),
		batched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "asyncgate_batch_units_batched_total",
			Help: "Request units answered through a batcher's shared backend connection.",
		}),
		unbatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "asyncgate_batch_units_unbatched_total",
			Help: "Request units of clients with batching on that ran alone on a backend (they could change session or transaction state, or were not understood).",
		}),
		guardTrips: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "asyncgate_batch_guard_trips_total",
			Help: "Batched units that left a transaction open or changed a session parameter; each closed its backend connection.",
		}),
		cancels: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "asyncgate_batch_cancels_total",
			Help: "CancelRequests sent for batched units running at the head of their connection.",
		}),
		requeued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "asyncgate_batch_units_rerun_total",
			Help: "Batched units run again because a cancel meant for the unit ahead of them stopped them.",
		}),
	}
}

func (m *Metrics) observeDepth(n int) { m.depth.Observe(float64(n)) }

// Unbatched counts a unit that was eligible for batching by configuration but ran alone.
func (m *Metrics) Unbatched() { m.unbatched.Inc() }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.all() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.all() {
		c.Collect(ch)
	}
}

func (m *Metrics) all() []prometheus.Collector {
	return []prometheus.Collector{m.depth, m.batched, m.unbatched, m.guardTrips, m.cancels, m.requeued}
}
