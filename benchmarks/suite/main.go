// Command bench-suite runs the standard benchmarks of asyncgate against PgBouncer and direct
// PostgreSQL on a throwaway cluster, and writes benchmarks/results/DATE-HOST.md with the JSON
// results and plots of asyncgate-bench next to it. It is what `make bench` and `make bench-quick`
// run, after building bin/asyncgate, bin/asyncgate-bench and bin/pgcluster:
//
//	bench-suite [-quick] [-bin bin] [-results benchmarks/results] [-name BASE] [-cases SLUGS]
//	            [-hedge-delays DURATIONS]
//
// Every process it starts (cluster, gateways, load tool) is stopped when it ends, fails or gets
// SIGINT/SIGTERM; if the suite itself is killed they get SIGTERM from the kernel (parent-death
// signal), and the cluster also stops when its stdin pipe closes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// profile sets the durations of a run; the cases are the same in both.
type profile struct {
	Name        string
	Duration    time.Duration // measured time per target (asyncgate-bench -T)
	Rounds      int
	IdleClients int
	Scale       int
}

var (
	fullProfile  = profile{Name: "full", Duration: 20 * time.Second, Rounds: 4, IdleClients: 10000, Scale: 10}
	quickProfile = profile{Name: "quick", Duration: 4 * time.Second, Rounds: 2, IdleClients: 2000, Scale: 10}
)

// benchCase is one of the standard cases. Both gateways get the same pool mode and size.
type benchCase struct {
	Slug     string // part of the results file names
	Title    string
	Note     string
	PoolMode string
	PoolSize int
	Bench    []string // workload flags of asyncgate-bench
	Direct   bool     // also measure PostgreSQL without a gateway
	Idle     bool     // idle-clients case instead of a load run
	Hedging  bool     // hedged reads on replicas behind fault proxies (hedging.go) instead of the two gateways
	Overload bool     // open-loop runs at multiples of the measured capacity (overload.go)
	// MinDuration, when longer than the profile's, is the measured time per target: a tail
	// percentile needs enough transactions beyond it.
	MinDuration time.Duration
}

// clusterReplicas is how many streaming replicas the cluster has: the hedging case needs two.
const clusterReplicas = 2

// maxConnections lets direct PostgreSQL take case 3's 400 clients next to both gateways' pools.
const maxConnections = 500

var cases = []benchCase{
	{
		Slug: "1-latency", Title: "1. Latency overhead: select-only, 1 client, simple protocol",
		Note:     "One client, so the latency is the round trip through the gateway; tps is 1/latency.",
		PoolMode: "session", PoolSize: 60, Direct: true,
		Bench: []string{"-S", "-M", "simple", "-c", "1"},
	},
	{
		Slug: "2-select-50-simple", Title: "2a. Select-only, 50 clients, simple protocol (session pool 60)",
		PoolMode: "session", PoolSize: 60, Direct: true,
		Bench: []string{"-S", "-M", "simple", "-c", "50"},
	},
	{
		Slug: "2-select-50-prepared", Title: "2b. Select-only, 50 clients, prepared statements (session pool 60)",
		Note:     "Session mode: PgBouncer 1.18 does not support protocol-level prepared statements in transaction mode.",
		PoolMode: "session", PoolSize: 60, Direct: true,
		Bench: []string{"-S", "-M", "prepared", "-c", "50"},
	},
	{
		Slug: "3-clients-over-pool", Title: "3. Clients ≫ pool: select-only, 400 clients on a pool of 20 (transaction mode)",
		Note: fmt.Sprintf("Direct runs 400 PostgreSQL backends (the cluster has max_connections %d); "+
			"the gateways multiplex the 400 clients onto 20 server connections.", maxConnections),
		PoolMode: "transaction", PoolSize: 20, Direct: true,
		Bench: []string{"-S", "-M", "simple", "-c", "400"},
	},
	{
		Slug: "4-idle", Title: "4. Idle clients: RSS per connected idle client (transaction mode)",
		Note: "Transaction mode, so idle clients hold no server connection; each gateway is measured alone " +
			"on a fresh process: RSS after the clients connected and it settled, minus RSS before, per client. " +
			"Direct PostgreSQL is left out (one backend process per client).",
		PoolMode: "transaction", PoolSize: 20, Idle: true,
	},
	{
		Slug: "5-hedging", Title: "5. Hedged reads: select-only, 20 clients, two replicas with 2% of responses 50 ms late",
		Note: fmt.Sprintf("Each replica sits behind a fault proxy that delays a response by %s with probability %.0f%%; "+
			"the primary is not behind one. asyncgate routes the reads to both replicas (`--read-routing auto`), "+
			"once without hedging and once with `--hedge on --hedge-delay auto --hedge-budget 10%%`; PgBouncer "+
			"points at one proxied replica. All three run for the whole case and are measured in turn. "+
			"Pool size 40: a hedge race's loser is held by its drainer until its late answer comes (up to 50 ms), "+
			"and one that has not answered within 100 ms also until a cancel and a barrier query, so the pools need "+
			"room beyond the clients; PgBouncer never uses more than the clients need.",
			hedgeSpike, hedgeSpikeP*100),
		PoolMode: "transaction", PoolSize: 40, Hedging: true, MinDuration: 10 * time.Second,
		Bench: []string{"-S", "-M", "simple", "-c", "20"},
	},
	{
		Slug: "6-overload", Title: "6. Overload: open-loop point selects at 1×, 2×, 5× and 10× the measured capacity (transaction mode, pool 4)",
		Note: fmt.Sprintf("Each transaction is a point select that sleeps %s on the server, so the backend, not the shared CPU, "+
			"sets the capacity (about pool size / %s). The load tool sends at a fixed Poisson rate with %d connections; "+
			"latency counts from each arrival's intended start. asyncgate bounds its queue (`--max-queue` %d: what the pool "+
			"serves in half the wait timeout) and refuses the rest at once; PgBouncer has no queue bound and makes "+
			"waiters wait up to its `query_wait_timeout`. Goodput is transactions that succeeded per second.",
			overloadSleep, overloadSleep, overloadClients, overloadQueue(benchCase{PoolSize: 4})),
		PoolMode: "transaction", PoolSize: 4, Overload: true,
	},
}

// with returns c run with n clients instead of its own -c (unless n is 0), and with protocol
// instead of its own -M (unless protocol is "").
func (c benchCase) with(n int, protocol string) benchCase {
	bench := slices.Clone(c.Bench)
	for i := 0; i+1 < len(bench); i++ {
		switch {
		case bench[i] == "-c" && n > 0:
			c.Title = strings.Replace(c.Title, bench[i+1]+" clients", strconv.Itoa(n)+" clients", 1)
			bench[i+1] = strconv.Itoa(n)
		case bench[i] == "-M" && protocol != "":
			c.Title += ", " + protocol + " protocol"
			bench[i+1] = protocol
		}
	}
	c.Bench = bench
	return c
}

func main() {
	var opts options
	flag.BoolVar(&opts.Quick, "quick", false, "short durations and fewer idle clients (make bench-quick)")
	flag.StringVar(&opts.Bin, "bin", "bin", "directory with asyncgate, asyncgate-bench and pgcluster")
	flag.StringVar(&opts.Results, "results", "benchmarks/results", "directory for the results")
	flag.StringVar(&opts.Name, "name", "", "base name of the results files (default DATE-HOST, DATE-HOST-quick with -quick)")
	flag.StringVar(&opts.Cases, "cases", "", "comma-separated case slugs or their leading numbers to run, e.g. 5 or 1-latency,5 (default all)")
	flag.Func("ports", "`FROM-TO`: the ports the gateways listen on (default: any free port)", func(v string) error {
		from, to, ok := strings.Cut(v, "-")
		a, err1 := strconv.Atoi(from)
		b, err2 := strconv.Atoi(to)
		if !ok || err1 != nil || err2 != nil || a < 1 || b < a || b > 65535 {
			return fmt.Errorf("-ports %q: want FROM-TO", v)
		}
		portRange = [2]int{a, b}
		return nil
	})
	flag.Func("hedge-delays", "comma-separated fixed --hedge-delay values the hedging case also measures, e.g. 2ms,5ms,10ms", func(v string) error {
		for _, f := range strings.Split(v, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil || d <= 0 {
				return fmt.Errorf("hedge delay %q: want a positive duration", f)
			}
			opts.HedgeDelays = append(opts.HedgeDelays, d)
		}
		return nil
	})
	flag.IntVar(&opts.HedgeClients, "hedge-clients", 0, "clients of the hedging case (default 20): fewer than saturate the machine's cores")
	flag.StringVar(&opts.HedgeProtocol, "hedge-protocol", "", "protocol of the hedging case: simple (default), extended or prepared")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench-suite: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "bench-suite:", err)
		stop()
		os.Exit(1)
	}
}

type options struct {
	Quick       bool
	Bin         string
	Results     string
	Name        string
	Cases       string
	HedgeDelays []time.Duration
	// HedgeClients, when positive, replaces the hedging case's client count.
	HedgeClients int
	// HedgeProtocol, when set, replaces the hedging case's -M.
	HedgeProtocol string
}

// selectCases returns the cases list names (all for an empty list): by slug or by the number
// the slug starts with.
func selectCases(list string) ([]benchCase, error) {
	if strings.TrimSpace(list) == "" {
		return cases, nil
	}
	var out []benchCase
	for _, want := range strings.Split(list, ",") {
		want = strings.TrimSpace(want)
		found := false
		for _, c := range cases {
			if num, _, _ := strings.Cut(c.Slug, "-"); c.Slug == want || num == want {
				if !slices.ContainsFunc(out, func(o benchCase) bool { return o.Slug == c.Slug }) {
					out = append(out, c)
				}
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("-cases: no case %q", want)
		}
	}
	return out, nil
}

func run(ctx context.Context, opts options) (err error) {
	start := time.Now()
	prof := fullProfile
	if opts.Quick {
		prof = quickProfile
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown"
	}
	base := opts.Name
	if base == "" {
		base = start.Format("2006-01-02") + "-" + host
		if opts.Quick {
			base += "-quick"
		}
	}
	if err := os.MkdirAll(opts.Results, 0o755); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}

	selected, err := selectCases(opts.Cases)
	if err != nil {
		return err
	}
	switch opts.HedgeProtocol {
	case "", "simple", "extended", "prepared":
	default:
		return fmt.Errorf("-hedge-protocol %q: want simple, extended or prepared", opts.HedgeProtocol)
	}
	for i, c := range selected {
		if c.Hedging {
			selected[i] = c.with(opts.HedgeClients, opts.HedgeProtocol)
		}
	}
	s := &suite{prof: prof, bin: opts.Bin, results: opts.Results, base: base, host: host, started: start,
		hedgeDelays: opts.HedgeDelays}
	if err := s.checkBinaries(); err != nil {
		return err
	}
	if s.pgbouncer, err = ensurePgBouncer(ctx); err != nil {
		return err
	}
	if s.fdLimit, err = raiseFileLimit(); err != nil {
		return err
	}
	if s.work, err = os.MkdirTemp("", "bench-suite-"); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	defer os.RemoveAll(s.work)
	// PgBouncer runs as the postgres user and reads its ini and userlist from here.
	if err := os.Chmod(s.work, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	if err := s.writeUserlist(); err != nil {
		return err
	}
	s.loadStart = loadAvg()

	logf("starting the cluster (primary and %d replicas)", clusterReplicas)
	cl, err := s.startCluster(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if stopErr := cl.stop(); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	s.cluster = cl

	logf("initializing pgbench tables, scale %d", prof.Scale)
	if err := s.initTables(ctx); err != nil {
		return err
	}
	s.collectEnv(ctx)

	var failed []string
	for i, c := range selected {
		if ctx.Err() != nil {
			break
		}
		logf("case %d/%d: %s", i+1, len(selected), c.Title)
		res := s.runCase(ctx, c)
		s.cases = append(s.cases, res)
		if res.Err != nil {
			failed = append(failed, c.Slug)
			logf("case %s failed: %v", c.Slug, res.Err)
		}
	}
	s.loadEnd = loadAvg()
	s.wall = time.Since(start)
	s.interrupted = ctx.Err() != nil

	md := filepath.Join(s.results, s.base+".md")
	if werr := os.WriteFile(md, []byte(s.markdown()), 0o644); werr != nil {
		return fmt.Errorf("write %s: %w", md, werr)
	}
	logf("wrote %s (suite wall time %s)", md, s.wall.Round(time.Second))
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted: %w", ctx.Err())
	case len(failed) > 0:
		return fmt.Errorf("failed cases: %s", strings.Join(failed, ", "))
	}
	return nil
}

func (s *suite) checkBinaries() error {
	var missing []string
	for _, b := range []string{"asyncgate", "asyncgate-bench", "pgcluster"} {
		if _, err := os.Stat(filepath.Join(s.bin, b)); err != nil {
			missing = append(missing, filepath.Join(s.bin, b))
		}
	}
	if len(missing) > 0 {
		return errors.New("missing " + strings.Join(missing, ", ") + " (make bench builds them)")
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-suite: "+format+"\n", args...)
}
