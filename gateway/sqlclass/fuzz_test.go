package sqlclass

import (
	"slices"
	"testing"
)

// FuzzClassify feeds arbitrary text to the classifier. It must never panic
// (nor crash the parser underneath), keep the conservative invariants, and
// give the same answer from the cache as without it.
func FuzzClassify(f *testing.F) {
	seeds := []string{
		"", ";", "SELECT 1", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
		"/* traceparent='00-abc-01' */ SELECT 1", "BEGIN READ ONLY; SELECT 1; COMMIT",
		"SELECT pg_advisory_lock(1), pg_advisory_unlock(2)", "SELECT (SELECT nextval('s'))",
		"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "SELECT * FROM t FOR UPDATE",
		"EXPLAIN ANALYZE DELETE FROM t", "SET search_path = \"$user\", public", "RESET ALL",
		"SELECT set_config('a.b', NULL, 'on')", "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1; CLOSE ALL", "PREPARE q AS SELECT 1; DEALLOCATE ALL",
		"LISTEN a; UNLISTEN *; LOAD 'x'; DISCARD ALL", "DROP TABLE a, pg_temp.b, public.c",
		"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SELECT 1 OPERATOR(s.+) 2",
		"SELECT 'unterminated", "SELECT $$;$$; SELECT E'\\''", "SELECT 1\x00", "SELEC 1",
		"CREATE FUNCTION pg_temp.f() RETURNS int BEGIN ATOMIC SELECT pg_advisory_lock(1); END",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	cached := New(64)
	f.Fuzz(func(t *testing.T, sql string) {
		got := New(0).Classify(sql)
		if got == nil {
			t.Fatal("nil class")
		}
		if (got.ParseError || got.TooComplex || got.Statements == 0) &&
			(got.Read || got.Batchable || got.TxControl || got.ReadOnlyBegin || len(got.Effects) > 0) {
			t.Fatalf("nothing analyzed, yet %+v", got)
		}
		if got.Read && got.TxControl {
			t.Fatalf("transaction control is Read: %+v", got)
		}
		if got.ReadOnlyBegin && !got.TxControl {
			t.Fatalf("ReadOnlyBegin without TxControl: %+v", got)
		}
		for _, e := range got.Effects {
			if e.Kind == 0 || e.Kind > DiscardSequences {
				t.Fatalf("bad effect kind %d", e.Kind)
			}
		}
		again := cached.Classify(sql)
		if again.Read != got.Read || again.Batchable != got.Batchable || again.ParseError != got.ParseError ||
			again.TooComplex != got.TooComplex || !slices.Equal(again.Effects, got.Effects) {
			t.Fatalf("cached %+v, uncached %+v", again, got)
		}
	})
}
