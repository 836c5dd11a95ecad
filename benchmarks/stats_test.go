package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func near(got, want, tol float64) bool { return math.Abs(got-want) <= tol*math.Abs(want) }

func TestSummarizePercentiles(t *testing.T) {
	h := newHistogram()
	// 1µs … 10ms, one of each: percentile p sits at p% of 10ms.
	for us := 1; us <= 10000; us++ {
		recordLatency(h, time.Duration(us)*time.Microsecond)
	}
	s := Summarize(h, 0)
	if s.Count != 10000 {
		t.Errorf("count %d, want 10000", s.Count)
	}
	checks := []struct {
		name      string
		got, want float64
	}{
		{"mean", s.Mean, 5.0005},
		{"p50", s.P50, 5},
		{"p90", s.P90, 9},
		{"p99", s.P99, 9.9},
		{"p99.9", s.P999, 9.99},
		{"max", s.Max, 10},
	}
	for _, c := range checks {
		// Three significant digits: values are within 0.1% of the truth.
		if !near(c.got, c.want, 0.002) {
			t.Errorf("%s = %v ms, want %v ms", c.name, c.got, c.want)
		}
	}
	if s2 := Summarize(h, 10*time.Millisecond+123*time.Nanosecond); s2.Max != 10.000123 {
		t.Errorf("exact max %v, want 10.000123", s2.Max)
	}
	if (Summarize(newHistogram(), 0) != LatencySummary{}) {
		t.Error("empty histogram: want zero summary")
	}
}

func TestSummarizeTail(t *testing.T) {
	// 999 fast and 1 slow transaction: p99 stays fast, p99.9 and max show the slow one.
	h := newHistogram()
	for range 999 {
		recordLatency(h, 200*time.Microsecond)
	}
	recordLatency(h, 2*time.Second)
	s := Summarize(h, 0)
	if !near(s.P99, 0.2, 0.002) || !near(s.P999, 0.2, 0.002) {
		t.Errorf("p99 %v, p99.9 %v: want 0.2 ms", s.P99, s.P999)
	}
	if !near(s.Max, 2000, 0.002) {
		t.Errorf("max %v, want 2000 ms", s.Max)
	}
	// Beyond the histogram's range a value is clamped, not dropped.
	recordLatency(h, 3*time.Hour)
	if h.TotalCount() != 1001 {
		t.Errorf("count %d after an out-of-range value, want 1001", h.TotalCount())
	}
}

func TestRecorderMergesShards(t *testing.T) {
	r := newRecorder(3)
	for id := range 30 {
		r.record(id, time.Duration(id+1)*time.Millisecond, nil)
	}
	r.record(4, time.Second, &pgconn.PgError{Code: "40001"})
	r.record(5, time.Second, fmt.Errorf("exec: %w", &pgconn.PgError{Code: "40001"}))
	r.record(6, time.Second, io.ErrUnexpectedEOF)
	h, m := r.merged()
	if h.TotalCount() != 30 || r.ok.Load() != 30 {
		t.Errorf("merged %d, ok %d: want 30 successful", h.TotalCount(), r.ok.Load())
	}
	if m != 30*time.Millisecond {
		t.Errorf("max %v, want 30ms (errors carry no latency)", m)
	}
	errs := r.errorCounts()
	if r.failed.Load() != 3 || errs["40001"] != 2 || errs["connection"] != 1 {
		t.Errorf("failed %d, errors %v", r.failed.Load(), errs)
	}
}

func TestErrorCode(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{&pgconn.PgError{Code: "57P01"}, "57P01"},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "22012"}), "22012"},
		{io.EOF, "connection"},
		{errors.New("dial tcp: connection refused"), "connection"},
		{fmt.Errorf("sleep: %w", context.Canceled), "canceled"},
		{&scriptError{errors.New("division by zero")}, "script"},
	}
	for _, c := range cases {
		if got := ErrorCode(c.err); got != c.want {
			t.Errorf("ErrorCode(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
