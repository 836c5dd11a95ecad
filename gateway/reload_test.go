package gateway_test

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/asyncgate/asyncgate/gateway"
)

// A reload shrinks and grows the pool while 100 clients keep running queries: none of them sees
// an error, and the pool follows the new size. Settings that need a restart are reported.
func TestReloadPoolSizeUnderLoad(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		c.PoolMode = "transaction"
		c.PoolSize = 10
		c.MaxClientConn = 200
	})
	openConns := func() int {
		n := 0
		for _, p := range g.srv.Pools() {
			n += p.Stats().Open
		}
		return n
	}
	var stop atomic.Bool
	var queries atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		concurrently(t, g, 100, func(ctx context.Context, conn *pgx.Conn, i int) error {
			for !stop.Load() {
				if _, err := conn.Exec(ctx, "SELECT pg_sleep(0.001)"); err != nil {
					return err
				}
				queries.Add(1)
			}
			return nil
		})
	}()
	eventually(t, "the pool full under load", func() bool { return openConns() == 10 })

	next := g.cfg
	next.PoolSize = 4
	next.PoolMode = "statement"
	res := g.srv.Reload(next)
	if !slices.ContainsFunc(res.Applied, func(a string) bool { return strings.HasPrefix(a, "PoolSize") }) {
		t.Fatalf("PoolSize not applied: %+v", res)
	}
	if !slices.ContainsFunc(res.Rejected, func(r string) bool { return strings.HasPrefix(r, "PoolMode") }) {
		t.Fatalf("a pool mode change was not rejected: %+v", res)
	}
	eventually(t, "the pool down to 4 connections", func() bool { return openConns() <= 4 })
	mark := queries.Load()
	eventually(t, "queries running on the smaller pool", func() bool { return queries.Load() > mark+200 })
	if n := openConns(); n > 4 {
		t.Fatalf("%d connections open after shrinking to 4", n)
	}

	next.PoolSize = 12
	g.srv.Reload(next)
	eventually(t, "the pool grown to 12 connections", func() bool { return openConns() == 12 })
	stop.Store(true)
	<-done
}

// The console's SET changes a setting at once; a reload adds a database without a restart.
func TestReloadSetAndNewDatabase(t *testing.T) {
	g := startAdminGateway(t)
	admin := g.adminConn(t, appUser, appPassword, "pgbouncer")
	adminExec(t, admin, "SET default_pool_size = 3")
	names, rows := show(t, admin, "SHOW DATABASES")
	if r := row(names, rows, "name", testDatabase); r == nil || r["pool_size"].(int64) != 3 {
		t.Fatalf("pool_size after SET default_pool_size = 3: %v", r)
	}
	adminExec(t, admin, "SET query_timeout = 0.05")
	c := g.connect(t)
	if _, err := c.Exec(ctxT(t), "SELECT pg_sleep(1)"); pgCode(err) != "57014" {
		t.Fatalf("query after SET query_timeout = 0.05: %v, want 57014", err)
	}

	if _, err := g.connectAs(appUser, appPassword, "second"); pgCode(err) != "3D000" {
		t.Fatalf("unknown database before the reload: %v", err)
	}
	next := g.cfg
	next.Databases = map[string]string{testDatabase: g.cfg.Databases[testDatabase], "second": g.cfg.Databases[testDatabase]}
	if res := g.srv.Reload(next); len(res.Rejected) > 0 {
		t.Fatalf("reload adding a database: %+v", res)
	}
	c2, err := g.connectAs(appUser, appPassword, "second")
	if err != nil {
		t.Fatalf("new database after the reload: %v", err)
	}
	defer c2.Close(ctxT(t))
	if _, err := c2.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}
