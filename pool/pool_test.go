package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/asyncgate/asyncgate/internal/pgtest"
	"github.com/asyncgate/asyncgate/wire"
)

var backend *pgtest.Cluster

func TestMain(m *testing.M) {
	os.Exit(pgtest.Main(m, pgtest.Options{}, 0, &backend))
}

const waitLimit = 10 * time.Second

func newPool(t *testing.T, mutate func(*Config)) *Pool {
	t.Helper()
	conn, err := pgconn.ParseConfig(backend.DSN("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Name: "test/postgres", Connect: conn, Size: 2, MaxQueue: 10,
		WaitTimeout: 5 * time.Second, ConnectTimeout: 5 * time.Second,
		CheckDelay: time.Hour, ResetQuery: "DISCARD ALL",
	}
	if mutate != nil {
		mutate(&cfg)
	}
	p := New(cfg)
	t.Cleanup(p.Close)
	return p
}

// acquire waits for a connection or an error.
func acquire(t *testing.T, p *Pool) (*Conn, error) {
	t.Helper()
	type result struct {
		c   *Conn
		err error
	}
	ch := make(chan result, 1)
	c, _, err := p.Acquire(func(c *Conn, err error) { ch <- result{c, err} })
	if c != nil || err != nil {
		return c, err
	}
	select {
	case r := <-ch:
		return r.c, r.err
	case <-time.After(waitLimit):
		t.Fatal("no answer from Acquire")
		return nil, nil
	}
}

func mustAcquire(t *testing.T, p *Pool) *Conn {
	t.Helper()
	c, err := acquire(t, p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// query runs one simple query on a lent connection and returns the first column of its rows.
func query(t *testing.T, c *Conn, sql string) ([]string, error) {
	t.Helper()
	s := &collectSink{done: make(chan struct{})}
	c.SetSink(s)
	c.Write(wire.AppendQuery(nil, sql))
	c.Flush()
	select {
	case <-s.done:
	case <-time.After(waitLimit):
		t.Fatalf("no answer to %q", sql)
	}
	return s.rows, s.err
}

type collectSink struct {
	rows []string
	err  error
	done chan struct{}
}

func (s *collectSink) BackendData(c *Conn, b []byte) {
	c.Frames.SetInspect('D', true)
	c.Frames.Feed(b, func(f *wire.Frame) error {
		switch f.Type {
		case 'D': // one text column: count(2) len(4) value
			if len(f.Body) >= 6 {
				s.rows = append(s.rows, string(f.Body[6:]))
			}
		case 'E':
			_, code, msg, _ := wire.ErrorFields(f.Body)
			s.err = fmt.Errorf("%s: %s", code, msg)
		case 'Z':
			close(s.done)
		}
		return nil
	})
}

func (s *collectSink) BackendClosed(*Conn, error) {}

func backendPID(t *testing.T, c *Conn) string {
	rows, err := query(t, c, "SELECT pg_backend_pid()")
	if err != nil || len(rows) != 1 {
		t.Fatalf("pg_backend_pid: %v %v", rows, err)
	}
	return rows[0]
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not true after %s: %s", waitLimit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReleaseResetsAndReuses(t *testing.T) {
	p := newPool(t, nil)
	c := mustAcquire(t, p)
	pid := backendPID(t, c)
	if fmt.Sprint(c.PID) != pid {
		t.Fatalf("cancel key pid %d, backend says %s", c.PID, pid)
	}
	if _, err := query(t, c, "SET work_mem = '7MB'"); err != nil {
		t.Fatal(err)
	}
	p.Release(c)
	eventually(t, "connection idle again", func() bool { return p.Stats().Idle == 1 })
	c2 := mustAcquire(t, p)
	if got := backendPID(t, c2); got != pid {
		t.Fatalf("got backend %s, want the idle one %s", got, pid)
	}
	rows, err := query(t, c2, "SHOW work_mem")
	if err != nil || rows[0] != "4MB" {
		t.Fatalf("work_mem after reset = %v, %v; the reset query did not run", rows, err)
	}
}

func TestQueueBoundAndWaitTimeout(t *testing.T) {
	p := newPool(t, func(c *Config) { c.Size, c.MaxQueue, c.WaitTimeout = 1, 1, 200*time.Millisecond })
	mustAcquire(t, p)
	waited := make(chan error, 1)
	if c, _, err := p.Acquire(func(c *Conn, err error) { waited <- err }); c != nil || err != nil {
		t.Fatalf("second acquire should wait, got %v %v", c, err)
	}
	var we *wire.Error
	_, _, err := p.Acquire(func(*Conn, error) { t.Error("third acquire was queued") })
	if !errors.As(err, &we) || we.Code != "53300" {
		t.Fatalf("third acquire: %v, want 53300", err)
	}
	start := time.Now()
	select {
	case err := <-waited:
		if !errors.As(err, &we) || we.Code != "57014" {
			t.Fatalf("waiter: %v, want 57014", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("wait timeout far too late")
		}
	case <-time.After(waitLimit):
		t.Fatal("waiter never timed out")
	}
}

func TestWithdrawnWaiterIsSkipped(t *testing.T) {
	p := newPool(t, func(c *Config) { c.Size = 1 })
	c := mustAcquire(t, p)
	_, withdraw, _ := p.Acquire(func(*Conn, error) { t.Error("withdrawn waiter was served") })
	if !withdraw() {
		t.Fatal("withdraw reported the waiter already served")
	}
	p.Release(c)
	if c2 := mustAcquire(t, p); c2 != c {
		t.Fatal("the released connection did not go to the next acquirer")
	}
}

func TestMinSizeAndIdleTimeout(t *testing.T) {
	p := newPool(t, func(c *Config) { c.Size, c.MinSize, c.IdleTimeout = 4, 2, 300*time.Millisecond })
	eventually(t, "min-pool-size connections opened", func() bool { return p.Stats().Open == 2 })
	var conns []*Conn
	for range 4 {
		conns = append(conns, mustAcquire(t, p))
	}
	if open := p.Stats().Open; open != 4 {
		t.Fatalf("%d open, want 4", open)
	}
	for _, c := range conns {
		p.Release(c)
	}
	eventually(t, "idle connections beyond min-pool-size closed", func() bool { return p.Stats().Open == 2 })
}

func TestLifetime(t *testing.T) {
	p := newPool(t, func(c *Config) { c.Lifetime = 50 * time.Millisecond })
	c := mustAcquire(t, p)
	eventually(t, "connection older than its lifetime", func() bool { return time.Since(c.created) > 50*time.Millisecond })
	p.Release(c)
	eventually(t, "old connection closed on release", func() bool { return p.Stats().Open == 0 })
}

func TestDeadIdleConnectionIsReplaced(t *testing.T) {
	p := newPool(t, func(c *Config) { c.CheckDelay = 0 })
	c := mustAcquire(t, p)
	pid := backendPID(t, c)
	p.Release(c)
	eventually(t, "idle", func() bool { return p.Stats().Idle == 1 })
	if err := backend.Exec(context.Background(), "SELECT pg_terminate_backend("+pid+")"); err != nil {
		t.Fatal(err)
	}
	c2 := mustAcquire(t, p)
	if got := backendPID(t, c2); got == pid {
		t.Fatalf("lent the terminated backend %s again", pid)
	}
}

// A server that refuses the first connections is retried with backoff until it answers.
func TestConnectRetries(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	var wg sync.WaitGroup
	acceptDone := make(chan struct{})
	defer func() {
		ln.Close()
		<-acceptDone
		wg.Wait()
	}()
	go func() {
		defer close(acceptDone)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			if accepted.Add(1) <= 2 {
				nc.Close() // a server restarting
				continue
			}
			wg.Add(1)
			go func() { defer wg.Done(); proxy(nc, backend.Addr()) }()
		}
	}()
	p := newPool(t, func(c *Config) {
		c.Connect.Host = "127.0.0.1"
		c.Connect.Port = uint16(ln.Addr().(*net.TCPAddr).Port)
	})
	c := mustAcquire(t, p)
	backendPID(t, c)
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d connection attempts, want 3", n)
	}
	p.Close()
}

func TestConnectGivesUpWithinBudget(t *testing.T) {
	p := newPool(t, func(c *Config) {
		c.Connect.Host, c.Connect.Port = "127.0.0.1", 1
		c.ConnectTimeout = 300 * time.Millisecond
	})
	start := time.Now()
	_, err := acquire(t, p)
	var we *wire.Error
	if !errors.As(err, &we) || (we.Code != "08001" && we.Code != "08006") {
		t.Fatalf("got %v, want 08001/08006", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("gave up after %s, budget 300ms", took)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	conn, _ := pgconn.ParseConfig(backend.DSN("postgres", "postgres"))
	p := New(Config{Name: "leak", Connect: conn, Size: 3, MinSize: 2, ConnectTimeout: 5 * time.Second, CheckDelay: time.Hour})
	eventually(t, "min size", func() bool { return p.Stats().Open == 2 })
	c := mustAcquire(t, p)
	backendPID(t, c)
	p.Close()
}

func proxy(client net.Conn, addr string) {
	defer client.Close()
	server, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer server.Close()
	go func() { io.Copy(server, client); server.Close() }()
	io.Copy(client, server)
}
