package sqlclass

import (
	"slices"
	"strings"
	"testing"
)

func classifyOnce(t *testing.T, sql string) *Class {
	t.Helper()
	return New(0).Classify(sql)
}

func TestEffects(t *testing.T) {
	tests := []struct {
		sql  string
		want []Effect
	}{
		// Temporary relations.
		{"CREATE TEMP TABLE t (a int)", []Effect{{Kind: TempCreate, Name: "t"}}},
		{"CREATE TEMPORARY TABLE IF NOT EXISTS Foo (a int)", []Effect{{Kind: TempCreate, Name: "foo"}}},
		{`CREATE TEMP TABLE "MyTable" (a int)`, []Effect{{Kind: TempCreate, Name: "MyTable"}}},
		{"CREATE LOCAL TEMP TABLE t (a int) ON COMMIT DELETE ROWS", []Effect{{Kind: TempCreate, Name: "t"}}},
		{"CREATE TEMP TABLE t (a int) ON COMMIT DROP", nil},
		{"CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", nil},
		{"CREATE TEMP VIEW v AS SELECT 1", []Effect{{Kind: TempCreate, Name: "v"}}},
		{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", []Effect{{Kind: TempCreate, Name: "v"}}},
		{"CREATE TEMP SEQUENCE s", []Effect{{Kind: TempCreate, Name: "s"}}},
		{"CREATE TABLE pg_temp.x (a int)", []Effect{{Kind: TempCreate, Name: "x"}}},
		{"CREATE TABLE pg_temp_3.x (a int)", []Effect{{Kind: TempCreate, Name: "x"}}},
		{"SELECT * INTO TEMP x FROM t", []Effect{{Kind: TempCreate, Name: "x"}}},
		{"SELECT * INTO TEMPORARY TABLE x FROM t", []Effect{{Kind: TempCreate, Name: "x"}}},
		{"CREATE TEMP TABLE x AS SELECT * FROM t", []Effect{{Kind: TempCreate, Name: "x"}}},
		{"CREATE TEMP TABLE x AS EXECUTE p(1)", []Effect{{Kind: TempCreate, Name: "x"}}},
		{"CREATE TABLE pg_temp.x AS SELECT 1", []Effect{{Kind: TempCreate, Name: "x"}}},
		{"CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", []Effect{{Kind: TempCreate}}},
		{"CREATE TYPE pg_temp.pair AS (a int, b int)", []Effect{{Kind: TempCreate}}},
		{"CREATE TYPE pg_temp.mood AS ENUM ('sad', 'ok')", []Effect{{Kind: TempCreate}}},
		{"CREATE DOMAIN pg_temp.posint AS int CHECK (VALUE > 0)", []Effect{{Kind: TempCreate}}},
		{"CREATE TABLE t (a int)", nil},
		{"CREATE UNLOGGED TABLE t (a int)", nil},
		{"CREATE TABLE public.t AS SELECT 1", nil},
		{"SELECT * INTO x FROM t", nil},
		{"CREATE VIEW v AS SELECT 1", nil},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", nil},
		{"DROP TABLE t", []Effect{{Kind: TempDrop, Name: "t"}}},
		{`DROP TABLE IF EXISTS a, "B", pg_temp.c, public.d CASCADE`,
			[]Effect{{Kind: TempDrop, Name: "a"}, {Kind: TempDrop, Name: "B"}, {Kind: TempDrop, Name: "c"}}},
		{"DROP VIEW v", []Effect{{Kind: TempDrop, Name: "v"}}},
		{"DROP SEQUENCE s", []Effect{{Kind: TempDrop, Name: "s"}}},
		{"DROP INDEX i", nil},
		{"DROP FUNCTION f()", nil},
		{"EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1", []Effect{{Kind: TempCreate, Name: "x"}}},
		{"EXPLAIN CREATE TEMP TABLE x AS SELECT 1", nil},

		// Advisory locks.
		{"SELECT pg_advisory_lock(1)", []Effect{{Kind: AdvisoryLock, Name: "pg_advisory_lock", Value: "1"}}},
		{"SELECT pg_advisory_lock(1), pg_advisory_unlock(2)", []Effect{
			{Kind: AdvisoryLock, Name: "pg_advisory_lock", Value: "1"},
			{Kind: AdvisoryUnlock, Name: "pg_advisory_unlock", Value: "2"},
		}},
		{"SELECT pg_catalog.pg_advisory_lock_shared(1, -2)",
			[]Effect{{Kind: AdvisoryLock, Name: "pg_advisory_lock_shared", Value: "1, -2"}}},
		{"SELECT pg_try_advisory_lock($1)", []Effect{{Kind: AdvisoryLock, Name: "pg_try_advisory_lock"}}},
		{"SELECT PG_TRY_ADVISORY_LOCK_SHARED(hashtext('job'))", []Effect{{Kind: AdvisoryLock, Name: "pg_try_advisory_lock_shared"}}},
		{"SELECT pg_advisory_unlock_shared(7)", []Effect{{Kind: AdvisoryUnlock, Name: "pg_advisory_unlock_shared", Value: "7"}}},
		{"SELECT pg_advisory_unlock_all()", []Effect{{Kind: AdvisoryUnlockAll, Name: "pg_advisory_unlock_all"}}},
		{"SELECT pg_advisory_xact_lock(1), pg_try_advisory_xact_lock(2), pg_advisory_xact_lock_shared(3), pg_try_advisory_xact_lock_shared(4)", nil},
		{"SELECT myschema.pg_advisory_lock(1)", nil},
		{"SELECT 1 FROM t WHERE id = (SELECT pg_advisory_lock(id) FROM u LIMIT 1)",
			[]Effect{{Kind: AdvisoryLock, Name: "pg_advisory_lock"}}},
		{"SELECT coalesce(pg_try_advisory_lock(1), false) AND pg_advisory_unlock(1)", []Effect{
			{Kind: AdvisoryLock, Name: "pg_try_advisory_lock", Value: "1"},
			{Kind: AdvisoryUnlock, Name: "pg_advisory_unlock", Value: "1"},
		}},
		{"WITH l AS (SELECT pg_advisory_lock(1)) SELECT pg_advisory_unlock(2) FROM l", []Effect{
			{Kind: AdvisoryLock, Name: "pg_advisory_lock", Value: "1"},
			{Kind: AdvisoryUnlock, Name: "pg_advisory_unlock", Value: "2"},
		}},
		{"UPDATE jobs SET locked = pg_try_advisory_lock(id) WHERE id = 1",
			[]Effect{{Kind: AdvisoryLock, Name: "pg_try_advisory_lock"}}},
		{"EXPLAIN SELECT pg_advisory_lock(1)", nil},
		{"EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", []Effect{{Kind: AdvisoryLock, Name: "pg_advisory_lock", Value: "1"}}},

		// Cursors.
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", []Effect{{Kind: HoldCursor, Name: "c"}}},
		{`DECLARE "Cur" BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1`, []Effect{{Kind: HoldCursor, Name: "Cur"}}},
		{"DECLARE c CURSOR FOR SELECT 1", nil},
		{"DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", nil},
		{"CLOSE c", []Effect{{Kind: CursorClose, Name: "c"}}},
		{"CLOSE ALL", []Effect{{Kind: CursorCloseAll}}},
		{"FETCH 10 FROM c", nil},

		// Prepared statements.
		{"PREPARE q (int) AS SELECT $1", []Effect{{Kind: Prepare, Name: "q"}}},
		{"DEALLOCATE q", []Effect{{Kind: Deallocate, Name: "q"}}},
		{"DEALLOCATE PREPARE q", []Effect{{Kind: Deallocate, Name: "q"}}},
		{"DEALLOCATE ALL", []Effect{{Kind: DeallocateAll}}},
		{"DEALLOCATE PREPARE ALL", []Effect{{Kind: DeallocateAll}}},
		{"EXECUTE q(1)", nil},

		// Parameters.
		{"SET search_path = app, public", []Effect{{Kind: Set, Name: "search_path", Value: "app, public"}}},
		{`SET search_path TO "$user", "App", public`, []Effect{{Kind: Set, Name: "search_path", Value: `"$user", "App", public`}}},
		{"SET SESSION statement_timeout = 5000", []Effect{{Kind: Set, Name: "statement_timeout", Value: "5000"}}},
		{"SET LOCAL statement_timeout = '5s'", []Effect{{Kind: Set, Name: "statement_timeout", Value: "5s", Local: true}}},
		// Unquoted words fold like identifiers; Postgres canonicalizes DateStyle only when it applies it.
		{"SET DateStyle = ISO, DMY", []Effect{{Kind: Set, Name: "datestyle", Value: "iso, dmy"}}},
		{"SET extra_float_digits = -1.5", []Effect{{Kind: Set, Name: "extra_float_digits", Value: "-1.5"}}},
		{"SET application_name = ''", []Effect{{Kind: Set, Name: "application_name"}}},
		{"SET enable_seqscan = off", []Effect{{Kind: Set, Name: "enable_seqscan", Value: "off"}}},
		{"SET enable_seqscan = true", []Effect{{Kind: Set, Name: "enable_seqscan", Value: "true"}}},
		{`SET "MyExt.Setting" = 'x'`, []Effect{{Kind: Set, Name: "myext.setting", Value: "x"}}},
		{"SET TIME ZONE 'Europe/Paris'", []Effect{{Kind: Set, Name: "timezone", Value: "Europe/Paris"}}},
		{"SET TIME ZONE -7", []Effect{{Kind: Set, Name: "timezone", Value: "-7"}}},
		{"SET TIME ZONE INTERVAL '-08:00' HOUR TO MINUTE", []Effect{{Kind: Set, Name: "timezone"}}},
		{"SET TIME ZONE LOCAL", []Effect{{Kind: Reset, Name: "timezone"}}},
		{"SET NAMES 'UTF8'", []Effect{{Kind: Set, Name: "client_encoding", Value: "UTF8"}}},
		{"SET SCHEMA 'app'", []Effect{{Kind: Set, Name: "search_path", Value: "app"}}},
		{"SET ROLE reporting", []Effect{{Kind: Set, Name: "role", Value: "reporting"}}},
		{"SET ROLE NONE", []Effect{{Kind: Set, Name: "role", Value: "none"}}},
		{"SET SESSION AUTHORIZATION 'alice'", []Effect{{Kind: Set, Name: "session_authorization", Value: "alice"}}},
		{"SET SESSION AUTHORIZATION DEFAULT", []Effect{{Kind: Reset, Name: "session_authorization"}}},
		{"SET work_mem TO DEFAULT", []Effect{{Kind: Reset, Name: "work_mem"}}},
		{"SET LOCAL work_mem TO DEFAULT", []Effect{{Kind: Reset, Name: "work_mem", Local: true}}},
		{"SET work_mem FROM CURRENT", []Effect{{Kind: Set, Name: "work_mem"}}},
		{"RESET work_mem", []Effect{{Kind: Reset, Name: "work_mem"}}},
		{"RESET ROLE", []Effect{{Kind: Reset, Name: "role"}}},
		{"RESET SESSION AUTHORIZATION", []Effect{{Kind: Reset, Name: "session_authorization"}}},
		{"RESET TIME ZONE", []Effect{{Kind: Reset, Name: "timezone"}}},
		{"RESET ALL", []Effect{{Kind: ResetAll}}},
		{"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", []Effect{
			{Kind: Set, Name: "transaction_isolation", Value: "repeatable read", Local: true},
			{Kind: Set, Name: "transaction_read_only", Value: "on", Local: true},
		}},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE, DEFERRABLE", []Effect{
			{Kind: Set, Name: "default_transaction_isolation", Value: "serializable"},
			{Kind: Set, Name: "default_transaction_read_only", Value: "off"},
			{Kind: Set, Name: "default_transaction_deferrable", Value: "on"},
		}},
		{"SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", nil},
		{"SELECT set_config('search_path', 'app, public', false)",
			[]Effect{{Kind: Set, Name: "search_path", Value: "app, public"}}},
		{"SELECT pg_catalog.set_config('Work_Mem', '64MB', true)",
			[]Effect{{Kind: Set, Name: "work_mem", Value: "64MB", Local: true}}},
		{"SELECT set_config('a.b', 'x', 'on'::boolean), set_config('a.c', 'y', 'f')", []Effect{
			{Kind: Set, Name: "a.b", Value: "x", Local: true},
			{Kind: Set, Name: "a.c", Value: "y"},
		}},
		{"SELECT set_config($1, $2, $3)", []Effect{{Kind: Set}}},
		{"SELECT pg_advisory_lock(1) INTO TEMP t", []Effect{
			{Kind: TempCreate, Name: "t"},
			{Kind: AdvisoryLock, Name: "pg_advisory_lock", Value: "1"},
		}},
		{"SELECT set_config('a.b', NULL, false)", []Effect{{Kind: Reset, Name: "a.b"}}},
		{"SELECT set_config('a.b', 'x'::text, NULL)", []Effect{{Kind: Set, Name: "a.b", Value: "x"}}},
		{"SELECT current_setting('work_mem')", nil},

		// LOAD, LISTEN, DISCARD.
		{"LOAD 'auto_explain'", []Effect{{Kind: Load, Name: "auto_explain"}}},
		{"LISTEN jobs", []Effect{{Kind: Listen, Name: "jobs"}}},
		{`LISTEN "Jobs"`, []Effect{{Kind: Listen, Name: "Jobs"}}},
		{"UNLISTEN jobs", []Effect{{Kind: Unlisten, Name: "jobs"}}},
		{"UNLISTEN *", []Effect{{Kind: UnlistenAll}}},
		{"NOTIFY jobs, 'x'", nil},
		{"DISCARD ALL", []Effect{{Kind: DiscardAll}}},
		{"DISCARD TEMP", []Effect{{Kind: DiscardTemp}}},
		{"DISCARD TEMPORARY", []Effect{{Kind: DiscardTemp}}},
		{"DISCARD PLANS", []Effect{{Kind: DiscardPlans}}},
		{"DISCARD SEQUENCES", []Effect{{Kind: DiscardSequences}}},

		// Several statements, in order; comments.
		{"SET a.b = 1; CREATE TEMP TABLE t (a int); SELECT pg_advisory_lock(1); RESET a.b", []Effect{
			{Kind: Set, Name: "a.b", Value: "1"},
			{Kind: TempCreate, Name: "t"},
			{Kind: AdvisoryLock, Name: "pg_advisory_lock", Value: "1"},
			{Kind: Reset, Name: "a.b"},
		}},
		{"/* traceparent='00-abc-01' */ SET search_path = app -- trailing", []Effect{{Kind: Set, Name: "search_path", Value: "app"}}},
		{"SELECT 1; ; SELECT 2;", nil},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got := classifyOnce(t, tt.sql)
			if got.ParseError {
				t.Fatal("parse error")
			}
			if !slices.Equal(got.Effects, tt.want) {
				t.Errorf("effects\n got  %v\n want %v", got.Effects, tt.want)
			}
		})
	}
}

func TestRead(t *testing.T) {
	tests := []struct {
		sql  string
		want bool
	}{
		{"SELECT 1", true},
		{"SELECT abalance FROM pgbench_accounts WHERE aid = $1;", true},
		{"select * from t where a = 1 and b in (select b from u)", true},
		{"VALUES (1), (2)", true},
		{"TABLE t", true},
		{"SHOW work_mem", true},
		{"SHOW ALL", true},
		{"SELECT 1; SELECT 2; SHOW search_path", true},
		{"/* traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' */ SELECT 1", true},
		{"SELECT count(*), sum(a), max(b), string_agg(c, ',') FROM t GROUP BY d HAVING avg(a) > 1", true},
		{"SELECT lower(name), pg_catalog.upper(name), now(), current_timestamp, current_user FROM t", true},
		{"SELECT coalesce(a, 0), nullif(b, 1), greatest(a, b), least(a, b) FROM t", true},
		{"SELECT extract(year FROM ts), substring(s FROM 2 FOR 3), trim(s), position('a' IN s), ts AT TIME ZONE 'UTC' FROM t", true},
		{"SELECT jsonb_build_object('a', 1) -> 'a', row_number() OVER (ORDER BY a) FROM t", true},
		{"SELECT * FROM generate_series(1, 10) g", true},
		{"SELECT a::text, CAST(b AS int), CASE WHEN a > 0 THEN 'p' ELSE 'n' END FROM t", true},
		{"WITH x AS (SELECT * FROM t) SELECT * FROM x", true},
		{"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", true},
		{"SELECT a FROM t UNION SELECT a FROM u EXCEPT SELECT a FROM v", true},
		{"SELECT EXISTS (SELECT 1 FROM t WHERE a = ANY ($1))", true},
		{"EXPLAIN SELECT * FROM t", true},
		{"EXPLAIN (ANALYZE false, COSTS off) SELECT * FROM t", true},
		{"EXPLAIN (ANALYZE off) SELECT 1", true},
		{"EXPLAIN (ANALYZE 0) SELECT 1", true},

		{"", false},
		{"-- only a comment", false},
		{"SELEC 1", false},
		{"EXPLAIN ANALYZE SELECT * FROM t", false},
		{"EXPLAIN (ANALYZE) SELECT 1", false},
		{"EXPLAIN (ANALYZE true) SELECT 1", false},
		{"EXPLAIN (ANALYZE maybe) SELECT 1", false},
		{"EXPLAIN ANALYZE DELETE FROM t", false},
		{"EXPLAIN DELETE FROM t", false},
		{"EXPLAIN SELECT nextval('s')", false},
		{"SELECT nextval('s')", false},
		{"SELECT (SELECT nextval('s'))", false},
		{"SELECT * FROM t WHERE a IN (SELECT setval('s', 1))", false},
		{"SELECT currval('s')", false},
		{"SELECT my_function(1)", false},
		{"SELECT public.lower('A')", false},
		{`SELECT "LOWER"('A')`, false},
		{"SELECT * FROM my_srf()", false},
		{"SELECT pg_advisory_lock(1)", false},
		{"SELECT pg_advisory_xact_lock(1)", false},
		{"SELECT set_config('a.b', 'c', false)", false},
		{"SELECT lo_unlink(1)", false},
		{"SELECT pg_notify('c', 'x')", false},
		{"SELECT txid_current()", false},
		{"SELECT pg_current_xact_id()", false},
		{"SELECT dblink('x', 'select 1')", false},
		{"SELECT setseed(0.5)", false},
		{"SELECT * FROM t FOR UPDATE", false},
		{"SELECT * FROM t FOR NO KEY UPDATE", false},
		{"SELECT * FROM t FOR SHARE", false},
		{"SELECT * FROM t FOR KEY SHARE SKIP LOCKED", false},
		{"SELECT * FROM (SELECT * FROM t FOR UPDATE) s", false},
		{"WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x", false},
		{"SELECT * INTO x FROM t", false},
		{"SELECT * INTO TEMP x FROM t", false},
		{"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", false},
		{"WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", false},
		{"WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", false},
		{"WITH y AS (SELECT 1), x AS (MERGE INTO t USING y ON true WHEN MATCHED THEN DELETE RETURNING *) SELECT * FROM x", false},
		{"SELECT 1 OPERATOR(myschema.+) 2", false},
		{"SELECT 1 OPERATOR(pg_catalog.+) 2", true},
		{"SELECT 1; DELETE FROM t", false},
		{"INSERT INTO t VALUES (1)", false},
		{"UPDATE t SET a = 1", false},
		{"DELETE FROM t", false},
		{"BEGIN READ ONLY", false},
		{"SET search_path = app", false},
		{"DECLARE c CURSOR FOR SELECT 1", false},
		{"COPY t TO STDOUT", false},
		{"COPY (SELECT 1) TO STDOUT", false},
		{"EXECUTE q(1)", false},
		{"CREATE TABLE t (a int)", false},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			if got := classifyOnce(t, tt.sql).Read; got != tt.want {
				t.Errorf("Read = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBatchable(t *testing.T) {
	tests := []struct {
		sql  string
		want bool
	}{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = $1;", true},
		{"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", true},
		{"INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING RETURNING id", true},
		{"DELETE FROM t WHERE a = 1", true},
		{"MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = u.a", true},
		{"VALUES (1)", true},
		{"TABLE t", true},
		{"SHOW work_mem", true},
		{"EXPLAIN SELECT 1", true},
		{"EXPLAIN ANALYZE UPDATE t SET a = 1", true},
		{"NOTIFY jobs", true},
		{"SELECT pg_notify('jobs', 'x')", true},
		{"SELECT nextval('s'), my_function(1), currval('s')", true},
		{"SELECT * FROM t FOR UPDATE", true},
		{"SELECT * INTO x FROM t", true},
		{"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", true},
		{"SELECT 1; UPDATE t SET a = 1; SELECT 2", true},
		{"CREATE TABLE t (a int)", true},
		{"CREATE TABLE t AS SELECT 1", true},
		{"CREATE MATERIALIZED VIEW m AS SELECT 1", true},
		{"REFRESH MATERIALIZED VIEW CONCURRENTLY m", true},
		{"CREATE VIEW v AS SELECT 1", true},
		{"CREATE SEQUENCE s", true},
		{"CREATE INDEX i ON t (a)", true},
		{"ALTER TABLE t ADD COLUMN b int", true},
		{"ALTER TABLE p DETACH PARTITION c", true},
		{"DROP TABLE t", true},
		{"DROP INDEX i", true},
		{"TRUNCATE t", true},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", true},
		{"GRANT SELECT ON t TO r", true},
		{"COMMENT ON TABLE t IS 'x'", true},
		{"CREATE SCHEMA s", true},
		{"CREATE EXTENSION IF NOT EXISTS pgcrypto", true},
		{"ALTER ROLE r SET work_mem = '1GB'", true},

		{"", false},
		{"SELEC 1", false},
		{"BEGIN", false},
		{"START TRANSACTION", false},
		{"COMMIT", false},
		{"ROLLBACK", false},
		{"SAVEPOINT a", false},
		{"RELEASE SAVEPOINT a", false},
		{"ROLLBACK TO SAVEPOINT a", false},
		{"PREPARE TRANSACTION 'x'", false},
		{"COMMIT PREPARED 'x'", false},
		{"ROLLBACK PREPARED 'x'", false},
		{"SELECT 1; COMMIT", false},
		{"SET work_mem = '1GB'", false},
		{"SET LOCAL work_mem = '1GB'", false},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", false},
		{"SET CONSTRAINTS ALL DEFERRED", false},
		{"RESET ALL", false},
		{"SELECT set_config('a.b', 'c', true)", false},
		{"UPDATE t SET a = set_config('a.b', 'c', false)", false},
		{"LISTEN c", false},
		{"UNLISTEN *", false},
		{"PREPARE q AS SELECT 1", false},
		{"EXECUTE q", false},
		{"EXPLAIN EXECUTE q", false},
		{"CREATE TABLE x AS EXECUTE q", false},
		{"DEALLOCATE ALL", false},
		{"DECLARE c CURSOR FOR SELECT 1", false},
		{"FETCH c", false},
		{"MOVE c", false},
		{"CLOSE c", false},
		{"COPY t FROM STDIN", false},
		{"COPY t TO STDOUT", false},
		{"DISCARD ALL", false},
		{"LOCK TABLE t", false},
		{"LOAD 'x'", false},
		{"CREATE TEMP TABLE t (a int)", false},
		{"CREATE TEMP TABLE t (a int) ON COMMIT DROP", false},
		{"CREATE TABLE pg_temp.t (a int)", false},
		{"CREATE TEMP VIEW v AS SELECT 1", false},
		{"CREATE TEMP SEQUENCE s", false},
		{"SELECT * INTO TEMP x FROM t", false},
		{"CREATE TEMP TABLE x AS SELECT 1", false},
		{"CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", false},
		{"SELECT pg_advisory_lock(1)", false},
		{"SELECT pg_advisory_unlock_all()", false},
		{"SELECT pg_advisory_xact_lock(1)", false},
		{"SELECT pg_try_advisory_xact_lock_shared(1)", false},
		{"SELECT * FROM t WHERE pg_try_advisory_xact_lock(id)", false},
		{"SELECT setseed(0.5)", false},
		{"SELECT dblink_connect('c', 'dbname=x')", false},
		{"VACUUM t", false},
		{"VACUUM (ANALYZE) t", false},
		{"ANALYZE t", false},
		{"CLUSTER t", false},
		{"REINDEX TABLE t", false},
		{"REINDEX TABLE CONCURRENTLY t", false},
		{"CREATE INDEX CONCURRENTLY i ON t (a)", false},
		{"DROP INDEX CONCURRENTLY i", false},
		{"ALTER TABLE p DETACH PARTITION c CONCURRENTLY", false},
		{"CREATE DATABASE d", false},
		{"DROP DATABASE d", false},
		{"ALTER SYSTEM SET work_mem = '1GB'", false},
		{"CREATE TABLESPACE ts LOCATION '/x'", false},
		{"CHECKPOINT", false},
		{"DO $$ BEGIN COMMIT; END $$", false},
		{"CALL p()", false},
		{"CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p", false},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			if got := classifyOnce(t, tt.sql).Batchable; got != tt.want {
				t.Errorf("Batchable = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTransactionControl(t *testing.T) {
	tests := []struct {
		sql                      string
		txControl, readOnlyBegin bool
	}{
		{"BEGIN", true, false},
		{"BEGIN READ ONLY", true, true},
		{"begin transaction read only", true, true},
		{"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE", true, true},
		{"START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", true, true},
		{"START TRANSACTION READ ONLY, READ WRITE", true, false},
		{"BEGIN READ WRITE", true, false},
		{"BEGIN READ ONLY; SELECT 1; COMMIT", true, true},
		{"COMMIT", true, false},
		{"COMMIT AND CHAIN", true, false},
		{"END", true, false},
		{"ABORT", true, false},
		{"ROLLBACK", true, false},
		{"SAVEPOINT s", true, false},
		{"RELEASE s", true, false},
		{"ROLLBACK TO s", true, false},
		{"PREPARE TRANSACTION 'g'", true, false},
		{"COMMIT PREPARED 'g'", true, false},
		{"ROLLBACK PREPARED 'g'", true, false},
		{"SELECT 1", false, false},
		{"SET TRANSACTION READ ONLY", false, false},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", false, false},
		{"PREPARE q AS SELECT 1", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got := classifyOnce(t, tt.sql)
			if got.TxControl != tt.txControl || got.ReadOnlyBegin != tt.readOnlyBegin {
				t.Errorf("TxControl, ReadOnlyBegin = %v, %v, want %v, %v",
					got.TxControl, got.ReadOnlyBegin, tt.txControl, tt.readOnlyBegin)
			}
		})
	}
}

func TestStatementsAndErrors(t *testing.T) {
	tests := []struct {
		sql        string
		statements int
		parseError bool
	}{
		{"", 0, false},
		{"   \n\t", 0, false},
		{";", 0, false},
		{"-- comment only", 0, false},
		{"/* comment */", 0, false},
		{"SELECT 1", 1, false},
		{"SELECT 1;", 1, false},
		{"SELECT 1; SELECT 2", 2, false},
		{"SELECT ';'; SELECT $$;$$; SELECT \"a;b\" FROM t", 3, false},
		{"SELECT 1; SET a.b = 1; BEGIN; COMMIT", 4, false},
		{"SELEC 1", 0, true},
		{"SELECT 1; SELEC 2", 0, true},
		{"SELECT (", 0, true},
		{"SELECT 'unterminated", 0, true},
		{"SET work_mem = ", 0, true},
		{"SELECT 1\x00; DROP TABLE t", 0, true},
		{"SELECT pg_advisory_lock(1); SELEC", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got := classifyOnce(t, tt.sql)
			if got.Statements != tt.statements || got.ParseError != tt.parseError {
				t.Fatalf("Statements, ParseError = %d, %v, want %d, %v",
					got.Statements, got.ParseError, tt.statements, tt.parseError)
			}
			if got.Statements == 0 && (got.Read || got.Batchable || got.TxControl || len(got.Effects) > 0) {
				t.Errorf("nothing to run, but got %+v", got)
			}
		})
	}
}

// Deep trees must come back as a class, never crash the parser's C stack
// (which the left-recursive chains here do at about 22,000 levels).
func TestDeepNesting(t *testing.T) {
	tests := []struct {
		name string
		sql  string
		want string // "ok", "parse error", "too complex", or "refused" for either
	}{
		{"parens", "SELECT " + strings.Repeat("(", 2000) + "1" + strings.Repeat(")", 2000), "ok"},
		{"subqueries", "SELECT " + strings.Repeat("(SELECT ", 1000) + "1" + strings.Repeat(")", 1000), "ok"},
		{"parens beyond the parser's stack", "SELECT " + strings.Repeat("(", 100000) + "1" + strings.Repeat(")", 100000), "refused"},
		{"subqueries beyond the parser's stack", "SELECT " + strings.Repeat("(SELECT ", 20000) + "1" + strings.Repeat(")", 20000), "refused"},
		{"short prefix chain", "SELECT " + strings.Repeat("-+", 4000) + "1", "ok"},
		{"short plus chain", "SELECT 1" + strings.Repeat("+1", 4000), "ok"},
		{"plus chain", "SELECT 1" + strings.Repeat("+1", 50000), "too complex"},
		{"ISNULL chain", "SELECT 1" + strings.Repeat(" ISNULL", 30000), "too complex"},
		{"cast chain", "SELECT 1" + strings.Repeat("::text", 30000), "too complex"},
		{"join chain", "SELECT * FROM a" + strings.Repeat(" NATURAL JOIN a", 30000), "too complex"},
		{"union chain across commas", "SELECT 1, 2" + strings.Repeat(" UNION SELECT 1, 2", 50000), "too complex"},
		{"prefix chain around a plus chain", "SELECT " + strings.Repeat("-+", 4000) + "(1" + strings.Repeat("+1", 8000) + ")", "too complex"},
		{"chain after a comment", "/* x */ SELECT 1" + strings.Repeat("+1", 30000) + "; SELECT 1", "too complex"},
		{"long flat IN list", "SELECT * FROM t WHERE a IN (1" + strings.Repeat(", 1", 10000) + ")", "ok"},
		{"bulk VALUES", "INSERT INTO t VALUES (1, 'x', -1, '2024-01-01'::date, now())" +
			strings.Repeat(", (1, 'x', -1, '2024-01-01'::date, now())", 2000), "ok"},
		{"many statements", strings.Repeat("SELECT 1+1+1+1; ", 3000), "ok"},
		{"long unterminated string", "SELECT '" + strings.Repeat("x", 20000), "parse error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := classifyOnce(t, tt.sql)
			got := "ok"
			switch {
			case c.ParseError:
				got = "parse error"
			case c.TooComplex:
				got = "too complex"
			}
			if got != tt.want && !(tt.want == "refused" && got != "ok") {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
			if got != "ok" && (c.Read || c.Batchable || len(c.Effects) > 0 || c.Statements > 0) {
				t.Errorf("%s, yet %+v", got, c)
			}
		})
	}
	sql := "SELECT " + strings.Repeat("(SELECT ", 500) + "nextval('s')" + strings.Repeat(")", 500)
	if c := classifyOnce(t, sql); c.Read || c.ParseError || c.TooComplex {
		t.Errorf("nextval 500 subqueries down: %+v", c)
	}
}

func TestAllowFunctions(t *testing.T) {
	c := New(10)
	for _, sql := range []string{"SELECT my_func(1)", "SELECT app.price(1)", "SELECT pg_catalog.my_func(1)"} {
		if c.Classify(sql).Read {
			t.Fatalf("%s: Read before AllowFunctions", sql)
		}
	}
	c.AllowFunctions("my_func", "app.price")
	for _, sql := range []string{"SELECT my_func(1)", "SELECT app.price(1)", "SELECT pg_catalog.my_func(1)"} {
		if !c.Classify(sql).Read {
			t.Errorf("%s: not Read after AllowFunctions", sql)
		}
	}
	for _, sql := range []string{"SELECT other.my_func(1)", "SELECT price(1)", "SELECT other.price(1)"} {
		if c.Classify(sql).Read {
			t.Errorf("%s: Read, but only my_func and app.price were allowed", sql)
		}
	}
	if New(0).Classify("SELECT my_func(1)").Read {
		t.Error("AllowFunctions leaked into another Classifier")
	}
}

func TestDenyBatchFunctions(t *testing.T) {
	c := New(10)
	if !c.Classify("SELECT app.set_tenant(1)").Batchable || !c.Classify("SELECT remember(1)").Batchable {
		t.Fatal("unknown functions should be Batchable")
	}
	c.DenyBatchFunctions("app.set_tenant", "remember")
	for _, sql := range []string{"SELECT app.set_tenant(1)", "SELECT remember(1)", "UPDATE t SET a = remember(a)"} {
		if c.Classify(sql).Batchable {
			t.Errorf("%s: Batchable after DenyBatchFunctions", sql)
		}
	}
	if !c.Classify("SELECT other.set_tenant(1)").Batchable {
		t.Error("other.set_tenant was not denied")
	}
}

func TestFunctionLists(t *testing.T) {
	seen := map[string]bool{}
	for _, name := range readFunctions {
		if name != strings.ToLower(name) || strings.Contains(name, ".") {
			t.Errorf("%q: list names are unqualified, as Postgres folds them", name)
		}
		if seen[name] {
			t.Errorf("%q listed twice", name)
		}
		seen[name] = true
		if _, ok := advisoryFunctions[name]; ok || sessionFunctions[name] || name == "set_config" {
			t.Errorf("%q both read-only and session-changing", name)
		}
	}
}

func TestEffectString(t *testing.T) {
	e := Effect{Kind: Set, Name: "work_mem", Value: "64MB", Local: true}
	if got, want := e.String(), "Set work_mem=64MB (local)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := EffectKind(200).String(); got != "EffectKind(200)" {
		t.Errorf("got %q", got)
	}
	for k := TempCreate; k <= DiscardSequences; k++ {
		if strings.HasPrefix(k.String(), "EffectKind(") {
			t.Errorf("kind %d has no name", k)
		}
	}
}
