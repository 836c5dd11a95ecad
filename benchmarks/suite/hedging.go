package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/benchmarks"
	"github.com/asyncgate/asyncgate/internal/faultproxy"
)

// The hedging case: both replicas behind fault proxies that delay hedgeSpikeP of the responses
// by hedgeSpike, and the bar the issue set for hedged reads.
const (
	hedgeSpikeP = 0.02
	hedgeSpike  = 50 * time.Millisecond
	hedgeBudget = "10%"

	barP99Ratio = 0.2  // p99 with hedging at most a fifth of p99 without
	barExtra    = 0.10 // for at most 10% more backend requests
)

// Target names of the hedging case.
const (
	nameHedgeOff  = "asyncgate-hedge-off"
	nameHedgeAuto = "asyncgate-hedge-auto"
	namePgBRep    = "pgbouncer-replica1"
)

// hedgeCount is what SHOW HEDGES counted for one database over a run.
type hedgeCount struct {
	Delay                                       string // --hedge-delay
	Sent, Hedged, WonByHedge, Cancelled, Denied int64
	Skipped, Retried                            int64 // columns a gateway older than them lacks: 0
	DelayUs                                     int64 // the delay in force at the end of the run (0: unknown)
}

// perRequest is backend requests per hedgeable read: the read itself plus its hedges.
func (h *hedgeCount) perRequest() float64 {
	if h == nil || h.Sent == 0 {
		return 1
	}
	return 1 + float64(h.Hedged+h.Retried)/float64(h.Sent)
}

// hedgeVariant is one asyncgate of the case: hedging off, or on with a --hedge-delay.
type hedgeVariant struct {
	name  string
	delay string // "" for hedging off
}

func (s *suite) hedgeVariants() []hedgeVariant {
	vs := []hedgeVariant{{nameHedgeOff, ""}, {nameHedgeAuto, "auto"}}
	for _, d := range s.hedgeDelays {
		vs = append(vs, hedgeVariant{"asyncgate-hedge-" + d.String(), d.String()})
	}
	return vs
}

// runHedging runs case c: fault proxies in front of both replicas, PgBouncer on one of them and
// an asyncgate per hedge variant on both, all measured in turn by one load run.
func (s *suite) runHedging(ctx context.Context, c benchCase, res *caseResult) (err error) {
	if err := s.waitReplicas(ctx, 2*time.Minute); err != nil {
		return err
	}

	var proxies []*faultproxy.Proxy
	defer func() {
		for _, px := range proxies {
			px.Close()
		}
	}()
	for i, r := range s.cluster.replicas {
		port, err := freePort()
		if err != nil {
			return err
		}
		px, err := faultproxy.Listen(fmt.Sprintf("127.0.0.1:%d", port), r)
		if err != nil {
			return fmt.Errorf("fault proxy for %s: %w", r, err)
		}
		seed := uint64(i + 1)
		px.Set(faultproxy.Faults{SpikeP: hedgeSpikeP, Spike: hedgeSpike, Seed: seed})
		proxies = append(proxies, px)
		res.Commands = append(res.Commands, command{fmt.Sprintf("fault proxy %d (in the suite's process; the same as)", i+1),
			shellJoin([]string{"faultproxy", "-listen", px.Addr(), "-target", r,
				"-spike-p", strconv.FormatFloat(hedgeSpikeP, 'g', -1, 64), "-spike", hedgeSpike.String(),
				"-seed", strconv.FormatUint(seed, 10)})})
	}

	var gws []*gateway
	defer func() {
		for _, g := range gws {
			res.Logs[g.name] = g.logTail(20, warningLine)
			if stopErr := g.stop(10 * time.Second); stopErr != nil {
				res.Problems = append(res.Problems, stopErr.Error())
				err = errors.Join(err, stopErr)
			}
		}
	}()

	pgb, ini, err := s.startReplicaPgBouncer(c, proxies[0].Addr())
	if err != nil {
		return err
	}
	gws = append(gws, pgb)
	res.INI = ini
	res.Commands = append(res.Commands, command{namePgBRep, pgb.command})
	variants := s.hedgeVariants()
	for _, v := range variants {
		g, err := s.startHedgeAsyncgate(c, v, proxies)
		if err != nil {
			return err
		}
		gws = append(gws, g)
		res.Commands = append(res.Commands, command{v.name, g.command})
	}
	for _, g := range gws {
		if err := waitLogin(ctx, g, 20*time.Second); err != nil {
			return err
		}
	}

	before := map[string]*hedgeCount{}
	for i, v := range variants {
		if v.delay != "" {
			if before[v.name], err = showHedges(ctx, gws[i+1].port); err != nil {
				return err
			}
		}
	}

	jsonName := s.base + "-" + c.Slug + ".json"
	plotName := s.base + "-" + c.Slug + ".png"
	jsonPath, plotPath := filepath.Join(s.results, jsonName), filepath.Join(s.results, plotName)
	os.Remove(jsonPath)
	os.Remove(plotPath)
	argv := append([]string{s.binPath("asyncgate-bench")}, c.Bench...)
	argv = append(argv, "-T", s.duration(c).String(), "--rounds", strconv.Itoa(s.prof.Rounds), "--seed", "1")
	for _, g := range gws {
		argv = append(argv, "--target", g.name+"="+gatewayDSN(g.port), "--pid", fmt.Sprintf("%s=%d", g.name, g.pid()))
	}
	argv = append(argv, "--json", jsonPath, "--plot", plotPath)
	res.Commands = append(res.Commands, command{"load", shellJoin(argv)})
	runErr := s.bench(ctx, s.loadTimeout(c, len(gws)), argv)

	res.Hedges = map[string]*hedgeCount{}
	for i, v := range variants {
		if v.delay == "" {
			continue
		}
		after, err := showHedges(ctx, gws[i+1].port)
		if err != nil {
			runErr = errors.Join(runErr, err)
			continue
		}
		b := before[v.name]
		res.Hedges[v.name] = &hedgeCount{Delay: v.delay, Sent: after.Sent - b.Sent, Hedged: after.Hedged - b.Hedged,
			WonByHedge: after.WonByHedge - b.WonByHedge, Cancelled: after.Cancelled - b.Cancelled, Denied: after.Denied - b.Denied,
			Skipped: after.Skipped - b.Skipped, Retried: after.Retried - b.Retried, DelayUs: after.DelayUs}
	}

	rep, err := readReport(jsonPath)
	if err != nil {
		return errors.Join(runErr, err)
	}
	res.Report = rep
	res.JSON = append(res.JSON, jsonName)
	if _, err := os.Stat(plotPath); err == nil {
		res.Plot = plotName
	}
	return runErr
}

// waitReplicas waits until both replicas have replayed all the primary wrote so far: the
// pgbench tables.
func (s *suite) waitReplicas(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lsn, err := queryValue(ctx, s.directDSN(), "SELECT pg_current_wal_lsn()")
	if err != nil {
		return fmt.Errorf("primary WAL position: %w", err)
	}
	for _, r := range s.cluster.replicas {
		for {
			v, err := queryValue(ctx, replicaDSN(r), fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn", lsn))
			if err == nil && v == "t" {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("replica %s did not replay up to %s: %v", r, lsn, errors.Join(ctx.Err(), err))
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

func queryValue(ctx context.Context, dsn, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	rs, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(rs) == 0 || len(rs[0].Rows) == 0 {
		return "", errors.New("no rows")
	}
	return string(rs[0].Rows[0][0]), nil
}

func replicaDSN(addr string) string {
	return fmt.Sprintf("postgres://postgres:%s@%s/%s?sslmode=disable&connect_timeout=10", pgPassword, addr, database)
}

// startHedgeAsyncgate starts an asyncgate on the primary with both proxied replicas, routing
// reads to them, hedging as v says. The app user may read its console (SHOW HEDGES).
func (s *suite) startHedgeAsyncgate(c benchCase, v hedgeVariant, proxies []*faultproxy.Proxy) (*gateway, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	argv := []string{s.binPath("asyncgate"),
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--database", fmt.Sprintf("%s=postgres://postgres:%s@%s/%s?sslmode=disable", database, pgPassword, s.cluster.primary, database)}
	for _, px := range proxies {
		argv = append(argv, "--replica", fmt.Sprintf("%s=postgres://postgres:%s@%s/%s?sslmode=disable", database, pgPassword, px.Addr(), database))
	}
	argv = append(argv, "--read-routing", "auto")
	if v.delay == "" {
		argv = append(argv, "--hedge", "off")
	} else {
		argv = append(argv, "--hedge", "on", "--hedge-delay", v.delay, "--hedge-budget", hedgeBudget)
	}
	argv = append(argv,
		"--auth-type", "scram-sha-256", "--auth-file", s.workPath("userlist.txt"), "--stats-users", appUser,
		"--pool-mode", c.PoolMode, "--default-pool-size", strconv.Itoa(c.PoolSize),
		"--max-client-conn", "20000", "--log-level", "warn")
	p, err := startProc(v.name, s.workPath(v.name+".log"), nil, argv...)
	if err != nil {
		return nil, err
	}
	return &gateway{proc: p, port: port, command: shellJoin(argv)}, nil
}

// startReplicaPgBouncer starts PgBouncer on one proxied replica, set up as in the other cases.
func (s *suite) startReplicaPgBouncer(c benchCase, replica string) (*gateway, string, error) {
	host, port, _ := net.SplitHostPort(replica)
	bPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	iniPath, ini, err := s.writePgBouncerINI(c, host, port, bPort)
	if err != nil {
		return nil, "", err
	}
	cred, err := postgresCredential()
	if err != nil {
		return nil, "", err
	}
	argv := []string{s.pgbouncer, iniPath}
	p, err := startProc(namePgBRep, s.workPath("pgbouncer-"+c.Slug+".log"), cred, argv...)
	if err != nil {
		return nil, "", err
	}
	return &gateway{proc: p, port: bPort, command: "(as OS user postgres: PgBouncer refuses root) " + shellJoin(argv)}, ini, nil
}

// showHedges reads the row of the benchmark database from asyncgate's SHOW HEDGES.
func showHedges(ctx context.Context, port int) (*hedgeCount, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/asyncgate?sslmode=disable&connect_timeout=10", appUser, appPassword, port)
	c, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("SHOW HEDGES: %w", err)
	}
	defer c.Close(context.Background())
	rs, err := c.Exec(ctx, "SHOW HEDGES").ReadAll()
	if err != nil {
		return nil, fmt.Errorf("SHOW HEDGES: %w", err)
	}
	if len(rs) != 1 {
		return nil, fmt.Errorf("SHOW HEDGES: %d results", len(rs))
	}
	return parseHedges(rs[0].FieldDescriptions, rs[0].Rows)
}

// parseHedges finds the benchmark database's row of SHOW HEDGES, by column name.
func parseHedges(fields []pgconn.FieldDescription, rows [][][]byte) (*hedgeCount, error) {
	col := map[string]int{}
	for i, f := range fields {
		col[f.Name] = i
	}
	for _, r := range rows {
		if i, ok := col["database"]; !ok || string(r[i]) != database {
			continue
		}
		h := &hedgeCount{}
		for name, dst := range map[string]*int64{"sent": &h.Sent, "hedged": &h.Hedged,
			"won_by_hedge": &h.WonByHedge, "cancelled": &h.Cancelled, "denied": &h.Denied,
			"skipped": &h.Skipped, "retried": &h.Retried, "delay_us": &h.DelayUs} {
			i, ok := col[name]
			if !ok && (name == "skipped" || name == "retried" || name == "delay_us") {
				continue
			}
			if !ok {
				return nil, fmt.Errorf("SHOW HEDGES: no column %s", name)
			}
			n, err := strconv.ParseInt(string(r[i]), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("SHOW HEDGES %s: %w", name, err)
			}
			*dst = n
		}
		return h, nil
	}
	return nil, fmt.Errorf("SHOW HEDGES: no row for database %s (hedging off?)", database)
}

// hedgeVerdict compares hedging (auto delay) with no hedging against the bar.
type hedgeVerdict struct {
	P99Ratio, P999Ratio, Extra float64
	Met                        bool
}

func hedgeResult(r *caseResult) (hedgeVerdict, bool) {
	if r.Report == nil {
		return hedgeVerdict{}, false
	}
	off, on, h := r.Report.Target(nameHedgeOff), r.Report.Target(nameHedgeAuto), r.Hedges[nameHedgeAuto]
	if off == nil || on == nil || h == nil || off.Latency.P99 <= 0 || off.Latency.P999 <= 0 {
		return hedgeVerdict{}, false
	}
	v := hedgeVerdict{P99Ratio: on.Latency.P99 / off.Latency.P99, P999Ratio: on.Latency.P999 / off.Latency.P999,
		Extra: h.perRequest() - 1}
	v.Met = v.P99Ratio <= barP99Ratio && v.Extra <= barExtra
	return v, true
}

func writeHedgeTables(b *strings.Builder, r *caseResult) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	rep := r.Report
	off := rep.Target(nameHedgeOff)
	p("| target | hedge delay | tps | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 / hedging off | " +
		"backend requests per client request | hedgeable reads | hedged | won by hedge | denied | skipped | CPU µs/txn | errors |\n")
	p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, t := range rep.Targets {
		delay, reads, hedged, won, denied, skipped := "off", "–", "–", "–", "–", "–"
		h := r.Hedges[t.Name]
		switch {
		case h != nil:
			delay = h.Delay
			if h.Delay == "auto" && h.DelayUs > 0 {
				delay = fmt.Sprintf("auto (%.2f ms at the end)", float64(h.DelayUs)/1000)
			}
			reads, hedged = fmt.Sprint(h.Sent), fmt.Sprint(h.Hedged)
			won, denied, skipped = fmt.Sprint(h.WonByHedge), fmt.Sprint(h.Denied), fmt.Sprint(h.Skipped)
		case t.Name == namePgBRep:
			delay = "– (one replica)"
		}
		vsOff := "–"
		if off != nil && t != off {
			vsOff = ratio(t.Latency.P99, off.Latency.P99)
		}
		cpu := "–"
		if pr := process(t, t.Name); pr != nil {
			cpu = fmt.Sprintf("%.1f", pr.CPUPerTxnUs)
		}
		errs := fmt.Sprint(t.ErrorCount)
		if n := sum(t.Connect.Errors); n > 0 {
			errs += fmt.Sprintf(" (+%d at connect)", n)
		}
		p("| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %.3f | %s | %s | %s | %s | %s | %s | %s |\n",
			t.Name, delay, t.TPS, benchmarks.FormatMs(t.Latency.P50), benchmarks.FormatMs(t.Latency.P90),
			benchmarks.FormatMs(t.Latency.P99), benchmarks.FormatMs(t.Latency.P999), benchmarks.FormatMs(t.Latency.Max),
			vsOff, h.perRequest(), reads, hedged, won, denied, skipped, cpu, errs)
	}
	p("\n")
	if v, ok := hedgeResult(r); ok {
		verdict := "**met**"
		if !v.Met {
			verdict = "**not met**"
		}
		p("Hedging on (auto delay) / off: p99 %.2f, p99.9 %.2f, extra backend requests %+.1f%%. "+
			"Bar: p99 ratio at most %.2f for at most %.0f%% extra requests: %s.\n\n",
			v.P99Ratio, v.P999Ratio, v.Extra*100, barP99Ratio, barExtra*100, verdict)
	}
	p("Backend requests per client request: 1 + (hedged + retried) / hedgeable reads from asyncgate's `SHOW HEDGES` " +
		"(counted over the whole load run, its connection checks included); 1 for hedging off and PgBouncer, " +
		"which send each request once. A race's loser is cancelled, so an extra request costs less than a whole read.\n\n")
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
