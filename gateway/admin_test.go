package gateway_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/gateway/auth"
	"github.com/asyncgate/asyncgate/internal/faultproxy"
)

// startAdminGateway is a gateway whose console the app user administers and the SCRAM user may
// read; the MD5 user has no console rights.
func startAdminGateway(t *testing.T) *gw {
	t.Helper()
	return startGateway(t, func(c *gateway.Config) {
		c.AdminUsers = []string{appUser}
		c.StatsUsers = []string{scramUser}
	})
}

// adminConn logs into the console as user.
func (g *gw) adminConn(t *testing.T, user, password, database string) *pgx.Conn {
	t.Helper()
	conn, err := g.connectAs(user, password, database)
	if err != nil {
		t.Fatalf("console login as %s: %v", user, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// show runs a console command and returns its column names and rows.
func show(t *testing.T, conn *pgx.Conn, cmd string) ([]string, [][]any) {
	t.Helper()
	rows, err := conn.Query(ctxT(t), cmd, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer rows.Close()
	var names []string
	for _, f := range rows.FieldDescriptions() {
		names = append(names, f.Name)
	}
	var out [][]any
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return names, out
}

// row finds the first row whose column col equals want.
func row(names []string, rows [][]any, col string, want any) map[string]any {
	i := slices.Index(names, col)
	for _, r := range rows {
		if i >= 0 && r[i] == want {
			m := map[string]any{}
			for j, n := range names {
				m[n] = r[j]
			}
			return m
		}
	}
	return nil
}

// Every SHOW command answers with the columns PgBouncer gives it (and the gateway's own ones
// with theirs), through both admin database names.
func TestAdminShowColumns(t *testing.T) {
	g := startAdminGateway(t)
	app := g.connect(t)
	if _, err := app.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	clientCols := "type user database replication state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name prepared_statements id pinned"
	statsCols := "server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time wait_time client_parse_count server_parse_count bind_count"
	want := map[string]string{
		"POOLS":          "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode",
		"CLIENTS":        clientCols,
		"SERVERS":        clientCols,
		"DATABASES":      "name host port database force_user pool_size min_pool_size reserve_pool server_lifetime pool_mode max_connections current_connections paused disabled",
		"STATS":          "database total_server_assignment_count total_xact_count total_query_count total_received total_sent total_xact_time total_query_time total_wait_time total_client_parse_count total_server_parse_count total_bind_count avg_server_assignment_count avg_xact_count avg_query_count avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time avg_client_parse_count avg_server_parse_count avg_bind_count",
		"STATS_TOTALS":   "database " + statsCols,
		"STATS_AVERAGES": "database " + statsCols,
		"CONFIG":         "key value default changeable",
		"LISTS":          "list items",
		"USERS":          "name pool_size reserve_pool_size pool_mode max_user_connections current_connections max_user_client_connections current_client_connections",
		"VERSION":        "version",
		"BREAKERS":       "pool backend state opens rejects",
		"QUEUES":         "pool backend waiting",
		"HEDGES":         "database sent hedged won_by_hedge cancelled denied skipped retried delay_us",
	}
	for _, db := range []string{"pgbouncer", "asyncgate"} {
		conn := g.adminConn(t, appUser, appPassword, db)
		for cmd, cols := range want {
			names, _ := show(t, conn, "SHOW "+cmd)
			if got := strings.Join(names, " "); got != cols {
				t.Errorf("%s SHOW %s columns:\n got %s\nwant %s", db, cmd, got, cols)
			}
		}
	}

	conn := g.adminConn(t, appUser, appPassword, "pgbouncer")
	names, rows := show(t, conn, "show pools") // case does not matter
	p := row(names, rows, "database", testDatabase)
	if p == nil || p["user"] != appUser || p["pool_mode"] != g.cfg.PoolMode {
		t.Fatalf("SHOW POOLS has no row for %s/%s in %s mode: %v", testDatabase, appUser, g.cfg.PoolMode, rows)
	}
	if open := p["sv_active"].(int64) + p["sv_idle"].(int64) + p["sv_login"].(int64); open < 1 {
		t.Fatalf("SHOW POOLS: no server connection after a query: %v", p)
	}
	names, rows = show(t, conn, "SHOW CLIENTS")
	if row(names, rows, "database", testDatabase) == nil || row(names, rows, "database", "pgbouncer") == nil {
		t.Fatalf("SHOW CLIENTS lacks the app client or the console client: %v", rows)
	}
	names, rows = show(t, conn, "SHOW DATABASES")
	if d := row(names, rows, "name", testDatabase); d == nil || d["pool_size"] != int64(defaultTestPoolSize) {
		t.Fatalf("SHOW DATABASES: %v", rows)
	}
	names, rows = show(t, conn, "SHOW BREAKERS")
	if b := row(names, rows, "pool", testDatabase+"/"+appUser); b == nil || b["state"] != "closed" {
		t.Fatalf("SHOW BREAKERS: %v", rows)
	}
	names, rows = show(t, conn, "SHOW LISTS")
	if l := row(names, rows, "list", "used_clients"); l == nil || l["items"].(int64) < 2 {
		t.Fatalf("SHOW LISTS used_clients: %v", rows)
	}
	if _, rows = show(t, conn, "SHOW HEDGES"); len(rows) != 0 {
		t.Fatalf("SHOW HEDGES without hedged reads: %v", rows)
	}
	if _, rows = show(t, conn, "SHOW VERSION"); len(rows) != 1 || !strings.HasPrefix(rows[0][0].(string), "asyncgate ") {
		t.Fatalf("SHOW VERSION: %v", rows)
	}
}

// pgbouncer_exporter reads SHOW STATS, POOLS, DATABASES and LISTS by column name: labels from
// the text columns it knows, and every other column as a number.
func TestAdminExporterCompatible(t *testing.T) {
	g := startAdminGateway(t)
	g.connect(t)
	conn := g.adminConn(t, scramUser, scramPass, "pgbouncer") // a stats user is enough
	labels := map[string][]string{
		"STATS":     {"database"},
		"POOLS":     {"database", "user", "pool_mode"},
		"DATABASES": {"name", "host", "database", "force_user", "pool_mode"},
		"LISTS":     {"list"},
	}
	required := map[string][]string{
		"STATS":     {"total_query_count", "total_query_time", "total_received", "total_sent", "total_wait_time", "total_xact_count", "total_xact_time"},
		"POOLS":     {"cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us"},
		"DATABASES": {"pool_size", "reserve_pool", "max_connections", "current_connections", "paused", "disabled"},
		"LISTS":     {"items"},
	}
	for cmd, text := range labels {
		names, rows := show(t, conn, "SHOW "+cmd)
		for _, c := range required[cmd] {
			if !slices.Contains(names, c) {
				t.Errorf("SHOW %s lacks column %s", cmd, c)
			}
		}
		if len(rows) == 0 {
			t.Errorf("SHOW %s: no rows", cmd)
		}
		for _, r := range rows {
			for i, v := range r {
				if slices.Contains(text, names[i]) || v == nil {
					continue
				}
				if _, ok := v.(int64); !ok {
					t.Errorf("SHOW %s column %s = %#v, want a number", cmd, names[i], v)
				}
			}
		}
	}
}

// Only --admin-users and --stats-users get in; stats users may only look.
func TestAdminAccess(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		c.AuthType = auth.Trust // lets all three users in, whatever their secret's kind
		c.AdminUsers = []string{appUser}
		c.StatsUsers = []string{scramUser}
	})

	_, err := g.connectAs(md5User, md5Password, "pgbouncer")
	if pgCode(err) != "28000" || !strings.Contains(err.Error(), "--admin-users") {
		t.Fatalf("non-admin user on the console: %v, want 28000 naming --admin-users", err)
	}

	stats := g.adminConn(t, scramUser, scramPass, "asyncgate")
	show(t, stats, "SHOW POOLS")
	for _, cmd := range []string{"RELOAD", "SHUTDOWN", "PAUSE", "SET default_pool_size = 5"} {
		_, err := stats.Exec(ctxT(t), cmd, pgx.QueryExecModeSimpleProtocol)
		if pgCode(err) != "42501" {
			t.Fatalf("stats user runs %s: %v, want 42501", cmd, err)
		}
	}
	show(t, stats, "SHOW VERSION") // still usable

	admin := g.adminConn(t, appUser, appPassword, "asyncgate")
	if _, err := admin.Exec(ctxT(t), "RELOAD", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("RELOAD: %v", err)
	}
	for cmd, code := range map[string]string{
		"KILL_CLIENT 1":              "0A000",
		"KILL nodb":                  "3D000",
		"SET no_such_setting = 1":    "42704",
		"SET pool_mode = statement":  "55P02",
		"SET max_client_conn = lots": "22023",
		"SET default_pool_size = 0":  "22023",
		"FROB":                       "42601",
		"SHOW FROBS":                 "42601",
		"SELECT 1":                   "42601",
	} {
		_, err := admin.Exec(ctxT(t), cmd, pgx.QueryExecModeSimpleProtocol)
		if pgCode(err) != code {
			t.Fatalf("%s: %v, want %s", cmd, err, code)
		}
	}
	show(t, admin, "SHOW LISTS") // errors leave the console usable
	if _, err := admin.Exec(ctxT(t), "", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("empty query: %v", err)
	}

	// A configured database of the same name is a database, not the console.
	g2 := startGateway(t, func(c *gateway.Config) {
		c.Databases["pgbouncer"] = c.Databases[testDatabase]
	})
	conn, err := g2.connectAs(appUser, appPassword, "pgbouncer")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctxT(t))
	var one int
	if err := conn.QueryRow(ctxT(t), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("--database pgbouncer=…: %v", err)
	}
}

// SHUTDOWN stops the listener: Serve returns, as the command's caller then shuts down.
func TestAdminShutdown(t *testing.T) {
	g := startAdminGateway(t)
	admin := g.adminConn(t, appUser, appPassword, "asyncgate")
	if _, err := admin.Exec(ctxT(t), "SHUTDOWN", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("SHUTDOWN: %v", err)
	}
	if c, err := g.connectAs(appUser, appPassword, testDatabase); err == nil {
		c.Close(ctxT(t))
		t.Fatal("a client got in after SHUTDOWN")
	}
}

// SHOW HEDGES has a row per database with hedged reads on, with Server.HedgeStats' counters.
func TestAdminShowHedges(t *testing.T) {
	h := startHedging(t, func(cfg *gateway.Config) {
		cfg.HedgeDelay = 3 * time.Millisecond
		cfg.AdminUsers = []string{appUser}
	})
	ctx := ctxT(t)
	conn := h.connect(t)
	h.warm(t, conn)
	// Every answer of the replica is late: reads are hedged until the budget says no.
	h.px.Set(faultproxy.Faults{Delay: 30 * time.Millisecond})
	for i := range 30 {
		var n int
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT %d", i), pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != i {
			t.Fatalf("read %d: %d, %v", i, n, err)
		}
	}
	h.px.Set(faultproxy.Faults{})
	console := h.adminConn(t, appUser, appPassword, "pgbouncer")
	names, rows := show(t, console, "SHOW HEDGES")
	if len(rows) != 1 {
		t.Fatalf("SHOW HEDGES: %d rows, want one for %s: %v", len(rows), testDatabase, rows)
	}
	r := row(names, rows, "database", testDatabase)
	if r == nil {
		t.Fatalf("SHOW HEDGES has no row for %s: %v", testDatabase, rows)
	}
	// Every race was decided when its read answered, so the counters stand still by now.
	after := h.srv.HedgeStats(testDatabase)
	for col, want := range map[string]uint64{"sent": after.Sent, "hedged": after.Hedged,
		"won_by_hedge": after.WonByHedge, "cancelled": after.Cancelled, "denied": after.Denied,
		"skipped": after.Skipped, "retried": after.Retried} {
		got, ok := r[col].(int64)
		if !ok || uint64(got) != want {
			t.Errorf("SHOW HEDGES %s = %#v, want %d (HedgeStats %+v)", col, r[col], want, after)
		}
	}
	if after.Sent < 30 || after.Hedged == 0 || after.WonByHedge == 0 {
		t.Errorf("HedgeStats %+v: want 30 hedgeable reads, some hedged and won", after)
	}
	if got, ok := r["delay_us"].(int64); !ok || got != h.cfg.HedgeDelay.Microseconds() {
		t.Errorf("SHOW HEDGES delay_us = %#v, want the fixed --hedge-delay %s", r["delay_us"], h.cfg.HedgeDelay)
	}
}
