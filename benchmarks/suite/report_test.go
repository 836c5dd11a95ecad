package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/asyncgate/asyncgate/benchmarks"
)

func target(name string, tps, p99 float64, cpuUs float64, rounds ...*benchmarks.RoundResult) *benchmarks.TargetResult {
	t := &benchmarks.TargetResult{Name: name, TPS: tps, Txns: int64(tps * 10), ElapsedS: 10,
		Latency: benchmarks.LatencySummary{P50: p99 / 2, P99: p99}, Rounds: rounds, Errors: map[string]int64{}}
	if cpuUs > 0 {
		t.Processes = []benchmarks.ProcessResult{{Name: name, CPUPerTxnUs: cpuUs, RSSMaxBytes: 10 << 20}}
	}
	return t
}

func testSuite() *suite {
	load := &benchmarks.Report{
		Config: &benchmarks.ReportConfig{DurationS: 10, Rounds: 2},
		Targets: []*benchmarks.TargetResult{
			target("direct", 2000, 1, 0, &benchmarks.RoundResult{Round: 1, ElapsedS: 5, TPS: 2000}),
			target("pgbouncer", 1000, 2, 40, &benchmarks.RoundResult{Round: 1, ElapsedS: 5, TPS: 1000}),
			target("asyncgate", 500, 3, 60,
				&benchmarks.RoundResult{Round: 1, ElapsedS: 10, TPS: 200, Errors: map[string]int64{"canceled": 7}},
				&benchmarks.RoundResult{Round: 2, ElapsedS: 5, TPS: 800}),
		},
	}
	load.Targets[2].ErrorCount = 7
	load.Targets[2].Errors = map[string]int64{"canceled": 7}
	idle := []*benchmarks.IdleResult{
		{Target: "pgbouncer", Requested: 100, Connected: 100, Processes: []benchmarks.IdleProcess{{Name: "pgbouncer", PerClientBytes: 1024, Settled: true}}},
		{Target: "asyncgate", Requested: 100, Connected: 90, ConnectErrors: map[string]int64{"53300": 10},
			Processes: []benchmarks.IdleProcess{{Name: "asyncgate", PerClientBytes: 4096, Settled: false}}},
	}
	return &suite{
		prof: quickProfile, host: "h", started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		cases: []*caseResult{
			{Case: cases[1], Report: load, JSON: []string{"x.json"}, Plot: "x.png"},
			{Case: cases[4], Idle: idle},
			{Case: cases[3], Err: errors.New("asyncgate exited at start | boom")},
		},
	}
}

func TestMarkdown(t *testing.T) {
	md := testSuite().markdown()
	for _, want := range []string{
		"# asyncgate benchmarks: 2026-01-02, h (quick run, `make bench-quick`)",
		// summary: tps ratios 500/1000 and 500/2000, p99 3/2, CPU 60/40
		"| 0.50 | 0.25 | 1.50 | 1.50 | asyncgate: 7 |",
		"| asyncgate | 500 | 1.500 | 3.000 | 60.0 | 10.0 | 7 | 200–800 |",
		"| asyncgate/direct | 0.25 | 3.00 | 3.00 | – | – |",
		"| direct | 2000 | 0.500 | 1.000 | – | – | 0 | 2000–2000 |",
		"![2-select-50-simple](x.png)",
		"asyncgate round 1 lasted 10.0 s instead of 5.0 s",
		"asyncgate counted 7 errors (canceled×7)",
		"asyncgate tps varied from 200 to 800",
		"KiB per idle client: asyncgate 4.00, PgBouncer 1.00, asyncgate/PgBouncer 4.00",
		"asyncgate connected 90 of 100 idle clients (53300×10)",
		"asyncgate RSS did not settle",
		`failed: asyncgate exited at start \| boom`,
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q\n%s", want, md)
		}
	}
	if strings.Contains(md, "pgbouncer round 1 lasted") {
		t.Error("a round on time was flagged as overrun")
	}
}

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"bin/x", "--target", "a=postgres://u:p@h:1/d?sslmode=disable&x=1", "it's", ""})
	want := `bin/x --target 'a=postgres://u:p@h:1/d?sslmode=disable&x=1' 'it'\''s' ''`
	if got != want {
		t.Errorf("shellJoin = %s, want %s", got, want)
	}
}
