// Command asyncgate-bench measures PostgreSQL-compatible servers and poolers: throughput, latency
// percentiles, connection setup, and the CPU and memory of the processes under test.
//
//	asyncgate-bench --target pg=postgres://postgres@127.0.0.1:5432/bench --init --scale 1
//	asyncgate-bench -S -M prepared -c 32 -T 60s --rounds 6 \
//	    --target pgbouncer=postgres://u@127.0.0.1:6432/bench --pid pgbouncer=1234 \
//	    --target asyncgate=postgres://u@127.0.0.1:6433/bench --pid asyncgate=5678 \
//	    --json out.json --plot out.png
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/asyncgate/asyncgate/benchmarks"
	"golang.org/x/term"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "asyncgate-bench:", err)
		os.Exit(1)
	}
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// secondsFlag accepts "30" (seconds, as pgbench -T) or a Go duration such as "1m30s".
type secondsFlag struct{ d *time.Duration }

func (f secondsFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f secondsFlag) Set(s string) error {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		*f.d = time.Duration(n * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

func run() error {
	var (
		targets, files, pids listFlag
		duration             = 10 * time.Second
		clients              = flag.Int("c", 1, "number of concurrent clients")
		protocol             = flag.String("M", "simple", "query protocol: simple, extended or prepared")
		workload             = flag.String("b", "tpcb-like", "builtin workload: "+strings.Join(benchmarks.BuiltinWorkloads, ", "))
		selectOnly           = flag.Bool("S", false, "shorthand for -b select-only")
		rate                 = flag.Float64("rate", 0, "open loop: total transactions per second, Poisson arrivals (0: closed loop)")
		rounds               = flag.Int("rounds", 1, "interleaved rounds: each target runs -T/rounds per round, in turn")
		scale                = flag.Int("scale", 0, "pgbench scale factor (0: read from pgbench_branches, or 1 with --init)")
		doInit               = flag.Bool("init", false, "create and fill the pgbench tables at --scale first (then run unless -T 0)")
		initTarget           = flag.String("init-target", "", "target to initialize (default: the first)")
		slowShare            = flag.Float64("slow-share", 0.01, "long-tail: share of transactions that also sleep")
		slowMs               = flag.Float64("slow-ms", 50, "long-tail: sleep of the slow transactions, in milliseconds")
		idleClients          = flag.Int("idle-clients", 0, "idle mode: open this many idle connections and report RSS per client")
		idleTarget           = flag.String("idle-target", "", "idle mode: target to connect to (default: the first)")
		idleConcurrency      = flag.Int("idle-concurrency", 200, "idle mode: simultaneous connection attempts")
		settleTimeout        = flag.Duration("settle-timeout", 30*time.Second, "idle mode: longest wait for RSS to settle")
		jsonOut              = flag.String("json", "", "write the full results as JSON to this file")
		plotOut              = flag.String("plot", "", "draw latency percentiles and throughput to this PNG file")
		progressEvery        = flag.Duration("progress", 5*time.Second, "interval of progress lines when stderr is not a terminal")
		quiet                = flag.Bool("quiet", false, "no progress output")
		grace                = flag.Duration("grace", 5*time.Second, "time in-flight transactions may run past a round's end before they are cancelled")
		connectConcurrency   = flag.Int("connect-concurrency", 100, "simultaneous connection attempts when clients connect")
		seed                 = flag.Uint64("seed", 0, "random seed (0: random)")
	)
	flag.Var(&targets, "target", "NAME=DSN to measure (repeatable; a bare DSN is named \"default\")")
	flag.Var(&files, "file", "pgbench-style script FILE[@WEIGHT] instead of -b (repeatable)")
	flag.Var(&pids, "pid", "NAME=PID of a process whose CPU per transaction and RSS to report (repeatable)")
	flag.Var(secondsFlag{&duration}, "T", "measured time per target, in seconds or as a duration (e.g. 30, 2m)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: asyncgate-bench --target NAME=DSN [--target ...] [flags]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	if _, err := benchmarks.RaiseFileLimit(); err != nil {
		fmt.Fprintln(os.Stderr, "asyncgate-bench: warning:", err)
	}

	var cfg benchmarks.Config
	for i, s := range targets {
		name := "default"
		if i > 0 {
			name = fmt.Sprintf("target%d", i+1)
		}
		t, err := benchmarks.ParseTarget(s, name)
		if err != nil {
			return err
		}
		cfg.Targets = append(cfg.Targets, t)
	}
	if len(cfg.Targets) == 0 {
		flag.Usage()
		return errors.New("at least one --target is required")
	}
	for _, s := range pids {
		p, err := benchmarks.ParseProcess(s)
		if err != nil {
			return err
		}
		cfg.Processes = append(cfg.Processes, p)
	}
	var progress *benchmarks.Progress
	if !*quiet {
		progress = &benchmarks.Progress{W: os.Stderr, Terminal: term.IsTerminal(int(os.Stderr.Fd())), Every: *progressEvery}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *doInit {
		t, err := findTarget(cfg.Targets, *initTarget)
		if err != nil {
			return err
		}
		*scale = max(*scale, 1)
		fmt.Fprintf(os.Stderr, "initializing pgbench tables at scale %d on %s\n", *scale, t.Name)
		if err := benchmarks.InitTables(ctx, t.DSN, *scale); err != nil {
			return err
		}
	}

	report := &benchmarks.Report{Version: benchmarks.ReportVersion, StartedAt: time.Now().UTC()}
	var runErr error
	switch {
	case *idleClients > 0:
		t, err := findTarget(cfg.Targets, *idleTarget)
		if err != nil {
			return err
		}
		report.Idle, runErr = benchmarks.RunIdle(ctx, benchmarks.IdleConfig{
			Target:        t,
			Clients:       *idleClients,
			Concurrency:   *idleConcurrency,
			Processes:     cfg.Processes,
			SettleTimeout: *settleTimeout,
			Progress:      progress,
		})
	case duration > 0:
		if *selectOnly {
			*workload = "select-only"
		}
		var err error
		if len(files) > 0 {
			cfg.Workload, err = benchmarks.FileWorkload(files)
		} else {
			cfg.Workload, err = benchmarks.BuiltinWorkload(*workload, benchmarks.WorkloadOptions{SlowShare: *slowShare, SlowMs: *slowMs})
		}
		if err != nil {
			return err
		}
		cfg.Scale = *scale
		if cfg.Scale == 0 {
			cfg.Scale = 1
			if cfg.Workload.UsesPgbenchTables() {
				if cfg.Scale, err = benchmarks.DetectScale(ctx, cfg.Targets[0].DSN); err != nil {
					return err
				}
			}
		}
		cfg.Protocol = benchmarks.Protocol(*protocol)
		cfg.Clients = *clients
		cfg.Rate = *rate
		cfg.Duration = duration
		cfg.Rounds = *rounds
		cfg.Grace = *grace
		cfg.ConnectConcurrency = *connectConcurrency
		cfg.Seed = *seed
		cfg.Progress = progress
		report, runErr = benchmarks.Run(ctx, cfg)
		if report == nil {
			return runErr
		}
	default:
		return nil // --init alone
	}
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "asyncgate-bench: interrupted; results so far:", runErr)
	}

	if err := report.WriteText(os.Stdout); err != nil {
		return err
	}
	if *jsonOut != "" {
		if err := report.WriteJSON(*jsonOut); err != nil {
			return err
		}
	}
	if *plotOut != "" && len(report.Targets) > 0 {
		if err := report.WritePlot(*plotOut); err != nil {
			return err
		}
	}
	return runErr
}

func findTarget(targets []benchmarks.Target, name string) (benchmarks.Target, error) {
	if name == "" {
		return targets[0], nil
	}
	for _, t := range targets {
		if t.Name == name {
			return t, nil
		}
	}
	return benchmarks.Target{}, fmt.Errorf("no --target named %q", name)
}
