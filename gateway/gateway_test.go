package gateway_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/gateway/auth"
	"github.com/asyncgate/asyncgate/wire"
)

func TestQueriesAndErrorsKeepTheSessionUsable(t *testing.T) {
	g := startGateway(t, nil)
	conn := g.connect(t)
	ctx := ctxT(t)

	var n int
	if err := conn.QueryRow(ctx, "SELECT 40 + 2").Scan(&n); err != nil || n != 42 {
		t.Fatalf("SELECT 40 + 2 = %d, %v", n, err)
	}
	_, err := conn.Exec(ctx, "SELECT 1/0")
	if pgCode(err) != "22012" {
		t.Fatalf("division by zero: got %v, want SQLSTATE 22012", err)
	}
	_, err = conn.Exec(ctx, "SELEC oops")
	if pgCode(err) != "42601" {
		t.Fatalf("syntax error: got %v, want SQLSTATE 42601", err)
	}
	if err := conn.QueryRow(ctx, "SELECT $1::int * 2", 21).Scan(&n); err != nil || n != 42 {
		t.Fatalf("after errors: %d, %v", n, err)
	}
	// A transaction that fails stays failed until ROLLBACK, as on a direct connection.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1/0"); pgCode(err) != "22012" {
		t.Fatalf("in tx: %v", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); pgCode(err) != "25P02" {
		t.Fatalf("in failed tx: got %v, want 25P02", err)
	}
	tx.Rollback(ctx)
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("after rollback: %v", err)
	}
}

func TestClientGetsGatewayCancelKeyAndServerParameters(t *testing.T) {
	g := startGateway(t, nil)
	conn := g.connect(t)
	ctx := ctxT(t)
	var backendPID uint32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backendPID); err != nil {
		t.Fatal(err)
	}
	if conn.PgConn().PID() == backendPID {
		t.Fatalf("client got the server's pid %d as its cancel key", backendPID)
	}
	if v := conn.PgConn().ParameterStatus("server_version"); !strings.HasPrefix(v, "15") {
		t.Fatalf("server_version = %q", v)
	}
	var app string
	cfg, _ := pgx.ParseConfig(g.dsn(appUser, appPassword, testDatabase))
	cfg.RuntimeParams["application_name"] = "gateway-test"
	cfg.RuntimeParams["search_path"] = "pg_catalog"
	conn2, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(ctx)
	if err := conn2.QueryRow(ctx, "SELECT current_setting('application_name') || '/' || current_setting('search_path')").Scan(&app); err != nil {
		t.Fatal(err)
	}
	if app != "gateway-test/pg_catalog" {
		t.Fatalf("startup parameters not applied: %q", app)
	}
	if v := conn2.PgConn().ParameterStatus("application_name"); v != "gateway-test" {
		t.Fatalf("ParameterStatus application_name = %q", v)
	}
}

func TestNamedPreparedStatements(t *testing.T) {
	g := startGateway(t, nil)
	conn := g.connect(t)
	ctx := ctxT(t)
	pc := conn.PgConn()
	if _, err := pc.Prepare(ctx, "add", "SELECT $1::int + $2::int", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		res := pc.ExecPrepared(ctx, "add", [][]byte{[]byte(fmt.Sprint(i)), []byte("100")}, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		if got := string(res.Rows[0][0]); got != fmt.Sprint(i+100) {
			t.Fatalf("add(%d, 100) = %s", i, got)
		}
	}
	if err := pc.Deallocate(ctx, "add"); err != nil {
		t.Fatal(err)
	}
	res := pc.ExecPrepared(ctx, "add", [][]byte{[]byte("1"), []byte("2")}, nil, nil).Read()
	if pgCode(res.Err) != "26000" {
		t.Fatalf("after Deallocate: %v, want 26000", res.Err)
	}
	// pgx's default statement cache (named statements behind the scenes) works unchanged.
	for i := range 3 {
		var s string
		if err := conn.QueryRow(ctx, "SELECT repeat($1, $2)", "ab", i+1).Scan(&s); err != nil || s != strings.Repeat("ab", i+1) {
			t.Fatalf("cached statement: %q, %v", s, err)
		}
	}
}

func TestCopyBothWays(t *testing.T) {
	g := startGateway(t, nil)
	conn := g.connect(t)
	ctx := ctxT(t)
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE items (id int, name text)"); err != nil {
		t.Fatal(err)
	}
	const rows = 20000
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "name"},
		pgx.CopyFromSlice(rows, func(i int) ([]any, error) { return []any{i, fmt.Sprintf("item-%d", i)}, nil }))
	if err != nil || n != rows {
		t.Fatalf("COPY FROM: %d rows, %v", n, err)
	}
	// Text COPY FROM STDIN through the raw protocol, too.
	in := strings.NewReader("-1\tminus one\n-2\tminus two\n")
	if tag, err := conn.PgConn().CopyFrom(ctx, in, "COPY items FROM STDIN"); err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("COPY FROM STDIN text: %v, %v", tag, err)
	}
	var out bytes.Buffer
	tag, err := conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT * FROM items ORDER BY id) TO STDOUT")
	if err != nil || tag.RowsAffected() != rows+2 {
		t.Fatalf("COPY TO: %v, %v", tag, err)
	}
	if !strings.HasPrefix(out.String(), "-2\tminus two\n-1\tminus one\n0\titem-0\n") {
		t.Fatalf("COPY TO output starts %q", out.String()[:40])
	}
	// A COPY that fails midway leaves the session usable.
	bad := strings.NewReader("1\tok\nnot-a-number\tbad\n")
	if _, err := conn.PgConn().CopyFrom(ctx, bad, "COPY items FROM STDIN"); pgCode(err) != "22P02" {
		t.Fatalf("bad COPY: %v, want 22P02", err)
	}
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// In transaction and statement modes LISTEN pins the listener to its backend, so this holds in
// every mode.
func TestListenNotify(t *testing.T) {
	g := startGateway(t, nil)
	listener := g.connect(t)
	notifier := g.connect(t)
	ctx := ctxT(t)
	if _, err := listener.Exec(ctx, "LISTEN gateway_events"); err != nil {
		t.Fatal(err)
	}
	if _, err := notifier.Exec(ctx, "SELECT pg_notify('gateway_events', 'hello')"); err != nil {
		t.Fatal(err)
	}
	n, err := listener.WaitForNotification(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Channel != "gateway_events" || n.Payload != "hello" {
		t.Fatalf("notification %+v", n)
	}
	// Notices reach the client too.
	var notices []string
	cfg, _ := pgx.ParseConfig(g.dsn(appUser, appPassword, testDatabase))
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	c3, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close(ctx)
	if _, err := c3.Exec(ctx, "DO $$ BEGIN RAISE NOTICE 'shout %', 7; END $$"); err != nil {
		t.Fatal(err)
	}
	if len(notices) != 1 || notices[0] != "shout 7" {
		t.Fatalf("notices %q", notices)
	}
}

func TestLargeRowsBothWays(t *testing.T) {
	g := startGateway(t, nil)
	conn := g.connect(t)
	ctx := ctxT(t)
	const size = 16<<20 + 123
	var got string
	if err := conn.QueryRow(ctx, "SELECT repeat('x', $1)", size).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if len(got) != size || strings.Trim(got, "x") != "" {
		t.Fatalf("16 MiB row came back with %d bytes", len(got))
	}
	// And a 16 MiB parameter going the other way.
	big := strings.Repeat("y", size)
	var n int
	if err := conn.QueryRow(ctx, "SELECT length($1::text)", big).Scan(&n); err != nil || n != size {
		t.Fatalf("16 MiB parameter: length %d, %v", n, err)
	}
}

func TestAuthentication(t *testing.T) {
	cases := []struct {
		name, authType, user, password, wantCode string
	}{
		{"scram plaintext secret", "scram-sha-256", appUser, appPassword, ""},
		{"scram scram secret", "scram-sha-256", scramUser, scramPass, ""},
		{"scram wrong password", "scram-sha-256", appUser, "nope", "28P01"},
		{"scram unknown user", "scram-sha-256", "nobody", "nope", "28P01"},
		{"md5 plaintext secret", "md5", appUser, appPassword, ""},
		{"md5 md5 secret", "md5", md5User, md5Password, ""},
		{"md5 wrong password", "md5", md5User, "nope", "28P01"},
		{"md5 unknown user", "md5", "nobody", "nope", "28P01"},
		{"md5 against scram secret", "md5", scramUser, scramPass, "28P01"},
		{"trust", "trust", "anyone", "whatever", ""},
	}
	gws := map[string]*gw{}
	for _, c := range cases {
		if gws[c.authType] == nil {
			m, err := auth.ParseMethod(c.authType)
			if err != nil {
				t.Fatal(err)
			}
			gws[c.authType] = startGateway(t, func(cfg *gateway.Config) { cfg.AuthType = m })
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := gws[c.authType].connectAs(c.user, c.password, testDatabase)
			if c.wantCode == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(context.Background())
				if err := conn.Ping(context.Background()); err != nil {
					t.Fatal(err)
				}
				return
			}
			if pgCode(err) != c.wantCode {
				t.Fatalf("got %v, want SQLSTATE %s", err, c.wantCode)
			}
			want := fmt.Sprintf("password authentication failed for user %q", c.user)
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not say %q", err, want)
			}
		})
	}
}

func TestUnknownDatabase(t *testing.T) {
	g := startGateway(t, nil)
	_, err := g.connectAs(appUser, appPassword, "no_such_db")
	if pgCode(err) != "3D000" {
		t.Fatalf("got %v, want 3D000", err)
	}
	if !strings.Contains(err.Error(), "no_such_db") {
		t.Fatalf("error does not name the database: %v", err)
	}
}

func TestMaxClientConn(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { c.MaxClientConn = 3 })
	for range 3 {
		g.connect(t)
	}
	_, err := g.connectAs(appUser, appPassword, testDatabase)
	if pgCode(err) != "53300" || !strings.Contains(err.Error(), "--max-client-conn") {
		t.Fatalf("fourth client: got %v, want 53300 naming --max-client-conn", err)
	}
}

func TestQueryWaitTimeout(t *testing.T) {
	sessionOnly(t)
	g := startGateway(t, func(c *gateway.Config) {
		c.PoolSize = 1
		c.QueryWaitTimeout = 300 * time.Millisecond
	})
	holder := g.connect(t) // session mode: holds the only backend
	start := time.Now()
	_, err := g.connectAs(appUser, appPassword, testDatabase)
	if pgCode(err) != "57014" || !strings.Contains(err.Error(), "--query-wait-timeout") {
		t.Fatalf("waiting client: got %v, want 57014 naming --query-wait-timeout", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("the wait timeout of 300ms took %s", waited)
	}
	// When the holder leaves, the next client gets the backend.
	holder.Close(context.Background())
	next := g.connect(t)
	if err := next.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestCancelRequestReachesTheBackend(t *testing.T) {
	g := startGateway(t, nil)
	conn := g.connect(t)
	bystander := g.connect(t)
	ctx := ctxT(t)

	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(60)")
		errc <- err
	}()
	// Wait until the sleep runs on the backend, then cancel through the gateway's key.
	mon := direct(t)
	eventually(t, "pg_sleep running", func() bool {
		var n int
		mon.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'").Scan(&n)
		return n == 1
	})
	start := time.Now()
	if err := conn.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	err := <-errc
	if pgCode(err) != "57014" {
		t.Fatalf("cancelled query: got %v, want 57014", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("cancel took %s, want under 1s", took)
	}
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("after cancel: %v", err)
	}
	// A cancel for an idle client does nothing, and the other client was never touched.
	if err := conn.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	var one int
	if err := bystander.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	// A forged key is ignored: the query it names by guess runs to its end. The sleep is long
	// enough for the monitor to see it running on a loaded machine; there is one chance.
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(2)")
		errc <- err
	}()
	eventually(t, "short sleep running", func() bool {
		var n int
		mon.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'").Scan(&n)
		return n == 1
	})
	forged, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	forged.Write(wire.AppendCancelRequest(nil, conn.PgConn().PID()^1, []byte{1, 2, 3, 4}))
	forged.Close()
	if err := <-errc; err != nil {
		t.Fatalf("a forged cancel key cancelled a query: %v", err)
	}
}

func TestClientDisconnectCancelsItsQuery(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			g := startGateway(t, func(c *gateway.Config) { c.PoolMode = mode })
			ctx := ctxT(t)
			conn, err := pgconn.Connect(ctx, g.dsn(appUser, appPassword, testDatabase))
			if err != nil {
				t.Fatal(err)
			}
			conn.Conn().Write(appendQuery(nil, "SELECT pg_sleep(60) /* abandoned */"))
			mon := direct(t)
			running := func() int {
				var n int
				mon.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%abandoned%' AND state = 'active' AND pid <> pg_backend_pid()").Scan(&n)
				return n
			}
			eventually(t, "abandoned query running", func() bool { return running() == 1 })
			start := time.Now()
			conn.Conn().Close() // vanish without Terminate
			eventually(t, "abandoned query cancelled", func() bool { return running() == 0 })
			if took := time.Since(start); took > time.Second {
				t.Fatalf("the query outlived its client by %s", took)
			}
			eventually(t, "backend back in the pool", func() bool {
				for _, p := range g.srv.Pools() {
					if st := p.Stats(); st.Open == 0 || st.Idle != st.Open {
						return false
					}
				}
				return true
			})
		})
	}
}

func TestManyClientsOnASmallPool(t *testing.T) {
	// Trust auth: this is about queueing, and 500 client-side SCRAM derivations under -race
	// would only measure the race detector.
	g := startGateway(t, func(c *gateway.Config) { c.PoolSize = 10; c.AuthType = auth.Trust })
	concurrently(t, g, 500, func(ctx context.Context, conn *pgx.Conn, i int) error {
		var got int
		if err := conn.QueryRow(ctx, "SELECT $1::int", i).Scan(&got); err != nil || got != i {
			return fmt.Errorf("got %d, %v", got, err)
		}
		return nil
	})
	var open int
	for _, p := range g.srv.Pools() {
		open += p.Stats().Open
	}
	if open > 10 {
		t.Fatalf("%d backend connections open for a pool of 10", open)
	}
}

func TestSessionStateIsResetBetweenClients(t *testing.T) {
	sessionOnly(t)
	g := startGateway(t, func(c *gateway.Config) { c.PoolSize = 1 })
	ctx := ctxT(t)
	first := g.connect(t)
	var pid1 int
	first.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid1)
	if _, err := first.Exec(ctx, "SET statement_timeout = '123s'"); err != nil {
		t.Fatal(err)
	}
	first.Close(ctx)
	second := g.connect(t)
	var pid2 int
	var timeout string
	second.QueryRow(ctx, "SELECT pg_backend_pid(), current_setting('statement_timeout')").Scan(&pid2, &timeout)
	if pid1 != pid2 {
		t.Fatalf("pool of 1 used two backends: %d and %d", pid1, pid2)
	}
	if timeout != "0" {
		t.Fatalf("statement_timeout leaked to the next client: %q", timeout)
	}
}

func TestTerminatedBackend(t *testing.T) {
	sessionOnly(t)
	g := startGateway(t, func(c *gateway.Config) { c.PoolSize = 2 })
	ctx := ctxT(t)
	victim := g.connect(t)
	var pid int
	if err := victim.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := direct(t).Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	_, err := victim.Exec(ctx, "SELECT 1")
	if err == nil {
		t.Fatal("query on a terminated backend succeeded")
	}
	code := pgCode(err)
	if code != "57P01" && code != "08006" && !victim.IsClosed() {
		t.Fatalf("victim got %v", err)
	}
	eventually(t, "dead backend forgotten", func() bool {
		for _, p := range g.srv.Pools() {
			if p.Stats().Open != 0 {
				return false
			}
		}
		return true
	})
	next := g.connect(t)
	var pid2 int
	if err := next.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil || pid2 == pid {
		t.Fatalf("next client: pid %d (dead one %d), %v", pid2, pid, err)
	}
}

func TestUnreachableBackend(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		c.Databases["down"] = "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"
		c.ServerConnectTimeout = 500 * time.Millisecond
	})
	start := time.Now()
	_, err := g.connectAs(appUser, appPassword, "down")
	code := pgCode(err)
	if code != "08001" && code != "08006" {
		t.Fatalf("got %v, want 08001 or 08006", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("error does not name the backend: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("connect budget of 500ms took %s", took)
	}
	// The gateway still serves the healthy database.
	g.connect(t)
}

func TestBackendLoginErrorReachesClient(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		c.Databases["missing"] = backend.DSN("postgres", "no_such_backend_db")
	})
	_, err := g.connectAs(appUser, appPassword, "missing")
	if pgCode(err) != "3D000" {
		t.Fatalf("got %v, want the backend's 3D000", err)
	}
	if !errors.Is(err, err) || !strings.Contains(err.Error(), "no_such_backend_db") {
		t.Fatalf("error does not name the backend database: %v", err)
	}
}

func appendQuery(dst []byte, sql string) []byte {
	n := 4 + len(sql) + 1
	dst = append(dst, 'Q', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	dst = append(dst, sql...)
	return append(dst, 0)
}
