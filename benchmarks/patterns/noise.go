package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// noise keeps a target's pool busy with short queries from other clients, so that a client the
// gateway does not pin rarely gets the same backend for two transactions in a row.
type noise struct {
	wg            sync.WaitGroup
	queries       atomic.Int64
	errors        atomic.Int64
	notifications atomic.Int64

	mu        sync.Mutex
	firstErr  string
	connected atomic.Int64
}

// noiseStats is what the noise clients saw; a non-zero Notifications means a notification for
// one client reached another.
type noiseStats struct {
	Clients       int    `json:"clients_connected"`
	Queries       int64  `json:"queries"`
	Errors        int64  `json:"errors"`
	FirstError    string `json:"first_error,omitempty"`
	Notifications int64  `json:"notifications_received"`
}

func startNoise(ctx context.Context, dsn string, clients int) *noise {
	n := &noise{}
	for range clients {
		n.wg.Add(1)
		go n.client(ctx, dsn)
	}
	return n
}

// client runs SELECT pg_sleep(0.005) until ctx ends, reconnecting when the connection breaks.
// It uses pgconn, the simple protocol only, so that it works on any gateway, and so that it can
// see notifications sent to it.
func (n *noise) client(ctx context.Context, dsn string) {
	defer n.wg.Done()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		n.fail(err)
		return
	}
	// Noise clients never LISTEN: whatever reaches them was meant for another client.
	cfg.OnNotification = func(*pgconn.PgConn, *pgconn.Notification) { n.notifications.Add(1) }
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			conn.Close(cctx)
			cancel()
		}
	}()
	first := true
	for ctx.Err() == nil {
		if conn == nil || conn.IsClosed() {
			if conn, err = pgconn.ConnectConfig(ctx, cfg); err != nil {
				conn = nil
				if ctx.Err() == nil {
					n.fail(err)
				}
				sleep(ctx, 100*time.Millisecond)
				continue
			}
			if first {
				first = false
				n.connected.Add(1)
			}
		}
		if _, err := conn.Exec(ctx, "SELECT pg_sleep(0.005)").ReadAll(); err != nil {
			if ctx.Err() == nil {
				n.fail(err)
				sleep(ctx, 20*time.Millisecond)
			}
			continue
		}
		n.queries.Add(1)
	}
}

func (n *noise) fail(err error) {
	n.errors.Add(1)
	n.mu.Lock()
	if n.firstErr == "" {
		n.firstErr = oneLine(err.Error())
	}
	n.mu.Unlock()
}

// wait waits for the clients, whose context must be done, and returns what they saw.
func (n *noise) wait() noiseStats {
	n.wg.Wait()
	return noiseStats{
		Clients:       int(n.connected.Load()),
		Queries:       n.queries.Load(),
		Errors:        n.errors.Load(),
		FirstError:    n.firstErr,
		Notifications: n.notifications.Load(),
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
