package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/asyncgate/asyncgate/benchmarks"
	"github.com/jackc/pgx/v5/pgconn"
)

// suite is one run of the standard cases.
type suite struct {
	prof      profile
	bin       string
	results   string
	base      string // results file names start with it
	host      string
	work      string
	pgbouncer string
	fdLimit   uint64
	cluster   *cluster
	// hedgeDelays are fixed --hedge-delay values the hedging case measures besides auto.
	hedgeDelays []time.Duration

	started     time.Time
	wall        time.Duration
	interrupted bool
	loadStart   string
	loadEnd     string
	env         []string  // "name: value" lines describing the machine and versions
	setup       []command // cluster start and table init
	cases       []*caseResult
}

type command struct{ What, Line string }

// caseResult is what one case produced, for the report.
type caseResult struct {
	Case     benchCase
	Report   *benchmarks.Report       // load cases
	Idle     []*benchmarks.IdleResult // idle case, one per gateway
	Commands []command
	INI      string
	JSON     []string // file names in the results dir
	Plot     string
	Hedges   map[string]*hedgeCount // hedging case: asyncgate target name → its SHOW HEDGES during the run
	Overload *overloadResult        // overload case
	Logs     map[string][]string    // gateway name → warning lines of its log
	Problems []string               // failures found while running
	Err      error
	Wall     time.Duration
}

func (s *suite) binPath(name string) string  { return filepath.Join(s.bin, name) }
func (s *suite) workPath(name string) string { return filepath.Join(s.work, name) }

func (s *suite) initTables(ctx context.Context) error {
	argv := []string{s.binPath("asyncgate-bench"), "--target", "direct=" + s.directDSN(),
		"--init", "--scale", strconv.Itoa(s.prof.Scale), "-T", "0"}
	s.setup = append(s.setup, command{"pgbench tables", shellJoin(argv)})
	if err := s.bench(ctx, 5*time.Minute, argv); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	return nil
}

func (s *suite) runCase(ctx context.Context, c benchCase) *caseResult {
	res := &caseResult{Case: c, Logs: map[string][]string{}}
	start := time.Now()
	defer func() { res.Wall = time.Since(start) }()
	if c.Hedging {
		res.Err = s.runHedging(ctx, c, res)
		return res
	}

	ag, pgb, ini, err := s.startGateways(ctx, c)
	if err != nil {
		res.Err = err
		return res
	}
	res.INI = ini
	res.Commands = append(res.Commands, command{"asyncgate", ag.command}, command{"PgBouncer", pgb.command})
	switch {
	case c.Idle:
		res.Err = s.runIdle(ctx, c, ag, pgb, res)
	case c.Overload:
		res.Err = s.runOverload(ctx, c, ag, pgb, res)
	default:
		res.Err = s.runLoad(ctx, c, ag, pgb, res)
	}

	for _, g := range []*gateway{pgb, ag} {
		res.Logs[g.name] = g.logTail(20, warningLine)
		if err := g.stop(10 * time.Second); err != nil {
			res.Problems = append(res.Problems, err.Error())
			if res.Err == nil {
				res.Err = err
			}
		}
	}
	return res
}

// warningLine keeps what is worth a look in a gateway log: asyncgate runs at --log-level warn,
// so all of its lines; PgBouncer's warnings and errors, not its LOG lines.
func warningLine(l string) bool {
	if !strings.Contains(l, " LOG ") && !strings.Contains(l, " DEBUG ") {
		return true
	}
	return false
}

func (s *suite) runLoad(ctx context.Context, c benchCase, ag, pgb *gateway, res *caseResult) error {
	jsonName := s.base + "-" + c.Slug + ".json"
	plotName := s.base + "-" + c.Slug + ".png"
	jsonPath, plotPath := filepath.Join(s.results, jsonName), filepath.Join(s.results, plotName)
	os.Remove(jsonPath) // never report a stale file
	os.Remove(plotPath)

	argv := append([]string{s.binPath("asyncgate-bench")}, c.Bench...)
	argv = append(argv, "-T", s.duration(c).String(), "--rounds", strconv.Itoa(s.prof.Rounds), "--seed", "1")
	targets := 2
	if c.Direct {
		argv = append(argv, "--target", "direct="+s.directDSN())
		targets++
	}
	argv = append(argv,
		"--target", "pgbouncer="+gatewayDSN(pgb.port), "--pid", fmt.Sprintf("pgbouncer=%d", pgb.pid()),
		"--target", "asyncgate="+gatewayDSN(ag.port), "--pid", fmt.Sprintf("asyncgate=%d", ag.pid()),
		"--json", jsonPath, "--plot", plotPath)
	res.Commands = append(res.Commands, command{"load", shellJoin(argv)})

	timeout := s.loadTimeout(c, targets)
	runErr := s.bench(ctx, timeout, argv)

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

// duration is the measured time per target of case c.
func (s *suite) duration(c benchCase) time.Duration { return max(s.prof.Duration, c.MinDuration) }

// loadTimeout bounds a load run of c over n targets: generous, for connecting, the grace period
// and teardown per round on top of the measured time.
func (s *suite) loadTimeout(c benchCase, n int) time.Duration {
	return time.Duration(n)*(s.duration(c)+time.Duration(s.prof.Rounds)*time.Minute) + time.Minute
}

func (s *suite) runIdle(ctx context.Context, c benchCase, ag, pgb *gateway, res *caseResult) error {
	var errs []error
	for _, g := range []*gateway{pgb, ag} {
		jsonName := fmt.Sprintf("%s-%s-%s.json", s.base, c.Slug, g.name)
		jsonPath := filepath.Join(s.results, jsonName)
		os.Remove(jsonPath)
		argv := []string{s.binPath("asyncgate-bench"),
			"--target", g.name + "=" + gatewayDSN(g.port),
			"--idle-clients", strconv.Itoa(s.prof.IdleClients), "--idle-target", g.name,
			"--pid", fmt.Sprintf("%s=%d", g.name, g.pid()), "--json", jsonPath}
		res.Commands = append(res.Commands, command{"idle " + g.name, shellJoin(argv)})
		runErr := s.bench(ctx, 5*time.Minute, argv)
		rep, err := readReport(jsonPath)
		if err == nil && rep.Idle == nil {
			err = fmt.Errorf("%s: no idle results", jsonPath)
		}
		if err != nil {
			errs = append(errs, runErr, err)
			continue
		}
		res.Idle = append(res.Idle, rep.Idle)
		res.JSON = append(res.JSON, jsonName)
		errs = append(errs, runErr)
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

// bench runs asyncgate-bench with its output passed through, stopping it (SIGTERM: it still
// writes what it measured) when ctx ends or timeout passes.
func (s *suite) bench(ctx context.Context, timeout time.Duration, argv []string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	var tail tailBuffer
	cmd.Stdout = os.Stdout
	cmd.Stderr = io.MultiWriter(os.Stderr, &tail)
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	return fmt.Errorf("asyncgate-bench: %w: %s", err, strings.Join(tail.lines(3), " | "))
}

func readReport(path string) (*benchmarks.Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("results: %w", err)
	}
	var r benchmarks.Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("results: %s: %w", path, err)
	}
	return &r, nil
}

// collectEnv describes the machine and the versions under test; what it cannot find it leaves out.
func (s *suite) collectEnv(ctx context.Context) {
	add := func(k, v string) {
		if v != "" {
			s.env = append(s.env, k+": "+v)
		}
	}
	add("host", s.host)
	add("CPU", fmt.Sprintf("%s, %d cores", cpuModel(), runtime.NumCPU()))
	add("memory", memTotal())
	add("kernel", readTrim("/proc/sys/kernel/osrelease"))
	add("asyncgate", asyncgateVersion(ctx, s.binPath("asyncgate")))
	if out, err := exec.CommandContext(ctx, s.pgbouncer, "--version").Output(); err == nil {
		add("PgBouncer", strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
	}
	add("PostgreSQL", serverVersion(ctx, s.directDSN()))
	add("cluster", fmt.Sprintf("primary %s, streaming replicas %s (only the hedging case reads from them, "+
		"through fault proxies), max_connections %d, scram-sha-256, fsync off, shared_buffers 16MB",
		s.cluster.primary, strings.Join(s.cluster.replicas, " and "), maxConnections))
	add("open files limit (gateways, load tool)", strconv.FormatUint(s.fdLimit, 10))
}

// asyncgateVersion names the commit the binary was built from: its VCS stamp, or (built with
// -buildvcs=false) the repository's HEAD and whether tracked files differed from it.
func asyncgateVersion(ctx context.Context, path string) string {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return ""
	}
	var rev, modified string
	for _, kv := range bi.Settings {
		switch kv.Key {
		case "vcs.revision":
			rev = kv.Value
		case "vcs.modified":
			modified = kv.Value
		}
	}
	if rev == "" {
		out, err := exec.CommandContext(ctx, "git", "rev-parse", "HEAD").Output()
		if err != nil {
			return bi.GoVersion
		}
		rev = strings.TrimSpace(string(out))
		// --no-optional-locks: a look must not rewrite the index under the people working in the tree.
		out, err = exec.CommandContext(ctx, "git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no").Output()
		if err == nil && len(bytes.TrimSpace(out)) > 0 {
			modified = "true"
		}
	}
	v := "commit " + rev[:min(12, len(rev))]
	if modified == "true" {
		v += " plus uncommitted changes"
	}
	return v + ", " + bi.GoVersion
}

func serverVersion(ctx context.Context, dsn string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return ""
	}
	defer c.Close(context.Background())
	rs, err := c.Exec(ctx, "SHOW server_version").ReadAll()
	if err != nil || len(rs) == 0 || len(rs[0].Rows) == 0 {
		return ""
	}
	return string(rs[0].Rows[0][0])
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				return fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	return ""
}

func loadAvg() string {
	f := strings.Fields(readTrim("/proc/loadavg"))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}
