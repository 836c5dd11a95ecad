package benchmarks

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/asyncgate/asyncgate/benchmarks/pgscript"
	"github.com/jackc/pgx/v5"
)

// reconnectBackoff keeps a client whose target is down from spinning on connection attempts.
const reconnectBackoff = 100 * time.Millisecond

// client is one connection running transactions.
type client struct {
	id     int
	config *pgx.ConnConfig
	conn   *pgx.Conn
	mydb   *sql.DB    // a mysql:// target: config is nil (mysql.go)
	my     *mysqlConn // its connection
	myPrep bool       // -M prepared on it
	w      *Workload
	states []*pgscript.State
	rng    *rand.Rand
	args   []any
}

func newClient(id int, config *pgx.ConnConfig, w *Workload, scale int, rng *rand.Rand) *client {
	c := &client{id: id, config: config, w: w, rng: rng}
	for _, s := range w.Scripts {
		c.states = append(c.states, s.NewState(int64(scale), id, rng))
	}
	return c
}

func (c *client) connect(ctx context.Context) error {
	if c.mydb != nil {
		conn, err := c.mydb.Conn(ctx)
		if err != nil {
			return err
		}
		c.my = &mysqlConn{conn: conn, prepared: c.myPrep, stmts: map[string]*sql.Stmt{}}
		return nil
	}
	conn, err := pgx.ConnectConfig(ctx, c.config)
	if err != nil {
		return err
	}
	c.conn = conn
	return nil
}

func (c *client) close(ctx context.Context) {
	if c.my != nil {
		c.my.close()
		c.my = nil
	}
	if c.conn != nil {
		_ = c.conn.Close(ctx)
		c.conn = nil
	}
}

// txn runs one transaction: a script picked by weight, command by command. A client whose
// connection broke reconnects first, so a target that restarts recovers within the round.
func (c *client) txn(ctx context.Context) error {
	if c.mydb != nil && c.my == nil || c.mydb == nil && (c.conn == nil || c.conn.IsClosed()) {
		if err := c.connect(ctx); err != nil {
			// The attempt counts as a failed transaction; the pause keeps a closed loop
			// from spinning while the target is down.
			_ = sleepCtx(ctx, reconnectBackoff)
			return err
		}
	}
	i := c.w.pick(c.rng)
	s, st := c.w.Scripts[i], c.states[i]
	for j := range s.Commands {
		cmd := &s.Commands[j]
		switch cmd.Kind {
		case pgscript.KindSet:
			if err := st.Set(cmd); err != nil {
				return c.abort(&scriptError{err})
			}
		case pgscript.KindSleep:
			d, err := st.SleepFor(cmd)
			if err != nil {
				return c.abort(&scriptError{err})
			}
			if err := sleepCtx(ctx, d); err != nil {
				return c.abort(err)
			}
		case pgscript.KindSQL:
			c.args = st.Args(cmd, c.args)
			if err := c.query(ctx, cmd.SQL, c.args); err != nil {
				return c.abort(err)
			}
		}
	}
	return nil
}

// query runs sql and reads its whole result, as a real client would.
func (c *client) query(ctx context.Context, sql string, args []any) error {
	if c.my != nil {
		return c.my.query(ctx, sql, args)
	}
	rows, err := c.conn.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	rows.Close()
	return rows.Err()
}

// abort leaves the connection idle after a failed transaction, so the next one does not run
// inside a failed transaction block.
func (c *client) abort(err error) error {
	if c.my != nil {
		if c.my.inTx {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if rbErr := c.my.query(ctx, "ROLLBACK", nil); rbErr != nil {
				c.close(ctx)
			}
		}
		return err
	}
	if c.conn.IsClosed() || c.conn.PgConn().TxStatus() == 'I' {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, rbErr := c.conn.Exec(ctx, "ROLLBACK"); rbErr != nil {
		c.close(ctx)
	}
	return err
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sleep: %w", ctx.Err())
	}
}
