package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pattern is one way applications use session state on a direct connection.
type pattern struct {
	Key   string // stable name for JSON
	Title string // row label of the table
	// Prepared runs the pattern on a connection with pgx's default statement cache. The others
	// use the simple protocol only, so that they test their own session state and not the
	// gateway's handling of protocol-level prepared statements (a separate pattern).
	Prepared bool
	// NoControl skips the control statements before the pattern (see runPattern): for the
	// pattern that is itself the control.
	NoControl bool
	Run       func(ctx context.Context, r *run) error
}

// run is one execution of a pattern on a fresh client connection.
type run struct {
	conn *pgx.Conn
	dsn  string
	opts options
	// sfx and num are unique to the run: names and values built from them cannot be satisfied by
	// state an earlier run left behind on some backend.
	sfx string
	num int
}

// searchPathValue is the row setup puts in the table only reachable through the search_path.
const searchPathValue = "found via search_path"

var patterns = []pattern{
	{Key: "temp_table", Title: "temporary table", Run: tempTable},
	{Key: "session_set", Title: "session SET statement_timeout, SHOW later", Run: sessionSet},
	{Key: "search_path", Title: "SET search_path, unqualified query later", Run: searchPath},
	{Key: "advisory_lock", Title: "session advisory lock held across statements", Run: advisoryLock},
	{Key: "hold_cursor", Title: "WITH HOLD cursor, FETCH after COMMIT", Run: holdCursor},
	{Key: "sql_prepare", Title: "SQL PREPARE / EXECUTE / DEALLOCATE", Run: sqlPrepare},
	{Key: "protocol_prepared", Title: "protocol-level prepared statements (pgx cache, 20 statements)", Prepared: true, Run: protocolPrepared},
	{Key: "listen_notify", Title: "LISTEN, NOTIFY from another connection", Run: listenNotify},
	{Key: "backend_pid", Title: "pg_backend_pid() stable across statements", NoControl: true, Run: backendPID},
	{Key: "load", Title: "LOAD 'auto_explain', SHOW its setting later", Run: loadLibrary},
}

// later is how many statements each pattern runs after creating its state: every one is a new
// chance for a gateway that does not pin to hand the client another backend.
const later = 3

// setup creates the schema the search_path pattern depends on, through the target itself, so that
// a target that cannot be reached or logged into is found before anything else starts.
func setup(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := connect(ctx, dsn, false)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	// IF NOT EXISTS: targets share one database, and the program may run again against it.
	_, err = conn.PgConn().Exec(ctx, `CREATE SCHEMA IF NOT EXISTS patterns_s;
CREATE TABLE IF NOT EXISTS patterns_s.patterns_t (v text);
INSERT INTO patterns_s.patterns_t SELECT '`+searchPathValue+`' WHERE NOT EXISTS (SELECT FROM patterns_s.patterns_t)`).ReadAll()
	return err
}

// connect opens a client connection: with pgx's default statement cache when prepared, with the
// simple protocol only otherwise.
func connect(ctx context.Context, dsn string, prepared bool) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if !prepared {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.Close(ctx)
}

// driverStmtName matches the names pgx gives cached statements, a hash of their text.
var driverStmtName = regexp.MustCompile(`(stmtcache_)[0-9a-f]{8,}`)

// controlStatements is how many SELECT pg_backend_pid() a run sends before its pattern.
const controlStatements = 4

// runPattern runs pattern p once (the i-th time) on a fresh connection. moved reports whether the
// client changed backend between the control statements sent before the pattern: a run that
// passes proves something only if, without its state, the client would have moved. A gateway
// that keeps an unpinned client on the same backend anyway (the noise failed, or the gateway
// prefers some backend) makes a pass say nothing about the state.
func runPattern(ctx context.Context, dsn string, p pattern, i int, opts options) (moved bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, opts.RunTimeout)
	defer cancel()
	conn, err := connect(ctx, dsn, p.Prepared)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	// Closing the connection is the cleanup: whatever a failed run leaves behind ends with the
	// session on a direct connection and on a pinning gateway; on one that does not pin it stays
	// on some backend, which is the failure under test.
	defer closeConn(conn)
	r := &run{
		conn: conn,
		dsn:  dsn,
		opts: opts,
		sfx:  fmt.Sprintf("_%d_%04x", i, rand.IntN(1<<16)),
		// Positive int4, and never a whole number of seconds so SHOW prints it in ms.
		num: 1000*(100+rand.IntN(1<<20)) + 1 + rand.IntN(999),
	}
	if !p.NoControl {
		pids := map[string]bool{}
		for range controlStatements {
			pid, err := r.value(ctx, "control SELECT pg_backend_pid() before the pattern", "SELECT pg_backend_pid()")
			if err != nil {
				return false, err
			}
			pids[pid] = true
		}
		moved = len(pids) > 1
	}
	if err := p.Run(ctx, r); err != nil {
		// Keep reasons the same from run to run and short, so they can be compared and counted.
		reason := strings.ReplaceAll(errorText(err), r.sfx, "")
		return moved, errors.New(driverStmtName.ReplaceAllString(reason, "${1}…"))
	}
	return moved, nil
}

// exec runs sql as one simple Query and returns the rows of its last result as text. label names
// the step in a failure reason.
func (r *run) exec(ctx context.Context, label, sql string) ([][]string, error) {
	results, err := r.conn.PgConn().Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, stepError(label, err)
	}
	var rows [][]string
	if n := len(results); n > 0 {
		for _, row := range results[n-1].Rows {
			cols := make([]string, len(row))
			for i, v := range row {
				cols[i] = string(v)
			}
			rows = append(rows, cols)
		}
	}
	return rows, nil
}

// value runs sql, which must return one row of one column, and returns that value.
func (r *run) value(ctx context.Context, label, sql string) (string, error) {
	rows, err := r.exec(ctx, label, sql)
	if err != nil {
		return "", err
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return "", fmt.Errorf("%s: want one value, got %v", label, rows)
	}
	return rows[0][0], nil
}

// expect runs sql and fails unless it returns want.
func (r *run) expect(ctx context.Context, label, sql, want string) error {
	got, err := r.value(ctx, label, sql)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s: got %q, want %q", label, got, want)
	}
	return nil
}

func tempTable(ctx context.Context, r *run) error {
	name := "patterns_tmp" + r.sfx
	if _, err := r.exec(ctx, "CREATE TEMP TABLE", "CREATE TEMP TABLE "+name+" (v int)"); err != nil {
		return err
	}
	if _, err := r.exec(ctx, "INSERT", fmt.Sprintf("INSERT INTO %s VALUES (%d)", name, r.num)); err != nil {
		return err
	}
	for range later {
		if err := r.expect(ctx, "later SELECT", "SELECT sum(v) FROM "+name, strconv.Itoa(r.num)); err != nil {
			return err
		}
	}
	_, err := r.exec(ctx, "DROP", "DROP TABLE "+name)
	return err
}

func sessionSet(ctx context.Context, r *run) error {
	want := strconv.Itoa(r.num) + "ms"
	if _, err := r.exec(ctx, "SET", "SET statement_timeout = "+strconv.Itoa(r.num)); err != nil {
		return err
	}
	for range later {
		got, err := r.value(ctx, "later SHOW", "SHOW statement_timeout")
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("later SHOW statement_timeout: %q, not the value set", got)
		}
	}
	_, err := r.exec(ctx, "RESET", "RESET statement_timeout")
	return err
}

func searchPath(ctx context.Context, r *run) error {
	// The run's own (nonexistent, hence ignored) schema in the path tells this run's SET apart
	// from one an earlier run left on the backend.
	own := "patterns_r" + r.sfx
	if _, err := r.exec(ctx, "SET", "SET search_path = patterns_s, public, "+own); err != nil {
		return err
	}
	for range later {
		rows, err := r.exec(ctx, "later unqualified SELECT", "SELECT v, current_setting('search_path') FROM patterns_t")
		if err != nil {
			return err
		}
		if len(rows) != 1 || rows[0][0] != searchPathValue {
			return fmt.Errorf("later unqualified SELECT: got %v", rows)
		}
		if !strings.Contains(rows[0][1], own) {
			return fmt.Errorf("later unqualified SELECT ran with search_path %q, not the one set", rows[0][1])
		}
	}
	_, err := r.exec(ctx, "RESET", "RESET search_path")
	return err
}

func advisoryLock(ctx context.Context, r *run) error {
	key := strconv.Itoa(r.num)
	if _, err := r.exec(ctx, "lock", "SELECT pg_advisory_lock("+key+")"); err != nil {
		return err
	}
	// One int8 key below 2^31 is stored as classid 0, objid key, objsubid 1. Matching the key,
	// not just counting, keeps a lock another run left on this backend from counting as ours.
	held := "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()" +
		" AND classid = 0 AND objid = " + key + " AND objsubid = 1 AND granted"
	for range later {
		n, err := r.value(ctx, "later pg_locks check", held)
		if err != nil {
			return err
		}
		if n != "1" {
			return errors.New("later statement: lock not held by this session")
		}
	}
	ok, err := r.value(ctx, "unlock", "SELECT pg_advisory_unlock("+key+")")
	if err != nil {
		return err
	}
	if ok != "t" {
		return errors.New("pg_advisory_unlock: lock was not held by this session")
	}
	return nil
}

func holdCursor(ctx context.Context, r *run) error {
	name := "patterns_c" + r.sfx
	// Three transactions, as an application with explicit BEGIN/COMMIT sends them.
	if _, err := r.exec(ctx, "BEGIN", "BEGIN"); err != nil {
		return err
	}
	if _, err := r.exec(ctx, "DECLARE", "DECLARE "+name+" CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 10) g"); err != nil {
		return err
	}
	if _, err := r.exec(ctx, "COMMIT", "COMMIT"); err != nil {
		return err
	}
	for i := range later {
		rows, err := r.exec(ctx, "later FETCH", "FETCH 3 FROM "+name)
		if err != nil {
			return err
		}
		var got []string
		for _, row := range rows {
			got = append(got, row[0])
		}
		want := []string{strconv.Itoa(3*i + 1), strconv.Itoa(3*i + 2), strconv.Itoa(3*i + 3)}
		if !slices.Equal(got, want) {
			return fmt.Errorf("later FETCH: got %v, want %v", got, want)
		}
	}
	_, err := r.exec(ctx, "CLOSE", "CLOSE "+name)
	return err
}

func sqlPrepare(ctx context.Context, r *run) error {
	name := "patterns_p" + r.sfx
	if _, err := r.exec(ctx, "PREPARE", "PREPARE "+name+"(int8) AS SELECT $1 * 2"); err != nil {
		return err
	}
	for i := range later {
		arg := r.num + i
		if err := r.expect(ctx, "later EXECUTE", fmt.Sprintf("EXECUTE %s(%d)", name, arg), strconv.Itoa(2*arg)); err != nil {
			return err
		}
	}
	_, err := r.exec(ctx, "DEALLOCATE", "DEALLOCATE "+name)
	return err
}

// protocolPrepared is what pgx (and most drivers) do by default: Parse each new text once as a
// named statement, then Bind and Execute it by name.
func protocolPrepared(ctx context.Context, r *run) error {
	const statements = 20
	for round := range later {
		for k := range statements {
			arg := r.num + round
			var got int
			// Distinct texts, so each is its own named statement.
			if err := r.conn.QueryRow(ctx, fmt.Sprintf("SELECT $1::int8 + %d", k), arg).Scan(&got); err != nil {
				return stepError(fmt.Sprintf("statement %d, round %d", k+1, round+1), err)
			}
			if got != arg+k {
				return fmt.Errorf("statement %d, round %d: got %d, want %d", k+1, round+1, got, arg+k)
			}
		}
	}
	return nil
}

func listenNotify(ctx context.Context, r *run) error {
	channel := "patterns_ch" + r.sfx
	payload := "run " + r.sfx
	// Opened first, so that its login does not stretch the time between LISTEN and NOTIFY. The
	// second connection's steps get their own deadline, so that a failure to get it served is
	// told apart from a notification that never arrives.
	cctx, cancel := context.WithTimeout(ctx, otherConnTimeout)
	notifier, err := connect(cctx, r.dsn, false)
	cancel()
	if err != nil {
		return fmt.Errorf("second connection (for NOTIFY): %w", slowStep(cctx, ctx, err))
	}
	defer closeConn(notifier)

	if _, err := r.exec(ctx, "LISTEN", "LISTEN "+channel); err != nil {
		return err
	}
	for range later {
		if _, err := r.exec(ctx, "later SELECT", "SELECT 1"); err != nil {
			return err
		}
	}
	nctx, cancel := context.WithTimeout(ctx, otherConnTimeout)
	_, err = notifier.PgConn().Exec(nctx, "NOTIFY "+channel+", '"+payload+"'").ReadAll()
	cancel()
	if err != nil {
		return stepError("NOTIFY from a second connection", slowStep(nctx, ctx, err))
	}
	wctx, cancel := context.WithTimeout(ctx, r.opts.WaitTimeout)
	defer cancel()
	n, err := r.conn.WaitForNotification(wctx)
	if err != nil {
		if wctx.Err() != nil && ctx.Err() == nil {
			return fmt.Errorf("no notification within %s", r.opts.WaitTimeout)
		}
		return fmt.Errorf("waiting for the notification: %w", err)
	}
	if n.Channel != channel || n.Payload != payload {
		return fmt.Errorf("got notification %q/%q, want %q/%q", n.Channel, n.Payload, channel, payload)
	}
	_, err = r.exec(ctx, "UNLISTEN", "UNLISTEN "+channel)
	return err
}

func backendPID(ctx context.Context, r *run) error {
	const statements = 1 + 2*later
	seen := map[string]bool{}
	for range statements {
		pid, err := r.value(ctx, "SELECT pg_backend_pid()", "SELECT pg_backend_pid()")
		if err != nil {
			return err
		}
		seen[pid] = true
	}
	if len(seen) > 1 {
		return fmt.Errorf("changed between statements (%d pids in %d statements)", len(seen), statements)
	}
	return nil
}

func loadLibrary(ctx context.Context, r *run) error {
	if _, err := r.exec(ctx, "LOAD", "LOAD 'auto_explain'"); err != nil {
		return err
	}
	for range later {
		// The default, -1: what matters is that the parameter exists, which it does only in a
		// backend that loaded the library.
		if err := r.expect(ctx, "later SHOW", "SHOW auto_explain.log_min_duration", "-1"); err != nil {
			return err
		}
	}
	return nil
}

// otherConnTimeout bounds each step of the LISTEN pattern's second connection.
const otherConnTimeout = 5 * time.Second

// slowStep names a step that ran out of its own deadline (step) rather than the run's (run).
func slowStep(step, run context.Context, err error) error {
	if step.Err() != nil && run.Err() == nil {
		return fmt.Errorf("not done within %s", otherConnTimeout)
	}
	return err
}

// stepError labels a failed step. A server error is reduced to its message: the SQLSTATE and
// the "ERROR:" prefix only lengthen a table cell.
func stepError(label string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %s", label, pe.Message)
	}
	return fmt.Errorf("%s: %w", label, err)
}
