package pgscript

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

const tpcb = `-- pgbench's default transaction
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
  VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
`

func TestParseTPCB(t *testing.T) {
	s, err := Parse("tpcb", tpcb)
	if err != nil {
		t.Fatal(err)
	}
	var sqls []Command
	for _, c := range s.Commands {
		if c.Kind == KindSQL {
			sqls = append(sqls, c)
		}
	}
	if len(sqls) != 7 {
		t.Fatalf("got %d statements, want 7", len(sqls))
	}
	upd := sqls[1]
	if want := "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"; upd.SQL != want {
		t.Errorf("SQL = %q, want %q", upd.SQL, want)
	}
	if got := []string{s.Vars[upd.Args[0]], s.Vars[upd.Args[1]]}; got[0] != "delta" || got[1] != "aid" {
		t.Errorf("args = %v, want [delta aid]", got)
	}
	ins := sqls[5]
	if ins.Line != 11 {
		t.Errorf("multi-line INSERT starts at line %d, want 11", ins.Line)
	}
	if !strings.Contains(ins.SQL, "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)") {
		t.Errorf("INSERT SQL = %q", ins.SQL)
	}

	// Run the \set commands many times: values stay in range, and the range scales with :scale.
	rng := rand.New(rand.NewPCG(1, 2))
	st := s.NewState(3, 7, rng)
	maxAid := int64(0)
	for range 2000 {
		for i := range s.Commands {
			c := &s.Commands[i]
			if c.Kind == KindSet {
				if err := st.Set(c); err != nil {
					t.Fatal(err)
				}
			}
		}
		aid := st.Vars[upd.Args[1]]
		if aid < 1 || aid > 300000 {
			t.Fatalf("aid %d out of [1, 300000]", aid)
		}
		maxAid = max(maxAid, aid)
		if d := st.Vars[upd.Args[0]]; d < -5000 || d > 5000 {
			t.Fatalf("delta %d out of range", d)
		}
	}
	if maxAid <= 100000 {
		t.Errorf("aid never exceeded 100000 with scale 3 (max %d)", maxAid)
	}
	args := st.Args(&ins, nil)
	if len(args) != 4 || args[2] != st.Vars[upd.Args[1]] {
		t.Errorf("Args = %v", args)
	}
}

func TestSubstitutionSkipsQuotesAndCasts(t *testing.T) {
	s, err := Parse("q", `\set x 5
SELECT ':x', ":x", x::int, :x::text -- :x in a comment
  FROM t WHERE a = :client_id + :scale;`)
	if err != nil {
		t.Fatal(err)
	}
	c := s.Commands[1]
	want := "SELECT ':x', \":x\", x::int, $1::text -- :x in a comment\n  FROM t WHERE a = $2 + $3"
	if c.SQL != want {
		t.Errorf("SQL =\n%q\nwant\n%q", c.SQL, want)
	}
	if len(c.Args) != 3 || c.Args[1] != SlotClientID || c.Args[2] != SlotScale {
		t.Errorf("Args = %v", c.Args)
	}
}

func TestExpressions(t *testing.T) {
	cases := []struct {
		expr string
		want int64
	}{
		{"1 + 2 * 3", 7},
		{"(1 + 2) * 3", 9},
		{"-7 / 2", -3},
		{"17 % 5 - -1", 3},
		{"100000 * :scale", 400000},
		{"abs(-4) + least(3, 1, 2) + greatest(3, 9)", 14},
		{"random(5, 5) * 2", 10},
		{":scale * 10 / 4", 10},
	}
	for _, tc := range cases {
		s, err := Parse("e", `\set v `+tc.expr+"\nSELECT :v;")
		if err != nil {
			t.Fatalf("%s: %v", tc.expr, err)
		}
		st := s.NewState(4, 0, rand.New(rand.NewPCG(1, 1)))
		if err := st.Set(&s.Commands[0]); err != nil {
			t.Fatalf("%s: %v", tc.expr, err)
		}
		if got := st.Vars[s.Commands[0].Var]; got != tc.want {
			t.Errorf("%s = %d, want %d", tc.expr, got, tc.want)
		}
	}
}

func TestSleep(t *testing.T) {
	s, err := Parse("s", "\\set n 3\n\\sleep :n ms\n\\sleep 2\n")
	if err != nil {
		t.Fatal(err)
	}
	st := s.NewState(1, 0, rand.New(rand.NewPCG(1, 1)))
	if err := st.Set(&s.Commands[0]); err != nil {
		t.Fatal(err)
	}
	if d, _ := st.SleepFor(&s.Commands[1]); d != 3*time.Millisecond {
		t.Errorf("sleep = %v, want 3ms", d)
	}
	if d, _ := st.SleepFor(&s.Commands[2]); d != 2*time.Second {
		t.Errorf("sleep = %v, want 2s", d)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		src  string
		line int
		msg  string
	}{
		{"SELECT 1;\n\nSELECT :nope;", 3, "undefined variable :nope"},
		{"SELECT 1,\n  :later;\n\\set later 1", 2, "undefined variable :later"},
		{"\\set x random(1,\n", 1, "unexpected end"},
		{"\n\\set x foo(1)", 2, `unknown function "foo"`},
		{"\\set x random(1)", 1, "random takes 2 arguments"},
		{"\\set 9x 1", 1, "bad variable name"},
		{"\\set x 1 +* 2", 1, "unexpected"},
		{"\\frobnicate", 1, `unknown meta-command \frobnicate`},
		{"SELECT 1\n\\set x 1\n;", 2, "meta-command inside"},
		{"\\sleep 1 h", 1, "unknown unit"},
		{"-- only a comment\n", 2, "no commands"},
		{"\\set x :x + 1", 1, "undefined variable :x"},
	}
	for _, tc := range cases {
		_, err := Parse("f.sql", tc.src)
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%q: err = %v, want *ParseError", tc.src, err)
			continue
		}
		if pe.Line != tc.line || !strings.Contains(pe.Msg, tc.msg) {
			t.Errorf("%q: got line %d %q, want line %d containing %q", tc.src, pe.Line, pe.Msg, tc.line, tc.msg)
		}
		if !strings.HasPrefix(err.Error(), "pgscript: f.sql:") {
			t.Errorf("error %q lacks file name", err)
		}
	}
}

func TestRuntimeErrors(t *testing.T) {
	s, err := Parse("r", "\\set z 0\n\\set x 1 / :z\n\\set y random(5, 1)")
	if err != nil {
		t.Fatal(err)
	}
	st := s.NewState(1, 0, rand.New(rand.NewPCG(1, 1)))
	_ = st.Set(&s.Commands[0])
	if err := st.Set(&s.Commands[1]); err == nil || !strings.Contains(err.Error(), "line 2: division by zero") {
		t.Errorf("err = %v", err)
	}
	if err := st.Set(&s.Commands[2]); err == nil || !strings.Contains(err.Error(), "empty range") {
		t.Errorf("err = %v", err)
	}
}
