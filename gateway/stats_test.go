package gateway_test

import (
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/asyncgate/asyncgate/gateway"
)

// A scripted workload moves the latency histograms, the counters and the error counts by what
// it did, and SHOW STATS_TOTALS reads the same numbers per database.
func TestStatsFollowWorkload(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { c.AdminUsers = []string{appUser} })
	hs := httptest.NewServer(g.srv.MetricsHandler())
	t.Cleanup(hs.Close)
	labels := `{database="` + testDatabase + `",user="` + appUser + `"}`
	before := scrape(t, hs.URL)

	conn := g.connect(t)
	const selects = 20
	for range selects {
		if _, err := conn.Exec(ctxT(t), "SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := conn.Begin(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctxT(t), "SELECT pg_sleep(0.05)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctxT(t), "SELECT * FROM no_such_table", pgx.QueryExecModeSimpleProtocol); pgCode(err) != "42P01" {
		t.Fatalf("query of a missing table: %v", err)
	}
	after := scrape(t, hs.URL)
	delta := func(name string) float64 { return after[name] - before[name] }

	// Every unit is measured once in each histogram: the selects, BEGIN, the sleep, COMMIT, the
	// failed one (pgx's extended protocol sends one Sync per Exec), at least.
	for _, h := range []string{"asyncgate_request_seconds", "asyncgate_backend_seconds", "asyncgate_queue_wait_seconds"} {
		if n := delta(h + "_count" + labels); n < selects+4 {
			t.Errorf("%s_count grew by %v, want at least %d", h, n, selects+4)
		}
	}
	// The 50 ms sleep shows in backend time and total, not in queue wait.
	for _, h := range []string{"asyncgate_request_seconds", "asyncgate_backend_seconds"} {
		if s := delta(h + "_sum" + labels); s < 0.05 {
			t.Errorf("%s_sum grew by %v s, want at least the 0.05 s slept", h, s)
		}
	}
	if w := delta("asyncgate_queue_wait_seconds_sum" + labels); w >= 0.05 {
		t.Errorf("queue wait sum grew by %v s with a pool to spare", w)
	}
	le := `{database="` + testDatabase + `",user="` + appUser + `",le="0.0512"}`
	if _, ok := after["asyncgate_backend_seconds_bucket"+le]; !ok {
		t.Errorf("no bucket %s", le)
	}
	if n := delta(`asyncgate_errors_total{database="` + testDatabase + `",source="backend",sqlstate_class="42"}`); n != 1 {
		t.Errorf("backend errors of class 42 grew by %v, want 1", n)
	}
	if n := delta("asyncgate_queries_total" + labels); n < selects+4 {
		t.Errorf("queries_total grew by %v", n)
	}
	if n := delta("asyncgate_transactions_total" + labels); n < selects+2 {
		t.Errorf("transactions_total grew by %v", n)
	}
	for _, c := range []string{"asyncgate_client_received_bytes_total", "asyncgate_client_sent_bytes_total"} {
		if n := delta(c + labels); n < selects*10 {
			t.Errorf("%s grew by %v", c, n)
		}
	}

	admin := g.adminConn(t, appUser, appPassword, "pgbouncer")
	names, rows := show(t, admin, "SHOW STATS_TOTALS")
	r := row(names, rows, "database", testDatabase)
	if r == nil {
		t.Fatalf("SHOW STATS_TOTALS has no row for %s: %v", testDatabase, rows)
	}
	if q := r["query_count"].(int64); float64(q) != after["asyncgate_queries_total"+labels] {
		t.Errorf("SHOW STATS_TOTALS query_count %d, /metrics %v", q, after["asyncgate_queries_total"+labels])
	}
	for _, col := range []string{"xact_count", "bytes_received", "bytes_sent", "server_assignment_count"} {
		if r[col].(int64) <= 0 {
			t.Errorf("SHOW STATS_TOTALS %s = %v", col, r[col])
		}
	}
	if qt := r["query_time"].(int64); qt < 50_000 {
		t.Errorf("SHOW STATS_TOTALS query_time %d µs, want at least the 50 ms slept", qt)
	}
	if xt := r["xact_time"].(int64); xt < 50_000 {
		t.Errorf("SHOW STATS_TOTALS xact_time %d µs, want at least the 50 ms slept", xt)
	}
	names, rows = show(t, admin, "SHOW STATS")
	if r := row(names, rows, "database", testDatabase); r == nil || r["total_query_count"].(int64) <= 0 || r["avg_query_count"].(int64) < 0 {
		t.Errorf("SHOW STATS row: %v", r)
	}
	names, rows = show(t, admin, "SHOW STATS_AVERAGES")
	if r := row(names, rows, "database", testDatabase); r == nil || r["query_time"].(int64) <= 0 {
		t.Errorf("SHOW STATS_AVERAGES row: %v", r)
	}
}

// The Grafana dashboard of docker-compose.yml asks only for metrics the gateway exposes.
func TestDashboardMetricsExist(t *testing.T) {
	dash, err := os.ReadFile("../deploy/grafana/dashboards/asyncgate.json")
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, nil)
	hs := httptest.NewServer(g.srv.MetricsHandler())
	t.Cleanup(hs.Close)
	conn := g.connect(t)
	if _, err := conn.Exec(ctxT(t), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctxT(t), "SELECT nonsense"); err == nil {
		t.Fatal("a bad query succeeded")
	}
	exposed := map[string]bool{}
	for k := range scrape(t, hs.URL) {
		name, _, _ := strings.Cut(k, "{")
		exposed[name] = true
	}
	needReplicas := map[string]bool{"asyncgate_replica_reads_total": true}
	used := regexp.MustCompile(`\b(asyncgate_[a-z_]+|process_[a-z_]+|go_[a-z_]+)`).FindAllString(string(dash), -1)
	if len(used) < 10 {
		t.Fatalf("the dashboard uses %d metrics: %v", len(used), used)
	}
	for _, name := range used {
		if !exposed[name] && !needReplicas[name] {
			t.Errorf("the dashboard uses %s, which /metrics does not expose", name)
		}
	}
}
