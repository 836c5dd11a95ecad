package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/gateway/auth"
)

func transactionMode(size int) func(*gateway.Config) {
	return func(c *gateway.Config) {
		c.PoolMode = "transaction"
		c.PoolSize = size
		c.AuthType = auth.Trust // these tests are about pooling, not logins
	}
}

func totals(g *gw) (open, idle int) {
	for _, p := range g.srv.Pools() {
		st := p.Stats()
		open += st.Open
		idle += st.Idle
	}
	return open, idle
}

func TestTransactionModeSharesBackends(t *testing.T) {
	g := startGateway(t, transactionMode(2))
	ctx := ctxT(t)
	var conns []*pgx.Conn
	for range 20 {
		conns = append(conns, g.connect(t))
	}
	pids := map[int]bool{}
	for _, c := range conns {
		var pid int
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids[pid] = true
	}
	if len(pids) > 2 {
		t.Fatalf("20 clients used %d backends on a pool of 2", len(pids))
	}
	eventually(t, "backends back in the pool between transactions", func() bool {
		open, idle := totals(g)
		return open <= 2 && idle == open
	})
	// A transaction keeps its backend until it ends.
	tx, err := conns[0].Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var a, b int
	tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&a)
	conns[1].Exec(ctx, "SELECT 1")
	tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&b)
	if a != b {
		t.Fatalf("transaction moved from backend %d to %d", a, b)
	}
	tx.Commit(ctx)
}

func TestTransactionModePreparedStatements(t *testing.T) {
	g := startGateway(t, transactionMode(2))
	ctx := ctxT(t)
	conn := g.connect(t)
	other := g.connect(t)
	pc := conn.PgConn()
	if _, err := pc.Prepare(ctx, "add", "SELECT $1::int + $2::int", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Prepare(ctx, "twice", "SELECT $1::int * 2", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		// Another client's transaction in between moves this client around the pool.
		tx, _ := other.Begin(ctx)
		tx.Exec(ctx, "SELECT 1")
		res := pc.ExecPrepared(ctx, "add", [][]byte{[]byte(fmt.Sprint(i)), []byte("100")}, nil, nil).Read()
		tx.Commit(ctx)
		if res.Err != nil || string(res.Rows[0][0]) != fmt.Sprint(i+100) {
			t.Fatalf("add(%d, 100): %v %v", i, res.Rows, res.Err)
		}
	}
	if err := pc.Deallocate(ctx, "add"); err != nil {
		t.Fatal(err)
	}
	res := pc.ExecPrepared(ctx, "add", [][]byte{[]byte("1"), []byte("2")}, nil, nil).Read()
	if pgCode(res.Err) != "26000" {
		t.Fatalf("after Close: %v, want 26000", res.Err)
	}
	if _, err := conn.Exec(ctx, "DEALLOCATE twice"); err != nil {
		t.Fatalf("DEALLOCATE of a protocol-level statement: %v", err)
	}
	res = pc.ExecPrepared(ctx, "twice", [][]byte{[]byte("1")}, nil, nil).Read()
	if pgCode(res.Err) != "26000" {
		t.Fatalf("after DEALLOCATE: %v, want 26000", res.Err)
	}
	pc.Prepare(ctx, "again", "SELECT 7", nil)
	if _, err := conn.Exec(ctx, "DEALLOCATE ALL"); err != nil {
		t.Fatal(err)
	}
	res = pc.ExecPrepared(ctx, "again", nil, nil, nil).Read()
	if pgCode(res.Err) != "26000" {
		t.Fatalf("after DEALLOCATE ALL: %v, want 26000", res.Err)
	}
	// A Parse that fails reports its own error, and the name stays unusable.
	if _, err := pc.Prepare(ctx, "broken", "SELECT * FROM no_such_table", nil); pgCode(err) != "42P01" {
		t.Fatalf("bad Parse: %v, want 42P01", err)
	}
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// pgx's default statement cache, 200 clients on 5 backends.
func TestTransactionModePgxStatementCache(t *testing.T) {
	g := startGateway(t, transactionMode(5))
	concurrently(t, g, 200, func(ctx context.Context, conn *pgx.Conn, i int) error {
		for j := range 10 {
			var got int
			q := fmt.Sprintf("SELECT $1::int + %d", j%3) // three statements, reused
			if err := conn.QueryRow(ctx, q, i).Scan(&got); err != nil || got != i+j%3 {
				return fmt.Errorf("query %d: %d, %v", j, got, err)
			}
		}
		return nil
	})
	if open, _ := totals(g); open > 5 {
		t.Fatalf("%d backends for a pool of 5", open)
	}
}

func TestMaxPreparedStatementsEvicts(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		transactionMode(1)(c)
		c.MaxPrepared = 3
	})
	ctx := ctxT(t)
	conn := g.connect(t)
	pc := conn.PgConn()
	for i := range 6 {
		if _, err := pc.Prepare(ctx, fmt.Sprintf("s%d", i), fmt.Sprintf("SELECT %d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		for i := range 6 {
			res := pc.ExecPrepared(ctx, fmt.Sprintf("s%d", i), nil, nil, nil).Read()
			if res.Err != nil || string(res.Rows[0][0]) != fmt.Sprint(i) {
				t.Fatalf("round %d s%d: %v %v", round, i, res.Rows, res.Err)
			}
		}
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n > 3 {
		t.Fatalf("%d statements prepared on the backend, bound 3", n)
	}
}

func TestTrackedParameterFollowsClient(t *testing.T) {
	g := startGateway(t, transactionMode(2))
	ctx := ctxT(t)
	tokyo := g.connect(t)
	plain := g.connect(t)
	if _, err := tokyo.Exec(ctx, "SET TimeZone = 'Asia/Tokyo'"); err != nil {
		t.Fatal(err)
	}
	if _, err := tokyo.Exec(ctx, "SET application_name = 'tokyo-app'"); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		// Hold one backend so the next query may land on either.
		tx, _ := plain.Begin(ctx)
		var tz, app string
		if err := tokyo.QueryRow(ctx, "SELECT current_setting('TimeZone'), current_setting('application_name')").Scan(&tz, &app); err != nil {
			t.Fatal(err)
		}
		if tz != "Asia/Tokyo" || app != "tokyo-app" {
			t.Fatalf("round %d: the client's settings did not follow it: %q %q", i, tz, app)
		}
		tx.QueryRow(ctx, "SELECT current_setting('TimeZone')").Scan(&tz)
		tx.Commit(ctx)
		if tz == "Asia/Tokyo" {
			t.Fatalf("round %d: another client's TimeZone leaked", i)
		}
	}
}

func TestStatementModeRejectsTransactions(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { transactionMode(2)(c); c.PoolMode = "statement" })
	ctx := ctxT(t)
	conn := g.connect(t)
	_, err := conn.Exec(ctx, "BEGIN")
	if pgCode(err) != "0A000" || !strings.Contains(err.Error(), "statement") {
		t.Fatalf("BEGIN in statement mode: %v, want 0A000", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("after the refused transaction: %v", err)
	}
	if conn.PgConn().TxStatus() != 'I' {
		t.Fatalf("status %c after the refused transaction", conn.PgConn().TxStatus())
	}
	eventually(t, "no transaction left open", func() bool {
		var n int
		direct(t).QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'").Scan(&n)
		return n == 0
	})
}

func TestTransactionModeManyClientsMixedTransactions(t *testing.T) {
	g := startGateway(t, transactionMode(10))
	ctx := ctxT(t)
	if _, err := direct(t).Exec(ctx, "DROP TABLE IF EXISTS txmix; CREATE TABLE txmix (client int, n int)"); err != nil {
		t.Fatal(err)
	}
	const clients, txs = 300, 5
	concurrently(t, g, clients, func(ctx context.Context, conn *pgx.Conn, i int) error {
		return mixedClient(ctx, conn, i, txs)
	})
	var rows int
	direct(t).QueryRow(ctx, "SELECT count(*) FROM txmix").Scan(&rows)
	if rows != clients*txs {
		t.Fatalf("%d committed rows, want %d", rows, clients*txs)
	}
}

func mixedClient(ctx context.Context, conn *pgx.Conn, id, txs int) error {
	for n := range txs {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		tag := fmt.Sprintf("client-%d", id)
		if _, err := tx.Exec(ctx, "SELECT set_config('application_name', $1, true)", tag); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO txmix VALUES ($1, $2)", id, n); err != nil {
			return err
		}
		var seen int
		var app string
		if err := tx.QueryRow(ctx, "SELECT count(*), current_setting('application_name') FROM txmix WHERE client = $1", id).Scan(&seen, &app); err != nil {
			return err
		}
		if seen != n+1 || app != tag {
			return fmt.Errorf("client %d tx %d saw %d rows and application_name %q", id, n, seen, app)
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
	}
	return nil
}

func TestErrorInTransactionThenRollbackLeavesBackendClean(t *testing.T) {
	g := startGateway(t, transactionMode(1))
	ctx := ctxT(t)
	a := g.connect(t)
	tx, _ := a.Begin(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1/0"); pgCode(err) != "22012" {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	b := g.connect(t)
	var status string
	if err := b.QueryRow(ctx, "SELECT 'ok'").Scan(&status); err != nil || status != "ok" {
		t.Fatalf("next client: %q %v", status, err)
	}
	if b.PgConn().TxStatus() != 'I' {
		t.Fatalf("next client starts in status %c", b.PgConn().TxStatus())
	}
}

// A cancel must reach only the client it came from: races between a client's cancel and its
// query's end, while another client takes over the backend, must never cancel the other.
func TestCancelNeverHitsAnotherClient(t *testing.T) {
	g := startGateway(t, transactionMode(1))
	ctx := ctxT(t)
	canceller := g.connect(t)
	victim := g.connect(t)
	var stop atomic.Bool
	var victimErr atomic.Value
	var victimQueries atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			_, err := victim.Exec(ctx, "SELECT pg_sleep(0.0002)")
			if err != nil {
				victimErr.Store(err)
				return
			}
			victimQueries.Add(1)
		}
	}()
	races := 2000
	if testing.Short() {
		races = 300
	}
	cancelled := 0
	for i := range races {
		errc := make(chan error, 1)
		go func() {
			_, err := canceller.Exec(ctx, "SELECT pg_sleep(0.0005)")
			errc <- err
		}()
		// Jitter, not synchronisation: spread the cancels over the query's whole life, before,
		// during and after it runs.
		time.Sleep(time.Duration(i%12) * 100 * time.Microsecond)
		canceller.PgConn().CancelRequest(ctx)
		if err := <-errc; err != nil {
			if pgCode(err) != "57014" {
				t.Fatalf("canceller: %v", err)
			}
			cancelled++
		}
		if err, _ := victimErr.Load().(error); err != nil {
			break
		}
	}
	stop.Store(true)
	<-done
	if err, _ := victimErr.Load().(error); err != nil {
		t.Fatalf("the other client's query was hit: %v (after %d queries)", err, victimQueries.Load())
	}
	t.Logf("%d races, %d of the canceller's own queries cancelled, %d victim queries untouched", races, cancelled, victimQueries.Load())
}

func TestClientDisconnectMidTransactionRollsBack(t *testing.T) {
	g := startGateway(t, transactionMode(1))
	ctx := ctxT(t)
	mon := direct(t)
	if _, err := mon.Exec(ctx, "DROP TABLE IF EXISTS leftovers; CREATE TABLE leftovers (x int)"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgconn.Connect(ctx, g.dsn(appUser, appPassword, testDatabase))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "BEGIN; INSERT INTO leftovers VALUES (1)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	conn.Conn().Close() // gone without COMMIT or Terminate
	next := g.connect(t)
	var n int
	if err := next.QueryRow(ctx, "SELECT count(*) FROM leftovers").Scan(&n); err != nil || n != 0 {
		t.Fatalf("uncommitted row visible: %d, %v", n, err)
	}
	if next.PgConn().TxStatus() != 'I' {
		t.Fatal("the next client inherited a transaction")
	}
	if open, _ := totals(g); open != 1 {
		t.Fatalf("%d backends: the drained one should have been reused", open)
	}
}

func TestQueryTimeout(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { transactionMode(2)(c); c.QueryTimeout = 200 * time.Millisecond })
	ctx := ctxT(t)
	conn := g.connect(t)
	start := time.Now()
	_, err := conn.Exec(ctx, "SELECT pg_sleep(5)")
	if pgCode(err) != "57014" || !strings.Contains(err.Error(), "--query-timeout") {
		t.Fatalf("got %v, want 57014 naming --query-timeout", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("timeout of 200ms took %s", took)
	}
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("after the timeout: %v", err)
	}
}

// readFatal reads what the gateway sends a client until it closes the connection.
func readFatal(t *testing.T, nc net.Conn) string {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(waitLimit))
	got, err := io.ReadAll(nc)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("waiting for the gateway to close: %v", err)
	}
	return string(got)
}

func TestIdleTransactionTimeout(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { transactionMode(1)(c); c.IdleTxTimeout = 300 * time.Millisecond })
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, g.dsn(appUser, appPassword, testDatabase))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "BEGIN").ReadAll(); err != nil {
		t.Fatal(err)
	}
	got := readFatal(t, conn.Conn())
	if !strings.Contains(got, "C25P03") || !strings.Contains(got, "--idle-transaction-timeout") {
		t.Fatalf("got %q, want a 25P03 error naming --idle-transaction-timeout", got)
	}
	// The transaction was rolled back and the backend serves the next client.
	next := g.connect(t)
	if err := next.Ping(ctx); err != nil || next.PgConn().TxStatus() != 'I' {
		t.Fatalf("next client: %v, status %c", err, next.PgConn().TxStatus())
	}
}

func TestClientIdleTimeout(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { transactionMode(1)(c); c.ClientIdleTimeout = 300 * time.Millisecond })
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, g.dsn(appUser, appPassword, testDatabase))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	got := readFatal(t, conn.Conn())
	if !strings.Contains(got, "C57P05") || !strings.Contains(got, "--client-idle-timeout") {
		t.Fatalf("got %q, want a 57P05 error naming --client-idle-timeout", got)
	}
}

func TestClientLoginTimeout(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { c.ClientLoginTimeout = 300 * time.Millisecond })
	nc, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	start := time.Now()
	got := readFatal(t, nc)
	if !strings.Contains(got, "--client-login-timeout") {
		t.Fatalf("got %q, want an error naming --client-login-timeout", got)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("login timeout of 300ms took %s", took)
	}
}

// pool_mode in a database's DSN and --user-pool-mode pick the mode per database and per user.
func TestPoolModePerDatabaseAndUser(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		c.PoolMode = "session"
		c.AuthType = auth.Trust
		c.QueryWaitTimeout = 500 * time.Millisecond
		c.Databases["txdb"] = backend.DSN("postgres", "postgres") + "&pool_mode=transaction&pool_size=1"
		c.UserPoolMode = map[string]string{"txuser": "transaction"}
	})
	ctx := ctxT(t)
	// Two clients on a pool of one: only possible when the backend goes back between transactions.
	for _, target := range []struct{ user, db string }{{appUser, "txdb"}, {"txuser", testDatabase}} {
		var conns []*pgx.Conn
		for range 2 {
			conn, err := g.connectAs(target.user, "", target.db)
			if err != nil {
				t.Fatalf("%s@%s: %v", target.user, target.db, err)
			}
			defer conn.Close(ctx)
			conns = append(conns, conn)
		}
		for _, c := range conns {
			if err := c.Ping(ctx); err != nil {
				t.Fatalf("%s@%s: %v", target.user, target.db, err)
			}
		}
	}
	// The default stays session: a second client on a pool of one waits, then times out.
	g2 := startGateway(t, func(c *gateway.Config) {
		c.PoolMode, c.PoolSize, c.AuthType, c.QueryWaitTimeout = "session", 1, auth.Trust, 300*time.Millisecond
	})
	g2.connect(t)
	if _, err := g2.connectAs(appUser, "", testDatabase); pgCode(err) != "57014" {
		t.Fatalf("session mode let a second client share a pool of one: %v", err)
	}
}

// A backend that cannot be brought back (here: its process is stopped, so it neither answers
// nor acts on the cancel) is closed after --cancel-drain-timeout, and the pool serves the next
// client with a new one.
func TestCancelDrainTimeoutClosesStuckBackend(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		transactionMode(1)(c)
		c.CancelDrainTimeout = 300 * time.Millisecond
		c.CancelTimeout = 200 * time.Millisecond
	})
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, g.dsn(appUser, appPassword, testDatabase))
	if err != nil {
		t.Fatal(err)
	}
	conn.Conn().Write(appendQuery(nil, "SELECT pg_sleep(60) /* stuck */"))
	mon := direct(t)
	var pid int
	eventually(t, "query running", func() bool {
		return mon.QueryRow(ctx, "SELECT pid FROM pg_stat_activity WHERE query LIKE '%stuck */' AND state = 'active' AND pid <> pg_backend_pid()").Scan(&pid) == nil
	})
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Skipf("cannot stop the backend process: %v", err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	conn.Conn().Close()
	eventually(t, "stuck backend closed by the gateway", func() bool { open, _ := totals(g); return open == 0 })
	syscall.Kill(pid, syscall.SIGCONT)
	next := g.connect(t)
	var other int
	if err := next.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&other); err != nil || other == pid {
		t.Fatalf("next client: backend %d (stuck one %d), %v", other, pid, err)
	}
}

// With several event loops the pool prefers handing a backend to a waiter of its own loop, but
// never at the price of a waiter of another loop: each new client here must be served while
// others keep the pool busy.
func TestNoWaiterStarvesAcrossLoops(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		transactionMode(2)(c)
		c.Loops = 2
		c.QueryWaitTimeout = 3 * time.Second
	})
	ctx := ctxT(t)
	holder := g.connect(t)
	if _, err := holder.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var busy sync.WaitGroup
	for range 4 {
		busy.Add(1)
		go func() {
			defer busy.Done()
			conn, err := g.connectAs(appUser, appPassword, testDatabase)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := conn.Exec(ctx, "SELECT pg_sleep(0.002)"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := range 20 {
		conn, err := g.connectAs(appUser, appPassword, testDatabase)
		if err == nil {
			_, err = conn.Exec(ctx, "SELECT 1")
			conn.Close(ctx)
		}
		if err != nil {
			t.Errorf("new client %d: %v", i, err)
		}
	}
	close(stop)
	busy.Wait()
}
