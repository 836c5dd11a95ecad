package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgbench's schema (pgbench -i), so that scripts written for pgbench run unchanged.
var initStatements = []string{
	`DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers`,
	`CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))`,
	`CREATE TABLE pgbench_tellers (tid int NOT NULL, bid int, tbalance int, filler char(84)) WITH (fillfactor = 100)`,
	`CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84)) WITH (fillfactor = 100)`,
	`CREATE TABLE pgbench_branches (bid int NOT NULL, bbalance int, filler char(88)) WITH (fillfactor = 100)`,
	// Generated server-side, like pgbench -I G: no data crosses the wire.
	`INSERT INTO pgbench_branches (bid, bbalance) SELECT bid, 0 FROM generate_series(1, $1::int) AS bid`,
	`INSERT INTO pgbench_tellers (tid, bid, tbalance) SELECT tid, (tid - 1) / 10 + 1, 0 FROM generate_series(1, 10 * $1::int) AS tid`,
	`INSERT INTO pgbench_accounts (aid, bid, abalance, filler) SELECT aid, (aid - 1) / 100000 + 1, 0, '' FROM generate_series(1, 100000 * $1::int) AS aid`,
	`ALTER TABLE pgbench_branches ADD PRIMARY KEY (bid)`,
	`ALTER TABLE pgbench_tellers ADD PRIMARY KEY (tid)`,
	`ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)`,
	`VACUUM ANALYZE pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history`,
}

// InitTables creates and fills the pgbench tables at scale (100000 accounts, 10 tellers and 1
// branch per unit), replacing any that exist.
func InitTables(ctx context.Context, dsn string, scale int) error {
	if scale < 1 {
		return fmt.Errorf("benchmarks: init: scale must be at least 1")
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("benchmarks: init: %w", err)
	}
	defer conn.Close(context.Background())
	for _, sql := range initStatements {
		// The simple protocol, one statement at a time and outside a transaction block: VACUUM
		// refuses to run inside one, and a pooler in front may not keep prepared statements.
		args := []any{pgx.QueryExecModeSimpleProtocol}
		if strings.Contains(sql, "$1") {
			args = append(args, scale)
		}
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			return fmt.Errorf("benchmarks: init: %.40s…: %w", sql, err)
		}
	}
	return nil
}

// DetectScale reads the scale of existing pgbench tables, as pgbench does: one branch per unit.
func DetectScale(ctx context.Context, dsn string) (int, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("benchmarks: detect scale: %w", err)
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM pgbench_branches", pgx.QueryExecModeSimpleProtocol).Scan(&n)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
		return 0, fmt.Errorf("benchmarks: detect scale: no pgbench tables (run with --init)")
	}
	if err != nil {
		return 0, fmt.Errorf("benchmarks: detect scale: %w", err)
	}
	if n < 1 {
		return 0, fmt.Errorf("benchmarks: detect scale: pgbench_branches is empty")
	}
	return n, nil
}

// RaiseFileLimit lifts the soft limit on open files to the hard limit: thousands of client
// sockets need it, and the usual soft limit of 1024 would fail them with EMFILE.
func RaiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("benchmarks: getrlimit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("benchmarks: setrlimit: %w", err)
		}
	}
	return lim.Cur, nil
}
