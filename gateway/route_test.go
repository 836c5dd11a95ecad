package gateway

import (
	"testing"

	"github.com/asyncgate/asyncgate/gateway/sqlclass"
)

func TestRoute(t *testing.T) {
	c := sqlclass.New(0)
	class := func(sql string) *sqlclass.Class { return c.Classify(sql) }
	sel := class("SELECT * FROM t WHERE id = 1")
	ins := class("INSERT INTO t VALUES (1)")
	beginRO := class("BEGIN READ ONLY")
	beginRW := class("BEGIN")
	commit := class("COMMIT")
	set := class("SET work_mem = '64MB'")
	readOnlyPair := class("BEGIN READ ONLY; SELECT 1")
	commitThenWrite := class("START TRANSACTION READ ONLY; COMMIT; INSERT INTO t VALUES (1)")

	auto := unitFacts{routing: routeAuto, mode: transactionMode, txStatus: 'I', funcsLoaded: true, complete: true}
	with := func(u unitFacts, f func(*unitFacts)) unitFacts { f(&u); return u }
	stmts := func(cs ...*sqlclass.Class) func(*unitFacts) {
		return func(u *unitFacts) { u.stmts = cs }
	}
	tests := []struct {
		name string
		u    unitFacts
		want bool
	}{
		{"auto read", with(auto, stmts(sel)), true},
		{"auto reads in one extended group", with(auto, stmts(sel, sel)), true},
		{"auto write", with(auto, stmts(ins)), false},
		{"auto read then write", with(auto, stmts(sel, ins)), false},
		{"auto unknown statement", with(auto, stmts(sel, nil)), false},
		{"auto nothing known", auto, false},
		{"auto before functions loaded", with(auto, func(u *unitFacts) { u.stmts, u.funcsLoaded = []*sqlclass.Class{sel}, false }), false},
		{"auto group not up to Sync", with(auto, func(u *unitFacts) { u.stmts, u.complete = []*sqlclass.Class{sel}, false }), false},
		{"auto in a transaction", with(auto, func(u *unitFacts) { u.stmts, u.txStatus = []*sqlclass.Class{sel}, 'T' }), false},
		{"auto pinned", with(auto, func(u *unitFacts) { u.stmts, u.pinned = []*sqlclass.Class{sel}, true }), false},
		{"auto recent write", with(auto, func(u *unitFacts) { u.stmts, u.recentWrite = []*sqlclass.Class{sel}, true }), false},
		{"auto session mode", with(auto, func(u *unitFacts) { u.stmts, u.mode = []*sqlclass.Class{sel}, sessionMode }), false},
		{"auto SET", with(auto, stmts(set)), false},
		{"auto BEGIN", with(auto, stmts(beginRW)), false},
		{"auto BEGIN READ ONLY", with(auto, stmts(beginRO, sel)), true},
		{"off read", with(auto, func(u *unitFacts) { u.stmts, u.routing = []*sqlclass.Class{sel}, routeOff }), false},
		{"off read-only client", with(auto, func(u *unitFacts) { u.readOnly, u.routing = true, routeOff }), false},
		{"explicit read", with(auto, func(u *unitFacts) { u.stmts, u.routing = []*sqlclass.Class{sel}, routeExplicit }), false},
		{"explicit BEGIN READ ONLY", with(auto, func(u *unitFacts) { u.stmts, u.routing = []*sqlclass.Class{beginRO}, routeExplicit }), true},
		{"explicit BEGIN READ ONLY and a read in one text", with(auto, func(u *unitFacts) { u.stmts, u.routing = []*sqlclass.Class{readOnlyPair}, routeExplicit }), false},
		{"explicit BEGIN READ ONLY, COMMIT and a write in one text", with(auto, func(u *unitFacts) { u.stmts, u.routing = []*sqlclass.Class{commitThenWrite}, routeExplicit }), false},
		{"explicit BEGIN READ ONLY then COMMIT", with(auto, func(u *unitFacts) { u.stmts, u.routing = []*sqlclass.Class{beginRO, commit}, routeExplicit }), false},
		{"explicit BEGIN READ ONLY with SET", with(auto, func(u *unitFacts) { u.stmts, u.routing = []*sqlclass.Class{beginRO, set}, routeExplicit }), false},
		{"explicit BEGIN", with(auto, func(u *unitFacts) { u.stmts, u.routing = []*sqlclass.Class{beginRW}, routeExplicit }), false},
		{"explicit read-only client", with(auto, func(u *unitFacts) { u.readOnly, u.routing = true, routeExplicit }), true},
		{"explicit read-only client in a transaction", with(auto, func(u *unitFacts) { u.readOnly, u.routing, u.txStatus = true, routeExplicit, 'T' }), false},
		{"statement mode read", with(auto, func(u *unitFacts) { u.stmts, u.mode = []*sqlclass.Class{sel}, statementMode }), true},
	}
	for _, tt := range tests {
		if got := route(tt.u); got != tt.want {
			t.Errorf("%s: route = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestTwoChoices(t *testing.T) {
	if twoChoices(nil) != nil {
		t.Fatal("twoChoices(nil) chose a replica")
	}
	busy, idle := &replica{index: 1}, &replica{index: 2}
	busy.outstanding.Store(5)
	for range 100 {
		if got := twoChoices([]*replica{busy, idle}); got != idle {
			t.Fatalf("chose replica %d with %d outstanding over one with none", got.index, got.outstanding.Load())
		}
	}
	rs := []*replica{{index: 1}, {index: 2}, {index: 3}}
	seen := map[int]bool{}
	for range 200 {
		seen[twoChoices(rs).index] = true
	}
	if len(seen) != 3 {
		t.Fatalf("equally loaded replicas chosen: %v, want all three", seen)
	}
}
