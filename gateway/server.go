// Package gateway runs client sessions: the protocol state machine, authentication, the link
// between a client and a pooled backend connection, and cancel keys.
package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/trace"

	"github.com/asyncgate/asyncgate/admission"
	"github.com/asyncgate/asyncgate/batcher"
	"github.com/asyncgate/asyncgate/gateway/auth"
	"github.com/asyncgate/asyncgate/gateway/sqlclass"
	"github.com/asyncgate/asyncgate/loop"
	"github.com/asyncgate/asyncgate/pool"
)

// Server accepts clients and owns the pools and the cancel-key registry.
type Server struct {
	cfg    Config
	log    *slog.Logger
	tls    *tls.Config
	driver loop.Driver
	dbs    atomic.Pointer[map[string]*database] // replaced whole when a reload adds one
	live   atomic.Pointer[Config]               // the reloadable settings as last reloaded (conf)

	reloadMu sync.Mutex // one reload at a time
	users    atomic.Pointer[auth.Userlist]

	clients atomic.Int64 // sessions past their StartupMessage, against --max-client-conn
	adm     admissionState
	logins  atomic.Int64 // connections accepted and not yet logged in or closed (Drain waits for them)

	listener atomic.Pointer[net.Listener] // what Serve accepts from, for the console's SHUTDOWN
	shutdown atomic.Bool                  // Shutdown has begun: health checks fail

	mu    sync.Mutex
	pools map[poolKey]*pool.Pool

	pauseMu sync.Mutex // every database's pauseState

	cancelMu sync.Mutex
	cancels  map[cancelKey]*session

	settings settingsTable // tracked parameters shared between sessions

	metrics *unitMetrics // latency histograms and error counters (stats.go)
	tracer  trace.Tracer // nil unless Config.TracerProvider is set (trace.go)
	stats   unitStatsSet // request-unit statistics per (database, user)

	classifier *sqlclass.Classifier // nil unless --pin-on-session-state or --listen-fanout
	pinned     atomic.Int64         // clients pinned to their backend by session state

	batchMu      sync.Mutex
	batchers     map[batchKey]*batcher.Batcher
	batchGroups  map[batchKey]*batcher.Group
	batchMetrics *batcher.Metrics

	mysql mysqlPools // pools of the mysql:// databases (mysql.go)

	hubMu      sync.Mutex
	hubs       map[string]*hub // LISTEN fan-out, by database alias
	hubsClosed bool

	// Replica lag checkers and function loaders run until Shutdown.
	ctx      context.Context
	stop     context.CancelFunc
	watchers sync.WaitGroup
}

// poolKey names a pool: backend 0 is the database's primary, i its i-th --replica.
type poolKey struct {
	database, user string
	backend        int
}

// database is one --database alias.
type database struct {
	name string
	conn *pgconn.Config
	// ownUser: the DSN names the backend user, so every client logs in as it; otherwise the
	// backend login is the client's own user and its plaintext secret from the auth file.
	ownUser  bool
	mode     *poolMode       // pool_mode given in the DSN, if any
	poolSize int             // pool_size given in the DSN, if any
	routing  *readRouting    // read_routing given in the DSN, if any
	hedge    *bool           // hedge given in the DSN, if any
	batch    *bool           // batch given in the DSN, if any
	mysql    *gomysql.Config // set for a mysql:// DSN: the database is MySQL's (mysql.go)

	paused atomic.Bool // the admin console paused it; pause has the details
	pause  pauseState  // guarded by Server.pauseMu

	replicas []*replica        // --replica NAME=DSN for this alias, in flag order
	gates    []*admission.Gate // admission to the primary (0) and each replica (i), shared by all users
	reads    readState         // read routing to those replicas
}

// New checks cfg, loads the auth file and TLS keys, and parses the database DSNs.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Log,
		pools:   make(map[poolKey]*pool.Pool),
		cancels: make(map[cancelKey]*session),
	}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.live.Store(&cfg)
	s.metrics = newUnitMetrics()
	if cfg.TracerProvider != nil {
		s.tracer = cfg.TracerProvider.Tracer("github.com/asyncgate/asyncgate/gateway")
	}
	s.stats.prevAt = time.Now()
	s.batchMetrics = batcher.NewMetrics()
	if cfg.PinOnSessionState || cfg.ListenFanout || s.batchConfigured() {
		s.classifier = sqlclass.New(cfg.ParseCacheSize)
	}
	driver, err := loop.New(cfg.LoopDriver, loop.Config{MaxOutput: cfg.MaxOutput, Loops: cfg.Loops})
	if err != nil {
		return nil, fmt.Errorf("--loop-driver: %w", err)
	}
	s.driver = driver
	if err := s.initAdmission(); err != nil {
		return nil, err
	}
	if err := s.ReloadUsers(); err != nil {
		return nil, err
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	dbs := make(map[string]*database, len(cfg.Databases))
	for name, dsn := range cfg.Databases {
		db, err := parseDatabase(name, dsn)
		if err != nil {
			return nil, err
		}
		if db.mysql != nil && len(cfg.Replicas[name]) > 0 {
			return nil, fmt.Errorf("--replica %s: replicas of a MySQL database are not supported", name)
		}
		if err := s.addReplicas(db, cfg.Replicas[name]); err != nil {
			return nil, err
		}
		s.newGates(db)
		dbs[name] = db
	}
	s.dbs.Store(&dbs)
	if cfg.MaxMemory > 0 {
		s.watchers.Add(1)
		go s.memoryGuard()
	}
	return s, nil
}

// parseDatabase reads one --database DSN. Like PgBouncer's [databases] lines, the DSN may carry
// pool_mode, pool_size, read_routing and hedge for this database; they are the gateway's, not the
// server's.
func parseDatabase(name, dsn string) (*database, error) {
	if strings.HasPrefix(dsn, "mysql://") {
		return parseMySQLDatabase(name, dsn)
	}
	db := &database{name: name}
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		q := u.Query()
		if m := q.Get("pool_mode"); m != "" {
			mode, err := parsePoolMode(m)
			if err != nil {
				return nil, fmt.Errorf("--database %s: pool_mode: %w", name, err)
			}
			db.mode = &mode
		}
		if n := q.Get("pool_size"); n != "" {
			size, err := strconv.Atoi(n)
			if err != nil || size < 1 {
				return nil, fmt.Errorf("--database %s: pool_size %q: want a positive number", name, n)
			}
			db.poolSize = size
		}
		if r := q.Get("read_routing"); r != "" {
			routing, err := parseReadRouting(r)
			if err != nil {
				return nil, fmt.Errorf("--database %s: read_routing: %w", name, err)
			}
			db.routing = &routing
		}
		if h := q.Get("hedge"); h != "" {
			on, ok := parseBool(h)
			if !ok {
				return nil, fmt.Errorf("--database %s: hedge %q: want on or off", name, h)
			}
			db.hedge = &on
		}
		if v := q.Get("batch"); v != "" {
			on, ok := parseBool(v)
			if !ok {
				return nil, fmt.Errorf("--database %s: batch %q: want on or off", name, v)
			}
			db.batch = &on
		}
		q.Del("batch")
		q.Del("pool_mode")
		q.Del("pool_size")
		q.Del("read_routing")
		q.Del("hedge")
		u.RawQuery = q.Encode()
		dsn = u.String()
	}
	conn, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("--database %s: %w", name, err)
	}
	db.conn = conn
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		db.ownUser = u.User != nil && u.User.Username() != ""
	} else {
		db.ownUser = strings.Contains(dsn, "user=")
	}
	return db, nil
}

// ReloadUsers rereads --auth-file; sessions already logged in are not affected.
func (s *Server) ReloadUsers() error {
	file := s.conf().AuthFile
	if file == "" {
		s.users.Store(&auth.Userlist{})
		return nil
	}
	ul, err := auth.LoadUserlist(file)
	if err != nil {
		return fmt.Errorf("--auth-file: %w", err)
	}
	s.users.Store(ul)
	return nil
}

// databases is the configured aliases; the map is never changed, only replaced.
func (s *Server) databases() map[string]*database { return *s.dbs.Load() }

// Serve accepts clients from ln until ln is closed.
func (s *Server) Serve(ln net.Listener) error {
	s.listener.Store(&ln)
	return s.driver.Serve(ln, func(c loop.Conn) loop.Handler { return newSession(s, c) })
}

// Shutdown closes every client (their backends are cancelled or reset) and then the pools.
func (s *Server) Shutdown() {
	s.shutdown.Store(true)
	s.driver.Shutdown()
	s.stop()
	s.watchers.Wait()
	s.closeBatchers()
	s.mu.Lock()
	pools := s.pools
	s.pools = make(map[poolKey]*pool.Pool)
	s.mu.Unlock()
	for _, db := range s.databases() {
		for _, g := range db.gates {
			g.Close()
		}
	}
	for _, p := range pools {
		p.Close()
	}
	s.closeMySQL()
	s.hubMu.Lock()
	hubs := s.hubs
	s.hubs, s.hubsClosed = nil, true
	s.hubMu.Unlock()
	for _, h := range hubs {
		h.close()
	}
}

// Drain waits until no backend connection is lent out, which in transaction and statement modes
// means no transaction is running, and no client is logging in, or until ctx ends. It reports whether it saw none. Call it
// after the listener is closed: clients already connected may still start transactions, and
// those are waited for too (session-mode clients hold their backend until they leave).
func (s *Server) Drain(ctx context.Context) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	// A connection the listener accepted reaches its loop, and becomes a session that counts as
	// logging in, a moment later: the state must stay drained for a few ticks to cover that.
	quiet := 0
	for {
		if s.lentBackends() == 0 && s.logins.Load() == 0 {
			if quiet++; quiet >= 5 {
				return true
			}
		} else {
			quiet = 0
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// lentBackends counts the backend connections lent to clients, across all pools.
func (s *Server) lentBackends() int {
	n := 0
	for _, p := range s.Pools() {
		n += lent(p.Stats())
	}
	for _, p := range s.MySQLPools() {
		n += lent(p.Stats())
	}
	return n
}

// Pools returns the pools opened so far.
func (s *Server) Pools() []*pool.Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*pool.Pool, 0, len(s.pools))
	for _, p := range s.pools {
		out = append(out, p)
	}
	return out
}

// pool returns the primary's pool for a database alias and client user, opening it on first use.
func (s *Server) pool(db *database, user string) *pool.Pool {
	return s.backendPool(db, user, 0)
}

// backendPool returns the pool for user's work on db's primary (backend 0) or on its replica
// db.replicas[backend-1], opening it on first use. All of a database's pools share its settings.
func (s *Server) backendPool(db *database, user string, backend int) *pool.Pool {
	key := poolKey{db.name, user, backend}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.pools[key]; ok {
		return p
	}
	name := db.name + "/" + user
	conn := s.connConfig(db, user)
	if backend > 0 {
		r := db.replicas[backend-1]
		name = fmt.Sprintf("%s/replica%d", name, backend)
		conn = s.loginConfig(r.conn, r.ownUser, user)
	}
	size := s.poolSizeLocked(db)
	p := pool.New(pool.Config{
		Name:        name,
		Connect:     conn,
		Size:        size + s.cfg.ReservePoolSize,
		MaxPrepared: s.cfg.MaxPrepared,
		MinSize:     min(s.conf().MinPoolSize, size),
		// The gate bounds the units that ask: the pool's own queue holds at most its slots, and
		// only while connections open.
		WaitTimeout:    s.cfg.QueryWaitTimeout,
		ConnectTimeout: s.cfg.ServerConnectTimeout,
		Lifetime:       s.cfg.ServerLifetime,
		IdleTimeout:    s.cfg.ServerIdleTimeout,
		CheckDelay:     s.cfg.ServerCheckDelay,
		ResetQuery:     s.cfg.ServerResetQuery,
		Poller:         s.poller(),
		Breaker:        pool.BreakerConfig{Failures: s.cfg.BreakerFailures, OpenFor: s.cfg.BreakerOpenTime},
		Log:            s.log,
	})
	s.pools[key] = p
	return p
}

// connConfig is how a backend connection for user's work on db logs in: as the DSN's user, or
// else as the client's own user with its plaintext secret from the auth file.
func (s *Server) connConfig(db *database, user string) *pgconn.Config {
	return s.loginConfig(db.conn, db.ownUser, user)
}

// loginConfig is connConfig for a backend whose DSN gave conn.
func (s *Server) loginConfig(dsn *pgconn.Config, ownUser bool, user string) *pgconn.Config {
	conn := dsn.Copy()
	if !ownUser {
		conn.User = user
		if pw, ok := s.users.Load().Password(user); ok {
			conn.Password = pw
		}
	}
	return conn
}

// hub returns the LISTEN fan-out hub of a database alias, starting it on first use; its listener
// connection logs in as a backend connection for user would. Nil after Shutdown.
func (s *Server) hub(db *database, user string) *hub {
	s.hubMu.Lock()
	defer s.hubMu.Unlock()
	if s.hubsClosed {
		return nil
	}
	if h, ok := s.hubs[db.name]; ok {
		return h
	}
	if s.hubs == nil {
		s.hubs = make(map[string]*hub)
	}
	h := newHub(s, db.name, s.connConfig(db, user))
	s.hubs[db.name] = h
	return h
}

// ListenChannels reports how many channels the LISTEN fan-out hubs' connections listen on.
func (s *Server) ListenChannels() int {
	s.hubMu.Lock()
	defer s.hubMu.Unlock()
	n := 0
	for _, h := range s.hubs {
		n += int(h.listening.Load())
	}
	return n
}

// poller serves backend connections on the client loops when the driver has loops.
func (s *Server) poller() pool.Poller {
	if ss, ok := s.driver.(loop.StreamServer); ok {
		return streamPoller{ss}
	}
	return nil
}

// streamPoller adapts the driver's loops to the pool, which does not import loop.
type streamPoller struct{ ss loop.StreamServer }

func (p streamPoller) Attach(fd int, i int, h pool.StreamHandler) (pool.Stream, error) {
	return p.ss.AttachStream(fd, i, h)
}

// modeFor picks the pool mode for a client: its user's, else its database's, else the default.
func (s *Server) modeFor(db *database, user string) poolMode {
	if m, ok := s.cfg.UserPoolMode[user]; ok {
		mode, _ := parsePoolMode(m)
		return mode
	}
	if db.mode != nil {
		return *db.mode
	}
	mode, _ := parsePoolMode(s.cfg.PoolMode)
	return mode
}

// admitClient counts a client against --max-client-conn.
func (s *Server) admitClient() bool {
	if s.clients.Add(1) > int64(s.conf().MaxClientConn) {
		s.clients.Add(-1)
		return false
	}
	return true
}

// cancel forwards a client's CancelRequest to the backend running that client's query, if any.
func (s *Server) cancel(pid uint32, key []byte) {
	k, ok := makeCancelKey(pid, key)
	if !ok {
		return
	}
	s.cancelMu.Lock()
	target := s.cancels[k]
	s.cancelMu.Unlock()
	if target == nil {
		s.log.Debug("cancel request for unknown key")
		return
	}
	target.io.Exec(target.requestCancel)
}

// PinnedClients reports how many clients keep their backend because of session state.
func (s *Server) PinnedClients() int64 { return s.pinned.Load() }
