package mysql

import (
	"fmt"
	"strings"
	"testing"
)

func TestSplitStatements(t *testing.T) {
	for q, want := range map[string]string{
		"SELECT 1":                              "[SELECT 1]",
		"SELECT 1; SELECT 2;":                   "[SELECT 1|SELECT 2]",
		" ; ;":                                  "[]",
		"SELECT ';', \"a;b\", `c;d` ; SELECT 2": "[SELECT ';', \"a;b\", `c;d`|SELECT 2]",
		`SELECT 'it\'s;' ; SELECT 'x''y;'`:      `[SELECT 'it\'s;'|SELECT 'x''y;']`,
		"SELECT 1 -- a;b\n; SELECT 2 # c;d":     "[SELECT 1 -- a;b|SELECT 2 # c;d]",
		"SELECT /* ; */ 1; SELECT 2":            "[SELECT /* ; */ 1|SELECT 2]",
		"SELECT 1--1; SELECT 2":                 "[SELECT 1--1|SELECT 2]", // -- needs a space to start a comment
		"SELECT 'unterminated; SELECT 2":        "[SELECT 'unterminated; SELECT 2]",
	} {
		if got := "[" + strings.Join(splitStatements(q), "|") + "]"; got != want {
			t.Errorf("split(%q) = %s, want %s", q, got, want)
		}
	}
}

func TestRewritePlaceholders(t *testing.T) {
	for _, c := range []struct{ in, out, order string }{
		{"SELECT $1, $2", "SELECT ?, ?", "[0 1] 2"},
		{"SELECT $2 + $1 + $2", "SELECT ? + ? + ?", "[1 0 1] 2"},
		{"SELECT '$1', `$2`, $1 -- $3", "SELECT '$1', `$2`, ? -- $3", "[0] 1"},
		{"SELECT a$1, $10", "SELECT a$1, ?", "[9] 10"},
		{"SELECT $0, $", "SELECT $0, $", "[] 0"},
	} {
		out, order, n := rewritePlaceholders(c.in)
		if got := fmt.Sprintf("%v %d", order, n); out != c.out || got != c.order {
			t.Errorf("rewrite(%q) = %q %s, want %q %s", c.in, out, got, c.out, c.order)
		}
	}
}

func TestClassify(t *testing.T) {
	for q, want := range map[string]kind{
		"select 1":                              {rows: true, verb: "SELECT"},
		"/* hint */ (SELECT 1) UNION SELECT 2":  {rows: true, verb: "SELECT"},
		"WITH x AS (SELECT 1) SELECT * FROM x":  {rows: true, verb: "SELECT"},
		"show tables":                           {rows: true, verb: "SELECT"},
		"insert into t values (1)":              {verb: "INSERT"},
		"REPLACE INTO t VALUES (1)":             {verb: "INSERT"},
		"INSERT INTO t VALUES (1) RETURNING id": {rows: true, verb: "INSERT"},
		"INSERT INTO t VALUES ('returning')":    {verb: "INSERT"},
		"update t set a = 1":                    {verb: "UPDATE"},
		"DELETE FROM t":                         {verb: "DELETE"},
		"begin":                                 {tag: "BEGIN", txSet: 'T'},
		"START TRANSACTION READ ONLY":           {tag: "START TRANSACTION", txSet: 'T'},
		"commit":                                {tag: "COMMIT", txSet: 'I'},
		"ROLLBACK":                              {tag: "ROLLBACK", txSet: 'I'},
		"ROLLBACK TO SAVEPOINT a":               {tag: "ROLLBACK"},
		"create table t (a int)":                {tag: "CREATE TABLE", txSet: 'I'},
		"TRUNCATE t":                            {tag: "TRUNCATE", txSet: 'I'},
		"SET @a = 1":                            {tag: "SET"},
		"SAVEPOINT a":                           {tag: "SAVEPOINT"},
	} {
		if got := classify(q); got != want {
			t.Errorf("classify(%q) = %+v, want %+v", q, got, want)
		}
	}
}

func TestIsInteger(t *testing.T) {
	for s, want := range map[string]bool{"0": true, "42": true, "-7": true, "007": false, "": false, "-": false,
		"1.5": false, "1e3": false, "123456789012345678": true, "1234567890123456789": false} {
		if isInteger(s) != want {
			t.Errorf("isInteger(%q) = %v", s, !want)
		}
	}
}

// FuzzSQLText: the scanners never panic, splitting loses no statement text, and rewriting
// replaces exactly the placeholders it reports.
func FuzzSQLText(f *testing.F) {
	for _, s := range []string{"SELECT $1; SELECT '$2'", "/* x", "'\\", "-- a\n$1", "`a``b`$3$", "#\n;$12a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		for _, st := range splitStatements(q) {
			if st == "" || !strings.Contains(q, st) {
				t.Fatalf("split(%q) gave %q", q, st)
			}
		}
		out, order, n := rewritePlaceholders(q)
		if strings.Count(out, "?")-strings.Count(q, "?") != len(order) {
			t.Fatalf("rewrite(%q) = %q with %d placeholders", q, out, len(order))
		}
		for _, i := range order {
			if i < 0 || i >= n {
				t.Fatalf("rewrite(%q): index %d of %d", q, i, n)
			}
		}
		classify(q)
	})
}
