package batcher

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/asyncgate/asyncgate/internal/pgtest"
	"github.com/asyncgate/asyncgate/pool"
	"github.com/asyncgate/asyncgate/wire"
)

var backend *pgtest.Cluster

func TestMain(m *testing.M) {
	os.Exit(pgtest.Main(m, pgtest.Options{}, 0, &backend))
}

const waitLimit = 10 * time.Second

// newBatcher returns a batcher on a pool of its own, and a func that closes both.
func newBatcher(t *testing.T, size, depth int) (*Batcher, *pool.Pool, func()) {
	t.Helper()
	conn, err := pgconn.ParseConfig(backend.DSN("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	p := pool.New(pool.Config{
		Name: "test/postgres", Connect: conn, Size: size, MaxQueue: 100,
		WaitTimeout: 5 * time.Second, ConnectTimeout: 5 * time.Second, CheckDelay: time.Hour,
	})
	b := New(Config{Pool: p, Loop: -1, MaxDepth: depth})
	return b, p, func() {
		b.Close()
		p.Close()
	}
}

// client records one unit's outcome.
type client struct {
	mu     sync.Mutex
	got    []byte
	code   string
	done   chan struct{}
	closed bool
}

func newClient() *client { return &client{done: make(chan struct{})} }

func (c *client) Response(b []byte, last bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, b...)
	if last {
		c.finish()
	}
}

func (c *client) Failed(code, msg string, cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.code = code
	c.finish()
}

func (c *client) finish() {
	if c.closed {
		panic("unit ended twice")
	}
	c.closed = true
	close(c.done)
}

func (c *client) wait(t *testing.T) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(waitLimit):
		t.Fatal("unit not answered")
	}
}

func submit(b *Batcher, sql string) *client {
	c := newClient()
	b.Submit(&Unit{Msgs: wire.AppendQuery(nil, sql), Client: c})
	b.Flush()
	return c
}

// A unit the gateway should never have batched (BEGIN) leaves its transaction open: it fails,
// the units pipelined behind it on the same connection fail with 08006 without their results,
// and the connection is closed, so nothing the transaction did survives.
func TestGuardClosesConnectionLeftInTransaction(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	b, p, closeAll := newBatcher(t, 1, 8)
	defer closeAll()
	warm := submit(b, "SELECT 1")
	warm.wait(t)
	if err := backend.Exec(t.Context(), "CREATE TABLE IF NOT EXISTS guard_t (a int)"); err != nil {
		t.Fatal(err)
	}
	begin := submit(b, "BEGIN; INSERT INTO guard_t VALUES (1)")
	var behind []*client
	for range 4 {
		behind = append(behind, submit(b, "INSERT INTO guard_t VALUES (2); SELECT 'x'"))
	}
	begin.wait(t)
	if begin.code != "0A000" {
		t.Fatalf("unit left in a transaction: code %q, response %q", begin.code, begin.got)
	}
	for i, c := range behind {
		c.wait(t)
		if c.code != "08006" && (c.code != "" || !bytes.Contains(c.got, []byte("x"))) {
			t.Fatalf("unit %d behind it: code %q, response %q", i, c.code, c.got)
		}
		if c.code == "08006" && len(c.got) > 0 {
			t.Fatalf("unit %d failed after part of its response was delivered: %q", i, c.got)
		}
	}
	n, err := backend.QueryValue(t.Context(), "SELECT count(*) FROM guard_t WHERE a = 1")
	if err != nil || n != "0" {
		t.Fatalf("rows the open transaction inserted: %v %s, want 0", err, n)
	}
	// The next unit runs on a fresh connection, outside any transaction.
	after := submit(b, "SELECT txid_current_if_assigned() IS NULL")
	after.wait(t)
	if after.code != "" || !bytes.Contains(after.got, []byte("t")) {
		t.Fatalf("unit after the guard: code %q, response %q", after.code, after.got)
	}
	if st := p.Stats(); st.Open > 1 {
		t.Fatalf("%d connections open on a pool of 1", st.Open)
	}
}

// Responses are cut at each ReadyForQuery: deep pipelines of units from many submitters, each
// answer containing its own marker, an error among them reaching only its unit.
func TestPipelineRoutesByOrder(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	b, _, closeAll := newBatcher(t, 2, 32)
	defer closeAll()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range 30 {
				marker := fmt.Sprintf("m%d_%d", g, r)
				sql := fmt.Sprintf("SELECT '%s'", marker)
				if r%7 == 3 {
					sql = fmt.Sprintf("SELECT 1/0, '%s'", marker)
				}
				c := submit(b, sql)
				select {
				case <-c.done:
				case <-time.After(waitLimit):
					errs <- fmt.Errorf("%s not answered", marker)
					return
				}
				switch {
				case c.code != "":
					errs <- fmt.Errorf("%s failed: %s", marker, c.code)
				case r%7 == 3 && !bytes.Contains(c.got, []byte("22012")):
					errs <- fmt.Errorf("%s: no division error in %q", marker, c.got)
				case r%7 != 3 && !bytes.Contains(c.got, []byte(marker)):
					errs <- fmt.Errorf("%s: got %q", marker, c.got)
				case bytes.Count(c.got, []byte{'Z', 0, 0, 0, 5}) != 1:
					errs <- fmt.Errorf("%s: %d ReadyForQuery in %q", marker, bytes.Count(c.got, []byte{'Z', 0, 0, 0, 5}), c.got)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
