package gateway_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/asyncgate/asyncgate/gateway"
)

// The MySQL tests run against the MariaDB on the machine (.ci/run starts it):
// ASYNCGATE_TEST_MYSQL overrides where, as host:port with user root and database test.
const mysqlDatabase = "legacy"

func mysqlAddr() string {
	if a := os.Getenv("ASYNCGATE_TEST_MYSQL"); a != "" {
		return a
	}
	return "127.0.0.1:3306"
}

// mysqlDirect opens a database/sql handle straight to MariaDB, to look behind the gateway.
func mysqlDirect(t testing.TB) *sql.DB {
	t.Helper()
	if mode := os.Getenv("ASYNCGATE_TEST_POOL_MODE"); mode != "" {
		// --pool-mode does not apply: a MySQL database is always pooled per transaction.
		t.Skipf("MySQL databases pool per transaction whatever the mode; suite runs in %s mode", mode)
	}
	db, err := sql.Open("mysql", "root@tcp("+mysqlAddr()+")/test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("MariaDB at %s is not reachable (.ci/run starts it): %v", mysqlAddr(), err)
	}
	return db
}

// mysqlTable creates a table of the test's own on MariaDB and drops it afterwards.
func mysqlTable(t testing.TB, db *sql.DB, columns string) string {
	t.Helper()
	name := fmt.Sprintf("ag_%s_%d", strings.ToLower(strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())), time.Now().UnixNano()%1e9)
	if len(name) > 64 {
		name = name[len(name)-64:]
	}
	if _, err := db.Exec("CREATE TABLE " + name + " (" + columns + ")"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + name) })
	return name
}

// startMySQLGateway runs a gateway whose database legacy is the MariaDB.
func startMySQLGateway(t testing.TB, dsnQuery string, mutate func(*gateway.Config)) *gw {
	return startGateway(t, func(c *gateway.Config) {
		c.Databases[mysqlDatabase] = "mysql://root@" + mysqlAddr() + "/test" + dsnQuery
		if mutate != nil {
			mutate(c)
		}
	})
}

func (g *gw) connectMySQL(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := g.connectAs(appUser, appPassword, mysqlDatabase)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestMySQLTypes(t *testing.T) {
	my := mysqlDirect(t)
	tbl := mysqlTable(t, my, `ti TINYINT, si SMALLINT, i INT, bi BIGINT, ubi BIGINT UNSIGNED,
		d DECIMAL(10,3), f FLOAT, db DOUBLE, c CHAR(3), vc VARCHAR(20), tx TEXT, bl BLOB,
		dt DATE, dtm DATETIME(3), ts TIMESTAMP NULL, j JSON, n INT`)
	g := startMySQLGateway(t, "", nil)
	conn := g.connectMySQL(t)
	ctx := ctxT(t)
	tag, err := conn.Exec(ctx, "INSERT INTO "+tbl+` VALUES (-7, 300, 70000, 9000000000, 18446744073709551615,
		12.345, 1.5, 2.25, 'abc', 'hello', 'long text', x'00ff10', '2024-02-29', '2024-02-29 13:14:15.123',
		'2024-03-01 00:00:01', '{"a": [1, 2]}', NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	if tag.String() != "INSERT 0 1" {
		t.Errorf("tag %q, want INSERT 0 1", tag)
	}
	want := []struct {
		oid  uint32
		text string
	}{
		{pgtype.Int2OID, "-7"}, {pgtype.Int2OID, "300"}, {pgtype.Int4OID, "70000"}, {pgtype.Int8OID, "9000000000"},
		{pgtype.NumericOID, "18446744073709551615"}, {pgtype.NumericOID, "12.345"}, {pgtype.Float4OID, "1.5"},
		{pgtype.Float8OID, "2.25"}, {pgtype.TextOID, "abc"}, {pgtype.TextOID, "hello"}, {pgtype.TextOID, "long text"},
		{pgtype.ByteaOID, `\x00ff10`}, {pgtype.DateOID, "2024-02-29"}, {pgtype.TimestampOID, "2024-02-29 13:14:15.123"},
		{pgtype.TimestampOID, "2024-03-01 00:00:01"},
		// MariaDB stores JSON as LONGTEXT and reports it so; MySQL's JSON type maps to json.
		{pgtype.TextOID, `{"a": [1, 2]}`}, {pgtype.Int4OID, ""},
	}
	// Simple protocol: the raw text, and the OIDs.
	res := conn.PgConn().ExecParams(ctx, "SELECT * FROM "+tbl, nil, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	for _, mode := range []string{"simple", "extended"} {
		var fields []pgconn.FieldDescription
		var row [][]byte
		if mode == "simple" {
			rs, err := conn.PgConn().Exec(ctx, "SELECT * FROM "+tbl).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) != 1 || len(rs[0].Rows) != 1 || rs[0].CommandTag.String() != "SELECT 1" {
				t.Fatalf("simple: %d results, tag %v", len(rs), rs[0].CommandTag)
			}
			fields, row = rs[0].FieldDescriptions, rs[0].Rows[0]
		} else {
			fields, row = res.FieldDescriptions, res.Rows[0]
		}
		if len(fields) != len(want) {
			t.Fatalf("%s: %d columns, want %d", mode, len(fields), len(want))
		}
		for i, w := range want {
			if fields[i].DataTypeOID != w.oid {
				t.Errorf("%s: column %s: OID %d, want %d", mode, fields[i].Name, fields[i].DataTypeOID, w.oid)
			}
			if i == len(want)-1 {
				if row[i] != nil {
					t.Errorf("%s: NULL came back as %q", mode, row[i])
				}
				continue
			}
			if string(row[i]) != w.text {
				t.Errorf("%s: column %s: %q, want %q", mode, fields[i].Name, row[i], w.text)
			}
		}
	}
	// pgx scans every mapping into Go values, with the binary result format where it asks for one.
	var (
		ti, si    int16
		i         int32
		bi        int64
		ubi, d    pgtype.Numeric
		f         float32
		db        float64
		c, vc, tx string
		bl        []byte
		dt, dtm   time.Time
		ts        time.Time
		j         string
		n         *int32
	)
	err = conn.QueryRow(ctx, "SELECT * FROM "+tbl).Scan(&ti, &si, &i, &bi, &ubi, &d, &f, &db, &c, &vc, &tx, &bl, &dt, &dtm, &ts, &j, &n)
	if err != nil {
		t.Fatal(err)
	}
	if ti != -7 || si != 300 || i != 70000 || bi != 9000000000 || f != 1.5 || db != 2.25 || c != "abc" || vc != "hello" ||
		tx != "long text" || string(bl) != "\x00\xff\x10" || n != nil || j != `{"a": [1, 2]}` {
		t.Errorf("scanned %v %v %v %v %v %v %q %q %q %x %v %q", ti, si, i, bi, f, db, c, vc, tx, bl, n, j)
	}
	if !dt.Equal(time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)) || !dtm.Equal(time.Date(2024, 2, 29, 13, 14, 15, 123e6, time.UTC)) ||
		!ts.Equal(time.Date(2024, 3, 1, 0, 0, 1, 0, time.UTC)) {
		t.Errorf("dates %v %v %v", dt, dtm, ts)
	}
	if v, _ := d.Value(); v != "12.345" {
		t.Errorf("decimal %v", v)
	}
	if v, _ := ubi.Value(); v != "18446744073709551615" {
		t.Errorf("unsigned bigint %v", v)
	}
	// Binary result formats, as a client asks for them explicitly.
	res = conn.PgConn().ExecParams(ctx, "SELECT i, bi, db, dt, dtm, d FROM "+tbl, nil, nil, nil, []int16{1}).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	m := pgtype.NewMap()
	var bi2 int64
	var dt2 time.Time
	var d2 pgtype.Numeric
	if err := m.Scan(pgtype.Int8OID, 1, res.Rows[0][1], &bi2); err != nil || bi2 != 9000000000 {
		t.Errorf("binary int8: %v %v", bi2, err)
	}
	if err := m.Scan(pgtype.DateOID, 1, res.Rows[0][3], &dt2); err != nil || !dt2.Equal(dt) {
		t.Errorf("binary date: %v %v", dt2, err)
	}
	if err := m.Scan(pgtype.NumericOID, 1, res.Rows[0][5], &d2); err != nil {
		t.Errorf("binary numeric: %v", err)
	} else if v, _ := d2.Value(); v != "12.345" {
		t.Errorf("binary numeric %v", v)
	}
}

func TestMySQLParameters(t *testing.T) {
	my := mysqlDirect(t)
	tbl := mysqlTable(t, my, "id INT PRIMARY KEY, name VARCHAR(20), code VARCHAR(5), blob_col BLOB")
	g := startMySQLGateway(t, "", nil)
	conn := g.connectMySQL(t)
	ctx := ctxT(t)
	for i, name := range []string{"ann", "bob", "cy"} {
		tag, err := conn.Exec(ctx, "INSERT INTO "+tbl+" (id, name, code) VALUES ($1, $2, $3)", i+1, name, "007")
		if err != nil {
			t.Fatal(err)
		}
		if tag.String() != "INSERT 0 1" {
			t.Errorf("tag %q", tag)
		}
	}
	var name, code string
	if err := conn.QueryRow(ctx, "SELECT name, code FROM "+tbl+" WHERE id = $1", 2).Scan(&name, &code); err != nil || name != "bob" || code != "007" {
		t.Errorf("by id: %q %q %v", name, code, err)
	}
	// Out of order and repeated placeholders, a string that looks like a number, LIMIT ?.
	var ids []int32
	rows, err := conn.Query(ctx, "SELECT id FROM "+tbl+" WHERE code = $2 AND id >= $1 AND id >= $1 ORDER BY id LIMIT $3", 2, "007", 5)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int32
		rows.Scan(&id)
		ids = append(ids, id)
	}
	if rows.Err() != nil || fmt.Sprint(ids) != "[2 3]" {
		t.Errorf("ids %v, %v", ids, rows.Err())
	}
	// NULL, and a literal $1 inside a string.
	var got *string
	if err := conn.QueryRow(ctx, "SELECT CONCAT('$1', $1)", nil).Scan(&got); err != nil || got != nil {
		t.Errorf("NULL parameter: %v %v", got, err)
	}
	tag, err := conn.Exec(ctx, "UPDATE "+tbl+" SET name = $1 WHERE id > $2", "x", 1)
	if err != nil || tag.String() != "UPDATE 2" {
		t.Errorf("update: %q %v", tag, err)
	}
	tag, err = conn.Exec(ctx, "DELETE FROM "+tbl+" WHERE id = $1", 3)
	if err != nil || tag.String() != "DELETE 1" {
		t.Errorf("delete: %q %v", tag, err)
	}
	// Bytes, as pgx sends a []byte.
	if _, err := conn.Exec(ctx, "UPDATE "+tbl+" SET blob_col = $1 WHERE id = $2", []byte{0, 0xff, '\\', 'x'}, 1); err != nil {
		t.Fatal(err)
	}
	var blob []byte
	if err := conn.QueryRow(ctx, "SELECT blob_col FROM "+tbl+" WHERE id = $1", 1).Scan(&blob); err != nil || string(blob) != "\x00\xff\\x" {
		t.Errorf("blob %q %v", blob, err)
	}
	// A named prepared statement, run twice.
	if _, err := conn.Prepare(ctx, "byid", "SELECT name FROM "+tbl+" WHERE id = $1"); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int]string{1: "ann", 2: "x"} {
		if err := conn.QueryRow(ctx, "byid", id).Scan(&name); err != nil || name != want {
			t.Errorf("prepared %d: %q %v", id, name, err)
		}
	}
}

func TestMySQLErrorKeepsSession(t *testing.T) {
	my := mysqlDirect(t)
	tbl := mysqlTable(t, my, "id INT PRIMARY KEY")
	g := startMySQLGateway(t, "", nil)
	conn := g.connectMySQL(t)
	ctx := ctxT(t)
	if _, err := conn.Exec(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ sql, code, msg string }{
		{"INSERT INTO " + tbl + " VALUES (1)", "23000", "Duplicate entry"},
		{"SELECT * FROM ag_no_such_table", "42S02", "ag_no_such_table"},
		{"SELEKT 1", "42000", "SQL syntax"},
	} {
		for _, args := range [][]any{nil, {pgx.QueryExecModeSimpleProtocol}} {
			_, err := conn.Exec(ctx, c.sql, args...)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != c.code || !strings.Contains(pe.Message, c.msg) {
				t.Errorf("%s: %v, want SQLSTATE %s", c.sql, err, c.code)
			}
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("after %s: %v", c.sql, err)
			}
		}
	}
	// A failing statement ends a multi-statement Query; those before it ran.
	rs, err := conn.PgConn().Exec(ctx, "INSERT INTO "+tbl+" VALUES (2); INSERT INTO "+tbl+" VALUES (2); INSERT INTO "+tbl+" VALUES (3)").ReadAll()
	if pgCode(err) != "23000" || len(rs) < 1 || rs[0].CommandTag.String() != "INSERT 0 1" {
		t.Errorf("multi-statement: %v %v", rs, err)
	}
	var n int
	if err := my.QueryRow("SELECT COUNT(*) FROM " + tbl).Scan(&n); err != nil || n != 2 {
		t.Errorf("rows after multi-statement: %d %v", n, err)
	}
	// Errors and units are measured as on a Postgres database.
	rec := httptest.NewRecorder()
	g.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`asyncgate_errors_total{database="legacy",source="backend",sqlstate_class="23"} 3`,
		`asyncgate_errors_total{database="legacy",source="backend",sqlstate_class="42"} 4`,
		`asyncgate_request_seconds_count{database="legacy",user="app"}`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestMySQLTransactions(t *testing.T) {
	my := mysqlDirect(t)
	tbl := mysqlTable(t, my, "id INT PRIMARY KEY")
	g := startMySQLGateway(t, "?pool_size=1", nil)
	conn := g.connectMySQL(t)
	other := g.connectMySQL(t)
	ctx := ctxT(t)
	count := func() int {
		var n int
		if err := my.QueryRow("SELECT COUNT(*) FROM " + tbl).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, end := range []string{"ROLLBACK", "COMMIT"} {
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if st := conn.PgConn().TxStatus(); st != 'T' {
			t.Errorf("status after BEGIN: %q", st)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 1); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1)", 1); pgCode(err) != "23000" {
			t.Errorf("duplicate in transaction: %v", err)
		}
		if st := conn.PgConn().TxStatus(); st != 'T' {
			t.Errorf("status inside: %q", st)
		}
		if n := count(); n != 0 {
			t.Errorf("uncommitted row visible: %d", n)
		}
		// The pool's one connection is held by the transaction: another client waits for it.
		done := make(chan error, 1)
		go func() { _, err := other.Exec(ctx, "SELECT 1"); done <- err }()
		eventually(t, "the other client waits for the connection", func() bool {
			return g.srv.MySQLPools()[0].Stats().Waiting == 1
		})
		select {
		case err := <-done:
			t.Fatalf("another client ran while the transaction held the only connection: %v", err)
		default:
		}
		if _, err := conn.Exec(ctx, end); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if st := conn.PgConn().TxStatus(); st != 'I' {
			t.Errorf("status after %s: %q", end, st)
		}
		want := map[string]int{"ROLLBACK": 0, "COMMIT": 1}[end]
		if n := count(); n != want {
			t.Errorf("after %s: %d rows, want %d", end, n, want)
		}
	}
	// pgx's own transactions.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx.Exec(ctx, "INSERT INTO "+tbl+" VALUES (2)")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Errorf("after pgx commit: %d rows", n)
	}
}

// processlistHas reports whether a statement with the marker text runs on MariaDB.
func processlistHas(t *testing.T, my *sql.DB, marker string) bool {
	var n int
	err := my.QueryRow("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE ? AND info NOT LIKE '%processlist%'", "%"+marker+"%").Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func TestMySQLCancel(t *testing.T) {
	my := mysqlDirect(t)
	g := startMySQLGateway(t, "", nil)
	for _, how := range []string{"cancel", "disconnect"} {
		t.Run(how, func(t *testing.T) {
			conn, err := g.connectAs(appUser, appPassword, mysqlDatabase)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			marker := fmt.Sprintf("ag_cancel_%s_%d", how, time.Now().UnixNano())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := conn.Exec(ctx, "SELECT SLEEP(60) AS "+marker, pgx.QueryExecModeSimpleProtocol)
				done <- err
			}()
			eventually(t, "the SLEEP runs on MariaDB", func() bool { return processlistHas(t, my, marker) })
			start := time.Now()
			if how == "cancel" {
				cancel() // pgx sends a CancelRequest
			} else {
				conn.PgConn().Conn().Close()
			}
			for processlistHas(t, my, marker) {
				if time.Since(start) > time.Second {
					t.Fatalf("the SLEEP still runs on MariaDB %s after the %s", time.Since(start), how)
				}
				time.Sleep(10 * time.Millisecond)
			}
			select {
			case err := <-done:
				if err == nil {
					t.Error("the cancelled query succeeded")
				}
			case <-time.After(waitLimit):
				t.Fatal("the client never heard back")
			}
		})
	}
	// The session and the pool stay usable after a cancel.
	conn := g.connectMySQL(t)
	var one int
	if err := conn.QueryRow(ctxT(t), "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

func TestMySQLQueryTimeout(t *testing.T) {
	my := mysqlDirect(t)
	g := startMySQLGateway(t, "", func(c *gateway.Config) { c.QueryTimeout = 200 * time.Millisecond })
	conn := g.connectMySQL(t)
	marker := fmt.Sprintf("ag_timeout_%d", time.Now().UnixNano())
	_, err := conn.Exec(ctxT(t), "SELECT SLEEP(30) AS "+marker)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" || !strings.Contains(pe.Message, "--query-timeout") {
		t.Fatalf("got %v, want 57014 naming --query-timeout", err)
	}
	if processlistHas(t, my, marker) {
		t.Error("the statement still runs on MariaDB")
	}
	var one int
	if err := conn.QueryRow(ctxT(t), "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

func TestMySQLManyClientsSmallPool(t *testing.T) {
	my := mysqlDirect(t)
	tbl := mysqlTable(t, my, "id INT PRIMARY KEY, client INT")
	g := startMySQLGateway(t, "?pool_size=10", func(c *gateway.Config) {
		c.QueryWaitTimeout = time.Minute
		c.AdminUsers = []string{appUser}
	})
	var maxOpen atomic.Int64
	concurrentlyOn(t, g, mysqlDatabase, 200, func(ctx context.Context, conn *pgx.Conn, i int) error {
		for k := range 1 {
			tx, err := conn.Begin(ctx)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+tbl+" VALUES ($1, $2)", i*10+k, i); err != nil {
				return err
			}
			var n int
			if err := tx.QueryRow(ctx, "SELECT COUNT(*) FROM "+tbl+" WHERE client = $1", i).Scan(&n); err != nil {
				return err
			}
			if n != k+1 {
				return fmt.Errorf("client sees %d of its rows, want %d", n, k+1)
			}
			if err := tx.Commit(ctx); err != nil {
				return err
			}
			for _, p := range g.srv.MySQLPools() {
				open := int64(p.Stats().Open)
				for old := maxOpen.Load(); open > old && !maxOpen.CompareAndSwap(old, open); old = maxOpen.Load() {
				}
			}
		}
		var one int
		return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	})
	var n int
	if err := my.QueryRow("SELECT COUNT(*) FROM " + tbl).Scan(&n); err != nil || n != 200 {
		t.Errorf("%d rows, want 200 (%v)", n, err)
	}
	if m := maxOpen.Load(); m > 10 || m == 0 {
		t.Errorf("pool had %d connections open, want 1..10", m)
	}
	// The pool is on the console and in the metrics as a Postgres pool is.
	admin := g.adminConn(t, appUser, appPassword, "asyncgate")
	g.connectMySQL(t) // for SHOW CLIENTS
	for _, cmd := range []string{"SHOW POOLS", "SHOW SERVERS", "SHOW DATABASES", "SHOW CLIENTS", "SHOW STATS"} {
		names, rows := show(t, admin, cmd)
		col := "database"
		if cmd == "SHOW DATABASES" {
			col = "name"
		}
		if row(names, rows, col, mysqlDatabase) == nil {
			t.Errorf("%s has no row for %s", cmd, mysqlDatabase)
		}
	}
	rec := httptest.NewRecorder()
	g.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if want := `asyncgate_pool_connections_open{backend="0",database="legacy",user="app"}`; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("metrics lack %s", want)
	}
}

func TestMySQLBreaker(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		c.Databases[mysqlDatabase] = "mysql://root@127.0.0.1:1/test" // nothing listens on port 1
		c.BreakerFailures = 2
		c.BreakerOpenTime = time.Minute
		c.ServerConnectTimeout = time.Second
	})
	conn := g.connectMySQL(t)
	ctx := ctxT(t)
	for range 2 {
		if _, err := conn.Exec(ctx, "SELECT 1"); pgCode(err) != "08006" {
			t.Fatalf("connect failure: %v", err)
		}
	}
	_, err := conn.Exec(ctx, "SELECT 1")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "08006" || !strings.Contains(pe.Message, "circuit breaker open") {
		t.Fatalf("after 2 failures: %v, want the breaker's 08006", err)
	}
	if st := g.srv.MySQLPools()[0].BreakerState(); st != "open" {
		t.Errorf("breaker %s", st)
	}
}

// concurrentlyOn is concurrently for a database other than the default test one.
func concurrentlyOn(t *testing.T, g *gw, database string, n int, client func(ctx context.Context, conn *pgx.Conn, i int) error) {
	t.Helper()
	errs := make(chan error, n)
	for i := range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, g.dsn(appUser, appPassword, database))
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			defer conn.Close(ctx)
			if err := client(ctx, conn, i); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// A pooled connection the server closed while it sat idle (wait_timeout, a restart, KILL) is
// replaced without the client seeing an error: go-sql-driver finds it dead before sending.
func TestMySQLDeadIdleConnection(t *testing.T) {
	my := mysqlDirect(t)
	g := startMySQLGateway(t, "?pool_size=1", nil)
	conn := g.connectMySQL(t)
	ctx := ctxT(t)
	var id1, id2 int64
	if err := conn.QueryRow(ctx, "SELECT CONNECTION_ID()").Scan(&id1); err != nil {
		t.Fatal(err)
	}
	if _, err := my.Exec(fmt.Sprintf("KILL %d", id1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the connection is gone on the server", func() bool {
		var n int
		my.QueryRow("SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?", id1).Scan(&n)
		return n == 0
	})
	if err := conn.QueryRow(ctx, "SELECT CONNECTION_ID()").Scan(&id2); err != nil {
		t.Fatalf("after the server closed the idle connection: %v", err)
	}
	if id2 == id1 {
		t.Errorf("still connection %d", id1)
	}
}
