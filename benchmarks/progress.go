package benchmarks

import (
	"fmt"
	"time"
)

// progressPrinter shows a slot's progress: one line rewritten in place on a terminal, or plain
// lines every Progress.Every otherwise (logs, CI).
type progressPrinter struct {
	p       *Progress
	label   string
	lastOK  int64
	lastLat int64
	printed time.Time
}

func (pp *progressPrinter) line(s string) {
	if pp.p.Terminal {
		fmt.Fprintf(pp.p.W, "\r\033[K[%s] %s", pp.label, s)
	} else {
		fmt.Fprintf(pp.p.W, "[%s] %s\n", pp.label, s)
	}
}

func (pp *progressPrinter) status(s string) {
	if pp.p != nil {
		pp.line(s)
	}
}

// tick reports the interval's throughput and mean latency.
func (pp *progressPrinter) tick(now time.Time, elapsed, total time.Duration, tps float64, rec *recorder) {
	if pp.p == nil {
		return
	}
	ok, lat := rec.ok.Load(), rec.latNs.Load()
	mean := 0.0
	if n := ok - pp.lastOK; n > 0 {
		mean = float64(lat-pp.lastLat) / float64(n) / float64(time.Millisecond)
	}
	pp.lastOK, pp.lastLat = ok, lat
	// Ticks jitter, so allow a tenth of the interval: every 5th tick of 1s prints for Every=5s.
	if !pp.p.Terminal && now.Sub(pp.printed) < pp.p.Every*9/10 {
		return
	}
	pp.printed = now
	pp.line(fmt.Sprintf("%5.1f/%.1fs  tps %9.1f  lat %8.3f ms  txns %d  errors %d",
		elapsed.Seconds(), total.Seconds(), tps, mean, ok, rec.failed.Load()))
}

// done prints the slot's summary on a line of its own.
func (pp *progressPrinter) done(r *RoundResult) {
	if pp.p == nil {
		return
	}
	pp.line(fmt.Sprintf("done: tps %.1f  p50 %s ms  p99 %s ms  errors %d  connect %.0f ms",
		r.TPS, FormatMs(r.Latency.P50), FormatMs(r.Latency.P99), r.ErrorCount, r.ConnectWallMs))
	if pp.p.Terminal {
		fmt.Fprintln(pp.p.W)
	}
}
