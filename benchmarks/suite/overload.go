package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/asyncgate/asyncgate/benchmarks"
)

// The overload case: open-loop load at multiples of the measured capacity, asyncgate (which
// refuses what it cannot serve in time) against PgBouncer (which queues it), in one run.
//
// Capacity is made a property of the backend rather than of the shared CPU: each transaction
// is a point select that also sleeps overloadSleep on the server, so a pool of PoolSize
// connections serves at most about PoolSize/overloadSleep transactions a second, well below what
// the gateways, the load tool and PostgreSQL can push through the machine's two cores. Offered
// load beyond that is what admission control is for; with a CPU-bound select-only the load tool
// would starve the gateway of CPU long before any queue formed.
const (
	overloadSleep       = 20 * time.Millisecond
	overloadWaitTimeout = 100 * time.Millisecond // --query-wait-timeout, query_wait_timeout
	overloadClients     = 200                    // connections of the open-loop load tool
)

// overloadMultiples are the offered loads, as multiples of the measured capacity.
var overloadMultiples = []float64{1, 2, 5, 10}

// overloadQueue is asyncgate's --max-queue for the case: what PoolSize connections serve in half
// the wait timeout, so that an admitted unit's wait stays under it and the rest are refused at once.
func overloadQueue(c benchCase) int {
	return int(float64(c.PoolSize) * float64(overloadWaitTimeout/2) / float64(overloadSleep))
}

// overloadStep is one offered load's run.
type overloadStep struct {
	Multiple float64
	Rate     float64
	Report   *benchmarks.Report
}

// overloadResult is the case's measurements besides the steps.
type overloadResult struct {
	Capacity   float64 // tps of asyncgate in a closed loop of 8 clients per pool connection, best round
	UnloadedMs float64 // p99 of one client alone through asyncgate
	Steps      []overloadStep
}

func (s *suite) runOverload(ctx context.Context, c benchCase, ag, pgb *gateway, res *caseResult) error {
	script := s.workPath("overload.sql")
	body := fmt.Sprintf("\\set aid random(1, 100000 * :scale)\nSELECT abalance, pg_sleep(%g) FROM pgbench_accounts WHERE aid = :aid;\n",
		overloadSleep.Seconds())
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		return fmt.Errorf("overload script: %w", err)
	}
	d := s.prof.Duration / 2
	run := func(name string, args ...string) (*benchmarks.Report, error) {
		jsonName := s.base + "-" + c.Slug + "-" + name + ".json"
		jsonPath := filepath.Join(s.results, jsonName)
		os.Remove(jsonPath)
		argv := append([]string{s.binPath("asyncgate-bench"), "--file", script, "-M", "simple", "--seed", "1", "--quiet"}, args...)
		argv = append(argv, "--json", jsonPath)
		res.Commands = append(res.Commands, command{"load: " + name, shellJoin(argv)})
		runErr := s.bench(ctx, 2*d+3*time.Minute, argv)
		rep, err := readReport(jsonPath)
		if err != nil {
			return nil, errors.Join(runErr, err)
		}
		res.JSON = append(res.JSON, jsonName)
		return rep, runErr
	}
	agTarget := []string{"--target", nameAG + "=" + gatewayDSN(ag.port), "--pid", fmt.Sprintf("%s=%d", nameAG, ag.pid())}
	pgbTarget := []string{"--target", namePgB + "=" + gatewayDSN(pgb.port), "--pid", fmt.Sprintf("%s=%d", namePgB, pgb.pid())}

	out := &overloadResult{}
	res.Overload = out
	rep, err := run("unloaded", append([]string{"-c", "1", "-T", (d / 2).String()}, agTarget...)...)
	if err != nil {
		return fmt.Errorf("unloaded: %w", err)
	}
	if t := rep.Target(nameAG); t != nil {
		out.UnloadedMs = t.Latency.P99
	}
	// Capacity: the better of two rounds of a closed loop with 8 clients per pool connection, so
	// that one round the shared machine stalls does not set it.
	rep, err = run("capacity", append([]string{"-c", strconv.Itoa(8 * c.PoolSize), "-T", d.String(), "--rounds", "2"}, agTarget...)...)
	if err != nil {
		return fmt.Errorf("capacity: %w", err)
	}
	t := rep.Target(nameAG)
	if t == nil || t.TPS == 0 {
		return errors.New("capacity: asyncgate made no transactions")
	}
	for _, r := range t.Rounds {
		out.Capacity = max(out.Capacity, r.TPS)
	}
	logf("overload: capacity %.0f tps, unloaded p99 %.2f ms", out.Capacity, out.UnloadedMs)
	var errs []error
	for _, m := range overloadMultiples {
		if ctx.Err() != nil {
			break
		}
		rate := m * out.Capacity
		args := []string{"--rate", strconv.FormatFloat(rate, 'f', 0, 64), "-c", strconv.Itoa(overloadClients),
			"-T", d.String(), "--rounds", "2", "--grace", "2s"}
		args = append(args, pgbTarget...)
		args = append(args, agTarget...)
		rep, err := run(fmt.Sprintf("x%g", m), args...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%g× capacity: %w", m, err))
		}
		if rep != nil {
			out.Steps = append(out.Steps, overloadStep{Multiple: m, Rate: rate, Report: rep})
		}
	}
	return errors.Join(errs...)
}

// overloadArgs are asyncgate's admission settings for the case.
func overloadArgs(c benchCase) []string {
	return []string{"--max-queue", strconv.Itoa(overloadQueue(c)), "--query-wait-timeout", overloadWaitTimeout.String()}
}

// overloadINI is PgBouncer's: the same wait timeout (it has no queue bound).
func overloadINI() string {
	return fmt.Sprintf("query_wait_timeout = %g\n", overloadWaitTimeout.Seconds())
}

// overloadVerdict checks asyncgate at the highest multiple against the bar.
type overloadVerdict struct {
	Goodput, AdmittedP99, RejectP99, RSSGrowth float64
	Met                                        bool
	Failed                                     []string
}

func overloadCheck(o *overloadResult) (overloadVerdict, bool) {
	if o == nil || len(o.Steps) == 0 || o.Capacity == 0 {
		return overloadVerdict{}, false
	}
	first, last := o.Steps[0], o.Steps[len(o.Steps)-1]
	a, a1 := last.Report.Target(nameAG), first.Report.Target(nameAG)
	if a == nil || a1 == nil {
		return overloadVerdict{}, false
	}
	v := overloadVerdict{Goodput: a.TPS / o.Capacity, AdmittedP99: a.Latency.P99, RejectP99: a.ErrorLatency.P99}
	rss := func(t *benchmarks.TargetResult) float64 {
		if pr := process(t, nameAG); pr != nil {
			return float64(pr.RSSMaxBytes)
		}
		return 0
	}
	if r1 := rss(a1); r1 > 0 {
		v.RSSGrowth = rss(a) / r1
	}
	limit := float64(overloadWaitTimeout/time.Microsecond)/1000 + o.UnloadedMs
	if v.Goodput < 0.9 {
		v.Failed = append(v.Failed, fmt.Sprintf("goodput %.0f%% of capacity (at least 90%%)", v.Goodput*100))
	}
	if v.AdmittedP99 >= limit {
		v.Failed = append(v.Failed, fmt.Sprintf("admitted p99 %.1f ms (under %.1f ms: wait timeout + unloaded p99)", v.AdmittedP99, limit))
	}
	if a.ErrorCount > 0 && v.RejectP99 >= 1 {
		v.Failed = append(v.Failed, fmt.Sprintf("rejection p99 %.2f ms (under 1 ms)", v.RejectP99))
	}
	if v.RSSGrowth > 1.25 {
		v.Failed = append(v.Failed, fmt.Sprintf("RSS %.2f× its value at %g× (flat: at most 1.25×)", v.RSSGrowth, first.Multiple))
	}
	v.Met = len(v.Failed) == 0
	return v, true
}

func writeOverloadTables(b *strings.Builder, o *overloadResult) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	if o == nil {
		return
	}
	p("Capacity (asyncgate, closed loop, the better of two rounds): **%.0f tps**; one client alone: p99 %s ms. "+
		"Admission: asyncgate `--query-wait-timeout %s`, PgBouncer `query_wait_timeout = %g`. Admitted latency counts "+
		"from each arrival's intended start; a refusal's from when it was sent.\n\n",
		o.Capacity, benchmarks.FormatMs(o.UnloadedMs), overloadWaitTimeout, overloadWaitTimeout.Seconds())
	p("| offered | target | goodput tps | goodput / capacity | admitted p50 ms | admitted p99 ms | refused /s | refusal p50 ms | refusal p99 ms | unsent | RSS MiB | errors |\n")
	p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, st := range o.Steps {
		for _, t := range st.Report.Targets {
			rss := "–"
			if pr := process(t, t.Name); pr != nil {
				rss = fmt.Sprintf("%.1f", float64(pr.RSSMaxBytes)/(1<<20))
			}
			refused := 0.0
			if t.ElapsedS > 0 {
				refused = float64(t.ErrorCount) / t.ElapsedS
			}
			p("| %g× (%.0f/s) | %s | %.0f | %.2f | %s | %s | %.0f | %s | %s | %d | %s | %s |\n",
				st.Multiple, st.Rate, t.Name, t.TPS, t.TPS/o.Capacity,
				benchmarks.FormatMs(t.Latency.P50), benchmarks.FormatMs(t.Latency.P99), refused,
				benchmarks.FormatMs(t.ErrorLatency.P50), benchmarks.FormatMs(t.ErrorLatency.P99), t.Unsent, rss, counts(t.Errors))
		}
	}
	p("\n")
	p("| offered | goodput asyncgate/PgBouncer | admitted p99 asyncgate/PgBouncer | RSS asyncgate/PgBouncer |\n| --- | ---: | ---: | ---: |\n")
	for _, st := range o.Steps {
		a, g := st.Report.Target(nameAG), st.Report.Target(namePgB)
		if a == nil || g == nil {
			continue
		}
		p("| %g× | %s | %s | %s |\n", st.Multiple, tpsRatio(a, g), latRatio(a, g), rssRatio(a, g))
	}
	p("\n")
	if v, ok := overloadCheck(o); ok {
		verdict := "met"
		if !v.Met {
			verdict = "**not met**: " + strings.Join(v.Failed, "; ")
		}
		p("The bar at %g× (goodput ≥ 90%% of capacity, admitted p99 under the wait timeout plus the unloaded p99, "+
			"refusals within 1 ms at p99, RSS flat): %s. asyncgate at %g×: goodput %.2f of capacity, admitted p99 %s ms, "+
			"refusal p99 %s ms, RSS %.2f× its value at %g×.\n\n", o.Steps[len(o.Steps)-1].Multiple, verdict,
			o.Steps[len(o.Steps)-1].Multiple, v.Goodput, benchmarks.FormatMs(v.AdmittedP99), benchmarks.FormatMs(v.RejectP99),
			v.RSSGrowth, o.Steps[0].Multiple)
	}
}
