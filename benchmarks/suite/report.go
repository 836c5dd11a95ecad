package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/asyncgate/asyncgate/benchmarks"
)

// Target names in the asyncgate-bench results.
const (
	nameAG     = "asyncgate"
	namePgB    = "pgbouncer"
	nameDirect = "direct"
)

// markdown renders the results file.
func (s *suite) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	run := "full run, `make bench`"
	if s.prof.Name == "quick" {
		run = "quick run, `make bench-quick`"
	}
	p("# asyncgate benchmarks: %s, %s (%s)\n\n", s.started.Format("2006-01-02"), s.host, run)
	p("asyncgate against PgBouncer and direct PostgreSQL, written by `benchmarks/suite`. Started %s; "+
		"the suite took %s. Load average %s at the start, %s at the end.\n\n",
		s.started.UTC().Format("2006-01-02 15:04:05 UTC"), s.wall.Round(time.Second), s.loadStart, s.loadEnd)
	if s.interrupted {
		p("**Interrupted: the cases below are the ones that ran before the suite was stopped.**\n\n")
	}

	p("## Setup\n\n")
	for _, e := range s.env {
		p("- %s\n", e)
	}
	p("- run: %s per target in %d interleaved rounds (each round: direct, pgbouncer, asyncgate in turn, "+
		"%s each), closed loop, pgbench tables at scale %d, `--seed 1`; idle case with %d clients\n",
		s.prof.Duration, s.prof.Rounds, s.prof.Duration/time.Duration(s.prof.Rounds), s.prof.Scale, s.prof.IdleClients)
	p("- both gateways: scram-sha-256 client auth against the same userlist, `max_client_conn` 20000, " +
		"the same pool mode and pool size per case, connections to the primary as `postgres` " +
		"(scram-sha-256); PgBouncer's connection logging off as asyncgate runs at `--log-level warn`\n")
	p("- CPU µs/txn: user+system CPU of the gateway process during its own turns, per transaction; " +
		"RSS: the largest sample during its turns. Direct has neither (one backend process per client).\n")
	p("- the load tool, both gateways and PostgreSQL share this machine's cores, so the load tool competes " +
		"with what it measures: compare the targets with each other, not with other machines.\n")
	p("- ratios are asyncgate divided by the other: above 1 is better for tps, below 1 is better for " +
		"latency, CPU and memory.\n\n")

	p("## Summary\n\n")
	p("| case | tps asyncgate/PgBouncer | tps asyncgate/direct | p99 asyncgate/PgBouncer | CPU µs/txn asyncgate/PgBouncer | errors |\n")
	p("| --- | ---: | ---: | ---: | ---: | --- |\n")
	for _, r := range s.cases {
		switch {
		case r.Case.Hedging && r.Report != nil:
			on, g := r.Report.Target(nameHedgeAuto), r.Report.Target(namePgBRep)
			p99 := "–"
			if v, ok := hedgeResult(r); ok {
				p99 = fmt.Sprintf("hedging on/off %.2f at %+.1f%% requests", v.P99Ratio, v.Extra*100)
			}
			p("| %s | %s | | %s | | %s |\n", r.Case.Title, tpsRatio(on, g), p99, errorSummary(r.Report))
		case r.Case.Overload && r.Overload != nil:
			summary := "–"
			if v, ok := overloadCheck(r.Overload); ok {
				summary = fmt.Sprintf("at 10×: goodput %.2f of capacity, admitted p99 %s ms, refusal p99 %s ms; bar met: %v",
					v.Goodput, benchmarks.FormatMs(v.AdmittedP99), benchmarks.FormatMs(v.RejectP99), v.Met)
			}
			p("| %s | | | %s | | |\n", r.Case.Title, summary)
		case r.Report != nil:
			a, g, d := r.Report.Target(nameAG), r.Report.Target(namePgB), r.Report.Target(nameDirect)
			p("| %s | %s | %s | %s | %s | %s |\n", r.Case.Title, tpsRatio(a, g), tpsRatio(a, d),
				latRatio(a, g), cpuRatio(a, g), errorSummary(r.Report))
		case r.Case.Idle && len(r.Idle) > 0:
			p("| %s | %s | | | | %s |\n", r.Case.Title, idleSummary(r.Idle), idleErrors(r.Idle))
		default:
			p("| %s | failed | | | | %s |\n", r.Case.Title, oneLine(errString(r.Err)))
		}
	}
	p("\n")

	if obs := s.observations(); len(obs) > 0 {
		p("### Flagged automatically\n\n")
		for _, o := range obs {
			p("- %s\n", o)
		}
		p("\n")
	}

	for _, r := range s.cases {
		p("## %s\n\n", r.Case.Title)
		if r.Case.Note != "" {
			p("%s ", r.Case.Note)
		}
		p("Pool mode %s, pool size %d on every gateway. The case took %s.\n\n",
			r.Case.PoolMode, r.Case.PoolSize, r.Wall.Round(time.Second))
		if r.Err != nil {
			p("**Failed:** %s\n\n", oneLine(r.Err.Error()))
		}
		switch {
		case r.Case.Hedging && r.Report != nil:
			writeHedgeTables(&b, r)
		case r.Case.Overload:
			writeOverloadTables(&b, r.Overload)
		case r.Report != nil:
			writeLoadTables(&b, r.Report)
		case len(r.Idle) > 0:
			writeIdleTable(&b, r.Idle)
		}
		if r.Plot != "" {
			p("![%s](%s)\n\n", r.Case.Slug, r.Plot)
		}
		if len(r.JSON) > 0 {
			var links []string
			for _, j := range r.JSON {
				links = append(links, fmt.Sprintf("[%s](%s)", j, j))
			}
			p("JSON: %s\n\n", strings.Join(links, ", "))
		}
		if len(r.Commands) > 0 {
			p("```sh\n")
			for _, c := range r.Commands {
				p("# %s\n%s\n", c.What, c.Line)
			}
			p("```\n\n")
		}
		if r.INI != "" {
			p("<details><summary>pgbouncer.ini</summary>\n\n```ini\n%s```\n\n</details>\n\n", r.INI)
		}
		for _, name := range slices.Sorted(maps.Keys(r.Logs)) {
			if lines := r.Logs[name]; len(lines) > 0 {
				p("%s log (warnings and errors, last %d lines):\n\n```\n%s\n```\n\n", name, len(lines), strings.Join(lines, "\n"))
			}
		}
	}

	p("## Setup commands\n\n```sh\n")
	for _, c := range s.setup {
		p("# %s\n%s\n", c.What, c.Line)
	}
	p("```\n")
	return b.String()
}

func writeLoadTables(b *strings.Builder, rep *benchmarks.Report) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("| target | tps | p50 ms | p99 ms | CPU µs/txn | RSS MiB | errors | tps per round (min–max) |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, t := range rep.Targets {
		cpu, rss := "–", "–"
		if pr := process(t, t.Name); pr != nil {
			cpu = fmt.Sprintf("%.1f", pr.CPUPerTxnUs)
			rss = fmt.Sprintf("%.1f", float64(pr.RSSMaxBytes)/(1<<20))
		}
		errs := fmt.Sprint(t.ErrorCount)
		if n := sum(t.Connect.Errors); n > 0 {
			errs += fmt.Sprintf(" (+%d at connect)", n)
		}
		lo, hi := roundRange(t)
		p("| %s | %.0f | %s | %s | %s | %s | %s | %.0f–%.0f |\n",
			t.Name, t.TPS, benchmarks.FormatMs(t.Latency.P50), benchmarks.FormatMs(t.Latency.P99), cpu, rss, errs, lo, hi)
	}
	p("\n")

	a, g, d := rep.Target(nameAG), rep.Target(namePgB), rep.Target(nameDirect)
	if a == nil {
		return
	}
	p("| ratio | tps | p50 | p99 | CPU µs/txn | RSS |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	if g != nil {
		p("| asyncgate/PgBouncer | %s | %s | %s | %s | %s |\n", tpsRatio(a, g),
			ratio(a.Latency.P50, g.Latency.P50), latRatio(a, g), cpuRatio(a, g), rssRatio(a, g))
	}
	if d != nil {
		p("| asyncgate/direct | %s | %s | %s | – | – |\n", tpsRatio(a, d), ratio(a.Latency.P50, d.Latency.P50), latRatio(a, d))
	}
	p("\n")
	for _, t := range rep.Targets {
		if len(t.Errors) > 0 {
			p("- %s errors: %s\n", t.Name, counts(t.Errors))
		}
		if len(t.Connect.Errors) > 0 {
			p("- %s errors at connect: %s\n", t.Name, counts(t.Connect.Errors))
		}
	}
	p("\n")
}

func writeIdleTable(b *strings.Builder, idle []*benchmarks.IdleResult) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("| target | connected | connect errors | connect wall s | RSS before MiB | RSS after MiB | KiB per idle client | settled |\n")
	p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, r := range idle {
		ip := idleProcess(r)
		if ip == nil || ip.Error != "" {
			msg := "no process sample"
			if ip != nil {
				msg = ip.Error
			}
			p("| %s | %d of %d | %d | %.1f | %s | | | |\n", r.Target, r.Connected, r.Requested, sum(r.ConnectErrors), r.ConnectWallMs/1000, msg)
			continue
		}
		p("| %s | %d of %d | %d | %.1f | %.1f | %.1f | %.2f | %v |\n", r.Target, r.Connected, r.Requested,
			sum(r.ConnectErrors), r.ConnectWallMs/1000, float64(ip.RSSBeforeBytes)/(1<<20),
			float64(ip.RSSAfterBytes)/(1<<20), ip.PerClientBytes/1024, ip.Settled)
	}
	p("\n")
	if s := idleSummary(idle); s != "" {
		p("%s\n\n", s)
	}
	for _, r := range idle {
		if len(r.ConnectErrors) > 0 {
			p("- %s errors at connect: %s\n", r.Target, counts(r.ConnectErrors))
		}
	}
}

// observations lists what looks wrong, so that a reader of the file does not have to hunt.
func (s *suite) observations() []string {
	var out []string
	for _, r := range s.cases {
		name := r.Case.Slug
		if r.Err != nil {
			out = append(out, fmt.Sprintf("%s: failed: %s", name, oneLine(r.Err.Error())))
		}
		for _, pr := range r.Problems {
			out = append(out, fmt.Sprintf("%s: %s", name, oneLine(pr)))
		}
		if v, ok := overloadCheck(r.Overload); ok && !v.Met {
			out = append(out, fmt.Sprintf("%s: the bar is not met: %s", name, strings.Join(v.Failed, "; ")))
		}
		if v, ok := hedgeResult(r); ok && !v.Met {
			out = append(out, fmt.Sprintf("%s: the bar is not met: p99 hedging on/off %.2f (at most %.2f), "+
				"extra backend requests %.1f%% (at most %.0f%%)", name, v.P99Ratio, barP99Ratio, v.Extra*100, barExtra*100))
		}
		if r.Report != nil {
			for _, t := range r.Report.Targets {
				if t.TPS == 0 {
					out = append(out, fmt.Sprintf("%s: %s made 0 tps", name, t.Name))
				}
				if t.ErrorCount > 0 {
					out = append(out, fmt.Sprintf("%s: %s counted %d errors (%s) in %d transactions", name, t.Name, t.ErrorCount, counts(t.Errors), t.Txns))
				}
				if len(t.Connect.Errors) > 0 {
					out = append(out, fmt.Sprintf("%s: %s had connect errors: %s", name, t.Name, counts(t.Connect.Errors)))
				}
				for _, pr := range t.Processes {
					if pr.Error != "" {
						out = append(out, fmt.Sprintf("%s: sampling %s during %s: %s", name, pr.Name, t.Name, pr.Error))
					}
				}
				for _, rd := range overrun(r.Report, t) {
					out = append(out, fmt.Sprintf("%s: %s round %d lasted %.1f s instead of %.1f s: transactions were still "+
						"in flight when it ended (%d canceled after the grace period), and the round's tps counts that time",
						name, t.Name, rd.Round, rd.ElapsedS, plannedRound(r.Report), rd.Errors["canceled"]))
				}
				if lo, hi := roundRange(t); len(t.Rounds) > 1 && hi > 0 && lo < 0.75*hi {
					out = append(out, fmt.Sprintf("%s: %s tps varied from %.0f to %.0f between rounds (noisy)", name, t.Name, lo, hi))
				}
			}
		}
		for _, ir := range r.Idle {
			if ir.Connected < ir.Requested {
				out = append(out, fmt.Sprintf("%s: %s connected %d of %d idle clients (%s)", name, ir.Target, ir.Connected, ir.Requested, counts(ir.ConnectErrors)))
			}
			if ip := idleProcess(ir); ip != nil && ip.Error == "" && !ip.Settled {
				out = append(out, fmt.Sprintf("%s: %s RSS did not settle; the per-client figure is approximate", name, ir.Target))
			}
		}
		for _, g := range slices.Sorted(maps.Keys(r.Logs)) {
			if n := len(r.Logs[g]); n > 0 {
				out = append(out, fmt.Sprintf("%s: %s logged warnings or errors (see the case)", name, g))
			}
		}
	}
	return out
}

func process(t *benchmarks.TargetResult, name string) *benchmarks.ProcessResult {
	if t == nil {
		return nil
	}
	for i := range t.Processes {
		if p := &t.Processes[i]; p.Name == name && p.Error == "" {
			return p
		}
	}
	return nil
}

// idleProcess is the sample of the gateway that was the idle target.
func idleProcess(r *benchmarks.IdleResult) *benchmarks.IdleProcess {
	for i := range r.Processes {
		if r.Processes[i].Name == r.Target {
			return &r.Processes[i]
		}
	}
	return nil
}

func idleSummary(idle []*benchmarks.IdleResult) string {
	per := map[string]float64{}
	for _, r := range idle {
		if ip := idleProcess(r); ip != nil && ip.Error == "" {
			per[r.Target] = ip.PerClientBytes / 1024
		}
	}
	a, okA := per[nameAG]
	g, okG := per[namePgB]
	if !okA || !okG {
		return ""
	}
	return fmt.Sprintf("KiB per idle client: asyncgate %.2f, PgBouncer %.2f, asyncgate/PgBouncer %s", a, g, ratio(a, g))
}

func idleErrors(idle []*benchmarks.IdleResult) string {
	var parts []string
	for _, r := range idle {
		if n := sum(r.ConnectErrors); n > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d at connect", r.Target, n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

func errorSummary(rep *benchmarks.Report) string {
	var parts []string
	for _, t := range rep.Targets {
		if n := t.ErrorCount + sum(t.Connect.Errors); n > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d", t.Name, n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

func tpsRatio(a, b *benchmarks.TargetResult) string {
	if a == nil || b == nil {
		return "–"
	}
	return ratio(a.TPS, b.TPS)
}

func latRatio(a, b *benchmarks.TargetResult) string {
	if a == nil || b == nil {
		return "–"
	}
	return ratio(a.Latency.P99, b.Latency.P99)
}

func cpuRatio(a, b *benchmarks.TargetResult) string {
	pa, pb := process(a, nameAG), process(b, namePgB)
	if pa == nil || pb == nil {
		return "–"
	}
	return ratio(pa.CPUPerTxnUs, pb.CPUPerTxnUs)
}

func rssRatio(a, b *benchmarks.TargetResult) string {
	pa, pb := process(a, nameAG), process(b, namePgB)
	if pa == nil || pb == nil {
		return "–"
	}
	return ratio(float64(pa.RSSMaxBytes), float64(pb.RSSMaxBytes))
}

func ratio(a, b float64) string {
	if b <= 0 || a < 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// plannedRound is the measured time of one target's turn in a round, in seconds.
func plannedRound(rep *benchmarks.Report) float64 {
	if rep.Config == nil || rep.Config.Rounds < 1 {
		return 0
	}
	return rep.Config.DurationS / float64(rep.Config.Rounds)
}

// overrun lists t's rounds that took markedly longer than planned: a closed-loop round only ends
// when its in-flight transactions finish or the grace period cancels them.
func overrun(rep *benchmarks.Report, t *benchmarks.TargetResult) []*benchmarks.RoundResult {
	planned := plannedRound(rep)
	if planned <= 0 {
		return nil
	}
	var out []*benchmarks.RoundResult
	for _, rd := range t.Rounds {
		if rd.ElapsedS > planned+max(0.5, planned/10) {
			out = append(out, rd)
		}
	}
	return out
}

func roundRange(t *benchmarks.TargetResult) (lo, hi float64) {
	for i, r := range t.Rounds {
		if i == 0 || r.TPS < lo {
			lo = r.TPS
		}
		hi = max(hi, r.TPS)
	}
	return lo, hi
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func counts(m map[string]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func errString(err error) string {
	if err == nil {
		return "no results"
	}
	return err.Error()
}

// oneLine keeps a message inside a markdown table cell or list item.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.ReplaceAll(s, "|", `\|`)
}
