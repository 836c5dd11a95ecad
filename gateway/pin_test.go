package gateway_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/asyncgate/asyncgate/gateway"
)

// Each kind of session state, used by 50 clients on 5 backends at once in transaction mode,
// behaves as on a direct connection: every statement below is its own transaction, and without
// pinning most of them would land on a backend that lacks the client's state.
func TestPinnedSessionStateBehavesAsDirect(t *testing.T) {
	kinds := map[string]func(ctx context.Context, c *pgx.Conn, i int) error{
		"temporary table": func(ctx context.Context, c *pgx.Conn, i int) error {
			if _, err := c.Exec(ctx, "CREATE TEMP TABLE mine (v int)"); err != nil {
				return err
			}
			if _, err := c.Exec(ctx, "INSERT INTO mine VALUES ($1)", i); err != nil {
				return err
			}
			if err := expectInt(ctx, c, i, "SELECT v FROM mine"); err != nil {
				return err
			}
			_, err := c.Exec(ctx, "DROP TABLE mine")
			return err
		},
		"advisory lock": func(ctx context.Context, c *pgx.Conn, i int) error {
			if _, err := c.Exec(ctx, "SELECT pg_advisory_lock(4242, $1)", i); err != nil {
				return err
			}
			held := "SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND classid = 4242 AND objid = $1"
			if err := expectInt(ctx, c, 1, held, i); err != nil {
				return err
			}
			_, err := c.Exec(ctx, "SELECT pg_advisory_unlock(4242, $1)", i)
			return err
		},
		"WITH HOLD cursor": func(ctx context.Context, c *pgx.Conn, i int) error {
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, fmt.Sprintf("DECLARE cur CURSOR WITH HOLD FOR SELECT g + %d FROM generate_series(1, 10) g", i)); err != nil {
				return err
			}
			if err := tx.Commit(ctx); err != nil {
				return err
			}
			for want := i + 1; want <= i+3; want++ {
				if err := expectInt(ctx, c, want, "FETCH 1 FROM cur"); err != nil {
					return err
				}
			}
			_, err = c.Exec(ctx, "CLOSE cur")
			return err
		},
		"SQL PREPARE": func(ctx context.Context, c *pgx.Conn, i int) error {
			if _, err := c.Exec(ctx, fmt.Sprintf("PREPARE plus AS SELECT $1::int + %d", i)); err != nil {
				return err
			}
			for k := range 3 {
				if err := expectInt(ctx, c, i+k, fmt.Sprintf("EXECUTE plus(%d)", k)); err != nil {
					return err
				}
			}
			_, err := c.Exec(ctx, "DEALLOCATE plus")
			return err
		},
		"untracked SET": func(ctx context.Context, c *pgx.Conn, i int) error {
			if _, err := c.Exec(ctx, fmt.Sprintf("SET statement_timeout = %d", 1001+i)); err != nil {
				return err
			}
			for range 3 {
				var got string
				if err := c.QueryRow(ctx, "SHOW statement_timeout").Scan(&got); err != nil {
					return err
				}
				if want := fmt.Sprintf("%dms", 1001+i); got != want {
					return fmt.Errorf("statement_timeout %q, want %q", got, want)
				}
			}
			_, err := c.Exec(ctx, "RESET statement_timeout")
			return err
		},
	}
	for name, client := range kinds {
		t.Run(name, func(t *testing.T) {
			g := startGateway(t, transactionMode(5))
			concurrently(t, g, 50, client)
			if n := g.srv.PinnedClients(); n != 0 {
				t.Fatalf("%d clients still pinned after their state is gone", n)
			}
			eventually(t, "every backend back in the pool", func() bool { open, idle := totals(g); return open == idle })
		})
	}
}

func expectInt(ctx context.Context, c *pgx.Conn, want int, sql string, args ...any) error {
	var got int
	if err := c.QueryRow(ctx, sql, args...).Scan(&got); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	if got != want {
		return fmt.Errorf("%s: got %d, want %d", sql, got, want)
	}
	return nil
}

// onePinnable starts a gateway with a single backend and a short wait for it, so that whether a
// client holds it shows as another client's wait timing out.
func onePinnable(t *testing.T, mutate func(*gateway.Config)) *gw {
	return startGateway(t, func(c *gateway.Config) {
		transactionMode(1)(c)
		c.QueryWaitTimeout = 300 * time.Millisecond
		if mutate != nil {
			mutate(c)
		}
	})
}

// blocked reports whether another client cannot get the only backend (which costs it its
// connection, as PgBouncer's query_wait_timeout does).
func blocked(t *testing.T, g *gw) bool {
	t.Helper()
	other, err := g.connectAs(appUser, appPassword, testDatabase) // the login needs a backend too
	if err == nil {
		defer other.Close(ctxT(t))
		_, err = other.Exec(ctxT(t), "SELECT 1")
	}
	switch code := pgCode(err); {
	case err == nil:
		return false
	case code == "57014":
		return true
	default:
		t.Fatalf("other client: %v", err)
		return false
	}
}

// A pinned client keeps its backend until its state is gone, then gives it back; state that a
// rolled-back transaction created never pins; with pinning off the backend goes back at once.
func TestPinHoldsAndReleasesTheBackend(t *testing.T) {
	g := onePinnable(t, nil)
	ctx := ctxT(t)
	a := g.connect(t)
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE t1 (v int)"); err != nil {
		t.Fatal(err)
	}
	if !blocked(t, g) {
		t.Fatal("another client got the backend of a client with a temporary table")
	}
	if n := g.srv.PinnedClients(); n != 1 {
		t.Fatalf("PinnedClients %d, want 1", n)
	}
	if _, err := a.Exec(ctx, "DROP TABLE t1"); err != nil {
		t.Fatal(err)
	}
	if blocked(t, g) {
		t.Fatal("the backend was not given back after the temporary table was dropped")
	}

	// Created and rolled back: nothing to keep.
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "CREATE TEMP TABLE t2 (v int)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if blocked(t, g) {
		t.Fatal("a rolled-back temporary table pinned the client")
	}

	// A failed DROP ends nothing.
	if _, err := a.Exec(ctx, "SELECT pg_advisory_lock(7)"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "SELECT pg_advisory_unlock(7), 1/0"); err == nil {
		t.Fatal("division by zero succeeded")
	}
	if !blocked(t, g) {
		t.Fatal("an unlock in a failed statement unpinned the client")
	}
	if _, err := a.Exec(ctx, "DISCARD ALL"); err != nil {
		t.Fatal(err)
	}
	if blocked(t, g) {
		t.Fatal("DISCARD ALL did not unpin the client")
	}

	off := onePinnable(t, func(c *gateway.Config) { c.PinOnSessionState = false })
	a = off.connect(t)
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE t3 (v int)"); err != nil {
		t.Fatal(err)
	}
	if blocked(t, off) {
		t.Fatal("--pin-on-session-state off still pinned")
	}
}

// A pinned client that leaves takes its state with it: the backend is reset before anyone else
// gets it, or closed when no reset can undo the state (LOAD).
func TestPinnedClientLeavingResetsItsBackend(t *testing.T) {
	g := onePinnable(t, nil)
	ctx := ctxT(t)
	a := g.connect(t)
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE leftover (v int)"); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	a.Close(ctx)
	b := g.connect(t)
	var temps, samePID int
	eventually(t, "the next client on the same backend", func() bool {
		err := b.QueryRow(ctx, "SELECT count(*)::int, (pg_backend_pid() = $1)::int FROM pg_class WHERE relname = 'leftover' AND relpersistence = 't'", pid).Scan(&temps, &samePID)
		return err == nil
	})
	if samePID != 1 || temps != 0 {
		t.Fatalf("same backend %d, leftover temporary tables %d: want the same backend, reset", samePID, temps)
	}

	if _, err := b.Exec(ctx, "LOAD 'auto_explain'"); err != nil {
		t.Fatal(err)
	}
	b.Close(ctx)
	c := g.connect(t)
	var loaded string
	eventually(t, "a backend for the next client", func() bool {
		return c.QueryRow(ctx, "SELECT coalesce(current_setting('auto_explain.log_min_duration', true), '')").Scan(&loaded) == nil
	})
	if loaded != "" {
		t.Fatalf("the next client got the backend that loaded auto_explain (log_min_duration %q)", loaded)
	}
}

// --max-pinned-time disconnects a client that stays pinned too long, with a clear error.
func TestMaxPinnedTime(t *testing.T) {
	g := onePinnable(t, func(c *gateway.Config) { c.MaxPinnedTime = 200 * time.Millisecond })
	ctx := ctxT(t)
	a := g.connect(t)
	if _, err := a.Exec(ctx, "SET work_mem = '8MB'"); err != nil {
		t.Fatal(err)
	}
	var err error
	eventually(t, "the pinned client to be disconnected", func() bool {
		_, err = a.Exec(ctx, "SELECT 1")
		return err != nil
	})
	if !strings.Contains(err.Error(), "--max-pinned-time") && pgCode(err) != "53400" {
		t.Fatalf("error %v, want one naming --max-pinned-time", err)
	}
	b := g.connect(t)
	if _, err := b.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the backend did not come back: %v", err)
	}
}

// search_path follows a client only if the server reports it (PostgreSQL 18); before that a SET
// pins, and in no case does one client's search_path reach another.
func TestSearchPathNeverLeaks(t *testing.T) {
	g := startGateway(t, transactionMode(1))
	ctx := ctxT(t)
	setup := direct(t)
	if _, err := setup.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS leak_s; CREATE TABLE IF NOT EXISTS leak_s.only_here (v int); TRUNCATE leak_s.only_here; INSERT INTO leak_s.only_here VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	var def string
	if err := setup.QueryRow(ctx, "SELECT reset_val FROM pg_settings WHERE name = 'search_path'").Scan(&def); err != nil {
		t.Fatal(err)
	}

	// Set at startup: the gateway sets it on each backend for this client, and undoes it for
	// the next one.
	cfg, err := pgx.ParseConfig(g.dsn(appUser, appPassword, testDatabase))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = "leak_s, public"
	a, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := expectInt(ctx, a, 7, "SELECT v FROM only_here"); err != nil {
		t.Fatal(err)
	}
	a.Close(ctx)
	b := g.connect(t)
	var got string
	if err := b.QueryRow(ctx, "SHOW search_path").Scan(&got); err != nil || got != def {
		t.Fatalf("next client's search_path %q (%v), want the default %q", got, err, def)
	}

	// Set in a session: it keeps working for the client, and the next one does not see it.
	if _, err := b.Exec(ctx, "SET search_path = leak_s, public"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := expectInt(ctx, b, 7, "SELECT v FROM only_here"); err != nil {
			t.Fatal(err)
		}
	}
	b.Close(ctx)
	c := g.connect(t)
	eventually(t, "a backend for the next client", func() bool { return c.QueryRow(ctx, "SHOW search_path").Scan(&got) == nil })
	if got != def {
		t.Fatalf("next client's search_path %q, want the default %q", got, def)
	}
}

// Pinned clients show in the console's SHOW CLIENTS (pinned column) and in the count behind the
// metrics.
func TestPinnedClientsShowInConsole(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		transactionMode(2)(c)
		c.AdminUsers = []string{appUser}
	})
	ctx := ctxT(t)
	app := g.connect(t)
	console := g.adminConn(t, appUser, appPassword, "asyncgate")
	pinnedRow := func() any {
		names, rows := show(t, console, "SHOW CLIENTS")
		r := row(names, rows, "database", testDatabase)
		if r == nil {
			t.Fatalf("SHOW CLIENTS has no %s client: %v", testDatabase, rows)
		}
		return r["pinned"]
	}
	if got := pinnedRow(); got != "false" {
		t.Fatalf("pinned %v before any session state", got)
	}
	if _, err := app.Exec(ctx, "CREATE TEMP TABLE shown (v int)"); err != nil {
		t.Fatal(err)
	}
	if got := pinnedRow(); got != "true" || g.srv.PinnedClients() != 1 {
		t.Fatalf("pinned %v, PinnedClients %d after CREATE TEMP TABLE", got, g.srv.PinnedClients())
	}
	if _, err := app.Exec(ctx, "DROP TABLE shown"); err != nil {
		t.Fatal(err)
	}
	if got := pinnedRow(); got != "false" {
		t.Fatalf("pinned %v after the table was dropped", got)
	}
}
