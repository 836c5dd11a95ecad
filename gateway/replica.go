package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/gateway/sqlclass"
)

// readRouting says which request units of a database may run on its replicas.
type readRouting uint8

const (
	routeOff      readRouting = iota // everything on the primary
	routeExplicit                    // read-only transactions and read-only clients
	routeAuto                        // those, and autocommit statements the classifier proves read-only
)

func parseReadRouting(s string) (readRouting, error) {
	switch s {
	case "off":
		return routeOff, nil
	case "explicit":
		return routeExplicit, nil
	case "auto":
		return routeAuto, nil
	}
	return 0, fmt.Errorf("%q: want off, explicit or auto", s)
}

func (r readRouting) String() string { return [...]string{"off", "explicit", "auto"}[r] }

// replica is one --replica of a database.
type replica struct {
	index   int // its pools' poolKey.backend: 1 for the database's first replica
	conn    *pgconn.Config
	ownUser bool

	lagOK       atomic.Bool  // last lag measurement within --max-replica-lag
	lag         atomic.Int64 // last measured replay lag in nanoseconds; -1 when unknown
	outstanding atomic.Int64 // sessions with a unit on it or waiting for one of its connections
}

// readState is a database's read routing.
type readState struct {
	routing    readRouting
	classifier *sqlclass.Classifier // its own, since the functions it allows are this database's

	started    sync.Once    // lag watchers
	funcs      atomic.Int32 // funcsNone, funcsLoading or funcsLoaded
	replicaRun atomic.Int64 // units that ran on a replica
	hedging    *hedging     // nil unless reads to replicas are hedged (--hedge)
}

const (
	funcsNone int32 = iota
	funcsLoading
	funcsLoaded
)

// addReplicas parses db's --replica DSNs and sets up its read routing.
func (s *Server) addReplicas(db *database, dsns []string) error {
	for i, dsn := range dsns {
		rdb, err := parseDatabase(db.name, dsn)
		if err != nil {
			return fmt.Errorf("--replica: %w", err)
		}
		if rdb.mode != nil || rdb.poolSize > 0 || rdb.routing != nil || rdb.hedge != nil {
			return fmt.Errorf("--replica %s: pool_mode, pool_size, read_routing and hedge belong in the primary's --database DSN", db.name)
		}
		r := &replica{index: i + 1, conn: rdb.conn, ownUser: rdb.ownUser}
		r.lag.Store(-1)
		db.replicas = append(db.replicas, r)
	}
	db.reads.routing, _ = parseReadRouting(s.cfg.ReadRouting)
	if db.routing != nil {
		db.reads.routing = *db.routing
	}
	if len(db.replicas) > 0 && db.reads.routing != routeOff {
		db.reads.classifier = sqlclass.New(s.cfg.ParseCacheSize)
		if len(s.cfg.ReadFunctions) > 0 {
			db.reads.classifier.AllowFunctions(s.cfg.ReadFunctions...)
		}
	}
	s.setupHedging(db)
	return nil
}

// ReplicaReads reports how many request units of database alias db ran on one of its replicas.
func (s *Server) ReplicaReads(db string) int64 {
	if d, ok := s.databases()[db]; ok {
		return d.reads.replicaRun.Load()
	}
	return 0
}

// startReads starts what read routing on db needs once a client uses it: a lag watcher per
// replica, and in auto mode the list of functions reads may call. Their side connections log in
// as backend connections for user would.
func (s *Server) startReads(db *database, user string) {
	if db.reads.routing == routeOff || len(db.replicas) == 0 {
		return
	}
	db.reads.started.Do(func() {
		for _, r := range db.replicas {
			if s.cfg.MaxReplicaLag <= 0 {
				r.lagOK.Store(true)
				continue
			}
			s.watchers.Add(1)
			go s.watchLag(db, r, s.loginConfig(r.conn, r.ownUser, user))
		}
	})
	if db.reads.routing == routeAuto && db.reads.funcs.CompareAndSwap(funcsNone, funcsLoading) {
		s.watchers.Add(1)
		go s.loadReadFunctions(db, s.connConfig(db, user))
	}
}

// readFunctionsQuery lists every function with whether all its overloads are immutable or
// stable, which PostgreSQL does not let write. In pg_catalog, parallel-unsafe ones are left out
// too: some stable built-ins still cannot run on a standby (txid_current assigns an xid).
const readFunctionsQuery = `SELECT n.nspname, p.proname,
	bool_and(p.provolatile IN ('i', 's') AND (n.nspname <> 'pg_catalog' OR p.proparallel <> 'u'))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
GROUP BY 1, 2`

// loadReadFunctions gives db's classifier the functions a read may call, from the primary's
// catalog. Until it has, auto routing sends nothing to the replicas; if it fails, the next
// client of db tries again.
func (s *Server) loadReadFunctions(db *database, conn *pgconn.Config) {
	defer s.watchers.Done()
	names, err := s.readFunctions(conn)
	if err != nil {
		db.reads.funcs.Store(funcsNone)
		s.log.Warn("could not load function volatility for --read-routing auto; reads stay on the primary",
			"database", db.name, "err", err)
		return
	}
	db.reads.classifier.AllowFunctions(names...)
	db.reads.funcs.Store(funcsLoaded)
}

func (s *Server) readFunctions(conn *pgconn.Config) ([]string, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.sideTimeout())
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, conn)
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, readFunctionsQuery).ReadAll()
	if err != nil {
		return nil, err
	}
	// A bare name matches unqualified calls, which may find the name in any schema on the
	// search_path: allow it only when every function of that name is read-only.
	bare := make(map[string]bool)
	var names []string
	for _, r := range res {
		for _, row := range r.Rows {
			schema, name, ok := string(row[0]), string(row[1]), string(row[2]) == "t"
			if prev, seen := bare[name]; !seen || prev {
				bare[name] = ok
			}
			if ok && schema != "pg_catalog" {
				names = append(names, schema+"."+name)
			}
		}
	}
	for name, ok := range bare {
		if ok {
			names = append(names, name)
		}
	}
	return names, nil
}

// sideTimeout bounds one exchange on a side connection: connecting and one query.
func (s *Server) sideTimeout() time.Duration {
	if d := s.cfg.ServerConnectTimeout; d > 0 {
		return d
	}
	return 15 * time.Second
}

// lagQuery is the replica's own replay lag in seconds: 0 while it has replayed all it received
// (an idle primary sends nothing, so the last replayed commit may be old), else the age of the
// last transaction it replayed. Measured on the replica alone, it needs no connection to the
// primary and overestimates rather than underestimates while WAL waits to be replayed.
const lagQuery = `SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
	ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END`

// watchLag measures r's replay lag every --lag-check-interval until Shutdown. A replica whose
// lag cannot be measured counts as too far behind.
func (s *Server) watchLag(db *database, r *replica, conn *pgconn.Config) {
	defer s.watchers.Done()
	var c *pgconn.PgConn
	defer func() {
		if c != nil {
			c.Close(context.Background())
		}
	}()
	tick := time.NewTicker(s.cfg.LagCheckInterval)
	defer tick.Stop()
	for {
		lag, err := s.measureLag(&c, conn)
		ok := err == nil && lag <= s.cfg.MaxReplicaLag
		if err != nil {
			lag = -1
		}
		r.lag.Store(int64(lag))
		if was := r.lagOK.Swap(ok); was != ok {
			if ok {
				s.log.Info("replica within --max-replica-lag again: it takes reads", "database", db.name,
					"replica", r.index, "lag", lag)
			} else {
				s.log.Warn("replica excluded from reads (--max-replica-lag)", "database", db.name,
					"replica", r.index, "lag", lag, "limit", s.cfg.MaxReplicaLag, "err", err)
			}
		}
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// measureLag runs lagQuery on *c, connecting first if needed; a failed connection is closed.
func (s *Server) measureLag(c **pgconn.PgConn, conn *pgconn.Config) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.sideTimeout())
	defer cancel()
	if *c == nil {
		pc, err := pgconn.ConnectConfig(ctx, conn)
		if err != nil {
			return 0, err
		}
		*c = pc
	}
	res, err := (*c).Exec(ctx, lagQuery).ReadAll()
	if err != nil {
		(*c).Close(context.Background())
		*c = nil
		return 0, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || res[0].Rows[0][0] == nil {
		return 0, errLagUnknown
	}
	secs, err := strconv.ParseFloat(string(res[0].Rows[0][0]), 64)
	if err != nil {
		return 0, fmt.Errorf("replay lag %q: %w", res[0].Rows[0][0], err)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// errLagUnknown: the replica answered, but does not know its lag.
var errLagUnknown = errors.New("replay lag unknown (not a streaming replica, or nothing replayed yet)")

// pickReplica chooses among db's replicas that may take reads now (breaker not open, lag within
// bounds) by the power of two random choices on outstanding units; nil when none may.
func (s *Server) pickReplica(db *database, user string) *replica {
	var buf [8]*replica
	eligible := buf[:0]
	for _, r := range db.replicas {
		if !r.lagOK.Load() || s.backendPool(db, user, r.index).BreakerState() == "open" {
			continue
		}
		eligible = append(eligible, r)
	}
	return twoChoices(eligible)
}

// twoChoices picks two of rs at random and returns the one with fewer outstanding units: nearly
// as even as the least loaded of all, without every client flocking to the same one.
func twoChoices(rs []*replica) *replica {
	switch len(rs) {
	case 0:
		return nil
	case 1:
		return rs[0]
	}
	i := rand.IntN(len(rs))
	j := rand.IntN(len(rs) - 1)
	if j >= i {
		j++
	}
	if rs[j].outstanding.Load() < rs[i].outstanding.Load() {
		return rs[j]
	}
	return rs[i]
}

// unitFacts is what a session knows about a request unit when it asks for a backend for it.
type unitFacts struct {
	routing     readRouting
	mode        poolMode
	txStatus    byte
	pinned      bool
	readOnly    bool              // the client's default_transaction_read_only is on
	recentWrite bool              // within --read-your-writes-window of the client's last write
	funcsLoaded bool              // the database's read-only functions are known (auto)
	stmts       []*sqlclass.Class // the unit's statements in order; nil for one not known
	complete    bool              // stmts are the whole unit: simple Queries, or extended messages up to Sync
}

// route decides whether a replica may run a unit. Anything uncertain goes to the primary: a
// write that reached a replica would fail there (25006) rather than land.
func route(u unitFacts) bool {
	if u.routing == routeOff || u.mode == sessionMode || u.txStatus != 'I' || u.pinned || u.recentWrite {
		return false
	}
	if u.readOnly {
		return true // every transaction the client opens is read-only, as it asked
	}
	if !u.complete || len(u.stmts) == 0 {
		return false
	}
	if readOnlyTransaction(u.stmts) {
		return true
	}
	return u.routing == routeAuto && u.funcsLoaded && allRead(u.stmts)
}

// readOnlyTransaction reports a unit that opens a read-only transaction and does not end it.
func readOnlyTransaction(stmts []*sqlclass.Class) bool {
	first := stmts[0]
	// Several statements in one text share one Class, which cannot tell whether one of them
	// ends the transaction and writes after it.
	if first == nil || !first.ReadOnlyBegin || first.Statements != 1 {
		return false
	}
	for _, c := range stmts[1:] {
		if c == nil || c.TxControl || pinsSession(c) {
			return false
		}
	}
	return !pinsSession(first)
}

// allRead reports a unit of autocommit statements that each provably only read.
func allRead(stmts []*sqlclass.Class) bool {
	for _, c := range stmts {
		if c == nil || !c.Read || c.Statements != 1 || c.TxControl || pinsSession(c) {
			return false
		}
	}
	return len(stmts) > 0
}

// pinsSession reports a statement that may leave session state behind, which would tie the
// client to a replica's connection.
func pinsSession(c *sqlclass.Class) bool {
	for _, e := range c.Effects {
		if !e.Local {
			return true
		}
	}
	return c.TooComplex
}

// routing reports whether the session's units may go to replicas.
func (s *session) routing() bool {
	return s.state == stLinked && s.mode != sessionMode && len(s.db.replicas) > 0 && s.db.reads.routing != routeOff
}

// readClass classifies a statement for read routing. In explicit mode only texts that may begin
// a transaction matter.
func (s *session) readClass(text []byte) *sqlclass.Class {
	r := &s.db.reads
	if r.classifier == nil {
		return nil
	}
	text = bytes.TrimRight(text, "\x00")
	if r.routing == routeExplicit && indexFold(text, []byte("begin"), 0) < 0 && indexFold(text, []byte("start"), 0) < 0 {
		return nil
	}
	return r.classifier.Classify(string(text))
}

// unitReady reports whether the queued frames suffice to choose a backend: with read routing,
// an extended-protocol group is judged whole, at its Sync (or Flush), not by its first Parse.
func (s *session) unitReady() bool {
	if !s.routing() || len(s.queued) == 0 {
		return true
	}
	first, last := s.queued[0], s.queued[len(s.queued)-1]
	if !extendedMessage(first.typ) {
		return true
	}
	if !last.whole || s.queuedBytes > maxQueued/2 {
		return true // judged unknown, so on the primary
	}
	return !extendedMessage(last.typ)
}

func extendedMessage(typ byte) bool {
	switch typ {
	case 'P', 'B', 'D', 'E', 'C':
		return true
	}
	return false
}

// queuedStatements lists the statements the queued frames run, in order, for route.
func (s *session) queuedStatements() (stmts []*sqlclass.Class, complete bool) {
	var parsed map[string]*sqlclass.Class // statements parsed among the queued frames
	for _, q := range s.queued {
		if !q.whole {
			return stmts, false
		}
		body := q.raw[len(q.raw)-q.length:]
		switch q.typ {
		case 'Q':
			stmts = append(stmts, s.readClass(body))
		case 'P':
			name, rest, ok := cut(body)
			query, _, _ := cut(rest)
			if !ok {
				return stmts, false
			}
			if parsed == nil {
				parsed = make(map[string]*sqlclass.Class)
			}
			parsed[string(name)] = s.readClass(query)
		case 'B':
			_, rest, ok := cut(body)
			name, _, _ := cut(rest)
			if !ok {
				return stmts, false
			}
			c, ok := parsed[string(name)]
			if st := s.stmts[string(name)]; !ok && len(name) > 0 && st != nil {
				c = st.routeClass
			}
			stmts = append(stmts, c) // an unnamed statement parsed in an earlier unit: unknown
		case 'D', 'E', 'C', 'S', 'H':
		default:
			stmts = append(stmts, nil) // FunctionCall, COPY data: unknown
		}
	}
	if len(s.queued) == 0 {
		return nil, false
	}
	last := s.queued[len(s.queued)-1].typ
	return stmts, last == 'S' || last == 'Q'
}

// chooseReplica picks a replica for the queued unit, or nil for the primary. It notes whether
// the unit may write, for --read-your-writes-window.
func (s *session) chooseReplica() *replica {
	s.unitWrites = false
	if !s.routing() {
		return nil
	}
	stmts, complete := s.queuedStatements()
	// A unit that runs nothing (pgx's Parse and Describe of a new statement) writes nothing.
	s.unitWrites = len(stmts) > 0 && !allRead(stmts)
	window := s.srv.cfg.ReadYourWritesWindow
	u := unitFacts{
		routing:     s.db.reads.routing,
		mode:        s.mode,
		txStatus:    s.txStatus,
		pinned:      s.pinned(),
		readOnly:    s.readOnlyClient(),
		recentWrite: window > 0 && !s.lastWrite.IsZero() && s.lastWrite.Since() < window,
		funcsLoaded: s.db.reads.funcs.Load() == funcsLoaded,
		stmts:       stmts,
		complete:    complete,
	}
	if !route(u) {
		return nil
	}
	return s.srv.pickReplica(s.db, s.user)
}

// readOnlyClient reports a client whose default_transaction_read_only is on, as set at startup
// or since (the server reports the parameter, so it follows the client).
func (s *session) readOnlyClient() bool {
	for k, v := range s.desired {
		if strings.EqualFold(k, "default_transaction_read_only") {
			on, ok := parseBool(v)
			return ok && on
		}
	}
	return false
}

// parseBool reads a boolean setting as PostgreSQL spells it.
func parseBool(v string) (value, ok bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "on", "true", "yes", "1", "t", "y":
		return true, true
	case "off", "false", "no", "0", "f", "n":
		return false, true
	}
	return false, false
}

// leaveReplica ends the session's claim on the replica its last unit went to.
func (s *session) leaveReplica() {
	if s.replica != nil {
		s.replica.outstanding.Add(-1)
		s.replica = nil
	}
	s.pool = s.primary
	s.routed = 0
}
