// Command asyncgate is a PostgreSQL wire-protocol gateway: clients connect to it as to PostgreSQL
// and it runs their work on pooled backend connections.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/asyncgate/asyncgate/admission"
	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/gateway/auth"
	"github.com/asyncgate/asyncgate/hedge"
	"github.com/asyncgate/asyncgate/loop"
)

func main() {
	if err := run(os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "asyncgate:", err)
		os.Exit(1)
	}
}

// options are the command line's settings that are not the gateway's.
type options struct {
	shutdownTimeout time.Duration
	cpuProfile      string
	reusePort       bool
	otlpEndpoint    string
}

func run(args []string) error {
	cfg, o, err := parseConfig(args)
	if err != nil {
		return err
	}
	// RELOAD on the admin console and SIGHUP read the command line and the config file again.
	cfg.Reload = func() (gateway.Config, error) {
		next, _, err := parseConfig(args)
		return next, err
	}
	return serve(cfg, o)
}

// parseConfig reads the command line, then the config file for what the command line left
// alone. The config file's keys are resolved through the flag set, so every flag has one.
func parseConfig(args []string) (gateway.Config, options, error) {
	cfg := gateway.Defaults()
	fs := flag.NewFlagSet("asyncgate", flag.ContinueOnError)
	var configFile, authType, logLevel string
	fs.StringVar(&configFile, "config", "", "config `FILE`: one key = value per line, keys named as the flags")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "address clients connect to")
	fs.Var(keyValues(cfg.Databases), "database", "backend `NAME=postgres://user:pass@host:port/db?sslmode=…` (repeatable)")
	fs.Func("replica", "streaming replica `NAME=DSN` of the primary given by --database NAME=… (repeatable)", func(v string) error {
		name, dsn, ok := strings.Cut(v, "=")
		if !ok || name == "" || dsn == "" {
			return errors.New("want NAME=DSN")
		}
		cfg.Replicas[name] = append(cfg.Replicas[name], dsn)
		return nil
	})
	fs.StringVar(&cfg.ReadRouting, "read-routing", cfg.ReadRouting, "which units may run on replicas, transaction and statement modes: off, explicit (BEGIN READ ONLY, clients with default_transaction_read_only=on) or auto (also autocommit statements proven read-only) (per database: read_routing=… in its DSN)")
	fs.Func("read-functions", "comma-separated functions a routed read may call, besides the built-in read-only ones and, in auto mode, those the primary's catalog marks immutable or stable", func(v string) error {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				cfg.ReadFunctions = append(cfg.ReadFunctions, p)
			}
		}
		return nil
	})
	durationVar(fs, &cfg.LagCheckInterval, "lag-check-interval", "how often each replica's replay lag is measured")
	durationVar(fs, &cfg.MaxReplicaLag, "max-replica-lag", "a replica whose replay lag exceeds this gets no reads until it catches up (0: lag not checked)")
	durationVar(fs, &cfg.ReadYourWritesWindow, "read-your-writes-window", "after a client's unit that may write, its reads stay on the primary this long (0: off)")
	fs.Func("hedge", "on: an autocommit read sent to a replica that has not answered within --hedge-delay is sent to another replica (or the primary) too, and the first answer wins; the other is cancelled (per database: hedge=on|off in its DSN; default off)", func(v string) error {
		on, err := parseOnOff(v)
		cfg.Hedge = on
		return err
	})
	fs.Func("hedge-delay", "how long a routed read waits before it is hedged: auto (a percentile of recent reads' time to first response, see --hedge-delay-percentile) or a fixed DURATION such as 20ms (default auto)", func(v string) error {
		fixed, _, err := hedge.ParseDelay(v)
		cfg.HedgeDelay = fixed
		return err
	})
	fs.Func("hedge-delay-percentile", "the percentile of recent reads' time to first response that --hedge-delay auto follows, 50 to 100 (default 95)", func(v string) error {
		p, err := hedge.ParsePercentile(v)
		cfg.HedgeDelayPercentile = p
		return err
	})
	durationVar(fs, &cfg.HedgeDelayMin, "hedge-delay-min", "least delay --hedge-delay auto waits")
	durationVar(fs, &cfg.HedgeDelayMax, "hedge-delay-max", "most delay --hedge-delay auto waits, and its delay while it learns")
	fs.Func("hedge-budget", "most extra requests hedges may add, as a percentage of hedgeable reads, such as 10% (default 10%)", func(v string) error {
		b, err := hedge.ParseBudget(v)
		cfg.HedgeBudget = b
		return err
	})
	fs.StringVar(&authType, "auth-type", "scram-sha-256", "client authentication: trust, md5 or scram-sha-256")
	fs.StringVar(&cfg.AuthFile, "auth-file", "", "`FILE` with one \"user\" \"secret\" per line (PgBouncer's userlist.txt)")
	fs.StringVar(&cfg.PoolMode, "pool-mode", cfg.PoolMode, "when a backend goes back to the pool: session, transaction or statement (per database: pool_mode=… in its DSN)")
	fs.Var(keyValues(cfg.UserPoolMode), "user-pool-mode", "pool mode for one user, `USER=MODE` (repeatable; overrides the database's)")
	fs.IntVar(&cfg.MaxPrepared, "max-prepared-statements", cfg.MaxPrepared, "prepared statements cached per backend connection in transaction and statement modes (LRU)")
	fs.Func("track-extra-parameters", "comma-separated parameters that follow a client across backends besides the standard ones", func(v string) error {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				cfg.TrackExtraParameters = append(cfg.TrackExtraParameters, p)
			}
		}
		return nil
	})
	fs.Func("pin-on-session-state", "on: in transaction and statement modes, a client that creates session state (temporary tables, advisory locks, WITH HOLD cursors, SQL PREPARE, untracked SET, LOAD, LISTEN) keeps its backend until the state is gone; off: PgBouncer's behaviour (default on)", func(v string) error {
		on, err := parseOnOff(v)
		cfg.PinOnSessionState = on
		return err
	})
	fs.Func("listen-fanout", "on: in transaction and statement modes, LISTEN and UNLISTEN sent as a query of their own outside a transaction are served by one listener connection per database, which passes notifications on without pinning the client; off: LISTEN pins (default off)", func(v string) error {
		on, err := parseOnOff(v)
		cfg.ListenFanout = on
		return err
	})
	fs.Func("batch", "in transaction and statement modes, pipeline autocommit statements that cannot change session or transaction state with other clients' onto shared backend connections: on (everywhere), off, or a comma-separated list of DATABASE, DATABASE/USER and */USER (per database also batch=on|off in its DSN; default off)", func(v string) error {
		if on, err := parseOnOff(v); err == nil {
			cfg.Batch = nil
			if on {
				cfg.Batch = []string{"*"}
			}
			return nil
		}
		cfg.Batch = splitList(v)
		return nil
	})
	fs.IntVar(&cfg.BatchMaxDepth, "batch-max-depth", cfg.BatchMaxDepth, "most batched statements in flight on one backend connection")
	durationVar(fs, &cfg.BatchMaxDelay, "batch-max-delay", "how long a batched statement may wait for others to go out with it (0: only what is queued already is batched, nothing waits)")
	durationVar(fs, &cfg.MaxPinnedTime, "max-pinned-time", "disconnect a client pinned to its backend by session state this long (0: no limit)")
	fs.IntVar(&cfg.ParseCacheSize, "parse-cache-size", cfg.ParseCacheSize, "statement classifications cached by text (0: no cache)")
	fs.IntVar(&cfg.MaxQuerySize, "max-query-size", cfg.MaxQuerySize, "largest message the gateway reads whole (Parse, Bind, … in transaction and statement modes), in bytes")
	durationVar(fs, &cfg.QueryTimeout, "query-timeout", "cancel a request running longer than this on the backend (SQLSTATE 57014; 0: none)")
	durationVar(fs, &cfg.IdleTxTimeout, "idle-transaction-timeout", "disconnect a client idle inside a transaction this long; it is rolled back (0: none)")
	durationVar(fs, &cfg.ClientIdleTimeout, "client-idle-timeout", "disconnect a client idle this long (0: none)")
	durationVar(fs, &cfg.CancelDrainTimeout, "cancel-drain-timeout", "after a client leaves mid-query, how long its backend has to come back before it is closed")
	fs.IntVar(&cfg.PoolSize, "default-pool-size", cfg.PoolSize, "backend connections per (database, user) pool")
	fs.IntVar(&cfg.MinPoolSize, "min-pool-size", cfg.MinPoolSize, "backend connections kept open per pool even when idle")
	fs.IntVar(&cfg.MaxClientConn, "max-client-conn", cfg.MaxClientConn, "most clients connected at once; more get SQLSTATE 53300")
	fs.IntVar(&cfg.MaxQueue, "max-queue", cfg.MaxQueue, "most request units waiting for a backend of a database, across its users; more get SQLSTATE 53300 at once (0: no bound)")
	durationVar(fs, &cfg.QueryWaitTimeout, "query-wait-timeout", "longest wait for a backend (SQLSTATE 57014 after; 0: forever)")
	durationVar(fs, &cfg.QueryWaitNotify, "query-wait-notify", "a unit that has waited this long for a backend gets a NOTICE saying so (0: never)")
	fs.Func("priority", "a user's weight when units of several users wait for a database's backends: `USER=N` in every database, or DB/USER=N in one (repeatable; default 1). Waiting units are served by weighted round robin across users", func(v string) error {
		name, n, ok := strings.Cut(v, "=")
		w, err := strconv.Atoi(n)
		if !ok || name == "" || err != nil || w < 1 {
			return errors.New("want USER=N or DB/USER=N with N a positive integer")
		}
		cfg.Priorities[name] = w
		return nil
	})
	durationVar(fs, &cfg.PriorityAging, "priority-aging", "a user whose units have gone unserved this long while they wait is served next, whatever the weights (0: weights only)")
	fs.Func("rate-limit", "most request units a user may start, `USER=N/s` (or N/m, N/h; repeatable); more get SQLSTATE 53400 at once", func(v string) error {
		user, rate, ok := strings.Cut(v, "=")
		if !ok || user == "" {
			return errors.New("want USER=N/s")
		}
		if _, err := admission.ParseRate(rate); err != nil {
			return err
		}
		cfg.RateLimits[user] = rate
		return nil
	})
	fs.IntVar(&cfg.MaxDBClientConn, "max-db-client-connections", 0, "most clients connected to one database at once; more get SQLSTATE 53300 (0: no limit)")
	fs.IntVar(&cfg.MaxUserClientConn, "max-user-client-connections", 0, "most clients connected as one user at once; more get SQLSTATE 53300 (0: no limit)")
	fs.IntVar(&cfg.ReservePoolSize, "reserve-pool-size", 0, "units a database's backend may run beyond its pool size once one has waited --reserve-pool-timeout (0: none)")
	durationVar(fs, &cfg.ReservePoolTimeout, "reserve-pool-timeout", "how long a unit waits before the reserve may serve it")
	fs.Func("adaptive-limit", "on: the units run at once on each backend follow its latency, between a quarter of the pool size and the pool size, shrinking when latency rises (default off)", func(v string) error {
		on, err := parseOnOff(v)
		cfg.AdaptiveLimit = on
		return err
	})
	fs.Func("max-memory", "process memory beyond which new clients and units are refused with SQLSTATE 53200, `SIZE` in bytes or with kB, MB, GB (default 0: no limit)", func(v string) error {
		n, err := parseSize(v)
		cfg.MaxMemory = n
		return err
	})
	durationVar(fs, &cfg.ClientLoginTimeout, "client-login-timeout", "time a client has to log in")
	durationVar(fs, &cfg.ServerConnectTimeout, "server-connect-timeout", "budget for opening one backend connection, retries included")
	durationVar(fs, &cfg.ServerLifetime, "server-lifetime", "backend connections older than this are closed when released (0: never)")
	durationVar(fs, &cfg.ServerIdleTimeout, "server-idle-timeout", "idle backend connections beyond --min-pool-size are closed after this (0: never)")
	durationVar(fs, &cfg.ServerCheckDelay, "server-check-delay", "a backend idle this long is health-checked before reuse (0: always)")
	fs.IntVar(&cfg.BreakerFailures, "breaker-failures", cfg.BreakerFailures, "backend failures in a row (connects, broken connections, health checks; never SQL errors) that open its circuit breaker: clients then get 08006 at once (0: no breaker)")
	durationVar(fs, &cfg.BreakerOpenTime, "breaker-open-time", "how long an open circuit breaker refuses before it lets a probe connect through")
	durationVar(fs, &cfg.CancelTimeout, "cancel-timeout", "budget for forwarding one cancel request to a backend")
	fs.StringVar(&cfg.ServerResetQuery, "server-reset-query", cfg.ServerResetQuery, "run on a backend before the next client gets it")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate offered to clients")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&cfg.ClientTLSMode, "client-tls-mode", cfg.ClientTLSMode, "client TLS: disable, allow (when a client asks) or require")
	fs.StringVar(&cfg.LoopDriver, "loop-driver", cfg.LoopDriver, "how client sockets are served: epoll (event loops, Linux) or goroutine (one per client)")
	fs.IntVar(&cfg.Loops, "loops", 0, "event loops of the epoll driver (0: one per core)")
	fs.IntVar(&cfg.MaxPacketSize, "max-packet-size", cfg.MaxPacketSize, "largest protocol message a client may send, in bytes")
	fs.IntVar(&cfg.MaxOutput, "max-client-output", cfg.MaxOutput, "bytes buffered for a slow client before its backend is throttled")
	fs.Func("admin-users", "comma-separated users who may use the admin console (database asyncgate or pgbouncer): SHOW, RELOAD, SHUTDOWN", func(v string) error {
		cfg.AdminUsers = append(cfg.AdminUsers, splitList(v)...)
		return nil
	})
	fs.Func("stats-users", "comma-separated users who may run the admin console's SHOW commands only", func(v string) error {
		cfg.StatsUsers = append(cfg.StatsUsers, splitList(v)...)
		return nil
	})
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "`ADDR` of an HTTP server for /metrics (Prometheus), /healthz and /readyz (default off)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	logFormat := "text"
	fs.StringVar(&logFormat, "log-format", logFormat, "text (key=value) or json, one record per line on stderr")
	shutdownTimeout := 30 * time.Second
	durationVar(fs, &shutdownTimeout, "shutdown-timeout", "on SIGTERM, how long running transactions may take to finish before they are cancelled (SIGINT: at once)")
	var cpuProfile string
	fs.StringVar(&cpuProfile, "cpu-profile", "", "write a Go CPU profile to `FILE` until shutdown (for performance work)")
	var reusePort bool
	var otlpEndpoint string
	fs.StringVar(&otlpEndpoint, "otlp-endpoint", "", "`URL` of an OpenTelemetry collector's OTLP/HTTP traces endpoint, such as http://localhost:4318/v1/traces: each request unit becomes a span, in the caller's trace when its SQL has an sqlcommenter /*traceparent='…'*/ comment (default off)")
	fs.Func("reuse-port", "on: listen with SO_REUSEPORT, so that a new asyncgate can bind the same --listen address while this one still runs, and take over without refusing a connection (stop the old one with SIGTERM once the new one listens) (default off)", func(v string) error {
		on, err := parseOnOff(v)
		reusePort = on
		return err
	})
	if err := fs.Parse(args); err != nil {
		return cfg, options{}, err
	}
	if configFile != "" {
		if err := applyConfigFile(fs, configFile); err != nil {
			return cfg, options{}, err
		}
	}
	var err error
	if cfg.AuthType, err = auth.ParseMethod(authType); err != nil {
		return cfg, options{}, fmt.Errorf("--auth-type: %w", err)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return cfg, options{}, fmt.Errorf("--log-level: %w", err)
	}
	handler, err := logHandler(logFormat, &slog.HandlerOptions{Level: level})
	if err != nil {
		return cfg, options{}, err
	}
	cfg.Log = slog.New(handler)
	return cfg, options{shutdownTimeout: shutdownTimeout, cpuProfile: cpuProfile, reusePort: reusePort, otlpEndpoint: otlpEndpoint}, nil
}

// serve runs the gateway until a signal or the console's SHUTDOWN stops it.
func serve(cfg gateway.Config, o options) error {
	cpuProfile, shutdownTimeout := o.cpuProfile, o.shutdownTimeout
	if o.otlpEndpoint != "" {
		tp, err := tracerProvider(o.otlpEndpoint)
		if err != nil {
			return err
		}
		// Shut down last: the spans of the units that ended while draining are sent too.
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(ctx); err != nil {
				cfg.Log.Warn("sending the last spans", "err", err)
			}
		}()
		cfg.TracerProvider = tp
	}

	if limit, err := loop.RaiseFileLimit(); err != nil {
		cfg.Log.Warn("could not raise the open files limit", "err", err)
	} else {
		cfg.Log.Debug("open files limit", "limit", limit)
	}
	srv, err := gateway.New(cfg)
	if err != nil {
		return err
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	ln, err := listen(cfg.Listen, o.reusePort)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	cfg.Log.Info("asyncgate listening", "addr", ln.Addr().String(), "pool_mode", cfg.PoolMode)
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		hs := &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cfg.Log.Error("metrics server stopped", "err", err)
			}
		}()
		// Closed last, so /healthz and /metrics answer while clients are being closed.
		defer hs.Close()
		cfg.Log.Info("metrics listening", "addr", mln.Addr().String())
	}

	var graceful atomic.Bool
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGHUP {
				next, err := cfg.Reload()
				if err != nil {
					cfg.Log.Error("reload rejected: the configuration does not parse", "err", err)
					continue
				}
				srv.Reload(next) // logs what it applied and rejected
				continue
			}
			cfg.Log.Info("shutting down", "signal", sig.String())
			graceful.Store(sig == syscall.SIGTERM)
			if sig == syscall.SIGTERM && o.reusePort {
				// A successor may listen on the same port: let it take the new connections
				// and accept what is already queued here before closing.
				if err := handOver(ln, time.Second); err != nil {
					cfg.Log.Warn("--reuse-port hand-over", "err", err)
				}
			}
			ln.Close()
			return
		}
	}()
	if err := srv.Serve(ln); err != nil {
		return err
	}
	if graceful.Load() {
		// SIGTERM: running transactions may finish; then everything is cancelled and closed.
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if !srv.Drain(ctx) {
			cfg.Log.Warn("transactions still running at --shutdown-timeout: cancelling them", "timeout", shutdownTimeout)
		}
		cancel()
	}
	srv.Shutdown()
	return nil
}

// applyConfigFile sets every flag the command line left alone from `key = value` lines.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	defer f.Close()
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("--config %s:%d: want key = value", path, n)
		}
		key = strings.ReplaceAll(strings.TrimSpace(key), "_", "-")
		value = strings.Trim(strings.TrimSpace(value), `"`)
		if key == "database" || key == "replica" || key == "user-pool-mode" || key == "priority" || key == "rate-limit" {
			// NAME=DSN contains '=' itself; keep the rest of the line whole.
			value = strings.TrimSpace(line[strings.Index(line, "=")+1:])
		}
		if fs.Lookup(key) == nil {
			return fmt.Errorf("--config %s:%d: unknown key %q", path, n, key)
		}
		if onCommandLine[key] {
			continue
		}
		if err := fs.Set(key, value); err != nil {
			return fmt.Errorf("--config %s:%d: %s: %w", path, n, key, err)
		}
	}
	return sc.Err()
}

// splitList reads a comma-separated list, ignoring blanks around and between items.
func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// keyValues is a repeatable KEY=VALUE flag.
type keyValues map[string]string

func (d keyValues) String() string { return fmt.Sprint(map[string]string(d)) }

func (d keyValues) Set(v string) error {
	name, value, ok := strings.Cut(v, "=")
	if !ok || name == "" || value == "" {
		return errors.New("want KEY=VALUE")
	}
	d[name] = value
	return nil
}

// durationVar accepts Go durations ("2m30s") and, as PgBouncer users write them, plain seconds.
func durationVar(fs *flag.FlagSet, p *time.Duration, name, usage string) {
	fs.Func(name, fmt.Sprintf("%s (default %s)", usage, *p), func(v string) error {
		if secs, err := strconv.ParseFloat(v, 64); err == nil {
			*p = time.Duration(secs * float64(time.Second))
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		*p = d
		return nil
	})
}

// parseSize reads a byte count: plain, or with a kB, MB or GB suffix (powers of 1024, as
// PostgreSQL reads memory settings).
func parseSize(v string) (int64, error) {
	v = strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q: want a size in bytes, or with kB, MB or GB", v)
	}
	return n * mult, nil
}

// parseOnOff reads a switch the way PostgreSQL reads a boolean setting.
func parseOnOff(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "on", "true", "yes", "1":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q is not on or off", v)
}

// logHandler writes records to stderr in the chosen format.
func logHandler(format string, opts *slog.HandlerOptions) (slog.Handler, error) {
	switch format {
	case "text":
		return slog.NewTextHandler(os.Stderr, opts), nil
	case "json":
		return slog.NewJSONHandler(os.Stderr, opts), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", format)
}
