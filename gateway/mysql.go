package gateway

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/pool"
	mysqlpool "github.com/asyncgate/asyncgate/pool/mysql"
	"github.com/asyncgate/asyncgate/wire"
)

// A --database whose DSN starts with mysql:// points at MySQL or MariaDB. Clients still speak the
// Postgres protocol and write SQL that MySQL understands; pool/mysql runs their request units on
// pooled MySQL connections and answers in the Postgres protocol. The session only queues the
// client's messages into units, runs one unit at a time on a goroutine of the pool's, and relays
// what comes back through its loop's task queue. Pooling is always per transaction: a connection
// is lent for a unit, and kept by the client while its transaction is open.

// stMySQL is the state of a session logged into a MySQL database: its frames go to mysqlMessage.
// Like stAdmin, it sits apart from the Postgres session states.
const stMySQL state = 0x81

// parseMySQLDatabase reads a --database mysql://user:pass@host:port/db?pool_size=N DSN. Query
// parameters other than pool_size go to go-sql-driver (charset, tls, …). Without a user in the
// DSN, the client's own user logs in with its plaintext secret from the auth file.
func parseMySQLDatabase(name, dsn string) (*database, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, fmt.Errorf("--database %s: %w", name, err)
	}
	db := &database{name: name}
	q := u.Query()
	if n := q.Get("pool_size"); n != "" {
		size, err := strconv.Atoi(n)
		if err != nil || size < 1 {
			return nil, fmt.Errorf("--database %s: pool_size %q: want a positive number", name, n)
		}
		db.poolSize = size
	}
	for _, k := range []string{"pool_mode", "read_routing", "hedge", "batch"} {
		if q.Has(k) {
			return nil, fmt.Errorf("--database %s: %s is not supported for a MySQL database (it is always pooled per transaction)", name, k)
		}
	}
	q.Del("pool_size")
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "3306")
	}
	pass, _ := u.User.Password()
	tail := ""
	if len(q) > 0 {
		tail = "?" + q.Encode()
	}
	cfg, err := gomysql.ParseDSN(fmt.Sprintf("%s:%s@tcp(%s)/%s%s", u.User.Username(), pass, host, trimSlash(u.Path), tail))
	if err != nil {
		return nil, fmt.Errorf("--database %s: %w", name, err)
	}
	cfg.Passwd = pass // ParseDSN would misread a password with @ or /
	db.mysql = cfg
	db.ownUser = u.User.Username() != ""
	// What the console shows of the backend (SHOW DATABASES, SHOW SERVERS); never used to connect.
	h, p, _ := net.SplitHostPort(host)
	port, _ := strconv.ParseUint(p, 10, 16)
	db.conn = &pgconn.Config{Host: h, Port: uint16(port), Database: cfg.DBName, User: cfg.User}
	return db, nil
}

func trimSlash(p string) string {
	if len(p) > 0 && p[0] == '/' {
		return p[1:]
	}
	return p
}

// mysqlPools are the MySQL pools, by database and user, opened on first use.
type mysqlPools struct {
	mu sync.Mutex
	m  map[poolKey]*mysqlpool.Pool
}

func (s *Server) mysqlPool(db *database, user string) (*mysqlpool.Pool, error) {
	key := poolKey{db.name, user, 0}
	s.mysql.mu.Lock()
	defer s.mysql.mu.Unlock()
	if p, ok := s.mysql.m[key]; ok {
		return p, nil
	}
	dsn := db.mysql.Clone()
	if !db.ownUser {
		dsn.User = user
		if pw, ok := s.users.Load().Password(user); ok {
			dsn.Passwd = pw
		}
	}
	size := s.poolSize(db) // s.mu: a reload may change it
	p, err := mysqlpool.New(mysqlpool.Config{
		Name:           db.name + "/" + user,
		DSN:            dsn,
		Size:           size,
		MaxQueue:       s.cfg.MaxQueue,
		WaitTimeout:    s.cfg.QueryWaitTimeout,
		ConnectTimeout: s.cfg.ServerConnectTimeout,
		Lifetime:       s.cfg.ServerLifetime,
		IdleTimeout:    s.cfg.ServerIdleTimeout,
		CancelTimeout:  s.cfg.CancelTimeout,
		MaxPrepared:    s.cfg.MaxPrepared,
		Breaker:        pool.BreakerConfig{Failures: s.cfg.BreakerFailures, OpenFor: s.cfg.BreakerOpenTime},
		Log:            s.log,
	})
	if err != nil {
		return nil, err
	}
	if s.mysql.m == nil {
		s.mysql.m = make(map[poolKey]*mysqlpool.Pool)
	}
	s.mysql.m[key] = p
	return p, nil
}

// MySQLPools returns the MySQL pools opened so far.
func (s *Server) MySQLPools() []*mysqlpool.Pool {
	s.mysql.mu.Lock()
	defer s.mysql.mu.Unlock()
	out := make([]*mysqlpool.Pool, 0, len(s.mysql.m))
	for _, p := range s.mysql.m {
		out = append(out, p)
	}
	return out
}

// closeMySQL closes the MySQL pools, at Shutdown.
func (s *Server) closeMySQL() {
	s.mysql.mu.Lock()
	pools := s.mysql.m
	s.mysql.m = nil
	s.mysql.mu.Unlock()
	for _, p := range pools {
		p.Close()
	}
}

// mysqlSession is what a session on a MySQL database keeps besides the common fields.
type mysqlSession struct {
	bs       *mysqlpool.Session
	pending  []mysqlpool.Msg // the client's messages not yet run
	bytes    int             // their size, against maxQueued
	units    int             // complete units among them (each ends in Query, Sync or Flush)
	running  bool            // a unit runs on the pool's side
	timedOut bool
	start    time.Time // when the running unit was started
}

// mysqlLogin completes the login of a client of a MySQL database. No connection is needed yet:
// the first unit borrows one.
func (s *session) mysqlLogin(db *database) {
	p, err := s.srv.mysqlPool(db, s.user)
	if err != nil {
		s.fatal("08006", err.Error())
		return
	}
	s.disarm()
	s.db, s.state, s.txStatus = db, stMySQL, 'I'
	s.startup = nil
	s.my = &mysqlSession{bs: p.NewSession()}
	s.st = s.srv.unitStatsFor(db.name, s.user)
	s.in.SetMaxInspect(s.srv.cfg.MaxQuerySize)
	for _, t := range []byte{'Q', 'P', 'B', 'D', 'E', 'C', 'S', 'H'} {
		s.in.SetInspect(t, true)
	}
	for _, kv := range [][2]string{
		{"server_version", "15.0"}, // what clients parse for features; the SQL is MySQL's
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"},
		{"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"},
	} {
		s.io.Write(wire.AppendParameterStatus(nil, kv[0], kv[1]))
	}
	s.key, s.keyed = s.srv.register(s), true
	s.io.Write(wire.AppendBackendKeyData(nil, s.key.pid, s.key.secretBytes()))
	s.io.Write(wire.AppendReadyForQuery(nil, 'I'))
	s.srv.log.Info("login", "user", s.user, "database", db.name, "addr", s.io.RemoteAddr(), "pool_mode", "transaction", "backend", "mysql")
	s.armIdle()
}

// mysqlMessage queues a client frame and starts the unit it completes.
func (s *session) mysqlMessage(f *wire.Frame) {
	if !f.First {
		return // the rest of a message already refused
	}
	if f.Type == 'X' {
		s.state = stClosed
		s.io.Close()
		return
	}
	if !f.Whole {
		s.fatal("54000", fmt.Sprintf("message of %d bytes is longer than --max-query-size (%d bytes)", f.Len, s.srv.cfg.MaxQuerySize))
		return
	}
	m := s.my
	m.pending = append(m.pending, mysqlpool.Msg{Type: f.Type, Body: append([]byte(nil), f.Body...)})
	m.bytes += len(f.Body)
	switch f.Type {
	case 'Q', 'S', 'H':
		m.units++
	}
	s.mysqlNext()
	if m.bytes > maxQueued && !s.paused {
		s.paused = true
		s.io.PauseReads()
	}
}

// mysqlNext starts the next complete unit, unless one runs.
func (s *session) mysqlNext() {
	m := s.my
	if m.running || m.units == 0 || s.state != stMySQL {
		return
	}
	n := 0
	for n < len(m.pending) {
		t := m.pending[n].Type
		n++
		if t == 'Q' || t == 'S' || t == 'H' {
			break
		}
	}
	unit := m.pending[:n:n]
	m.pending = m.pending[n:]
	if len(m.pending) == 0 {
		m.pending = nil
	}
	for _, msg := range unit {
		m.bytes -= len(msg.Body)
	}
	m.units--
	m.running, m.timedOut, m.start = true, false, time.Now()
	if d := s.srv.conf().QueryTimeout; d > 0 {
		s.arm(d, func() {
			if m.running {
				m.timedOut = true
				go m.bs.Cancel(fmt.Sprintf("canceling statement due to query timeout (--query-timeout %s)", d))
			}
		})
	} else {
		s.disarm()
	}
	bs, io := m.bs, s.io
	go func() {
		rep := bs.Run(unit, func(b []byte) bool {
			return io.Exec(func() {
				io.Write(b)
				s.sentBytes += int64(len(b))
			})
		})
		if !io.Exec(func() { s.mysqlUnitDone(&rep) }) {
			bs.Close() // the client left while the unit ran
		}
	}()
}

// mysqlUnitDone runs on the loop when a unit has been answered: it is measured as a Postgres
// unit is, and the next one starts.
func (s *session) mysqlUnitDone(rep *mysqlpool.Report) {
	m := s.my
	m.running = false
	if st := s.st; st != nil {
		st.total.Observe(time.Since(m.start).Seconds())
		st.queueWait.Observe(rep.Wait.Seconds())
		st.waitTime.Add(rep.Wait.Microseconds())
		st.assignments.Add(int64(rep.Lent))
		if rep.Queries > 0 {
			st.backend.Observe(rep.Backend.Seconds())
		}
		st.queryTime.Add(rep.Backend.Microseconds())
		st.queries.Add(int64(rep.Queries))
		st.xacts.Add(int64(rep.Xacts))
		st.xactTime.Add(rep.Held.Microseconds())
		s.flushBytes()
	}
	for _, f := range rep.Failures {
		source := "backend"
		if f.Gateway {
			source = "gateway"
		}
		s.requestFailed(source, f.Code, f.Message)
	}
	s.txStatus = m.bs.TxStatus()
	if s.paused && m.bytes <= maxQueued {
		s.paused = false
		s.io.ResumeReads()
	}
	if m.units > 0 {
		s.mysqlNext()
		return
	}
	s.armIdle()
}

// mysqlCancel forwards a client's CancelRequest: KILL QUERY for the statement its unit runs.
func (s *session) mysqlCancel() {
	if s.my.running {
		go s.my.bs.Cancel("canceling statement due to user request")
	}
}

// mysqlClosed: the client left. A running unit is killed and its goroutine gives the connection
// back; otherwise it is given back here, after rolling back an open transaction.
func (s *session) mysqlClosed() {
	bs := s.my.bs
	if s.my.running {
		go bs.Abort()
		return
	}
	go bs.Close()
}
