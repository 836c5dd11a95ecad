package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/asyncgate/asyncgate/gateway"
)

// batching is transaction pooling on a small pool with --batch on for every database and user.
func batching(size, depth int) func(*gateway.Config) {
	return func(c *gateway.Config) {
		transactionMode(size)(c)
		c.Batch = []string{"*"}
		c.BatchMaxDepth = depth
	}
}

// batchMetrics scrapes the batcher's counters.
func batchMetrics(t *testing.T, g *gw) (batched, unbatched, deep float64) {
	t.Helper()
	hs := httptest.NewServer(g.srv.MetricsHandler())
	defer hs.Close()
	m := scrape(t, hs.URL)
	// Units written while at least one other was in flight on the same connection.
	deep = m["asyncgate_batch_depth_count"] - m[`asyncgate_batch_depth_bucket{le="1"}`]
	return m["asyncgate_batch_units_batched_total"], m["asyncgate_batch_units_unbatched_total"], deep
}

// Hundreds of clients, each running its own stream of different queries, simple and prepared,
// with an error now and then: every answer is the one its client asked for, and the units
// shared backend connections several at a time.
func TestBatchRoutesAnswersToTheirClients(t *testing.T) {
	g := startGateway(t, batching(4, 16))
	const clients, rounds = 200, 15
	concurrently(t, g, clients, func(ctx context.Context, conn *pgx.Conn, i int) error {
		for r := range rounds {
			want := fmt.Sprintf("c%d-r%d", i, r)
			var got string
			var n int
			switch r % 5 {
			case 0, 1: // extended protocol, a named statement prepared once per client
				if err := conn.QueryRow(ctx, "SELECT $1::text, $2::int * 2", want, i).Scan(&got, &n); err != nil {
					return fmt.Errorf("round %d: %w", r, err)
				}
			case 2, 3: // simple protocol, each text different
				err := conn.QueryRow(ctx, fmt.Sprintf("SELECT '%s'::text, %d * 2", want, i), pgx.QueryExecModeSimpleProtocol).Scan(&got, &n)
				if err != nil {
					return fmt.Errorf("round %d: %w", r, err)
				}
			case 4: // an error in the middle of the pipeline reaches only its client
				_, err := conn.Exec(ctx, fmt.Sprintf("SELECT 1/0 AS c%d", i))
				if pgCode(err) != "22012" {
					return fmt.Errorf("round %d: division by zero answered with %v", r, err)
				}
				got, n = want, i*2
			}
			if got != want || n != i*2 {
				return fmt.Errorf("round %d: got (%q, %d), want (%q, %d)", r, got, n, want, i*2)
			}
		}
		return nil
	})
	batched, _, deep := batchMetrics(t, g)
	if batched < clients*rounds/2 {
		t.Fatalf("%v units batched, want most of %d", batched, clients*rounds)
	}
	if deep == 0 {
		t.Fatal("no unit was ever pipelined behind another on its connection")
	}
	open, _ := totals(g)
	if open > 4 {
		t.Fatalf("%d backend connections open on a pool of 4", open)
	}
}

// A transaction and a SET are never pipelined with other clients' units: no batched unit ever
// runs inside the transaction (it would see its transaction id) or sees the setting.
func TestBatchKeepsStateChangesAlone(t *testing.T) {
	g := startGateway(t, batching(2, 16))
	ctx := ctxT(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Value
	var seen atomic.Int64
	for i := range 20 {
		conn := g.connect(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var xid *int64
				var tag, zone string
				err := conn.QueryRow(ctx, "SELECT txid_current_if_assigned(), coalesce(current_setting('batchtest.tag', true), ''), current_setting('TimeZone')").Scan(&xid, &tag, &zone)
				if err != nil {
					bad.Store(fmt.Errorf("client %d: %w", i, err))
					return
				}
				seen.Add(1)
				if xid != nil || tag != "" || zone == "Asia/Tokyo" {
					bad.Store(fmt.Errorf("client %d ran in another client's state: xid %v, tag %q, TimeZone %q", i, xid, tag, zone))
					return
				}
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
		if err, _ := bad.Load().(error); err != nil {
			t.Fatal(err)
		}
	}()
	eventually(t, "batched traffic", func() bool { return seen.Load() > 50 })
	for round := range 10 {
		tx := g.connect(t)
		if _, err := tx.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		var xid int64
		if err := tx.QueryRow(ctx, "SELECT txid_current()").Scan(&xid); err != nil {
			t.Fatal(err)
		}
		before := seen.Load()
		eventually(t, "traffic while the transaction is open", func() bool { return seen.Load() > before+20 })
		if _, err := tx.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}

		set := g.connect(t)
		if _, err := set.Exec(ctx, fmt.Sprintf("SET batchtest.tag = 'r%d'", round)); err != nil {
			t.Fatal(err)
		}
		if _, err := set.Exec(ctx, "SET TimeZone = 'Asia/Tokyo'"); err != nil {
			t.Fatal(err)
		}
		before = seen.Load()
		eventually(t, "traffic after the SET", func() bool { return seen.Load() > before+20 })
		var tag, zone string
		if err := set.QueryRow(ctx, "SELECT current_setting('batchtest.tag'), current_setting('TimeZone')").Scan(&tag, &zone); err != nil {
			t.Fatal(err)
		}
		if tag != fmt.Sprintf("r%d", round) || zone != "Asia/Tokyo" {
			t.Fatalf("the SETting client lost its settings: %q %q", tag, zone)
		}
		set.Close(ctx)
		tx.Close(ctx)
	}
}

// A statement that hides a session change in a function passes the classifier; the batcher sees
// the ParameterStatus, fails it, and closes its backend before any later unit's result is used.
func TestBatchGuardClosesBackendOfMisclassifiedUnit(t *testing.T) {
	g := startGateway(t, batching(2, 16))
	ctx := ctxT(t)
	admin := direct(t)
	if _, err := admin.Exec(ctx, `CREATE OR REPLACE FUNCTION batch_sneaky() RETURNS text LANGUAGE sql AS
		$$ SELECT set_config('application_name', 'sneaky', false) $$`); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Value
	var seen atomic.Int64
	for i := range 10 {
		conn := g.connect(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var app string
				err := conn.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&app)
				if pgCode(err) == "08006" {
					continue // pipelined behind the sneaky unit: its outcome is unknown
				}
				if err != nil {
					bad.Store(fmt.Errorf("client %d: %w", i, err))
					return
				}
				seen.Add(1)
				if app == "sneaky" {
					bad.Store(fmt.Errorf("client %d ran after another client's hidden SET", i))
					return
				}
			}
		}()
	}
	sneaky := g.connect(t)
	for range 5 {
		before := seen.Load()
		eventually(t, "traffic", func() bool { return seen.Load() > before+10 })
		_, err := sneaky.Exec(ctx, "SELECT batch_sneaky()")
		if pgCode(err) != "0A000" {
			t.Fatalf("hidden session change answered with %v, want SQLSTATE 0A000", err)
		}
	}
	close(stop)
	wg.Wait()
	if err, _ := bad.Load().(error); err != nil {
		t.Fatal(err)
	}
}

// Cancelling one batched unit never stops another client's: a sleeper is cancelled at random
// moments (queued, at the head, just finishing) while other clients' checked queries share its
// connection; those always succeed, the sleeper always gets its answer or 57014.
func TestBatchCancelOnlyHitsItsOwnUnit(t *testing.T) {
	g := startGateway(t, batching(1, 8))
	ctx := ctxT(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Value
	for i := range 6 {
		conn := g.connect(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; ; r++ {
				select {
				case <-stop:
					return
				default:
				}
				var got int
				if err := conn.QueryRow(ctx, "SELECT $1::int FROM pg_sleep(0.002)", pgx.QueryExecModeSimpleProtocol, i*1000+r).Scan(&got); err != nil {
					bad.Store(fmt.Errorf("bystander %d: %w", i, err))
					return
				}
				if got != i*1000+r {
					bad.Store(fmt.Errorf("bystander %d got %d, want %d", i, got, i*1000+r))
					return
				}
			}
		}()
	}
	sleeper := g.connect(t)
	cancelled := 0
	for r := range 60 {
		done := make(chan error, 1)
		go func() {
			var v int
			err := sleeper.QueryRow(ctx, "SELECT 7 FROM pg_sleep($1)", pgx.QueryExecModeSimpleProtocol, float64(r%4)*0.003).Scan(&v)
			if err == nil && v != 7 {
				err = fmt.Errorf("sleeper got %d", v)
			}
			done <- err
		}()
		time.Sleep(time.Duration(rand.IntN(12000)) * time.Microsecond)
		if err := sleeper.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			switch {
			case err == nil:
			case pgCode(err) == "57014":
				cancelled++
			default:
				t.Fatalf("round %d: sleeper: %v", r, err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("round %d: cancelled sleeper did not answer", r)
		}
		if bad.Load() != nil {
			break
		}
	}
	close(stop)
	wg.Wait()
	if err, _ := bad.Load().(error); err != nil {
		t.Fatal(err)
	}
	if cancelled == 0 {
		t.Fatal("no cancel ever took effect")
	}
	// The pipeline still works for the sleeper's client.
	var one int
	if err := sleeper.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the cancels: %v %d", err, one)
	}
}

// A unit still waiting for room on a connection is dropped at once when cancelled; the unit
// running ahead of it is not touched.
func TestBatchCancelQueuedUnit(t *testing.T) {
	g := startGateway(t, batching(1, 1))
	ctx := ctxT(t)
	runner, waiter, look := g.connect(t), g.connect(t), direct(t)
	runDone := make(chan error, 1)
	go func() {
		_, err := runner.Exec(ctx, "SELECT pg_sleep(0.5)")
		runDone <- err
	}()
	eventually(t, "the runner's unit on the backend", func() bool {
		var n int
		look.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(0.5)' AND state = 'active'").Scan(&n)
		return n == 1
	})
	waitDone := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, "SELECT 2")
		waitDone <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it queue; the assertion below does not depend on it
	if err := waiter.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waitDone:
		if err != nil && pgCode(err) != "57014" {
			t.Fatalf("cancelled waiter: %v", err)
		}
	case <-runDone:
		t.Fatal("the runner finished before the cancelled waiter was answered")
	}
	if err := <-runDone; err != nil {
		t.Fatalf("runner: %v", err)
	}
}

// A client that vanishes while its unit is in the pipeline breaks nothing for the others.
func TestBatchClientLeavesMidPipeline(t *testing.T) {
	g := startGateway(t, batching(1, 16))
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 8 {
		conn := g.connect(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range 40 {
				var got int
				if err := conn.QueryRow(ctx, "SELECT $1::int", i*100+r).Scan(&got); err != nil || got != i*100+r {
					errs <- fmt.Errorf("client %d round %d: %v (%d)", i, r, err, got)
					return
				}
			}
		}()
	}
	for range 20 {
		nc, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Fatal(err)
		}
		c, err := pgx.ConnectConfig(ctx, mustConfig(t, g, nc))
		if err != nil {
			t.Fatal(err)
		}
		go c.Exec(context.Background(), "SELECT pg_sleep(0.01)")
		time.Sleep(time.Millisecond)
		nc.Close()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// mustConfig connects through nc, so the test can cut the socket under pgx.
func mustConfig(t *testing.T, g *gw, nc net.Conn) *pgx.ConnConfig {
	cfg, err := pgx.ParseConfig(g.dsn(appUser, appPassword, testDatabase))
	if err != nil {
		t.Fatal(err)
	}
	used := false
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if used {
			return nil, errors.New("one connection only")
		}
		used = true
		return nc, nil
	}
	return cfg
}

// With --batch-max-delay a unit waits for others to go out with it, never longer than the delay:
// a lone client is answered, and clients arriving together share their writes.
func TestBatchMaxDelay(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		batching(1, 8)(c)
		c.BatchMaxDelay = 20 * time.Millisecond
	})
	ctx := ctxT(t)
	var one int
	if err := g.connect(t).QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("lone client: %v %d", err, one)
	}
	concurrently(t, g, 16, func(ctx context.Context, conn *pgx.Conn, i int) error {
		for r := range 10 {
			var got int
			if err := conn.QueryRow(ctx, "SELECT $1::int", i*100+r).Scan(&got); err != nil || got != i*100+r {
				return fmt.Errorf("round %d: %v (%d)", r, err, got)
			}
		}
		return nil
	})
	if _, _, deep := batchMetrics(t, g); deep == 0 {
		t.Fatal("no unit went out behind another")
	}
}
