package benchmarks

import (
	"context"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/asyncgate/asyncgate/benchmarks/procstat"
	"github.com/jackc/pgx/v5/pgconn"
)

// IdleConfig describes a memory-per-idle-client measurement.
type IdleConfig struct {
	Target      Target
	Clients     int
	Concurrency int // simultaneous connection attempts; default 200
	Processes   []Process
	// SettleTimeout bounds each wait for RSS to stop moving; default 30s.
	SettleTimeout time.Duration
	// SettleInterval is the RSS polling period; RSS has settled when SettleSamples consecutive
	// readings stay within 64 KiB (or 0.1%) of each other. Defaults 250ms and 12.
	SettleInterval time.Duration
	SettleSamples  int
	Progress       *Progress
}

// IdleResult is the outcome of RunIdle.
type IdleResult struct {
	Target        string           `json:"target"`
	DSN           string           `json:"dsn"`
	Requested     int              `json:"requested"`
	Connected     int              `json:"connected"`
	ConnectErrors map[string]int64 `json:"connect_errors"`
	ConnectWallMs float64          `json:"connect_wall_ms"`
	Connect       LatencySummary   `json:"connect_latency_ms"`
	Processes     []IdleProcess    `json:"processes"`
}

// IdleProcess is one process's memory before and after the idle clients connected.
type IdleProcess struct {
	Name           string  `json:"name"`
	PID            int     `json:"pid"`
	RSSBeforeBytes int64   `json:"rss_before_bytes"`
	RSSAfterBytes  int64   `json:"rss_after_bytes"`
	PerClientBytes float64 `json:"rss_per_client_bytes"` // (after − before) / connected
	Settled        bool    `json:"settled"`              // false: SettleTimeout ran out first
	Error          string  `json:"error,omitempty"`
}

// RunIdle opens Clients idle connections to the target, waits for the processes' RSS to settle,
// reports the growth per connection, then closes the connections.
func RunIdle(ctx context.Context, cfg IdleConfig) (*IdleResult, error) {
	if cfg.Clients < 1 {
		return nil, fmt.Errorf("benchmarks: idle: clients must be at least 1")
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 200
	}
	if cfg.SettleTimeout <= 0 {
		cfg.SettleTimeout = 30 * time.Second
	}
	if cfg.SettleInterval <= 0 {
		cfg.SettleInterval = 250 * time.Millisecond
	}
	if cfg.SettleSamples < 2 {
		// Three seconds of agreement: a process that gives memory back once its connection count
		// has been stable for a moment is measured after it did.
		cfg.SettleSamples = 12
	}
	pcfg, err := pgconn.ParseConfig(cfg.Target.DSN)
	if err != nil {
		return nil, fmt.Errorf("benchmarks: idle: target %s: %w", cfg.Target.Name, err)
	}
	say := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress.W, "[idle %s] "+format+"\n", append([]any{cfg.Target.Name}, args...)...)
		}
	}

	res := &IdleResult{
		Target:        cfg.Target.Name,
		DSN:           RedactDSN(cfg.Target.DSN),
		Requested:     cfg.Clients,
		ConnectErrors: map[string]int64{},
	}
	for _, p := range cfg.Processes {
		ip := IdleProcess{Name: p.Name, PID: p.PID}
		ip.RSSBeforeBytes, _, err = settleRSS(ctx, p.PID, cfg)
		if err != nil {
			ip.Error = err.Error()
		}
		res.Processes = append(res.Processes, ip)
	}

	say("opening %d connections", cfg.Clients)
	conns := make([]*pgconn.PgConn, cfg.Clients)
	defer closeIdle(conns, cfg.Concurrency)
	hist := newHistogram()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, cfg.Concurrency)
	start := time.Now()
	for i := range conns {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			t0 := time.Now()
			c, err := pgconn.ConnectConfig(ctx, pcfg)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.ConnectErrors[ErrorCode(err)]++
				return
			}
			conns[i] = c
			recordLatency(hist, d)
		})
	}
	wg.Wait()
	res.ConnectWallMs = float64(time.Since(start)) / float64(time.Millisecond)
	res.Connected = int(hist.TotalCount())
	res.Connect = Summarize(hist, 0)
	say("%d connected in %.0f ms, %d failed; waiting for RSS to settle", res.Connected, res.ConnectWallMs, cfg.Clients-res.Connected)

	for i := range res.Processes {
		ip := &res.Processes[i]
		if ip.Error != "" {
			continue
		}
		ip.RSSAfterBytes, ip.Settled, err = settleRSS(ctx, ip.PID, cfg)
		if err != nil {
			ip.Error = err.Error()
			continue
		}
		if res.Connected > 0 {
			ip.PerClientBytes = float64(ip.RSSAfterBytes-ip.RSSBeforeBytes) / float64(res.Connected)
		}
	}
	return res, ctx.Err()
}

func closeIdle(conns []*pgconn.PgConn, concurrency int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, concurrency)
	for _, c := range conns {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_ = c.Close(ctx)
		})
	}
	wg.Wait()
}

// settleRSS polls pid's RSS until the last SettleSamples readings agree, and returns the last.
// settled is false when SettleTimeout ran out first.
func settleRSS(ctx context.Context, pid int, cfg IdleConfig) (rss int64, settled bool, err error) {
	deadline := time.Now().Add(cfg.SettleTimeout)
	var window []int64
	for {
		s, err := procstat.Read(pid)
		if err != nil {
			return 0, false, err
		}
		window = append(window, s.RSSBytes)
		if len(window) > cfg.SettleSamples {
			window = window[1:]
		}
		if len(window) == cfg.SettleSamples && steady(window) {
			return s.RSSBytes, true, nil
		}
		if time.Now().After(deadline) {
			return s.RSSBytes, false, nil
		}
		if err := sleepCtx(ctx, cfg.SettleInterval); err != nil {
			return s.RSSBytes, false, err
		}
	}
}

func steady(window []int64) bool {
	lo, hi := window[0], window[0]
	for _, v := range window {
		lo, hi = min(lo, v), max(hi, v)
	}
	return hi-lo <= max(64<<10, hi/1000)
}

func (r *IdleResult) writeText(w io.Writer) {
	fmt.Fprintf(w, "idle clients on %s: %d of %d connected in %.0f ms (connect p50 %s ms, p99 %s ms)",
		r.Target, r.Connected, r.Requested, r.ConnectWallMs, FormatMs(r.Connect.P50), FormatMs(r.Connect.P99))
	if len(r.ConnectErrors) > 0 {
		fmt.Fprintf(w, "; errors: %s", formatCounts(r.ConnectErrors))
	}
	fmt.Fprintln(w)
	if len(r.Processes) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "process\tpid\trss before MiB\trss after MiB\tKiB per client\tsettled\t")
	for _, p := range r.Processes {
		if p.Error != "" {
			fmt.Fprintf(tw, "%s\t%d\terror: %s\t\t\t\t\n", p.Name, p.PID, p.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.2f\t%v\t\n", p.Name, p.PID,
			float64(p.RSSBeforeBytes)/(1<<20), float64(p.RSSAfterBytes)/(1<<20), p.PerClientBytes/1024, p.Settled)
	}
	tw.Flush()
}
