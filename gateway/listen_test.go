package gateway_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/gateway"
)

// fanout is transaction pooling on size backends with --listen-fanout on.
func fanout(size int) func(*gateway.Config) {
	return func(c *gateway.Config) {
		transactionMode(size)(c)
		c.ListenFanout = true
	}
}

func exec(t *testing.T, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(ctxT(t), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// expectNotification waits for the client's next notification and checks it.
func expectNotification(ctx context.Context, c *pgx.Conn, channel, payload string) error {
	ctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	n, err := c.WaitForNotification(ctx)
	if err != nil {
		return fmt.Errorf("waiting for %s/%s: %w", channel, short(payload), err)
	}
	if n.Channel != channel || n.Payload != payload {
		return fmt.Errorf("got %s/%s, want %s/%s", n.Channel, short(n.Payload), channel, short(payload))
	}
	return nil
}

// short keeps long payloads out of failure messages.
func short(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%s…%s (%d bytes)", s[:10], s[len(s)-10:], len(s))
	}
	return s
}

// noNotification checks that nothing arrives for a moment. Only used where the notification
// has provably reached the gateway, so a late one would show.
func noNotification(t *testing.T, c *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctxT(t), 300*time.Millisecond)
	defer cancel()
	n, err := c.WaitForNotification(ctx)
	if err == nil {
		t.Fatalf("got notification %s/%s, want none yet", n.Channel, n.Payload)
	}
	if !pgconn.Timeout(err) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting for no notification: %v", err)
	}
}

// Many clients on two backends listen on a few channels through the hub; each gets exactly its
// channels' notifications, in order, whichever way they were sent.
func TestListenFanoutDelivers(t *testing.T) {
	g := startGateway(t, fanout(2))
	ctx := ctxT(t)
	type listener struct {
		conn    *pgx.Conn
		channel string
	}
	var listeners []listener
	for i := range 26 {
		l := listener{conn: g.connect(t), channel: "fan_a"}
		switch {
		case i >= 25:
			l.channel = "Fan C" // quoted: kept as written
		case i >= 20:
			l.channel = "fan_b"
		}
		exec(t, l.conn, "LISTEN "+pgx.Identifier{l.channel}.Sanitize())
		listeners = append(listeners, l)
	}
	if n := g.srv.ListenChannels(); n != 3 {
		t.Fatalf("ListenChannels %d, want 3", n)
	}
	if n := g.srv.PinnedClients(); n != 0 {
		t.Fatalf("%d listeners pinned", n)
	}
	eventually(t, "every backend back in the pool", func() bool { open, idle := totals(g); return open == idle })

	notifier := g.connect(t)
	for i := range 10 {
		exec(t, notifier, "SELECT pg_notify('fan_a', $1)", fmt.Sprintf("a-%d", i))
		exec(t, notifier, fmt.Sprintf("NOTIFY fan_b, 'b-%d'", i))
		exec(t, notifier, fmt.Sprintf(`NOTIFY "Fan C", 'c-%d'`, i))
	}
	for _, ch := range []string{"fan_a", "fan_b", "Fan C"} {
		exec(t, notifier, "SELECT pg_notify($1, 'end')", ch)
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(listeners))
	for i, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prefix := map[string]string{"fan_a": "a", "fan_b": "b", "Fan C": "c"}[l.channel]
			for k := range 10 {
				if err := expectNotification(ctx, l.conn, l.channel, fmt.Sprintf("%s-%d", prefix, k)); err != nil {
					errs <- fmt.Errorf("listener %d: %w", i, err)
					return
				}
			}
			// Another channel's notification would have shown up by now, before this one.
			if err := expectNotification(ctx, l.conn, l.channel, "end"); err != nil {
				errs <- fmt.Errorf("listener %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The listeners still run queries.
	for _, l := range listeners {
		if err := l.conn.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// A client inside a transaction gets notifications only once it has ended, as from PostgreSQL.
func TestListenFanoutWaitsForTransactionEnd(t *testing.T) {
	g := startGateway(t, fanout(2))
	ctx := ctxT(t)
	busy := g.connect(t)
	idle := g.connect(t)
	exec(t, busy, "LISTEN txwait")
	exec(t, idle, "LISTEN txwait")

	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	notifier := g.connect(t)
	exec(t, notifier, "NOTIFY txwait, 'during'")
	// The idle client has it: the hub has handed it to both.
	if err := expectNotification(ctx, idle, "txwait", "during"); err != nil {
		t.Fatal(err)
	}
	noNotification(t, busy)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := expectNotification(ctx, busy, "txwait", "during"); err != nil {
		t.Fatalf("after COMMIT: %v", err)
	}
}

// UNLISTEN, UNLISTEN * and DISCARD ALL end delivery at once; the hub stops listening on a channel
// when its last subscriber leaves.
func TestListenFanoutUnlisten(t *testing.T) {
	g := startGateway(t, fanout(2))
	ctx := ctxT(t)
	c := g.connect(t)
	notifier := g.connect(t)
	for _, ch := range []string{"un_a", "un_b", "un_c"} {
		exec(t, c, "LISTEN "+ch)
	}
	exec(t, c, "LISTEN un_a") // twice, as PostgreSQL allows
	exec(t, c, "UNLISTEN un_a")
	exec(t, notifier, "NOTIFY un_a, 'left'")
	exec(t, notifier, "NOTIFY un_b, 'kept'")
	if err := expectNotification(ctx, c, "un_b", "kept"); err != nil {
		t.Fatalf("after UNLISTEN un_a: %v", err)
	}

	exec(t, c, "UNLISTEN *")
	exec(t, c, "LISTEN un_sentinel")
	exec(t, notifier, "NOTIFY un_b, 'left'")
	exec(t, notifier, "NOTIFY un_c, 'left'")
	exec(t, notifier, "NOTIFY un_sentinel, 'kept'")
	if err := expectNotification(ctx, c, "un_sentinel", "kept"); err != nil {
		t.Fatalf("after UNLISTEN *: %v", err)
	}

	exec(t, c, "DISCARD ALL")
	exec(t, c, "LISTEN un_sentinel2")
	exec(t, notifier, "NOTIFY un_sentinel, 'left'")
	exec(t, notifier, "NOTIFY un_sentinel2, 'kept'")
	if err := expectNotification(ctx, c, "un_sentinel2", "kept"); err != nil {
		t.Fatalf("after DISCARD ALL: %v", err)
	}

	// Leaving ends the last subscription: the hub's connection listens on nothing.
	c.Close(ctx)
	eventually(t, "the hub to stop listening", func() bool { return g.srv.ListenChannels() == 0 })
}

// Listening through the hub pins nothing: on a single backend, listening clients and another
// one all keep running queries, and the backend is back in the pool between them.
func TestListenFanoutDoesNotPin(t *testing.T) {
	g := onePinnable(t, func(c *gateway.Config) { c.ListenFanout = true })
	ctx := ctxT(t)
	var listeners []*pgx.Conn
	for i := range 5 {
		c := g.connect(t)
		exec(t, c, fmt.Sprintf("LISTEN nopin_%d", i%2))
		listeners = append(listeners, c)
	}
	other := g.connect(t)
	for round := range 3 {
		for i, c := range append(listeners, other) {
			if err := expectInt(ctx, c, round+i, "SELECT $1::int", round+i); err != nil {
				t.Fatalf("round %d client %d: %v", round, i, err)
			}
		}
	}
	if blocked(t, g) {
		t.Fatal("another client could not get the backend")
	}
	if n := g.srv.PinnedClients(); n != 0 {
		t.Fatalf("PinnedClients %d, want 0", n)
	}
	exec(t, other, "NOTIFY nopin_1, 'still'")
	for _, i := range []int{1, 3} {
		if err := expectNotification(ctx, listeners[i], "nopin_1", "still"); err != nil {
			t.Fatal(err)
		}
	}

	// Other forms go to the backend and pin as without fan-out.
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LISTEN in_tx"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := g.srv.PinnedClients(); n != 1 {
		t.Fatalf("LISTEN inside a transaction: PinnedClients %d, want 1", n)
	}
	exec(t, other, "UNLISTEN in_tx")
	if n := g.srv.PinnedClients(); n != 0 {
		t.Fatalf("after UNLISTEN: PinnedClients %d, want 0", n)
	}
}

// Without fan-out, LISTEN in transaction mode pins the client to its backend, which delivers.
func TestListenFanoutOffPins(t *testing.T) {
	g := startGateway(t, transactionMode(2))
	ctx := ctxT(t)
	c := g.connect(t)
	exec(t, c, "LISTEN pinned_channel")
	if n := g.srv.PinnedClients(); n != 1 {
		t.Fatalf("PinnedClients %d, want 1", n)
	}
	if n := g.srv.ListenChannels(); n != 0 {
		t.Fatalf("ListenChannels %d without fan-out", n)
	}
	exec(t, g.connect(t), "NOTIFY pinned_channel, 'direct'")
	if err := expectNotification(ctx, c, "pinned_channel", "direct"); err != nil {
		t.Fatal(err)
	}
}

// A client that does not read its notifications is disconnected with an error once its bound
// is reached; the others get every notification.
func TestListenFanoutOverflowDisconnects(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) {
		fanout(2)(c)
		c.MaxOutput = 64 << 10
	})
	ctx := ctxT(t)
	cfg, err := pgconn.ParseConfig(g.dsn(appUser, appPassword, testDatabase))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = smallReceiveBuffer
	stuck, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close(ctx)
	if _, err := stuck.Exec(ctx, "LISTEN flood").ReadAll(); err != nil {
		t.Fatal(err)
	}
	healthy := g.connect(t)
	exec(t, healthy, "LISTEN flood")

	// Far more than the bound and every buffer on the way (10.5 MB), in batches the healthy
	// listener reads before the next is sent: a client that keeps up is never at its bound.
	const count, batch, size = 1500, 100, 7000
	notifier := g.connect(t)
	for first := 1; first <= count; first += batch {
		exec(t, notifier, "SELECT pg_notify('flood', lpad(g::text, $1, 'x')) FROM generate_series($2::int, $3::int) g", size, first, first+batch-1)
		for i := first; i < first+batch; i++ {
			want := strings.Repeat("x", size-len(strconv.Itoa(i))) + strconv.Itoa(i) // lpad's
			if err := expectNotification(ctx, healthy, "flood", want); err != nil {
				t.Fatalf("healthy listener, notification %d: %v", i, err)
			}
		}
	}
	if err := healthy.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// The stuck client reads at last: some notifications, then the error, then the end.
	nc := stuck.Conn()
	nc.SetReadDeadline(time.Now().Add(waitLimit))
	got, err := io.ReadAll(nc)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("reading the stuck client's stream: %v", err)
	}
	notifications, last := 0, byte(0)
	var errorBody []byte
	for len(got) >= 5 {
		typ, n := got[0], int(binary.BigEndian.Uint32(got[1:5]))
		if n < 4 || len(got) < 1+n {
			t.Fatalf("truncated message %q after %d notifications", typ, notifications)
		}
		switch typ {
		case 'A':
			if errorBody != nil {
				t.Fatal("a notification after the error")
			}
			notifications++
		case 'E':
			errorBody = got[5 : 1+n]
		default:
			t.Fatalf("unexpected message %q", typ)
		}
		last, got = typ, got[1+n:]
	}
	if last != 'E' || !bytes.Contains(errorBody, []byte("C53400")) || !bytes.Contains(errorBody, []byte("--listen-fanout")) {
		t.Fatalf("stream ended with %q %q after %d notifications, want a 53400 error naming --listen-fanout", last, errorBody, notifications)
	}
	if notifications >= count {
		t.Fatalf("all %d notifications reached the stuck client: no overflow", notifications)
	}
	t.Logf("the stuck client got %d of %d notifications before the error", notifications, count)
	if n := g.srv.ListenChannels(); n != 1 {
		t.Fatalf("ListenChannels %d, want 1 (the healthy listener's)", n)
	}
}

// smallReceiveBuffer dials with a small socket receive buffer, so that a client that does not
// read fills up quickly.
func smallReceiveBuffer(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); cerr != nil {
			return cerr
		}
		return err
	}}
	return d.DialContext(ctx, network, addr)
}

// When the hub's connection is lost it reconnects and listens again.
func TestListenFanoutReconnects(t *testing.T) {
	g := startGateway(t, fanout(2))
	ctx := ctxT(t)
	c := g.connect(t)
	exec(t, c, "LISTEN reconnect_ch")
	notifier := g.connect(t)
	mon := direct(t)
	var killed bool
	if err := mon.QueryRow(ctx, "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'asyncgate listen fan-out'").Scan(&killed); err != nil || !killed {
		t.Fatalf("terminating the listener connection: %v %v", killed, err)
	}
	// Notifications sent while it reconnects are lost; probe until one gets through.
	probe := 0
	eventually(t, "notifications after the reconnect", func() bool {
		probe++
		exec(t, notifier, "SELECT pg_notify('reconnect_ch', $1)", strconv.Itoa(probe))
		wait, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		n, err := c.WaitForNotification(wait)
		return err == nil && n.Channel == "reconnect_ch"
	})
	if n := g.srv.ListenChannels(); n != 1 {
		t.Fatalf("ListenChannels %d after the reconnect, want 1", n)
	}
}
