package benchmarks

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Run measures every target of cfg in interleaved rounds and returns the summed results. When ctx
// ends early it returns the rounds completed so far together with ctx's error.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	mode, _ := cfg.Protocol.ExecMode()
	configs := make([]*pgx.ConnConfig, len(cfg.Targets))
	mydbs := make([]*sql.DB, len(cfg.Targets))
	for i, t := range cfg.Targets {
		if isMySQLDSN(t.DSN) {
			db, err := openMySQL(t.DSN, cfg.Clients)
			if err != nil {
				return nil, fmt.Errorf("benchmarks: target %s: %w", t.Name, err)
			}
			defer db.Close()
			mydbs[i] = db
			continue
		}
		cc, err := pgx.ParseConfig(t.DSN)
		if err != nil {
			return nil, fmt.Errorf("benchmarks: target %s: %w", t.Name, err)
		}
		cc.DefaultQueryExecMode = mode
		configs[i] = cc
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}

	r := &runner{cfg: cfg, configs: configs, mydbs: mydbs, start: time.Now()}
	r.report = &Report{
		Version:   ReportVersion,
		StartedAt: r.start.UTC(),
		Config: &ReportConfig{
			Workload:  cfg.Workload.Name,
			Protocol:  string(cfg.Protocol),
			Clients:   cfg.Clients,
			Rate:      cfg.Rate,
			DurationS: cfg.Duration.Seconds(),
			Rounds:    cfg.Rounds,
			Scale:     cfg.Scale,
			Processes: cfg.Processes,
		},
	}
	for _, s := range cfg.Workload.Scripts {
		r.report.Config.Scripts = append(r.report.Config.Scripts, ScriptInfo{Name: s.Name, Weight: s.Weight})
	}
	for _, t := range cfg.Targets {
		r.report.Targets = append(r.report.Targets, newTargetResult(t))
	}

	slots := Plan(len(cfg.Targets), cfg.Rounds, cfg.Duration)
	for _, slot := range slots {
		if err := ctx.Err(); err != nil {
			return r.report, err
		}
		res := r.runSlot(ctx, slot)
		r.report.Targets[slot.Target].add(res)
	}
	return r.report, ctx.Err()
}

type runner struct {
	cfg     Config
	configs []*pgx.ConnConfig
	mydbs   []*sql.DB // per target: set for a mysql:// one, whose config is nil
	start   time.Time
	report  *Report
}

// runSlot connects the clients of one target (timed apart), runs them for the slot's duration,
// then closes them.
func (r *runner) runSlot(ctx context.Context, slot Slot) *RoundResult {
	cfg := &r.cfg
	target := cfg.Targets[slot.Target]
	res := &RoundResult{
		Round:         slot.Round + 1,
		Errors:        map[string]int64{},
		ConnectErrors: map[string]int64{},
		hist:          newHistogram(),
		connHist:      newHistogram(),
	}
	pr := &progressPrinter{p: cfg.Progress, label: fmt.Sprintf("%s %d/%d", target.Name, slot.Round+1, cfg.Rounds)}

	clients := make([]*client, cfg.Clients)
	for i := range clients {
		// Seeds depend on the round and the client, not the target, so every target of a round
		// sees the same sequence of keys.
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(slot.Round)<<32|uint64(i)))
		clients[i] = newClient(i, r.configs[slot.Target], cfg.Workload, cfg.Scale, rng)
		clients[i].mydb, clients[i].myPrep = r.mydbs[slot.Target], cfg.Protocol == ProtocolPrepared
	}
	pr.status(fmt.Sprintf("connecting %d clients", len(clients)))
	connStart := time.Now()
	live := r.connectAll(ctx, clients, res)
	res.ConnectWallMs = float64(time.Since(connStart)) / float64(time.Millisecond)
	defer r.closeAll(clients)

	procs := startProcs(cfg.Processes)
	rec := newRecorder(min(len(live), 4*runtime.GOMAXPROCS(0)) + 1)
	start := time.Now()
	pr.printed = start
	res.StartS = start.Sub(r.start).Seconds()
	deadline := start.Add(slot.Duration)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var sched *Schedule
	if cfg.Rate > 0 {
		// Seeded by round, like the clients: every target of a round gets the same arrivals.
		sched = NewSchedule(start, cfg.Rate, rand.New(rand.NewPCG(cfg.Seed, uint64(slot.Round))))
	}
	var unsent atomic.Int64
	var wg sync.WaitGroup
	for _, c := range live {
		wg.Go(func() {
			l := loop{
				clock:    realClock{},
				sched:    sched,
				deadline: deadline,
				exec:     c.txn,
				done:     func(d time.Duration, err error) { rec.record(c.id, d, err) },
			}
			unsent.Add(l.run(runCtx))
		})
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()

	ticker := time.NewTicker(cfg.SampleInterval)
	defer ticker.Stop()
	grace := time.NewTimer(time.Until(deadline) + cfg.Grace)
	defer grace.Stop()
	lastT, lastOK := start, int64(0)
wait:
	for {
		select {
		case <-allDone:
			break wait
		case <-grace.C:
			cancel() // stragglers are counted as errors, and the round ends
		case now := <-ticker.C:
			procs.sample()
			ok := rec.ok.Load()
			if now.After(deadline) {
				continue
			}
			tps := float64(ok-lastOK) / now.Sub(lastT).Seconds()
			res.throughput = append(res.throughput, ThroughputSample{TimeS: now.Sub(r.start).Seconds(), TPS: tps, Round: res.Round})
			pr.tick(now, now.Sub(start), slot.Duration, tps, rec)
			lastT, lastOK = now, ok
		}
	}
	end := time.Now()
	// The last, partial interval up to the deadline, so a short round still shows its tail.
	if d := deadline.Sub(lastT); d >= cfg.SampleInterval/2 {
		tps := float64(rec.ok.Load()-lastOK) / min(d, end.Sub(lastT)).Seconds()
		res.throughput = append(res.throughput, ThroughputSample{TimeS: deadline.Sub(r.start).Seconds(), TPS: tps, Round: res.Round})
	}

	if sched != nil {
		unsent.Add(sched.countBefore(deadline))
	}
	res.ElapsedS = end.Sub(start).Seconds()
	res.Txns = rec.ok.Load()
	res.ErrorCount = rec.failed.Load()
	res.Errors = rec.errorCounts()
	res.Unsent = unsent.Load()
	if res.ElapsedS > 0 {
		res.TPS = float64(res.Txns) / res.ElapsedS
	}
	res.hist, res.maxLat = rec.merged()
	res.Latency = Summarize(res.hist, res.maxLat)
	res.errHist = rec.errorLatency()
	res.ErrorLatency = Summarize(res.errHist, 0)
	res.Processes = procs.stop(res.Txns)
	pr.done(res)
	return res
}

// connectAll connects clients, at most ConnectConcurrency at a time, and returns those that made it.
func (r *runner) connectAll(ctx context.Context, clients []*client, res *RoundResult) []*client {
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, r.cfg.ConnectConcurrency)
	ok := make([]bool, len(clients))
	for i, c := range clients {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			t0 := time.Now()
			err := c.connect(ctx)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.ConnectErrors[ErrorCode(err)]++
				return
			}
			recordLatency(res.connHist, d)
			ok[i] = true
		})
	}
	wg.Wait()
	var live []*client
	for i, c := range clients {
		if ok[i] {
			live = append(live, c)
		}
	}
	return live
}

func (r *runner) closeAll(clients []*client) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, r.cfg.ConnectConcurrency)
	for _, c := range clients {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c.close(ctx)
		})
	}
	wg.Wait()
}
