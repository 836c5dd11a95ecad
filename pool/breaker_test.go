package pool

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncgate/asyncgate/wire"
)

// switchProxy stands in for a backend that goes down and comes back: while down it closes each
// connection as soon as it is accepted (a server that is restarting); while up it forwards to the
// test cluster.
type switchProxy struct {
	ln net.Listener
	up atomic.Bool
}

func newSwitchProxy(t *testing.T, up bool) *switchProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sp := &switchProxy{ln: ln}
	sp.up.Store(up)
	var wg sync.WaitGroup
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			if !sp.up.Load() {
				nc.Close()
				continue
			}
			wg.Add(1)
			go func() { defer wg.Done(); proxy(nc, backend.Addr()) }()
		}
	}()
	// Registered before the pool's Close, so it runs after it: the pool's connections are gone
	// by then and the forwarding goroutines end with them.
	t.Cleanup(func() {
		ln.Close()
		<-acceptDone
		wg.Wait()
	})
	return sp
}

func (sp *switchProxy) port() uint16 { return uint16(sp.ln.Addr().(*net.TCPAddr).Port) }

// transitions records the breaker's changes of state as "from>to".
type transitions struct {
	mu   sync.Mutex
	seen []string
}

func (tr *transitions) record(_ string, from, to string) {
	tr.mu.Lock()
	tr.seen = append(tr.seen, from+">"+to)
	tr.mu.Unlock()
}

func (tr *transitions) String() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return strings.Join(tr.seen, " ")
}

// breakerPool is a pool whose breaker opens after failures and stays open for openFor, reaching
// the backend through port on 127.0.0.1 when port is not 0.
func breakerPool(t *testing.T, port uint16, failures int, openFor time.Duration, mutate func(*Config)) (*Pool, *transitions) {
	t.Helper()
	tr := &transitions{}
	p := newPool(t, func(c *Config) {
		if port != 0 {
			c.Connect.Host, c.Connect.Port = "127.0.0.1", port
		}
		c.ConnectTimeout = 300 * time.Millisecond
		c.Breaker = BreakerConfig{Failures: failures, OpenFor: openFor, OnStateChange: tr.record}
		if mutate != nil {
			mutate(c)
		}
	})
	return p, tr
}

// closedPort returns a local port nothing listens on.
func closedPort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	return port
}

// wantBreakerError checks that err is the open breaker's 08006 naming p's backend and the flags.
func wantBreakerError(t *testing.T, p *Pool, err error) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != "08006" {
		t.Fatalf("got %v, want 08006 from the open breaker", err)
	}
	for _, part := range []string{p.target(), p.Name(), "circuit breaker open", "--breaker-failures", "--breaker-open-time"} {
		if !strings.Contains(we.Message, part) {
			t.Fatalf("message %q does not name %q", we.Message, part)
		}
	}
}

// wantRefusedAtOnce checks that Acquire fails with the breaker's error without queueing.
func wantRefusedAtOnce(t *testing.T, p *Pool) {
	t.Helper()
	start := time.Now()
	c, _, err := p.Acquire(func(*Conn, error) { t.Error("the request was queued while the breaker is open") })
	took := time.Since(start)
	if c != nil {
		t.Fatal("lent a connection while the breaker is open and none is idle")
	}
	wantBreakerError(t, p, err)
	if took >= p.cfg.ConnectTimeout {
		t.Fatalf("refusal took %s, as long as a connect (%s)", took, p.cfg.ConnectTimeout)
	}
}

func wantConnectError(t *testing.T, err error) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) || !strings.Contains(we.Message, "could not connect") {
		t.Fatalf("got %v, want the connect error", err)
	}
}

func TestBreakerOpensOnConnectFailures(t *testing.T) {
	p, tr := breakerPool(t, closedPort(t), 2, time.Hour, nil)
	if s := p.BreakerState(); s != "closed" {
		t.Fatalf("breaker %s before any failure, want closed", s)
	}
	_, err := acquire(t, p)
	wantConnectError(t, err)
	if s := p.BreakerState(); s != "closed" {
		t.Fatalf("breaker %s after one failure of two, want closed", s)
	}
	_, err = acquire(t, p)
	wantConnectError(t, err)
	if s := p.BreakerState(); s != "open" {
		t.Fatalf("breaker %s after two failures, want open", s)
	}
	wantRefusedAtOnce(t, p)
	st := p.Stats()
	if st.BackendFailures != 2 || st.BreakerOpens != 1 || st.BreakerRejects != 1 || st.Connecting != 0 {
		t.Fatalf("stats %+v, want 2 failures, 1 open, 1 reject and no connect under way", st)
	}
	if got := tr.String(); got != "closed>open" {
		t.Fatalf("transitions %q", got)
	}
}

func TestBreakerHalfOpenProbe(t *testing.T) {
	sp := newSwitchProxy(t, false)
	p, tr := breakerPool(t, sp.port(), 1, 500*time.Millisecond, nil)
	_, err := acquire(t, p)
	wantConnectError(t, err)
	wantRefusedAtOnce(t, p)

	// A probe into a backend still down opens the breaker again.
	eventually(t, "breaker half-open after --breaker-open-time", func() bool { return p.BreakerState() == "half-open" })
	_, err = acquire(t, p)
	wantConnectError(t, err)
	if s := p.BreakerState(); s != "open" {
		t.Fatalf("breaker %s after a failed probe, want open", s)
	}

	// One that finds it up closes it, and the pool works as before.
	sp.up.Store(true)
	eventually(t, "breaker half-open again", func() bool { return p.BreakerState() == "half-open" })
	c := mustAcquire(t, p)
	if s := p.BreakerState(); s != "closed" {
		t.Fatalf("breaker %s after a probe connected, want closed", s)
	}
	backendPID(t, c)
	c2 := mustAcquire(t, p) // a second connection: connects are no longer limited to probes
	backendPID(t, c2)
	p.Release(c)
	p.Release(c2)
	if st := p.Stats(); st.BreakerOpens != 2 || st.BackendFailures != 2 {
		t.Fatalf("stats %+v, want 2 opens and 2 failures", st)
	}
	want := "closed>open open>half-open half-open>open open>half-open half-open>closed"
	if got := tr.String(); got != want {
		t.Fatalf("transitions %q, want %q", got, want)
	}
}

// When the breaker opens, the waiters queued for a connection hear it at once instead of at
// their wait timeout, while an idle connection is still lent.
func TestBreakerFailsWaitersAndLendsIdle(t *testing.T) {
	sp := newSwitchProxy(t, true)
	p, _ := breakerPool(t, sp.port(), 1, time.Hour, func(c *Config) { c.WaitTimeout = time.Minute })
	held := mustAcquire(t, p)
	sp.up.Store(false)

	errs := make(chan error, 3)
	for range 3 {
		c, _, err := p.Acquire(func(c *Conn, err error) {
			if c != nil {
				t.Error("a waiter got a connection from a backend that is down")
			}
			errs <- err
		})
		if c != nil || err != nil {
			t.Fatalf("acquire with the pool busy should wait, got %v %v", c, err)
		}
	}
	var refused, connectErrs int
	for range 3 {
		select {
		case err := <-errs:
			var we *wire.Error
			switch {
			case errors.As(err, &we) && strings.Contains(we.Message, "circuit breaker open"):
				wantBreakerError(t, p, err)
				refused++
			default:
				wantConnectError(t, err)
				connectErrs++
			}
		case <-time.After(waitLimit):
			t.Fatal("waiters still waiting after the breaker opened")
		}
	}
	if refused != 2 || connectErrs != 1 {
		t.Fatalf("%d refused by the breaker and %d with the connect error, want 2 and 1", refused, connectErrs)
	}
	if st := p.Stats(); st.Waiting != 0 || st.BreakerRejects != 2 {
		t.Fatalf("stats %+v, want no waiter left and 2 rejects", st)
	}

	p.Return(held)
	c := mustAcquire(t, p)
	if c != held {
		t.Fatal("the idle connection was not lent while the breaker is open")
	}
	if rows, err := query(t, c, "SELECT 1"); err != nil || len(rows) != 1 {
		t.Fatalf("query on the idle connection: %v %v", rows, err)
	}
	wantRefusedAtOnce(t, p)
	if s := p.BreakerState(); s != "open" {
		t.Fatalf("breaker %s, want open still", s)
	}
}

// A client's SQL error is the session's business: the connection is healthy.
func TestBreakerIgnoresSQLErrors(t *testing.T) {
	p, _ := breakerPool(t, 0, 1, time.Hour, nil)
	for range 20 {
		c := mustAcquire(t, p)
		if _, err := query(t, c, "SELECT 1/0"); err == nil || !strings.Contains(err.Error(), "22012") {
			t.Fatalf("SELECT 1/0: %v, want division_by_zero", err)
		}
		p.Release(c)
	}
	if s, st := p.BreakerState(), p.Stats(); s != "closed" || st.BackendFailures != 0 {
		t.Fatalf("breaker %s with %d failures after SQL errors, want closed and none", s, st.BackendFailures)
	}
}

// Connections the server ends count, lent or idle; a healthy one given back ends the run; the
// lender's Discard after the break is not counted again.
func TestBreakerCountsBrokenConnections(t *testing.T) {
	p, tr := breakerPool(t, 0, 3, time.Hour, func(c *Config) { c.Size = 5 })
	conns := make([]*Conn, 5)
	pids := make([]string, 5)
	for i := range conns {
		conns[i] = mustAcquire(t, p)
		pids[i] = backendPID(t, conns[i])
	}
	terminate := func(i int, failures uint64) {
		t.Helper()
		if err := backend.Exec(context.Background(), "SELECT pg_terminate_backend("+pids[i]+")"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the broken connection counted", func() bool { return p.Stats().BackendFailures == failures })
	}

	terminate(0, 1)
	terminate(1, 2)
	p.Discard(conns[0])
	p.Discard(conns[1])
	p.Return(conns[2]) // healthy: the run of failures starts again
	terminate(3, 3)
	terminate(4, 4)
	if s := p.BreakerState(); s != "closed" {
		t.Fatalf("breaker %s after two failures in a row, want closed", s)
	}
	terminate(2, 5) // the idle one
	if s := p.BreakerState(); s != "open" {
		t.Fatalf("breaker %s after three failures in a row, want open", s)
	}
	wantRefusedAtOnce(t, p)
	if st := p.Stats(); st.BackendFailures != 5 || st.BreakerOpens != 1 || st.Open != 0 {
		t.Fatalf("stats %+v, want 5 failures, 1 open and no connection", st)
	}
	if got := tr.String(); got != "closed>open" {
		t.Fatalf("transitions %q", got)
	}
}

// With no breaker every request tries to connect, as before.
func TestBreakerOff(t *testing.T) {
	p := newPool(t, func(c *Config) {
		c.Connect.Host, c.Connect.Port = "127.0.0.1", closedPort(t)
		c.ConnectTimeout = 200 * time.Millisecond
	})
	for range 3 {
		_, err := acquire(t, p)
		wantConnectError(t, err)
	}
	if s, st := p.BreakerState(), p.Stats(); s != "off" || st.BackendFailures != 3 || st.BreakerOpens != 0 {
		t.Fatalf("breaker %s, stats %+v; want off, 3 failures, no opens", s, st)
	}
}
