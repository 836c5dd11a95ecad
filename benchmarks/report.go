package benchmarks

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// ReportVersion is bumped when the JSON schema changes incompatibly.
const ReportVersion = 1

// Report is the result of a run, as written by WriteJSON.
type Report struct {
	Version   int             `json:"version"`
	StartedAt time.Time       `json:"started_at"`
	Config    *ReportConfig   `json:"config,omitempty"` // load runs only
	Targets   []*TargetResult `json:"targets,omitempty"`
	Idle      *IdleResult     `json:"idle,omitempty"`
}

// ReportConfig echoes the settings of a load run.
type ReportConfig struct {
	Workload  string       `json:"workload"`
	Scripts   []ScriptInfo `json:"scripts"`
	Protocol  string       `json:"protocol"`
	Clients   int          `json:"clients"`
	Rate      float64      `json:"rate"` // 0: closed loop
	DurationS float64      `json:"duration_s"`
	Rounds    int          `json:"rounds"`
	Scale     int          `json:"scale"`
	Processes []Process    `json:"processes,omitempty"`
}

// ScriptInfo names a script of the workload and its weight.
type ScriptInfo struct {
	Name   string  `json:"name"`
	Weight float64 `json:"weight"`
}

// TargetResult sums a target's rounds.
type TargetResult struct {
	Name       string           `json:"name"`
	DSN        string           `json:"dsn"` // password redacted
	Txns       int64            `json:"txns"`
	ElapsedS   float64          `json:"elapsed_s"`
	TPS        float64          `json:"tps"`
	ErrorCount int64            `json:"error_count"`
	Errors     map[string]int64 `json:"errors"` // by SQLSTATE, or connection/canceled/script
	// Unsent counts open-loop arrivals due before the end of a round that no client got to send:
	// with a non-zero value the target could not keep up with the rate.
	Unsent  int64          `json:"unsent"`
	Latency LatencySummary `json:"latency_ms"`
	// ErrorLatency is the failed transactions' latency, from when each was sent (not from its
	// intended start): how fast a gateway that sheds load answers the work it refuses.
	ErrorLatency LatencySummary            `json:"error_latency_ms"`
	Connect      ConnectStats              `json:"connect"`
	Processes    []ProcessResult           `json:"processes,omitempty"`
	Rounds       []*RoundResult            `json:"rounds"`
	Throughput   []ThroughputSample        `json:"throughput"`
	hist         *hdrhistogram.Histogram   // merged over rounds
	maxLat       time.Duration             //
	connHist     *hdrhistogram.Histogram   //
	errHist      *hdrhistogram.Histogram   //
	procs        map[string]*ProcessResult // accumulated by name
}

// ConnectStats describes connection setup, which is measured apart from query latency.
type ConnectStats struct {
	Connected int64            `json:"connected"` // successful connects, all rounds
	Errors    map[string]int64 `json:"errors"`
	Latency   LatencySummary   `json:"latency_ms"` // per connection
	// WallMs is the time to connect all clients of a round, per round.
	WallMs []float64 `json:"wall_ms"`
}

// RoundResult is one target's turn in one round.
type RoundResult struct {
	Round         int              `json:"round"`   // 1-based
	StartS        float64          `json:"start_s"` // since the start of the run
	ElapsedS      float64          `json:"elapsed_s"`
	Txns          int64            `json:"txns"`
	TPS           float64          `json:"tps"`
	ErrorCount    int64            `json:"error_count"`
	Errors        map[string]int64 `json:"errors"`
	Unsent        int64            `json:"unsent"`
	Latency       LatencySummary   `json:"latency_ms"`
	ErrorLatency  LatencySummary   `json:"error_latency_ms"`
	ConnectWallMs float64          `json:"connect_wall_ms"`
	ConnectErrors map[string]int64 `json:"connect_errors"`
	Processes     []ProcessResult  `json:"processes,omitempty"`

	hist       *hdrhistogram.Histogram
	maxLat     time.Duration
	connHist   *hdrhistogram.Histogram
	errHist    *hdrhistogram.Histogram
	throughput []ThroughputSample
}

// ProcessResult is what a sampled process used while a target ran.
type ProcessResult struct {
	Name        string  `json:"name"`
	PID         int     `json:"pid"`
	CPUSeconds  float64 `json:"cpu_s"`
	CPUPerTxnUs float64 `json:"cpu_us_per_txn"`
	RSSMaxBytes int64   `json:"rss_max_bytes"`
	RSSAvgBytes int64   `json:"rss_avg_bytes"`
	Error       string  `json:"error,omitempty"`

	rssSum, rssN int64
}

// ThroughputSample is the rate of completed transactions over one sample interval.
type ThroughputSample struct {
	TimeS float64 `json:"t_s"` // end of the interval, since the start of the run
	TPS   float64 `json:"tps"`
	Round int     `json:"round"`
}

func newTargetResult(t Target) *TargetResult {
	return &TargetResult{
		Name:     t.Name,
		DSN:      RedactDSN(t.DSN),
		Errors:   map[string]int64{},
		Connect:  ConnectStats{Errors: map[string]int64{}},
		hist:     newHistogram(),
		connHist: newHistogram(),
		errHist:  newHistogram(),
		procs:    map[string]*ProcessResult{},
	}
}

// add sums a round into the target's totals.
func (t *TargetResult) add(r *RoundResult) {
	t.Rounds = append(t.Rounds, r)
	t.Txns += r.Txns
	t.ElapsedS += r.ElapsedS
	t.ErrorCount += r.ErrorCount
	t.Unsent += r.Unsent
	for k, v := range r.Errors {
		t.Errors[k] += v
	}
	for k, v := range r.ConnectErrors {
		t.Connect.Errors[k] += v
	}
	t.hist.Merge(r.hist)
	t.maxLat = max(t.maxLat, r.maxLat)
	t.connHist.Merge(r.connHist)
	if r.errHist != nil {
		t.errHist.Merge(r.errHist)
	}
	t.Connect.Connected = t.connHist.TotalCount()
	t.Connect.WallMs = append(t.Connect.WallMs, r.ConnectWallMs)
	t.Throughput = append(t.Throughput, r.throughput...)

	for _, p := range r.Processes {
		acc := t.procs[p.Name]
		if acc == nil {
			acc = &ProcessResult{Name: p.Name, PID: p.PID}
			t.procs[p.Name] = acc
		}
		acc.CPUSeconds += p.CPUSeconds
		acc.RSSMaxBytes = max(acc.RSSMaxBytes, p.RSSMaxBytes)
		acc.rssSum += p.rssSum
		acc.rssN += p.rssN
		if p.Error != "" {
			acc.Error = p.Error
		}
	}
	t.finish()
}

func (t *TargetResult) finish() {
	if t.ElapsedS > 0 {
		t.TPS = float64(t.Txns) / t.ElapsedS
	}
	t.Latency = Summarize(t.hist, t.maxLat)
	t.ErrorLatency = Summarize(t.errHist, 0)
	t.Connect.Latency = Summarize(t.connHist, 0)
	t.Processes = t.Processes[:0]
	for _, name := range slices.Sorted(maps.Keys(t.procs)) {
		p := *t.procs[name]
		p.finish(t.Txns)
		t.Processes = append(t.Processes, p)
	}
}

func (p *ProcessResult) finish(txns int64) {
	if txns > 0 {
		p.CPUPerTxnUs = p.CPUSeconds * 1e6 / float64(txns)
	}
	if p.rssN > 0 {
		p.RSSAvgBytes = p.rssSum / p.rssN
	}
}

// Target returns the result of the named target, or nil.
func (r *Report) Target(name string) *TargetResult {
	for _, t := range r.Targets {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// WriteJSON writes the report, indented, to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("benchmarks: json: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("benchmarks: json: %w", err)
	}
	return nil
}

// WriteText writes the final table.
func (r *Report) WriteText(w io.Writer) error {
	if len(r.Targets) > 0 {
		c := r.Config
		load := "closed loop"
		if c.Rate > 0 {
			load = fmt.Sprintf("open loop %g/s", c.Rate)
		}
		fmt.Fprintf(w, "workload %s, protocol %s, %d clients, %s, %gs per target in %d rounds, scale %d\n\n",
			c.Workload, c.Protocol, c.Clients, load, c.DurationS, c.Rounds, c.Scale)

		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		head := []string{"target", "txns", "tps", "ratio", "errors"}
		if c.Rate > 0 {
			head = append(head, "unsent")
		}
		head = append(head, "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "conn p50 ms", "conn p99 ms")
		for _, p := range c.Processes {
			head = append(head, p.Name+" cpu µs/txn", p.Name+" rss MiB")
		}
		fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
		base := r.Targets[0].TPS
		for _, t := range r.Targets {
			ratio := "-"
			if base > 0 {
				ratio = fmt.Sprintf("%.3f", t.TPS/base)
			}
			row := []string{t.Name, fmt.Sprint(t.Txns), fmt.Sprintf("%.1f", t.TPS), ratio, fmt.Sprint(t.ErrorCount)}
			if c.Rate > 0 {
				row = append(row, fmt.Sprint(t.Unsent))
			}
			l := t.Latency
			row = append(row, FormatMs(l.P50), FormatMs(l.P90), FormatMs(l.P99), FormatMs(l.P999), FormatMs(l.Max),
				FormatMs(t.Connect.Latency.P50), FormatMs(t.Connect.Latency.P99))
			for _, p := range c.Processes {
				cpu, rss := "-", "-"
				for _, pr := range t.Processes {
					if pr.Name == p.Name && pr.Error == "" {
						cpu = fmt.Sprintf("%.1f", pr.CPUPerTxnUs)
						rss = fmt.Sprintf("%.1f", float64(pr.RSSMaxBytes)/(1<<20))
					}
				}
				row = append(row, cpu, rss)
			}
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, t := range r.Targets {
			if len(t.Errors) > 0 {
				fmt.Fprintf(w, "\n%s errors: %s", t.Name, formatCounts(t.Errors))
			}
			if len(t.Connect.Errors) > 0 {
				fmt.Fprintf(w, "\n%s errors at connect: %s", t.Name, formatCounts(t.Connect.Errors))
			}
			for _, p := range t.Processes {
				if p.Error != "" {
					fmt.Fprintf(w, "\n%s: process %s: %s", t.Name, p.Name, p.Error)
				}
			}
		}
		fmt.Fprintln(w)
	}
	if r.Idle != nil {
		r.Idle.writeText(w)
	}
	return nil
}

// FormatMs formats milliseconds with about three significant digits, as the tables do.
func FormatMs(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func formatCounts(m map[string]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
