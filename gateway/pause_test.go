package gateway_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// adminExec runs a console command that answers with a command tag only.
func adminExec(t *testing.T, conn *pgx.Conn, cmd string) {
	t.Helper()
	if _, err := conn.Exec(ctxT(t), cmd, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}

// poolColumn reads a column of the primary pool's SHOW POOLS row.
func poolColumn(t *testing.T, admin *pgx.Conn, col string) int64 {
	names, rows := show(t, admin, "SHOW POOLS")
	r := row(names, rows, "database", testDatabase)
	if r == nil {
		return 0
	}
	return r[col].(int64)
}

// PAUSE answers once the transaction running when it was issued has ended; meanwhile and until
// RESUME, new work waits (and shows as waiting) instead of failing; RESUME lets it run.
func TestAdminPauseResume(t *testing.T) {
	g := startAdminGateway(t)
	admin := g.adminConn(t, appUser, appPassword, "asyncgate")
	watch := g.adminConn(t, appUser, appPassword, "asyncgate")

	a := g.connect(t)
	tx, err := a.Begin(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	paused := make(chan error, 1)
	go func() {
		_, err := admin.Exec(context.Background(), "PAUSE "+testDatabase, pgx.QueryExecModeSimpleProtocol)
		paused <- err
	}()
	eventually(t, "SHOW DATABASES paused = 1", func() bool {
		names, rows := show(t, watch, "SHOW DATABASES")
		r := row(names, rows, "name", testDatabase)
		return r != nil && r["paused"].(int64) == 1
	})
	select {
	case err := <-paused:
		t.Fatalf("PAUSE answered (%v) while a transaction was running", err)
	default:
	}
	if err := tx.Commit(ctxT(t)); err != nil {
		t.Fatalf("commit while pausing: %v", err)
	}
	a.Close(ctxT(t)) // session mode: the client holds its backend until it leaves
	select {
	case err := <-paused:
		if err != nil {
			t.Fatalf("PAUSE: %v", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("PAUSE did not answer after the transaction ended")
	}

	done := make(chan error, 1)
	go func() {
		c, err := g.connectAs(appUser, appPassword, testDatabase)
		if err == nil {
			_, err = c.Exec(context.Background(), "SELECT 1")
			c.Close(context.Background())
		}
		done <- err
	}()
	eventually(t, "the new client waits for RESUME in SHOW POOLS cl_waiting", func() bool {
		return poolColumn(t, watch, "cl_waiting") == 1
	})
	select {
	case err := <-done:
		t.Fatalf("a client ran (%v) while its database was paused", err)
	default:
	}
	adminExec(t, admin, "RESUME "+testDatabase)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("client held by PAUSE, after RESUME: %v", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("the client held by PAUSE did not run after RESUME")
	}

	for cmd, code := range map[string]string{"PAUSE nodb": "3D000", "RESUME a b": "42601"} {
		if _, err := admin.Exec(ctxT(t), cmd, pgx.QueryExecModeSimpleProtocol); pgCode(err) != code {
			t.Fatalf("%s: %v, want %s", cmd, err, code)
		}
	}
}

// KILL closes the database's clients at once and holds new ones until RESUME.
func TestAdminKill(t *testing.T) {
	g := startAdminGateway(t)
	admin := g.adminConn(t, appUser, appPassword, "asyncgate")
	victim := g.connect(t)
	if _, err := victim.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	adminExec(t, admin, "KILL "+testDatabase)
	eventually(t, "the killed client's connection closes", func() bool {
		_, err := victim.Exec(ctxT(t), "SELECT 1")
		return err != nil
	})
	done := make(chan error, 1)
	go func() {
		c, err := g.connectAs(appUser, appPassword, testDatabase)
		if err == nil {
			_, err = c.Exec(context.Background(), "SELECT 1")
			c.Close(context.Background())
		}
		done <- err
	}()
	eventually(t, "a new client waits after KILL", func() bool { return poolColumn(t, admin, "cl_waiting") == 1 })
	adminExec(t, admin, "RESUME")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("client after KILL and RESUME: %v", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("client held after KILL did not run after RESUME")
	}
}

// RECONNECT closes the idle backend connections at once and the lent ones when they come back.
func TestAdminReconnect(t *testing.T) {
	g := startAdminGateway(t)
	admin := g.adminConn(t, appUser, appPassword, "asyncgate")
	db := direct(t)
	alive := func(pid uint32) bool {
		var n int
		if err := db.QueryRow(ctxT(t), "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", int64(pid)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	backendPID := func(c *pgx.Conn) uint32 {
		var pid uint32
		if err := c.QueryRow(ctxT(t), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	busy := g.connect(t)
	tx, err := busy.Begin(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var busyPID uint32
	if err := tx.QueryRow(ctxT(t), "SELECT pg_backend_pid()").Scan(&busyPID); err != nil {
		t.Fatal(err)
	}
	idle := g.connect(t)
	idlePID := backendPID(idle)
	idle.Close(ctxT(t))
	eventually(t, "the idle client's backend back in the pool", func() bool { return poolColumn(t, admin, "sv_idle") >= 1 })
	if !alive(idlePID) || !alive(busyPID) {
		t.Fatal("backends gone before RECONNECT")
	}

	adminExec(t, admin, "RECONNECT "+testDatabase)
	eventually(t, "the idle backend closed", func() bool { return !alive(idlePID) })
	if !alive(busyPID) {
		t.Fatal("RECONNECT closed a backend in a transaction")
	}
	if err := tx.Commit(ctxT(t)); err != nil {
		t.Fatalf("commit after RECONNECT: %v", err)
	}
	busy.Close(ctxT(t))
	eventually(t, "the lent backend closed once back", func() bool { return !alive(busyPID) })

	c := g.connect(t)
	if _, err := c.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatalf("query after RECONNECT: %v", err)
	}
}
