package benchmarks

import (
	"context"
	"errors"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
)

// Histograms count microseconds from 1µs to an hour with 3 significant digits.
const (
	histMin     = 1
	histMax     = int64(time.Hour / time.Microsecond)
	histSigFigs = 3
)

func newHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMin, histMax, histSigFigs)
}

// recordLatency adds d to h, clamped to the trackable range so an absurd stall is still counted.
func recordLatency(h *hdrhistogram.Histogram, d time.Duration) {
	us := int64(d / time.Microsecond)
	_ = h.RecordValue(min(max(us, histMin), histMax))
}

// LatencySummary is the usual digest of a latency distribution, in milliseconds.
type LatencySummary struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

// Percentiles lists the summary's percentiles in table order, for plots.
func (s LatencySummary) Percentiles() (labels []string, values []float64) {
	return []string{"p50", "p90", "p99", "p99.9", "max"}, []float64{s.P50, s.P90, s.P99, s.P999, s.Max}
}

// Summarize digests h. maxSeen, when positive, replaces the histogram's max, which is only
// known to the histogram's precision.
func Summarize(h *hdrhistogram.Histogram, maxSeen time.Duration) LatencySummary {
	if h.TotalCount() == 0 {
		return LatencySummary{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	s := LatencySummary{
		Count: h.TotalCount(),
		Mean:  h.Mean() / 1000,
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
	}
	if maxSeen > 0 {
		s.Max = float64(maxSeen) / float64(time.Millisecond)
	}
	return s
}

// ErrorCode classifies err: the SQLSTATE of a server error, "canceled" for work cut off at the
// end of a round, "script" for an error evaluating the script, and "connection" for anything
// else (refused, reset, protocol violations).
func ErrorCode(err error) string {
	var pgErr *pgconn.PgError
	var myErr *mysql.MySQLError
	var se *scriptError
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Code
	case errors.As(err, &myErr):
		return string(myErr.SQLState[:])
	case errors.As(err, &se):
		return "script"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "connection"
}

type scriptError struct{ err error }

func (e *scriptError) Error() string { return e.err.Error() }
func (e *scriptError) Unwrap() error { return e.err }

// recorder collects the outcomes of one slot from many clients. Histograms are sharded so that
// clients rarely contend, without paying one histogram (~200 KiB) per client.
type recorder struct {
	shards []histShard

	ok     atomic.Int64
	failed atomic.Int64
	latNs  atomic.Int64 // sum of successful latencies, for the live mean

	mu      sync.Mutex
	errors  map[string]int64
	errHist *hdrhistogram.Histogram // failed transactions' latency: how fast a refusal comes
}

type histShard struct {
	mu  sync.Mutex
	h   *hdrhistogram.Histogram
	max time.Duration
	_   [40]byte // keep shards on separate cache lines
}

func newRecorder(shards int) *recorder {
	r := &recorder{shards: make([]histShard, shards), errors: map[string]int64{}, errHist: newHistogram()}
	for i := range r.shards {
		r.shards[i].h = newHistogram()
	}
	return r
}

// record notes one transaction of client id that took d (from its intended start) and ended with err.
func (r *recorder) record(id int, d time.Duration, err error) {
	if err != nil {
		r.failed.Add(1)
		code := ErrorCode(err)
		r.mu.Lock()
		r.errors[code]++
		if d > 0 {
			recordLatency(r.errHist, d)
		}
		r.mu.Unlock()
		return
	}
	sh := &r.shards[id%len(r.shards)]
	sh.mu.Lock()
	recordLatency(sh.h, d)
	sh.max = max(sh.max, d)
	sh.mu.Unlock()
	r.latNs.Add(int64(d))
	r.ok.Add(1)
}

// recordError counts an error that is not a transaction, such as a failed reconnect.
func (r *recorder) recordError(err error) { r.record(0, 0, err) }

// merged returns all shards in one histogram and the exact max.
func (r *recorder) merged() (*hdrhistogram.Histogram, time.Duration) {
	h := newHistogram()
	var m time.Duration
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		h.Merge(sh.h)
		m = max(m, sh.max)
		sh.mu.Unlock()
	}
	return h, m
}

// errorLatency is the latency of the failed transactions so far.
func (r *recorder) errorLatency() *hdrhistogram.Histogram {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := newHistogram()
	h.Merge(r.errHist)
	return h
}

func (r *recorder) errorCounts() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.errors)
}
