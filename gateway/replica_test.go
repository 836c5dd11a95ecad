package gateway_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/internal/pgtest"
)

// replicaSet is a primary with one streaming replica, started by the first test that needs it
// and shared by the read routing tests.
var (
	replicaOnce sync.Once
	replicaSet  *pgtest.Cluster
	replicaErr  error
)

func primaryWithReplica(t *testing.T) (primary, replica *pgtest.Cluster) {
	t.Helper()
	replicaOnce.Do(func() {
		replicaSet, replicaErr = pgtest.StartWithReplicas(context.Background(), pgtest.Options{MaxConnections: 100}, 1)
	})
	if replicaErr != nil {
		t.Fatal(replicaErr)
	}
	return replicaSet, replicaSet.Replicas()[0]
}

func stopReplicaSet() error {
	if replicaSet == nil {
		return nil
	}
	return replicaSet.Stop()
}

// startRouting runs a gateway in transaction mode in front of primary and its replica.
func startRouting(t *testing.T, primary, replica *pgtest.Cluster, routing string, mutate func(*gateway.Config)) *gw {
	return startGateway(t, func(cfg *gateway.Config) {
		cfg.Databases = map[string]string{testDatabase: primary.DSN("postgres", "postgres")}
		cfg.Replicas = map[string][]string{testDatabase: {replica.DSN("postgres", "postgres")}}
		if cfg.PoolMode == "session" {
			cfg.PoolMode = "transaction" // routing is per transaction
		}
		cfg.ReadRouting = routing
		cfg.ReadFunctions = []string{"pg_is_in_recovery"} // volatile in the catalog, and harmless
		cfg.LagCheckInterval = 50 * time.Millisecond
		if mutate != nil {
			mutate(cfg)
		}
	})
}

func inRecovery(t *testing.T, ctx context.Context, conn *pgx.Conn) bool {
	t.Helper()
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestReplicaWritesStayOnPrimary(t *testing.T) {
	primary, replica := primaryWithReplica(t)
	ctx := ctxT(t)
	for _, sql := range []string{
		"DROP TABLE IF EXISTS rw_items",
		"CREATE TABLE rw_items (id int PRIMARY KEY, note text)",
		"DROP SEQUENCE IF EXISTS rw_seq",
		"CREATE SEQUENCE rw_seq",
		`CREATE OR REPLACE FUNCTION rw_add(n int) RETURNS int VOLATILE LANGUAGE sql AS
			'INSERT INTO rw_items VALUES (n, ''function'') RETURNING id'`,
	} {
		if err := primary.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if err := replica.WaitReplay(ctx); err != nil {
		t.Fatal(err)
	}
	g := startRouting(t, primary, replica, "auto", nil)
	conn := g.connect(t)
	// Reads reach the replica first, so the writes below had every chance to go there.
	eventually(t, "a read runs on the replica", func() bool { return inRecovery(t, ctx, conn) })

	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		base := 100 * int(mode)
		writes := []string{
			"INSERT INTO rw_items VALUES ($1 + 1, 'insert')",
			"UPDATE rw_items SET note = 'updated' WHERE id = $1 + 1 RETURNING id",
			"WITH w AS (INSERT INTO rw_items VALUES ($1 + 2, 'cte') RETURNING id) SELECT id FROM w",
			"SELECT id FROM rw_items WHERE id = $1 + 1 FOR UPDATE",
			"SELECT nextval('rw_seq') + $1",
			"SELECT rw_add($1 + 3)",
		}
		for _, sql := range writes {
			rows, err := conn.Query(ctx, sql, mode, base)
			if err == nil {
				rows.Close()
				err = rows.Err()
			}
			if err != nil {
				t.Fatalf("%s (%v): %v", sql, mode, err)
			}
		}
		got, err := primary.QueryValue(ctx, fmt.Sprintf("SELECT count(*) FROM rw_items WHERE id BETWEEN %d AND %d", base+1, base+3))
		if err != nil {
			t.Fatal(err)
		}
		if got != "3" {
			t.Fatalf("%v: %s rows on the primary, want 3 (insert, CTE, function)", mode, got)
		}
		note, err := primary.QueryValue(ctx, fmt.Sprintf("SELECT note FROM rw_items WHERE id = %d", base+1))
		if err != nil || note != "updated" {
			t.Fatalf("%v: row %d note %q (%v), want updated", mode, base+1, note, err)
		}
	}
	if seq, err := primary.QueryValue(ctx, "SELECT last_value FROM rw_seq"); err != nil || seq != "2" {
		t.Fatalf("rw_seq last_value %q (%v), want 2", seq, err)
	}
}

func TestReplicaReads(t *testing.T) {
	primary, replica := primaryWithReplica(t)
	ctx := ctxT(t)

	t.Run("auto", func(t *testing.T) {
		g := startRouting(t, primary, replica, "auto", nil)
		conn := g.connect(t)
		eventually(t, "a read runs on the replica", func() bool { return inRecovery(t, ctx, conn) })
		before := g.srv.ReplicaReads(testDatabase)
		for i := range 20 {
			if !inRecovery(t, ctx, conn) {
				t.Fatalf("read %d ran on the primary", i)
			}
		}
		if got := g.srv.ReplicaReads(testDatabase) - before; got < 20 {
			t.Fatalf("ReplicaReads grew by %d over 20 reads", got)
		}
		// A transaction that is not read-only stays on the primary, reads and all.
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var rec bool
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
			t.Fatalf("read in a read-write transaction: in recovery %v (%v), want false", rec, err)
		}
		tx.Rollback(ctx)
	})

	t.Run("explicit", func(t *testing.T) {
		g := startRouting(t, primary, replica, "explicit", nil)
		conn := g.connect(t)
		for range 5 {
			if inRecovery(t, ctx, conn) {
				t.Fatal("an autocommit read ran on a replica in explicit mode")
			}
		}
		eventually(t, "BEGIN READ ONLY runs on the replica", func() bool {
			tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			var rec bool
			if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
				t.Fatal(err)
			}
			return rec
		})
		if g.srv.ReplicaReads(testDatabase) == 0 {
			t.Fatal("ReplicaReads did not count the read-only transaction")
		}

		// A client that asks for read-only transactions gets a replica for all of them.
		cfg, err := pgx.ParseConfig(g.dsn(appUser, appPassword, testDatabase))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["default_transaction_read_only"] = "on"
		ro, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer ro.Close(ctx)
		eventually(t, "a read-only client's read runs on the replica", func() bool { return inRecovery(t, ctx, ro) })
	})

	t.Run("off", func(t *testing.T) {
		g := startRouting(t, primary, replica, "off", nil)
		conn := g.connect(t)
		for range 10 {
			if inRecovery(t, ctx, conn) {
				t.Fatal("a read ran on a replica with --read-routing off")
			}
		}
		tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		if err != nil {
			t.Fatal(err)
		}
		var rec bool
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || rec {
			t.Fatalf("BEGIN READ ONLY with routing off: in recovery %v (%v), want false", rec, err)
		}
		tx.Rollback(ctx)
		if n := g.srv.ReplicaReads(testDatabase); n != 0 {
			t.Fatalf("ReplicaReads = %d with routing off", n)
		}
	})
}

func TestReplicaLagExcludes(t *testing.T) {
	primary, replica := primaryWithReplica(t)
	ctx := ctxT(t)
	if err := primary.Exec(ctx, "CREATE TABLE IF NOT EXISTS lag_ticks (at timestamptz)"); err != nil {
		t.Fatal(err)
	}
	g := startRouting(t, primary, replica, "auto", func(cfg *gateway.Config) {
		cfg.MaxReplicaLag = time.Second
	})
	conn := g.connect(t)
	eventually(t, "a read runs on the replica", func() bool { return inRecovery(t, ctx, conn) })

	if err := replica.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { replica.Exec(context.Background(), "SELECT pg_wal_replay_resume()") })
	// The primary keeps writing, so the paused replica falls further behind.
	eventually(t, "the paused replica is excluded from reads", func() bool {
		if err := primary.Exec(ctx, "INSERT INTO lag_ticks VALUES (now())"); err != nil {
			t.Fatal(err)
		}
		return !inRecovery(t, ctx, conn)
	})
	for range 5 {
		if inRecovery(t, ctx, conn) {
			t.Fatal("a read ran on the replica while it lagged")
		}
	}
	if err := replica.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the replica takes reads again after catching up", func() bool { return inRecovery(t, ctx, conn) })
}

func TestReplicaBreakerOpen(t *testing.T) {
	primary, replica := primaryWithReplica(t)
	ctx := ctxT(t)
	// A replica nobody listens for: every connect fails at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "postgres://postgres@" + ln.Addr().String() + "/postgres?sslmode=disable"
	ln.Close()
	g := startRouting(t, primary, replica, "auto", func(cfg *gateway.Config) {
		cfg.Replicas = map[string][]string{testDatabase: {dead}}
		cfg.MaxReplicaLag = 0
		cfg.BreakerFailures = 1
		cfg.BreakerOpenTime = time.Minute
		cfg.ServerConnectTimeout = 500 * time.Millisecond
	})
	conn := g.connect(t)
	replicaPool := func() string {
		for _, p := range g.srv.Pools() {
			if strings.HasSuffix(p.Name(), "/replica1") {
				return p.BreakerState()
			}
		}
		return ""
	}
	eventually(t, "the replica's breaker opens", func() bool {
		if inRecovery(t, ctx, conn) {
			t.Fatal("read ran on a replica that does not exist")
		}
		return replicaPool() == "open"
	})
	for range 10 {
		if inRecovery(t, ctx, conn) {
			t.Fatal("a read ran on a replica")
		}
	}
	if n := g.srv.ReplicaReads(testDatabase); n != 0 {
		t.Fatalf("ReplicaReads = %d with the only replica down", n)
	}
}

// --read-your-writes-window keeps a client's reads on the primary for a while after it wrote, so
// it reads what it wrote even on a lagging replica; other clients' reads still go to the replica.
func TestReadYourWritesWindow(t *testing.T) {
	primary, replica := primaryWithReplica(t)
	ctx := ctxT(t)
	if err := primary.Exec(ctx, "CREATE TABLE IF NOT EXISTS ryw (v int)"); err != nil {
		t.Fatal(err)
	}
	if err := replica.WaitReplay(ctx); err != nil {
		t.Fatal(err)
	}
	g := startRouting(t, primary, replica, "auto", func(c *gateway.Config) { c.ReadYourWritesWindow = time.Minute })
	writer, reader := g.connect(t), g.connect(t)
	// SHOW calls no function, so it is a read even before the gateway has loaded which functions
	// are (a pg_is_in_recovery() then could write, as far as it knows, and starts the window).
	eventually(t, "a read runs on the replica", func() bool { return onStandby(t, ctx, reader) })
	if !onStandby(t, ctx, writer) {
		t.Fatal("a client that never wrote read from the primary")
	}
	if _, err := writer.Exec(ctx, "INSERT INTO ryw VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if onStandby(t, ctx, writer) {
			t.Fatal("a read within --read-your-writes-window of the client's write ran on the replica")
		}
	}
	if !onStandby(t, ctx, reader) {
		t.Fatal("another client's read stayed on the primary after the writer wrote")
	}
}

// onStandby reports whether a read ran on a standby: transactions there are read-only.
func onStandby(t *testing.T, ctx context.Context, conn *pgx.Conn) bool {
	t.Helper()
	var ro string
	if err := conn.QueryRow(ctx, "SHOW transaction_read_only").Scan(&ro); err != nil {
		t.Fatal(err)
	}
	return ro == "on"
}
