package gateway

import (
	"fmt"
	"maps"
	"net"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

// The admin console is the pseudo-database asyncgate (or pgbouncer, so that tools written for
// PgBouncer find it where they look). The gateway answers it itself, without a backend, with
// PgBouncer's column names so that existing tooling (pgbouncer_exporter, dashboards, scripts)
// works unchanged. Columns for things the gateway does not track yet read 0 (or NULL for times);
// the README lists them.

// adminDatabases are the database names that reach the console, unless a --database of that name
// is configured: an explicit alias wins.
var adminDatabases = []string{"asyncgate", "pgbouncer"}

// stAdmin is the state of a session logged into the admin console: its frames go to
// adminMessage, and it never has a backend. Its value sits apart from the session states so that
// no comparison on those (s.state < stLinked and the like) includes it by accident.
const stAdmin state = 0x80

// adminMaxQuery bounds a console command; commands are short, and the bound keeps a client from
// making the gateway buffer much for one.
const adminMaxQuery = 64 << 10

type adminRole uint8

const (
	roleNone  adminRole = iota
	roleStats           // --stats-users: SHOW only
	roleAdmin           // --admin-users: everything
)

// isAdminDatabase reports whether a client asking for name wants the console.
func (s *Server) isAdminDatabase(name string) bool {
	if _, ok := s.databases()[name]; ok {
		return false
	}
	return slices.Contains(adminDatabases, name)
}

// adminRole is what user may do on the console.
func (s *Server) adminRole(user string) adminRole {
	switch {
	case slices.Contains(s.conf().AdminUsers, user):
		return roleAdmin
	case slices.Contains(s.conf().StatsUsers, user):
		return roleStats
	}
	return roleNone
}

// adminLogin completes the login of an authenticated client that asked for the console.
func (s *session) adminLogin() {
	if s.srv.adminRole(s.user) == roleNone {
		s.fatal("28000", "not allowed to connect to the admin console (--admin-users, --stats-users)")
		return
	}
	s.disarm()
	s.loginDone()
	s.state = stAdmin
	s.txStatus = 'I'
	// Queries are read whole so they can be parsed; within a small bound, as commands are short.
	s.in.SetMaxInspect(adminMaxQuery)
	s.in.SetInspect('Q', true)
	for _, p := range [][2]string{
		{"server_version", adminVersion()},
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO"},
		{"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"},
	} {
		s.io.Write(wire.AppendParameterStatus(nil, p[0], p[1]))
	}
	// A key of its own, so SHOW CLIENTS lists the console's clients too; a cancel finds no
	// backend to forward to and does nothing.
	s.key, s.keyed = s.srv.register(s), true
	s.io.Write(wire.AppendBackendKeyData(nil, s.key.pid, s.key.secretBytes()))
	s.io.Write(wire.AppendReadyForQuery(nil, 'I'))
}

// adminMessage handles a frame from a console client. Only the simple query protocol is
// supported, as with PgBouncer's console.
func (s *session) adminMessage(f *wire.Frame) {
	if !f.First {
		return // the rest of a message already refused
	}
	switch f.Type {
	case 'X':
		s.state = stClosed
		s.io.Close()
	case 'Q':
		if !f.Whole {
			s.fatal("54000", fmt.Sprintf("admin console command longer than %d bytes", adminMaxQuery))
			return
		}
		q, err := wire.QueryText(f.Body)
		if err != nil {
			code, msg := errorFields(err)
			s.fatal(code, msg)
			return
		}
		role := s.srv.adminRole(s.user)
		if words := strings.Fields(strings.TrimRight(strings.TrimSpace(string(q)), ";")); role == roleAdmin &&
			len(words) > 0 && strings.EqualFold(words[0], "PAUSE") && !strings.Contains(string(q), ";") {
			s.pauseCommand(words) // answers once the database's backends are all back
			return
		}
		out := s.srv.adminQuery(nil, string(q), role)
		s.io.Write(wire.AppendReadyForQuery(out, 'I'))
	default:
		s.fatal("08P01", fmt.Sprintf("the admin console takes simple Query messages only, not message type %q", f.Type))
	}
}

// adminQuery runs the commands of one Query message, ';'-separated, and appends their answers.
// A failing command ends the message, as a failing statement ends a simple Query on PostgreSQL.
func (s *Server) adminQuery(dst []byte, q string, role adminRole) []byte {
	ran := false
	for cmd := range strings.SplitSeq(q, ";") {
		words := strings.Fields(cmd)
		if len(words) == 0 {
			continue
		}
		ran = true
		out, err := s.adminCommand(dst, words, role)
		if err != nil {
			return wire.AppendError(dst, "ERROR", err.Code, err.Message)
		}
		dst = out
	}
	if !ran {
		dst = mustAppend(dst, &pgproto3.EmptyQueryResponse{})
	}
	return dst
}

// adminError is a console command's failure, sent as an ErrorResponse; the session goes on.
type adminError = wire.Error

func notSupported(what string) *adminError {
	return &adminError{Code: "0A000", Message: what + " is not supported yet by asyncgate's admin console"}
}

// adminCommand appends the answer to one command, given as its whitespace-separated words.
func (s *Server) adminCommand(dst []byte, words []string, role adminRole) ([]byte, *adminError) {
	verb := strings.ToUpper(words[0])
	if verb != "SHOW" && role != roleAdmin {
		return nil, &adminError{Code: "42501", Message: fmt.Sprintf("permission denied for %s: --stats-users may only run SHOW commands (--admin-users may run all)", verb)}
	}
	switch verb {
	case "SHOW":
		if len(words) != 2 {
			return nil, &adminError{Code: "42601", Message: "syntax error: want SHOW followed by one of " + strings.Join(showNames(), ", ")}
		}
		what := strings.ToLower(words[1])
		show, ok := showCommands[what]
		if !ok {
			return nil, &adminError{Code: "42601", Message: fmt.Sprintf("unknown SHOW %s: want one of %s", words[1], strings.Join(showNames(), ", "))}
		}
		t := show(s)
		return t.append(dst, "SHOW"), nil
	case "RELOAD":
		warning, err := s.reloadCommand()
		if err != nil {
			return nil, err
		}
		if warning != "" {
			dst = mustAppend(dst, &pgproto3.NoticeResponse{Severity: "WARNING", SeverityUnlocalized: "WARNING", Code: "01000", Message: warning})
		}
		return appendComplete(dst, "RELOAD"), nil
	case "SHUTDOWN":
		if !s.stopAccepting() {
			return nil, &adminError{Code: "55000", Message: "SHUTDOWN: the gateway is not serving a listener"}
		}
		s.log.Info("shutting down (admin console SHUTDOWN)")
		return appendComplete(dst, "SHUTDOWN"), nil
	case "SET":
		if err := s.setCommand(words); err != nil {
			return nil, err
		}
		return appendComplete(dst, "SET"), nil
	case "PAUSE", "RESUME", "KILL", "RECONNECT":
		names, err := s.adminTargets(verb, words)
		if err != nil {
			return nil, err
		}
		switch verb {
		case "PAUSE": // within a multi-command message: pauses without waiting
			s.setPaused(names, true)
		case "RESUME":
			s.setPaused(names, false)
		case "KILL":
			s.setPaused(names, true)
			s.killClients(names)
			s.reconnect(names)
		case "RECONNECT":
			s.reconnect(names)
		}
		s.log.Info("admin console "+verb, "databases", names)
		return appendComplete(dst, verb), nil
	case "KILL_CLIENT", "SUSPEND", "ENABLE", "DISABLE", "WAIT_CLOSE":
		return nil, notSupported(verb)
	}
	return nil, &adminError{Code: "42601", Message: fmt.Sprintf("unknown admin console command %q (SHOW HELP lists them)", words[0])}
}

// stopAccepting closes the listener Serve runs on, so Serve returns and its caller shuts down.
func (s *Server) stopAccepting() bool {
	ln := s.listener.Load()
	if ln == nil {
		return false
	}
	(*ln).Close()
	return true
}

func appendComplete(dst []byte, tag string) []byte {
	return mustAppend(dst, &pgproto3.CommandComplete{CommandTag: []byte(tag)})
}

func mustAppend(dst []byte, msg pgproto3.BackendMessage) []byte {
	out, err := msg.Encode(dst)
	if err != nil {
		panic(fmt.Sprintf("gateway: encode %T: %v", msg, err))
	}
	return out
}

// adminTable is one SHOW answer: column names and types, and rows of string, int64 or nil.
type adminTable struct {
	cols []adminCol
	rows [][]any
}

type adminCol struct {
	name string
	num  bool // int8; else text
}

func textCols(names ...string) []adminCol {
	cols := make([]adminCol, len(names))
	for i, n := range names {
		cols[i] = adminCol{name: n}
	}
	return cols
}

// cols builds columns from names; a leading '#' marks a number.
func cols(names ...string) []adminCol {
	out := make([]adminCol, len(names))
	for i, n := range names {
		if num := strings.HasPrefix(n, "#"); num {
			out[i] = adminCol{name: n[1:], num: true}
		} else {
			out[i] = adminCol{name: n}
		}
	}
	return out
}

const (
	oidText = 25
	oidInt8 = 20
)

// append encodes the table as RowDescription, DataRows and CommandComplete in text format.
func (t *adminTable) append(dst []byte, tag string) []byte {
	rd := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(t.cols))}
	for i, c := range t.cols {
		f := pgproto3.FieldDescription{Name: []byte(c.name), DataTypeOID: oidText, DataTypeSize: -1, TypeModifier: -1}
		if c.num {
			f.DataTypeOID, f.DataTypeSize = oidInt8, 8
		}
		rd.Fields[i] = f
	}
	dst = mustAppend(dst, rd)
	for _, row := range t.rows {
		dr := &pgproto3.DataRow{Values: make([][]byte, len(row))}
		for i, v := range row {
			switch v := v.(type) {
			case nil:
			case string:
				dr.Values[i] = []byte(v)
			case int64:
				dr.Values[i] = strconv.AppendInt(nil, v, 10)
			case int:
				dr.Values[i] = strconv.AppendInt(nil, int64(v), 10)
			case uint64:
				dr.Values[i] = strconv.AppendUint(nil, v, 10)
			default:
				dr.Values[i] = fmt.Append(nil, v)
			}
		}
		dst = mustAppend(dst, dr)
	}
	return appendComplete(dst, tag)
}

var showCommands map[string]func(*Server) *adminTable

func init() {
	// Assigned here rather than in the declaration: the help entry refers back to the map.
	showCommands = map[string]func(*Server) *adminTable{
		"pools":          (*Server).showPools,
		"clients":        (*Server).showClients,
		"servers":        (*Server).showServers,
		"databases":      (*Server).showDatabases,
		"stats":          (*Server).showStats,
		"stats_totals":   (*Server).showStatsTotals,
		"stats_averages": (*Server).showStatsAverages,
		"config":         (*Server).showConfig,
		"lists":          (*Server).showLists,
		"users":          (*Server).showUsers,
		"version":        (*Server).showVersion,
		"breakers":       (*Server).showBreakers,
		"queues":         (*Server).showQueues,
		"hedges":         (*Server).showHedges,
		"help":           (*Server).showHelp,
	}
}

func showNames() []string {
	names := make([]string, 0, len(showCommands))
	for n := range showCommands {
		names = append(names, strings.ToUpper(n))
	}
	slices.Sort(names)
	return names
}

// adminVersion is the console's version string, from the binary's build information.
func adminVersion() string {
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	return "asyncgate " + v
}

// poolEntry is one open pool with its key.
// statsPool is what the console and the metrics read of a pool: a *pool.Pool, or a MySQL
// database's *mysql.Pool.
type statsPool interface {
	Stats() pool.Stats
	BreakerState() string
}

type poolEntry struct {
	key   poolKey
	pool  statsPool
	stats pool.Stats
}

// poolEntries snapshots the open pools in a stable order: database, user, backend.
func (s *Server) poolEntries() []poolEntry {
	s.mu.Lock()
	out := make([]poolEntry, 0, len(s.pools))
	for k, p := range s.pools {
		out = append(out, poolEntry{key: k, pool: p})
	}
	s.mu.Unlock()
	s.mysql.mu.Lock()
	for k, p := range s.mysql.m {
		out = append(out, poolEntry{key: k, pool: p})
	}
	s.mysql.mu.Unlock()
	slices.SortFunc(out, func(a, b poolEntry) int {
		if c := strings.Compare(a.key.database, b.key.database); c != 0 {
			return c
		}
		if c := strings.Compare(a.key.user, b.key.user); c != 0 {
			return c
		}
		return a.key.backend - b.key.backend
	})
	for i := range out {
		out[i].stats = out[i].pool.Stats()
	}
	return out
}

// poolDatabase is the name a pool is shown under: the alias for a primary, alias/replicaN for a
// replica, so that each row of SHOW POOLS is one pool as in PgBouncer.
func poolDatabase(k poolKey) string {
	if k.backend == 0 {
		return k.database
	}
	return fmt.Sprintf("%s/replica%d", k.database, k.backend)
}

// lent is the connections lent to clients: the open ones not idle (one being reset or checked
// counts too, for the moment that takes).
func lent(st pool.Stats) int {
	return max(st.Open-st.Idle, 0)
}

// showPools: cl_active counts clients holding a backend (one per lent connection), so in session
// mode idle clients that hold theirs count, and in transaction mode only those mid-transaction;
// cl_waiting includes the clients held by PAUSE; maxwait is not tracked yet.
func (s *Server) showPools() *adminTable {
	t := &adminTable{cols: cols("database", "user", "#cl_active", "#cl_waiting", "#cl_active_cancel_req",
		"#cl_waiting_cancel_req", "#sv_active", "#sv_active_cancel", "#sv_being_canceled", "#sv_idle",
		"#sv_used", "#sv_tested", "#sv_login", "#maxwait", "#maxwait_us", "pool_mode")}
	for _, e := range s.poolEntries() {
		st := e.stats
		mode := s.modeFor(s.databases()[e.key.database], e.key.user)
		waiting := st.Waiting
		if e.key.backend == 0 {
			waiting += s.parkedCount(e.key.database, e.key.user)
		}
		t.rows = append(t.rows, []any{poolDatabase(e.key), e.key.user, lent(st), waiting, 0,
			0, lent(st), 0, 0, st.Idle,
			0, 0, st.Connecting, 0, 0, mode.String()})
	}
	return t
}

var clientCols = cols("type", "user", "database", "replication", "state", "addr", "#port", "local_addr",
	"#local_port", "connect_time", "request_time", "#wait", "#wait_us", "#close_needed", "ptr", "link",
	"#remote_pid", "tls", "application_name", "#prepared_statements", "#id", "pinned")

// showClients lists the logged-in clients. A session's state belongs to its loop, so only what is
// fixed before the session registers its cancel key is read here: user, database, address. The
// state column says "active" (PgBouncer's word for a logged-in client not waiting for a server).
// The last column, not PgBouncer's, tells clients pinned to their backend by session state.
func (s *Server) showClients() *adminTable {
	t := &adminTable{cols: clientCols}
	type client struct {
		user, db string
		addr     net.Addr
		id       uint32
		ptr      string
		pinned   bool
	}
	var list []client
	s.cancelMu.Lock()
	for k, c := range s.cancels {
		db := ""
		if c.db != nil {
			db = c.db.name
		} else {
			db = c.startup["database"] // the console keeps its startup parameters
		}
		list = append(list, client{user: c.user, db: db, addr: c.io.RemoteAddr(), id: k.pid, ptr: fmt.Sprintf("%p", c),
			pinned: c.pinnedNow.Load()})
	}
	s.cancelMu.Unlock()
	slices.SortFunc(list, func(a, b client) int { return int(int64(a.id) - int64(b.id)) })
	for _, c := range list {
		host, port := splitAddr(c.addr)
		t.rows = append(t.rows, []any{"C", c.user, c.db, "none", "active", host, port, nil,
			0, nil, nil, 0, 0, 0, c.ptr, "",
			0, "", "", 0, int64(c.id), c.pinned})
	}
	return t
}

func splitAddr(a net.Addr) (string, int) {
	if a == nil {
		return "", 0
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), 0
	}
	n, _ := strconv.Atoi(port)
	return host, n
}

// showServers has a row per backend connection. The pool does not list its connections, only
// counts them, so the rows are built from those counts: "active" (lent), "idle" and "login"
// (being opened), with the backend's address; per-connection details read 0 or NULL.
func (s *Server) showServers() *adminTable {
	t := &adminTable{cols: clientCols}
	for _, e := range s.poolEntries() {
		host, port := s.backendAddr(e.key)
		add := func(n int, state string) {
			for range n {
				t.rows = append(t.rows, []any{"S", e.key.user, poolDatabase(e.key), "none", state, host, port, nil,
					0, nil, nil, 0, 0, 0, "", "",
					0, "", "", 0, 0, nil})
			}
		}
		add(lent(e.stats), "active")
		add(e.stats.Idle, "idle")
		add(e.stats.Connecting, "login")
	}
	return t
}

// backendAddr is the host and port a pool connects to.
func (s *Server) backendAddr(k poolKey) (string, int) {
	db := s.databases()[k.database]
	if db == nil {
		return "", 0
	}
	conn := db.conn
	if k.backend > 0 && k.backend <= len(db.replicas) {
		conn = db.replicas[k.backend-1].conn
	}
	return conn.Host, int(conn.Port)
}

// poolSize is db's pool size: pool_size from its DSN, else --default-pool-size. A reload may
// change either.
func (s *Server) poolSize(db *database) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.poolSizeLocked(db)
}

// poolSizeLocked is poolSize for callers that hold s.mu, or own a db no one else sees yet.
func (s *Server) poolSizeLocked(db *database) int {
	if db.poolSize > 0 {
		return db.poolSize
	}
	return s.conf().PoolSize
}

func (s *Server) databaseNames() []string {
	names := make([]string, 0, len(s.databases()))
	for n := range s.databases() {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// showDatabases has a row per --database alias; current_connections counts the backend
// connections of all its pools, replicas' included.
func (s *Server) showDatabases() *adminTable {
	t := &adminTable{cols: cols("name", "host", "#port", "database", "force_user", "#pool_size",
		"#min_pool_size", "#reserve_pool", "#server_lifetime", "pool_mode", "#max_connections",
		"#current_connections", "#paused", "#disabled")}
	open := map[string]int{}
	for _, e := range s.poolEntries() {
		open[e.key.database] += e.stats.Open
	}
	for _, name := range s.databaseNames() {
		db := s.databases()[name]
		var force any
		if db.ownUser {
			force = db.conn.User
		}
		mode := s.cfg.PoolMode
		if db.mode != nil {
			mode = db.mode.String()
		}
		t.rows = append(t.rows, []any{name, db.conn.Host, int(db.conn.Port), db.conn.Database, force, s.poolSize(db),
			s.conf().MinPoolSize, 0, int64(s.cfg.ServerLifetime / time.Second), mode, 0,
			open[name], boolInt(db.paused.Load()), 0})
	}
	return t
}

// The statistics columns of SHOW STATS, STATS_TOTALS and STATS_AVERAGES, from the request-unit
// counters (stats.go); times in microseconds, as PgBouncer's. Parse and bind counts are not
// tracked: they read 0.
var statsTotals = []string{"server_assignment_count", "xact_count", "query_count", "bytes_received",
	"bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count"}

// statsRow gives a totals row's values in statsTotals' order.
func statsRow(r statsTotalsRow) []any {
	return []any{r.assignments, r.xacts, r.queries, r.recv, r.sent, r.xactTime, r.queryTime, r.waitTime, 0, 0, 0}
}

func (s *Server) statsTable(names []string, rows func(db string) []any) *adminTable {
	t := &adminTable{cols: append(cols("database"), cols(names...)...)}
	for i := range t.cols[1:] {
		t.cols[i+1].num = true
	}
	for _, name := range s.databaseNames() {
		t.rows = append(t.rows, append([]any{name}, rows(name)...))
	}
	return t
}

func (s *Server) showStats() *adminTable {
	names := []string{"total_server_assignment_count", "total_xact_count", "total_query_count",
		"total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
		"total_client_parse_count", "total_server_parse_count", "total_bind_count",
		"avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
		"avg_xact_time", "avg_query_time", "avg_wait_time", "avg_client_parse_count",
		"avg_server_parse_count", "avg_bind_count"}
	totals, avgs := s.databaseTotals(), s.databaseAverages()
	return s.statsTable(names, func(db string) []any {
		return append(statsRow(totals[db]), statsRow(avgs[db])...)
	})
}

func (s *Server) showStatsTotals() *adminTable {
	totals := s.databaseTotals()
	return s.statsTable(statsTotals, func(db string) []any { return statsRow(totals[db]) })
}

func (s *Server) showStatsAverages() *adminTable {
	avgs := s.databaseAverages()
	return s.statsTable(statsTotals, func(db string) []any { return statsRow(avgs[db]) })
}

// configEntry is one row of SHOW CONFIG.
type configEntry struct{ key, value, def string }

// configEntries lists the settings under their PgBouncer names where PgBouncer has the same
// knob, else under the flag's name with '_' for '-'.
func (s *Server) configEntries() []configEntry {
	d := Defaults()
	c := *s.conf()
	secs := func(v time.Duration) string { return strconv.FormatInt(int64(v/time.Second), 10) }
	num := strconv.Itoa
	return []configEntry{
		{"listen_addr", c.Listen, d.Listen},
		{"auth_type", c.AuthType.String(), d.AuthType.String()},
		{"auth_file", c.AuthFile, d.AuthFile},
		{"admin_users", strings.Join(c.AdminUsers, ","), ""},
		{"stats_users", strings.Join(c.StatsUsers, ","), ""},
		{"pool_mode", c.PoolMode, d.PoolMode},
		{"default_pool_size", num(c.PoolSize), num(d.PoolSize)},
		{"min_pool_size", num(c.MinPoolSize), num(d.MinPoolSize)},
		{"max_client_conn", num(c.MaxClientConn), num(d.MaxClientConn)},
		{"max_queue", num(c.MaxQueue), num(d.MaxQueue)},
		{"max_prepared_statements", num(c.MaxPrepared), num(d.MaxPrepared)},
		{"query_wait_timeout", secs(c.QueryWaitTimeout), secs(d.QueryWaitTimeout)},
		{"query_wait_notify", secs(c.QueryWaitNotify), secs(d.QueryWaitNotify)},
		{"max_db_client_connections", num(c.MaxDBClientConn), num(d.MaxDBClientConn)},
		{"max_user_client_connections", num(c.MaxUserClientConn), num(d.MaxUserClientConn)},
		{"reserve_pool_size", num(c.ReservePoolSize), num(d.ReservePoolSize)},
		{"reserve_pool_timeout", secs(c.ReservePoolTimeout), secs(d.ReservePoolTimeout)},
		{"priority", keyList(c.Priorities), ""},
		{"priority_aging", c.PriorityAging.String(), d.PriorityAging.String()},
		{"rate_limit", keyList(c.RateLimits), ""},
		{"adaptive_limit", onOff(c.AdaptiveLimit), onOff(d.AdaptiveLimit)},
		{"max_memory", strconv.FormatInt(c.MaxMemory, 10), strconv.FormatInt(d.MaxMemory, 10)},
		{"query_timeout", secs(c.QueryTimeout), secs(d.QueryTimeout)},
		{"idle_transaction_timeout", secs(c.IdleTxTimeout), secs(d.IdleTxTimeout)},
		{"client_idle_timeout", secs(c.ClientIdleTimeout), secs(d.ClientIdleTimeout)},
		{"client_login_timeout", secs(c.ClientLoginTimeout), secs(d.ClientLoginTimeout)},
		{"server_connect_timeout", secs(c.ServerConnectTimeout), secs(d.ServerConnectTimeout)},
		{"server_lifetime", secs(c.ServerLifetime), secs(d.ServerLifetime)},
		{"server_idle_timeout", secs(c.ServerIdleTimeout), secs(d.ServerIdleTimeout)},
		{"server_check_delay", secs(c.ServerCheckDelay), secs(d.ServerCheckDelay)},
		{"server_reset_query", c.ServerResetQuery, d.ServerResetQuery},
		{"cancel_timeout", secs(c.CancelTimeout), secs(d.CancelTimeout)},
		{"breaker_failures", num(c.BreakerFailures), num(d.BreakerFailures)},
		{"breaker_open_time", secs(c.BreakerOpenTime), secs(d.BreakerOpenTime)},
		{"pin_on_session_state", onOff(c.PinOnSessionState), onOff(d.PinOnSessionState)},
		{"listen_fanout", onOff(c.ListenFanout), onOff(d.ListenFanout)},
		{"read_routing", c.ReadRouting, d.ReadRouting},
		{"max_replica_lag", secs(c.MaxReplicaLag), secs(d.MaxReplicaLag)},
		{"client_tls_mode", c.ClientTLSMode, d.ClientTLSMode},
		{"loop_driver", c.LoopDriver, d.LoopDriver},
		{"max_packet_size", num(c.MaxPacketSize), num(d.MaxPacketSize)},
		{"metrics_listen", c.MetricsListen, d.MetricsListen},
	}
}

// keyList shows a map flag as its repeated values, in key order: "alice=10,bob=1".
func keyList[V any](m map[string]V) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, m[k])
	}
	return strings.Join(parts, ",")
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func (s *Server) configByKey() map[string]configEntry {
	m := map[string]configEntry{}
	for _, e := range s.configEntries() {
		m[e.key] = e
	}
	return m
}

// showConfig: nothing is changeable at run time yet (SET answers 0A000).
func (s *Server) showConfig() *adminTable {
	t := &adminTable{cols: textCols("key", "value", "default", "changeable")}
	for _, e := range s.configEntries() {
		t.rows = append(t.rows, []any{e.key, e.value, e.def, "no"})
	}
	return t
}

// showLists counts the gateway's objects under PgBouncer's list names; lists it does not have
// (peers, DNS) read 0.
func (s *Server) showLists() *adminTable {
	entries := s.poolEntries()
	servers := 0
	for _, e := range entries {
		servers += e.stats.Open
	}
	users := len(s.users.Load().Users())
	t := &adminTable{cols: cols("list", "#items")}
	for _, r := range []struct {
		name string
		n    int64
	}{
		{"databases", int64(len(s.databases()))},
		{"users", int64(users)},
		{"peers", 0},
		{"pools", int64(len(entries))},
		{"peer_pools", 0},
		{"free_clients", 0},
		{"used_clients", s.clients.Load()},
		{"login_clients", 0},
		{"free_servers", 0},
		{"used_servers", int64(servers)},
		{"dns_names", 0},
		{"dns_zones", 0},
		{"dns_queries", 0},
		{"dns_pending", 0},
	} {
		t.rows = append(t.rows, []any{r.name, r.n})
	}
	return t
}

// showUsers lists the auth file's users with the pool mode a --user-pool-mode gives them (empty
// when they follow their database's).
func (s *Server) showUsers() *adminTable {
	t := &adminTable{cols: cols("name", "#pool_size", "#reserve_pool_size", "pool_mode",
		"#max_user_connections", "#current_connections", "#max_user_client_connections",
		"#current_client_connections")}
	open := map[string]int{}
	for _, e := range s.poolEntries() {
		open[e.key.user] += e.stats.Open
	}
	users := slices.Clone(s.users.Load().Users())
	slices.Sort(users)
	for _, u := range users {
		t.rows = append(t.rows, []any{u, 0, 0, s.cfg.UserPoolMode[u], 0, open[u], 0, 0})
	}
	return t
}

func (s *Server) showVersion() *adminTable {
	return &adminTable{cols: textCols("version"), rows: [][]any{{adminVersion()}}}
}

// showBreakers has a row per pool: its circuit breaker's state ("off" without one) and counts.
func (s *Server) showBreakers() *adminTable {
	t := &adminTable{cols: cols("pool", "#backend", "state", "#opens", "#rejects")}
	for _, e := range s.poolEntries() {
		t.rows = append(t.rows, []any{e.key.database + "/" + e.key.user, e.key.backend, e.pool.BreakerState(),
			e.stats.BreakerOpens, e.stats.BreakerRejects})
	}
	return t
}

// showQueues has a row per pool: clients waiting for one of its connections.
func (s *Server) showQueues() *adminTable {
	t := &adminTable{cols: cols("pool", "#backend", "#waiting")}
	for _, e := range s.poolEntries() {
		t.rows = append(t.rows, []any{e.key.database + "/" + e.key.user, e.key.backend, e.stats.Waiting})
	}
	return t
}

// showHedges has a row per database with hedged reads on, from HedgeStats: reads that could
// have been hedged, hedges sent, races the hedge won, attempts cancelled, hedges the budget
// refused, hedges skipped for want of a connection, reads retried after their first attempt's
// connection failed, and the hedge delay in force, in microseconds. Backend requests per
// hedgeable read are 1 + (hedged + retried)/sent.
func (s *Server) showHedges() *adminTable {
	t := &adminTable{cols: cols("database", "#sent", "#hedged", "#won_by_hedge", "#cancelled", "#denied", "#skipped", "#retried", "#delay_us")}
	for _, name := range slices.Sorted(maps.Keys(s.databases())) {
		if s.databases()[name].reads.hedging == nil {
			continue
		}
		st := s.HedgeStats(name)
		t.rows = append(t.rows, []any{name, st.Sent, st.Hedged, st.WonByHedge, st.Cancelled, st.Denied, st.Skipped, st.Retried,
			s.databases()[name].reads.hedging.delay.Current().Microseconds()})
	}
	return t
}

func (s *Server) showHelp() *adminTable {
	t := &adminTable{cols: textCols("command")}
	for _, n := range showNames() {
		t.rows = append(t.rows, []any{"SHOW " + n})
	}
	for _, c := range []string{"RELOAD", "SHUTDOWN"} {
		t.rows = append(t.rows, []any{c})
	}
	return t
}
