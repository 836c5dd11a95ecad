package gateway_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/hedge"
	"github.com/asyncgate/asyncgate/internal/faultproxy"
	"github.com/asyncgate/asyncgate/internal/pgtest"
	"github.com/asyncgate/asyncgate/pool"
)

// hedged is a gateway whose one replica sits behind a fault proxy, so that it can be made slow
// or broken while the primary stays fast: hedges then go to the primary.
type hedged struct {
	*gw
	px               *faultproxy.Proxy
	primary, replica *pgtest.Cluster
}

const hedgePoolSize = 12

func startHedging(t *testing.T, mutate func(*gateway.Config)) *hedged {
	t.Helper()
	primary, replica := primaryWithReplica(t)
	px, err := faultproxy.Start(replica.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	u, err := url.Parse(replica.DSN("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	u.Host = px.Addr()
	g := startGateway(t, func(cfg *gateway.Config) {
		cfg.Databases = map[string]string{testDatabase: primary.DSN("postgres", "postgres")}
		cfg.Replicas = map[string][]string{testDatabase: {u.String()}}
		if cfg.PoolMode == "session" {
			cfg.PoolMode = "transaction"
		}
		cfg.ReadRouting = "auto"
		cfg.ReadFunctions = []string{"pg_is_in_recovery", "pg_sleep"}
		cfg.MaxReplicaLag = 0 // the proxy's delays are no replication lag
		// Connections through a slow proxy take many round trips to open: keep enough open.
		cfg.PoolSize, cfg.MinPoolSize = hedgePoolSize, hedgePoolSize
		cfg.Hedge = true
		cfg.HedgeDelay = 20 * time.Millisecond
		cfg.CancelDrainTimeout = 5 * time.Second
		if mutate != nil {
			mutate(cfg)
		}
	})
	return &hedged{gw: g, px: px, primary: primary, replica: replica}
}

// warm waits until reads run on the replica and both pools hold their minimum of idle
// connections, opened while the proxy was still fast.
func (h *hedged) warm(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	ctx := ctxT(t)
	eventually(t, "a read runs on the replica", func() bool { return inRecovery(t, ctx, conn) })
	eventually(t, "pools full and idle", func() bool {
		pools := h.srv.Pools()
		if len(pools) < 2 {
			return false
		}
		for _, p := range pools {
			if st := p.Stats(); st.Idle < h.cfg.MinPoolSize {
				return false
			}
		}
		return true
	})
}

// activeOnReplica counts the replica's backends running a query containing tag.
func (h *hedged) activeOnReplica(t *testing.T, tag string) int {
	t.Helper()
	v, err := h.replica.QueryValue(ctxT(t), fmt.Sprintf(
		"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%%%s%%' AND pid <> pg_backend_pid()", tag))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	fmt.Sscan(v, &n)
	return n
}

func rowsOf(ctx context.Context, conn *pgx.Conn, mode pgx.QueryExecMode, sql string, args ...any) (string, error) {
	rows, err := conn.Query(ctx, sql, append([]any{mode}, args...)...)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			rows.Close()
			return "", err
		}
		fmt.Fprintln(&b, vals...)
	}
	return b.String(), rows.Err()
}

var hedgeModes = []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec}

// Hedged reads return what unhedged ones do, whichever backend wins.
func TestHedgeSameRows(t *testing.T) {
	h := startHedging(t, func(cfg *gateway.Config) { cfg.HedgeDelay = 3 * time.Millisecond })
	ctx := ctxT(t)
	conn := h.connect(t)
	h.warm(t, conn)
	plain, err := pgx.Connect(ctx, h.primary.DSN("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close(ctx)
	// About half the replica's answers are late: the hedge wins those.
	h.px.Set(faultproxy.Faults{SpikeP: 0.5, Spike: 15 * time.Millisecond, Seed: 7})
	before := h.srv.HedgeStats(testDatabase)
	queries := []string{
		"SELECT g, g * 2, md5(g::text) FROM generate_series(1, %d) g",
		"SELECT string_agg(g::text, ',') FROM generate_series(1, %d) g",
		"SELECT %d AS n, 'text' AS t, NULL::int AS z, now() IS NOT NULL",
		"SELECT repeat('x', %d * 100)",
		"SELECT count(*) FROM pg_class WHERE relpages >= %d",
		"SELECT g FROM generate_series(1, %d) g WHERE g %% 7 = 0 ORDER BY g DESC",
	}
	for i := range 40 {
		mode := hedgeModes[i%len(hedgeModes)]
		sql := fmt.Sprintf(queries[i%len(queries)], i+1)
		got, err := rowsOf(ctx, conn, mode, sql)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		want, err := rowsOf(ctx, plain, mode, sql)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%s (%v):\ngot  %q\nwant %q", sql, mode, got, want)
		}
	}
	// Parameters travel with the frames.
	for i := range 10 {
		mode := hedgeModes[i%len(hedgeModes)]
		got, err := rowsOf(ctx, conn, mode, "SELECT $1::int + 1, $2::text", i, fmt.Sprint("p", i))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintln(int32(i+1), fmt.Sprint("p", i)); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	st := h.srv.HedgeStats(testDatabase)
	t.Logf("hedge stats: %+v", st)
	if st.Sent-before.Sent < 50 {
		t.Errorf("%d hedgeable reads counted, want 50", st.Sent-before.Sent)
	}
	if st.Hedged == before.Hedged || st.WonByHedge == before.WonByHedge {
		t.Errorf("no hedge sent or won with a spiky replica: %+v", st)
	}
}

// A replica that answers after 300 ms does not slow reads down: the hedge answers, and the
// original is cancelled on the replica.
func TestHedgeSlowReplica(t *testing.T) {
	h := startHedging(t, nil)
	ctx := ctxT(t)
	conn := h.connect(t)
	h.warm(t, conn)
	h.px.Set(faultproxy.Faults{Delay: 300 * time.Millisecond})
	before := h.srv.HedgeStats(testDatabase)
	const reads = 6
	for i := range reads {
		// Sleeps on the replica only: the hedge, on the primary, answers at once.
		tag := fmt.Sprintf("hedge_slow_%d", i)
		sql := fmt.Sprintf("SELECT pg_sleep(CASE WHEN pg_is_in_recovery() THEN 5 ELSE 0 END), '%s', pg_is_in_recovery()", tag)
		start := time.Now()
		var rec bool
		var out string
		if err := conn.QueryRow(ctx, sql, hedgeModes[i%2]).Scan(nil, &out, &rec); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		answered := time.Now()
		if took > 200*time.Millisecond || rec || out != tag {
			t.Errorf("read %d took %s, in recovery %v: want well under 300 ms from the primary", i, took, rec)
		}
		for h.activeOnReplica(t, tag) > 0 {
			if time.Since(answered) > time.Second {
				v, _ := h.replica.QueryValue(ctx, "SELECT string_agg(format('%s %s %s %s %s', pid, state, backend_start, query_start, state_change), E'\\n') FROM pg_stat_activity WHERE backend_type = 'client backend'")
				t.Fatalf("read %d: the losing query still runs on the replica 1 s after the answer (answered %s, took %s)\n%s", i, answered, took, v)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	st := h.srv.HedgeStats(testDatabase)
	if st.Hedged-before.Hedged != reads || st.WonByHedge-before.WonByHedge != reads || st.Cancelled-before.Cancelled != reads {
		t.Errorf("stats %+v after %+v: want %d more hedges, wins and cancellations", st, before, reads)
	}
	// The losers come back to the replica's pool.
	h.px.Set(faultproxy.Faults{})
	eventually(t, "replica connections drained back to the pool", func() bool {
		for _, p := range h.srv.Pools() {
			if strings.HasSuffix(p.Name(), "replica1") {
				return p.Stats().Idle == p.Stats().Open
			}
		}
		return false
	})
}

// The budget caps the extra load: with every first attempt slow, about 10% of reads (plus the
// burst) are hedged.
func TestHedgeBudget(t *testing.T) {
	h := startHedging(t, func(cfg *gateway.Config) { cfg.HedgeDelay = 5 * time.Millisecond })
	ctx := ctxT(t)
	conn := h.connect(t)
	h.warm(t, conn)
	h.px.Set(faultproxy.Faults{Delay: 40 * time.Millisecond})
	before := h.srv.HedgeStats(testDatabase)
	const reads = 60
	for i := range reads {
		var n int
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT %d", i), pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != i {
			t.Fatalf("read %d: %d, %v", i, n, err)
		}
	}
	st := h.srv.HedgeStats(testDatabase)
	sent, hedges := st.Sent-before.Sent, st.Hedged-before.Hedged
	t.Logf("%d reads, %d hedged, %d denied", sent, hedges, st.Denied-before.Denied)
	if sent != reads {
		t.Errorf("%d hedgeable reads counted, want %d", sent, reads)
	}
	limit := uint64(hedge.DefaultBurst + reads/10 + 1)
	if hedges > limit || hedges < hedge.DefaultBurst {
		t.Errorf("%d hedges for %d slow reads: want between the burst %d and %d", hedges, reads, hedge.DefaultBurst, limit)
	}
	if st.Denied == before.Denied {
		t.Error("the budget denied no hedge")
	}
}

// Writes, transactions and pinned clients are never hedged, however slow the replica.
func TestHedgeNeverWritesTransactionsPinned(t *testing.T) {
	h := startHedging(t, func(cfg *gateway.Config) { cfg.HedgeDelay = time.Millisecond })
	ctx := ctxT(t)
	conn := h.connect(t)
	h.warm(t, conn)
	if err := h.primary.Exec(ctx, "CREATE TABLE IF NOT EXISTS hedge_items (id int)"); err != nil {
		t.Fatal(err)
	}
	h.px.Set(faultproxy.Faults{Delay: 50 * time.Millisecond})
	before := h.srv.HedgeStats(testDatabase)
	for _, mode := range hedgeModes {
		for _, sql := range []string{
			"INSERT INTO hedge_items VALUES (1)",
			"UPDATE hedge_items SET id = 2 WHERE id = 1",
			"DELETE FROM hedge_items WHERE id = 2",
		} {
			if _, err := conn.Exec(ctx, sql, mode); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	for _, begin := range []string{"BEGIN", "BEGIN READ ONLY"} {
		tx, err := conn.Begin(ctx)
		if begin != "BEGIN" {
			tx, err = conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			var n int
			if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT %d", i), pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pinned := h.connect(t)
	if _, err := pinned.Exec(ctx, "SELECT pg_advisory_lock(4242)", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if inRecovery(t, ctx, pinned) {
			t.Fatalf("read %d of a pinned client ran on the replica", i)
		}
	}
	if _, err := pinned.Exec(ctx, "SELECT pg_advisory_unlock(4242)", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if st := h.srv.HedgeStats(testDatabase); st != before {
		t.Errorf("hedge stats moved from %+v to %+v: writes, transactions or pinned reads were hedged", before, st)
	}
}

// A first attempt whose connection breaks before any byte reached the client is sent again at once.
func TestHedgeFirstAttemptReset(t *testing.T) {
	h := startHedging(t, func(cfg *gateway.Config) {
		cfg.HedgeDelay = time.Minute // only the failure may send the hedge
		cfg.BreakerFailures = 0      // the reset breaks every replica connection at once
	})
	ctx := ctxT(t)
	conn := h.connect(t)
	h.warm(t, conn)
	h.px.Set(faultproxy.Faults{Delay: time.Minute}) // the replica's answer never comes
	before := h.srv.HedgeStats(testDatabase)
	delayed := h.px.Stats().DelayedChunks
	type result struct {
		rec bool
		err error
	}
	done := make(chan result, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var r result
		r.err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol).Scan(&r.rec)
		done <- r
	}()
	defer wg.Wait()
	eventually(t, "the replica answered into the proxy", func() bool { return h.px.Stats().DelayedChunks > delayed })
	h.px.Reset()
	select {
	case r := <-done:
		if r.err != nil || r.rec {
			t.Fatalf("after the reset: in recovery %v, err %v; want the primary's answer", r.rec, r.err)
		}
	case <-time.After(waitLimit):
		t.Fatal("no answer after the first attempt's connection was reset")
	}
	if st := h.srv.HedgeStats(testDatabase); st.Retried != before.Retried+1 || st.Hedged != before.Hedged {
		t.Errorf("stats %+v → %+v: want one retry, at once, and no hedge", before, st)
	}
}

// slowReadSQL sleeps on a replica only, so that a hedge to the primary answers at once.
func slowReadSQL(tag string) string {
	return fmt.Sprintf("SELECT pg_sleep(CASE WHEN pg_is_in_recovery() THEN 5 ELSE 0 END), '%s', pg_is_in_recovery()", tag)
}

// primaryPool is the gateway's pool for the primary.
func (h *hedged) primaryPool(t *testing.T) *pool.Pool {
	t.Helper()
	for _, p := range h.srv.Pools() {
		if !strings.Contains(p.Name(), "replica") {
			return p
		}
	}
	t.Fatal("no primary pool")
	return nil
}

// A hedge that finds no idle connection opens one where the pool has room, and is counted as
// skipped only when no pool has any.
func TestHedgeOpensOrSkips(t *testing.T) {
	const size = 3
	h := startHedging(t, func(cfg *gateway.Config) {
		cfg.PoolSize, cfg.MinPoolSize = size, 0
		cfg.HedgeDelay = 30 * time.Millisecond
	})
	ctx := ctxT(t)
	conn := h.connect(t)
	h.warm(t, conn)
	primary := h.primaryPool(t)
	// hold takes the primary's idle connections with open transactions until none is idle and
	// at least want are open, and reports how many are.
	hold := func(want int) int {
		for {
			st := primary.Stats()
			if st.Idle == 0 && st.Open+st.Connecting >= want {
				return st.Open + st.Connecting
			}
			c := h.connect(t)
			if _, err := c.Exec(ctx, "BEGIN; CREATE TEMP TABLE IF NOT EXISTS x (i int) ON COMMIT DROP", pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
		}
	}
	read := func(tag string) (rec bool, took time.Duration) {
		start := time.Now()
		var out string
		if err := conn.QueryRow(ctx, slowReadSQL(tag), pgx.QueryExecModeSimpleProtocol).Scan(nil, &out, &rec); err != nil || out != tag {
			t.Fatalf("%s: %q, %v", tag, out, err)
		}
		return rec, time.Since(start)
	}
	h.px.Set(faultproxy.Faults{Delay: 300 * time.Millisecond})
	if open := hold(0); open >= size {
		t.Fatalf("the primary's pool is full (%d open) before the first hedge: the test needs room", open)
	}
	before := h.srv.HedgeStats(testDatabase)
	if rec, took := read("hedge_opens"); rec {
		t.Errorf("with room in the primary's pool: answered in %s by the replica; want the primary's answer, before the replica's 300 ms", took)
	}
	st := h.srv.HedgeStats(testDatabase)
	if st.Hedged != before.Hedged+1 || st.Skipped != before.Skipped {
		t.Errorf("stats %+v → %+v: want one hedge, none skipped", before, st)
	}
	hold(size)
	if rec, took := read("hedge_skipped"); !rec || took < 300*time.Millisecond {
		t.Errorf("with the primary's pool full: answered in %s, by a replica %v; want the replica's late answer", took, rec)
	}
	after := h.srv.HedgeStats(testDatabase)
	if after.Skipped != st.Skipped+1 || after.Hedged != st.Hedged {
		t.Errorf("stats %+v → %+v: want one hedge skipped, none sent", st, after)
	}
	hs := httptest.NewServer(h.srv.MetricsHandler())
	defer hs.Close()
	m := scrape(t, hs.URL)
	for name, want := range map[string]uint64{"asyncgate_hedges_skipped_total": after.Skipped, "asyncgate_hedges_total": after.Hedged,
		"asyncgate_hedge_reads_total": after.Sent} {
		if key := name + `{database="` + testDatabase + `"}`; m[key] != float64(want) {
			t.Errorf("%s = %v, want %d", key, m[key], want)
		}
	}
}

// A read whose replica ends its connection with a FATAL of its own (here 57P01, the backend
// terminated by an administrator) before any byte of the answer is sent again, and the client
// gets the answer, not the error.
func TestHedgeFatalFirstReply(t *testing.T) {
	h := startHedging(t, func(cfg *gateway.Config) {
		cfg.HedgeDelay = time.Minute // only the failure may send the read elsewhere
		cfg.BreakerFailures = 0
	})
	ctx := ctxT(t)
	if err := h.primary.Exec(ctx, "CREATE TABLE IF NOT EXISTS hedge_fatal_t (i int)"); err != nil {
		t.Fatal(err)
	}
	conn := h.connect(t)
	h.warm(t, conn)
	before := h.srv.HedgeStats(testDatabase)
	for i, mode := range hedgeModes {
		// A lock taken on the primary is replayed on the replica, where the read then waits
		// for it before it can send anything: a FATAL is its first reply.
		locker, err := h.primary.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := locker.Exec(ctx, "BEGIN; LOCK TABLE hedge_fatal_t IN ACCESS EXCLUSIVE MODE").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if err := h.replica.WaitReplay(ctx); err != nil {
			t.Fatal(err)
		}
		tag := fmt.Sprintf("hedge_fatal_%d", i)
		type result struct {
			rec bool
			err error
		}
		done := make(chan result, 1)
		var wg sync.WaitGroup
		wg.Add(1)
		defer wg.Wait() // before the harness closes conn, if the test fails
		go func() {
			defer wg.Done()
			var r result
			r.err = conn.QueryRow(ctx, fmt.Sprintf("SELECT count(*), '%s', pg_is_in_recovery() FROM hedge_fatal_t", tag), mode).Scan(nil, nil, &r.rec)
			done <- r
		}()
		eventually(t, "the read waits on the replica", func() bool { return h.activeOnReplica(t, tag) > 0 })
		if _, err := h.replica.QueryValue(ctx, fmt.Sprintf(
			"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE '%%%s%%' AND pid <> pg_backend_pid()", tag)); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the read is sent again", func() bool {
			return h.srv.HedgeStats(testDatabase).Retried == before.Retried+uint64(i)+1
		})
		locker.Close(ctx) // the retry, on the primary, waited for the lock too
		select {
		case r := <-done:
			if r.err != nil || r.rec {
				t.Fatalf("read %d after its replica backend was terminated: in recovery %v, err %v; want the primary's answer", i, r.rec, r.err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("read %d: no answer after its replica backend was terminated", i)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the client after the retries: %v", err)
	}
}

// Killing a replica under a read load (an immediate shutdown) costs the clients no error: the
// reads it was running are sent again, its breaker opens and reads go to the primary; once it
// is back, the breaker closes and reads return to it.
func TestHedgeReplicaKilledAndBack(t *testing.T) {
	primary, _ := primaryWithReplica(t)
	ctx := ctxT(t)
	replica, err := primary.AddReplica(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { replica.Stop() })
	g := startRouting(t, primary, replica, "auto", func(cfg *gateway.Config) {
		cfg.MaxReplicaLag = 0 // the breaker alone takes the replica out
		cfg.Hedge = true
		cfg.HedgeDelay = 50 * time.Millisecond
		cfg.BreakerFailures = 3
		cfg.BreakerOpenTime = 300 * time.Millisecond
		// Connects to the dead replica are refused at once; a loaded machine must not make the
		// primary's look failed.
		cfg.ServerConnectTimeout = 2 * time.Second
		cfg.PoolSize, cfg.MinPoolSize = 8, 8
	})
	replicaPool := func() *pool.Pool {
		for _, p := range g.srv.Pools() {
			if strings.HasSuffix(p.Name(), "/replica1") {
				return p
			}
		}
		return nil
	}
	const clients = 8
	var reads, onReplica atomic.Int64
	errs := make(chan error, clients)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var once sync.Once
	halt := func() { once.Do(func() { close(stop); wg.Wait() }) }
	defer halt()
	for i := range clients {
		conn := g.connect(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				var rec bool
				if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()", hedgeModes[(i+n)%2]).Scan(&rec); err != nil {
					errs <- fmt.Errorf("client %d, read %d: %w", i, n, err)
					return
				}
				reads.Add(1)
				if rec {
					onReplica.Add(1)
				}
			}
		}()
	}
	noErrors := func() {
		t.Helper()
		select {
		case err := <-errs:
			t.Fatalf("a read failed: %v", err)
		default:
		}
	}
	eventually(t, "reads run on the replica", func() bool { noErrors(); return onReplica.Load() > 100 })
	replica.Kill()
	eventually(t, "the replica's breaker opens", func() bool { noErrors(); return replicaPool().BreakerState() == "open" })
	n := reads.Load()
	eventually(t, "reads go on without the replica", func() bool { noErrors(); return reads.Load() > n+100 })
	if err := replica.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	back := onReplica.Load()
	eventually(t, "reads return to the replica", func() bool { noErrors(); return onReplica.Load() > back+100 })
	eventually(t, "the replica's breaker closes", func() bool { noErrors(); return replicaPool().BreakerState() == "closed" })
	halt()
	noErrors()
	t.Logf("%d reads, %d on the replica; hedging %+v", reads.Load(), onReplica.Load(), g.srv.HedgeStats(testDatabase))
}

// Reads on the client's named prepared statements are hedged too: the hedge's backend binds
// them under their backend names, prepared there first when it lacks them.
func TestHedgeNamedStatements(t *testing.T) {
	h := startHedging(t, nil)
	ctx := ctxT(t)
	conn := h.connect(t)
	h.warm(t, conn)
	h.px.Set(faultproxy.Faults{Delay: 300 * time.Millisecond})
	before := h.srv.HedgeStats(testDatabase)
	const reads = 6
	for i := range reads {
		// pgx prepares each text once (Parse, Describe), then binds the statement by name.
		sql := "SELECT $1::int + 1, pg_is_in_recovery()"
		if i >= reads/2 {
			sql = "SELECT $1::int + 1, pg_is_in_recovery(), 'second statement'"
		}
		start := time.Now()
		rows, err := conn.Query(ctx, sql, pgx.QueryExecModeCacheStatement, i)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		var rec bool
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			n, rec = int(vals[0].(int32)), vals[1].(bool)
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if took := time.Since(start); rec || n != i+1 {
			t.Errorf("read %d: %d in recovery %v after %s; want %d from the primary, before the replica's 300 ms", i, n, rec, took, i+1)
		}
	}
	if st := h.srv.HedgeStats(testDatabase); st.WonByHedge-before.WonByHedge != reads {
		t.Errorf("stats %+v → %+v: want %d reads won by their hedge", before, st, reads)
	}
	// The replica's connections that were preparing a statement when they lost were closed:
	// the others come back, and the statements work on whatever backend serves them next.
	h.px.Set(faultproxy.Faults{})
	for i := range 4 {
		var n int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 1, pg_is_in_recovery()", pgx.QueryExecModeCacheStatement, i).Scan(&n, nil); err != nil || n != i+1 {
			t.Fatalf("read %d after the proxy is fast again: %d, %v", i, n, err)
		}
	}
}
