package gateway

import (
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/asyncgate/asyncgate/admission"
	"github.com/asyncgate/asyncgate/gateway/auth"
	"github.com/asyncgate/asyncgate/hedge"
)

// Config is everything the gateway is told by flags and the config file.
type Config struct {
	Listen    string
	Databases map[string]string   // alias → backend DSN (postgres://user:pass@host:port/db?sslmode=…)
	Replicas  map[string][]string // alias → DSNs of streaming replicas of its primary

	ReadRouting          string        // off | explicit | auto (per database: read_routing= in its DSN)
	ReadFunctions        []string      // functions a routed read may call besides the built-in and loaded ones
	LagCheckInterval     time.Duration // how often each replica's replay lag is measured
	MaxReplicaLag        time.Duration // a replica further behind gets no reads (0: lag is not checked)
	ReadYourWritesWindow time.Duration // after a client's write its reads stay on the primary this long (0: off)

	// Hedged reads (per database: hedge= in its DSN): a routed read that has not answered
	// within the hedge delay is sent to a second backend as well, and the first answer wins.
	Hedge                bool
	HedgeDelay           time.Duration // fixed delay; 0: auto, a percentile of recent reads
	HedgeDelayPercentile float64       // the percentile auto follows, as a fraction (0.95)
	HedgeDelayMin        time.Duration // bounds of the auto delay
	HedgeDelayMax        time.Duration
	HedgeBudget          float64 // most extra requests from hedges, as a fraction of reads (0.1)

	AuthType auth.Method
	AuthFile string

	PoolMode      string            // session | transaction | statement
	UserPoolMode  map[string]string // user → pool mode, overriding the database's and the default
	PoolSize      int               // --default-pool-size
	MinPoolSize   int
	MaxClientConn int
	MaxQueue      int

	QueryWaitTimeout time.Duration
	QueryWaitNotify  time.Duration // a NoticeResponse to a unit that has waited this long (0: none)

	// Admission control (admission.go). Each backend of a database has a gate of the database's
	// pool size, shared by its users.
	Priorities           map[string]int    // --priority USER=N or DB/USER=N: a user's weight at the gates
	PriorityAging        time.Duration     // a user unserved this long while it waits goes first (0: weights only)
	RateLimits           map[string]string // --rate-limit USER=N/s (or /m, /h)
	MaxDBClientConn      int               // clients per database alias (0: no limit)
	MaxUserClientConn    int               // clients per user (0: no limit)
	ReservePoolSize      int               // units beyond the pool size once one waited ReservePoolTimeout
	ReservePoolTimeout   time.Duration
	AdaptiveLimit        bool  // the gates' limits follow backend latency
	MaxMemory            int64 // process memory in bytes beyond which new work is refused (0: no limit)
	ClientLoginTimeout   time.Duration
	ServerConnectTimeout time.Duration
	ServerLifetime       time.Duration
	ServerIdleTimeout    time.Duration
	ServerCheckDelay     time.Duration
	ServerResetQuery     string
	CancelTimeout        time.Duration
	CancelDrainTimeout   time.Duration // client gone mid-query: bound on bringing its backend back
	QueryTimeout         time.Duration // one request unit's bound (0: none)
	IdleTxTimeout        time.Duration // --idle-transaction-timeout (0: none)
	ClientIdleTimeout    time.Duration // (0: none)

	MaxPrepared          int      // --max-prepared-statements per backend connection
	TrackExtraParameters []string // parameters that follow the client besides the standard ones
	MaxQuerySize         int      // bound on messages the gateway reads whole (Parse, Bind, …)

	BreakerFailures int           // backend failures in a row that open its circuit breaker (0: off)
	BreakerOpenTime time.Duration // how long an open breaker refuses before probing

	PinOnSessionState bool          // keep a client on its backend while it holds session state
	MaxPinnedTime     time.Duration // longest a client may stay pinned (0: no limit)
	ParseCacheSize    int           // statement classifications cached by text
	ListenFanout      bool          // LISTEN through one listener connection per database, without pinning

	// Batching: autocommit units that cannot change session state share backend connections.
	Batch         []string      // where it is on: "*" (everywhere), "DB", "DB/USER" or "*/USER" (per database also batch= in its DSN)
	BatchMaxDepth int           // units in flight on one backend connection
	BatchMaxDelay time.Duration // how long a unit may wait for others to batch with (0: never)

	TLSCert, TLSKey string
	ClientTLSMode   string // disable | allow | require

	LoopDriver string // epoll | goroutine
	Loops      int    // epoll loops (0: GOMAXPROCS)

	MaxPacketSize int // bound on any client message
	MaxOutput     int // bytes buffered for a slow client before the backend is throttled

	AdminUsers    []string // may use every admin console command (database asyncgate or pgbouncer)
	StatsUsers    []string // may run the admin console's SHOW commands only
	MetricsListen string   // address of the HTTP server for /metrics, /healthz, /readyz ("": off)

	// TracerProvider makes a span of each request unit (nil: no tracing); --otlp-endpoint.
	TracerProvider trace.TracerProvider

	// Reload rereads the configuration for the admin console's RELOAD (nil: RELOAD rereads
	// --auth-file only); its result goes to Server.Reload.
	Reload func() (Config, error)

	Log *slog.Logger
}

// Defaults returns the settings PgBouncer users expect where PgBouncer has the same knob.
func Defaults() Config {
	return Config{
		Listen:               "127.0.0.1:6432",
		LoopDriver:           defaultLoopDriver,
		Databases:            map[string]string{},
		Replicas:             map[string][]string{},
		ReadRouting:          "off",
		LagCheckInterval:     time.Second,
		MaxReplicaLag:        10 * time.Second,
		HedgeDelayPercentile: hedge.DefaultPercentile,
		HedgeDelayMin:        hedge.DefaultMinDelay,
		HedgeDelayMax:        hedge.DefaultMaxDelay,
		HedgeBudget:          0.1,
		AuthType:             auth.SCRAMSHA256,
		PoolMode:             "session",
		PoolSize:             20,
		MaxClientConn:        100,
		MaxQueue:             10000,
		QueryWaitTimeout:     120 * time.Second,
		QueryWaitNotify:      5 * time.Second,
		Priorities:           map[string]int{},
		PriorityAging:        time.Second,
		RateLimits:           map[string]string{},
		ReservePoolTimeout:   5 * time.Second,
		ClientLoginTimeout:   60 * time.Second,
		ServerConnectTimeout: 15 * time.Second,
		ServerLifetime:       3600 * time.Second,
		ServerIdleTimeout:    600 * time.Second,
		ServerCheckDelay:     30 * time.Second,
		ServerResetQuery:     "DISCARD ALL",
		CancelTimeout:        10 * time.Second,
		CancelDrainTimeout:   10 * time.Second,
		MaxPrepared:          200,
		PinOnSessionState:    true,
		BreakerFailures:      5,
		BreakerOpenTime:      10 * time.Second,
		ParseCacheSize:       10000,
		BatchMaxDepth:        16,
		MaxQuerySize:         64 << 20,
		UserPoolMode:         map[string]string{},
		ClientTLSMode:        "allow",
		MaxPacketSize:        1<<31 - 1,
		MaxOutput:            1 << 20,
	}
}

func (c *Config) validate() error {
	if _, err := parsePoolMode(c.PoolMode); err != nil {
		return fmt.Errorf("--pool-mode: %w", err)
	}
	for user, m := range c.UserPoolMode {
		if _, err := parsePoolMode(m); err != nil {
			return fmt.Errorf("--user-pool-mode %s: %w", user, err)
		}
	}
	if c.PoolSize < 1 {
		return fmt.Errorf("--default-pool-size must be at least 1, not %d", c.PoolSize)
	}
	if c.MinPoolSize > c.PoolSize {
		return fmt.Errorf("--min-pool-size %d exceeds --default-pool-size %d", c.MinPoolSize, c.PoolSize)
	}
	switch c.ClientTLSMode {
	case "disable", "allow", "require":
	default:
		return fmt.Errorf("--client-tls-mode %q: want disable, allow or require", c.ClientTLSMode)
	}
	if c.ClientTLSMode == "require" && c.TLSCert == "" {
		return fmt.Errorf("--client-tls-mode require needs --tls-cert and --tls-key")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("--tls-cert and --tls-key go together")
	}
	if c.AuthType != auth.Trust && c.AuthFile == "" {
		return fmt.Errorf("--auth-type %s needs --auth-file", c.AuthType)
	}
	for name, w := range c.Priorities {
		if w < 1 {
			return fmt.Errorf("--priority %s=%d: want a weight of at least 1", name, w)
		}
	}
	for user, r := range c.RateLimits {
		if _, err := admission.ParseRate(r); err != nil {
			return fmt.Errorf("--rate-limit %s: %w", user, err)
		}
	}
	if c.ReservePoolSize < 0 || c.MaxDBClientConn < 0 || c.MaxUserClientConn < 0 || c.MaxMemory < 0 || c.MaxQueue < 0 {
		return fmt.Errorf("--reserve-pool-size, --max-db-client-connections, --max-user-client-connections, --max-memory and --max-queue cannot be negative")
	}
	if len(c.Databases) == 0 {
		return fmt.Errorf("no --database given")
	}
	if _, err := parseReadRouting(c.ReadRouting); err != nil {
		return fmt.Errorf("--read-routing: %w", err)
	}
	for name := range c.Replicas {
		if _, ok := c.Databases[name]; !ok {
			return fmt.Errorf("--replica %s=…: no --database %s=… names its primary", name, name)
		}
	}
	if err := c.hedgeDelay().Validate(); err != nil {
		return err
	}
	if !(c.HedgeBudget >= 0 && c.HedgeBudget <= 1) || c.HedgeBudget > 0 && c.HedgeBudget < 1e-6 {
		return fmt.Errorf("--hedge-budget %v%%: want a percentage above 0 and at most 100", c.HedgeBudget*100)
	}
	if c.BatchMaxDepth < 1 || c.BatchMaxDepth > 1024 {
		return fmt.Errorf("--batch-max-depth must be between 1 and 1024, not %d", c.BatchMaxDepth)
	}
	if c.BatchMaxDelay < 0 {
		return fmt.Errorf("--batch-max-delay must not be negative, not %s", c.BatchMaxDelay)
	}
	if len(c.Replicas) > 0 && c.LagCheckInterval <= 0 && c.MaxReplicaLag > 0 {
		return fmt.Errorf("--lag-check-interval must be positive while --max-replica-lag is set")
	}
	return nil
}

type poolMode uint8

const (
	sessionMode poolMode = iota
	transactionMode
	statementMode
)

func parsePoolMode(s string) (poolMode, error) {
	switch s {
	case "session":
		return sessionMode, nil
	case "transaction":
		return transactionMode, nil
	case "statement":
		return statementMode, nil
	}
	return 0, fmt.Errorf("%q: want session, transaction or statement", s)
}

func (m poolMode) String() string {
	return [...]string{"session", "transaction", "statement"}[m]
}

// defaultLoopDriver is epoll where there is epoll.
var defaultLoopDriver = func() string {
	if runtime.GOOS == "linux" {
		return "epoll"
	}
	return "goroutine"
}()
