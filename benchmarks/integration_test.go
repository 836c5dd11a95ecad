package benchmarks

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/asyncgate/asyncgate/internal/pgtest"
)

// TestAgainstPostgres runs the tool end to end against a throwaway PostgreSQL: pgbench tables,
// select-only in the simple and prepared protocols, interleaved targets, an open loop, process
// sampling, SQLSTATE error counting, idle clients, and the JSON output.
func TestAgainstPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg := pgtest.StartT(t, pgtest.Options{}, 0)
	dsn := pg.DSN("postgres", "postgres")
	if err := InitTables(ctx, dsn, 1); err != nil {
		t.Fatal(err)
	}
	if scale, err := DetectScale(ctx, dsn); err != nil || scale != 1 {
		t.Fatalf("DetectScale = %d, %v; want 1", scale, err)
	}
	selectOnly, err := BuiltinWorkload("select-only", WorkloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Our own process stands in for a pooler: it certainly burns CPU while it drives the load.
	self := Process{Name: "self", PID: os.Getpid()}

	for _, proto := range []Protocol{ProtocolSimple, ProtocolPrepared} {
		t.Run(string(proto), func(t *testing.T) {
			rep, err := Run(ctx, Config{
				Targets:   []Target{{Name: "a", DSN: dsn}, {Name: "b", DSN: dsn}},
				Workload:  selectOnly,
				Protocol:  proto,
				Clients:   2,
				Duration:  700 * time.Millisecond,
				Rounds:    2,
				Scale:     1,
				Processes: []Process{self},
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, tr := range rep.Targets {
				if tr.TPS <= 0 || tr.ErrorCount != 0 || tr.Latency.Count != tr.Txns {
					t.Errorf("%s: tps %.1f, %d errors %v, %d latencies for %d txns", tr.Name, tr.TPS, tr.ErrorCount, tr.Errors, tr.Latency.Count, tr.Txns)
				}
				if len(tr.Rounds) != 2 || tr.Connect.Connected != 4 || tr.Connect.Latency.P50 <= 0 {
					t.Errorf("%s: %d rounds, %d connects (p50 %v ms), want 2 rounds and 4 connects", tr.Name, len(tr.Rounds), tr.Connect.Connected, tr.Connect.Latency.P50)
				}
				if len(tr.Processes) != 1 || tr.Processes[0].CPUPerTxnUs <= 0 || tr.Processes[0].RSSMaxBytes <= 0 {
					t.Errorf("%s: process results %+v", tr.Name, tr.Processes)
				}
			}
			// Interleaving: a's second round started after b's first.
			a, b := rep.Targets[0].Rounds, rep.Targets[1].Rounds
			if !(a[0].StartS < b[0].StartS && b[0].StartS < a[1].StartS && a[1].StartS < b[1].StartS) {
				t.Errorf("rounds not interleaved: a %v %v, b %v %v", a[0].StartS, a[1].StartS, b[0].StartS, b[1].StartS)
			}

			path := filepath.Join(t.TempDir(), "out.json")
			if err := rep.WriteJSON(path); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var back struct {
				Version int `json:"version"`
				Config  struct {
					Protocol string `json:"protocol"`
				} `json:"config"`
				Targets []struct {
					Name    string             `json:"name"`
					TPS     float64            `json:"tps"`
					Errors  map[string]int64   `json:"errors"`
					Latency map[string]float64 `json:"latency_ms"`
				} `json:"targets"`
			}
			if err := json.Unmarshal(data, &back); err != nil {
				t.Fatalf("JSON output does not parse: %v", err)
			}
			if back.Version != ReportVersion || back.Config.Protocol != string(proto) || len(back.Targets) != 2 ||
				back.Targets[0].TPS <= 0 || back.Targets[0].Latency["p99_9"] <= 0 {
				t.Errorf("JSON output: %s", data)
			}
		})
	}

	t.Run("open-loop", func(t *testing.T) {
		tpcb, _ := BuiltinWorkload("tpcb-like", WorkloadOptions{})
		const rate = 200
		rep, err := Run(ctx, Config{
			Targets: []Target{{Name: "pg", DSN: dsn}}, Workload: tpcb, Protocol: ProtocolExtended,
			Clients: 4, Rate: rate, Duration: time.Second, Rounds: 1, Scale: 1, Seed: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		tr := rep.Targets[0]
		// Seed 1 fixes the arrivals: each one either ran or, overdue at the end of the round, is
		// counted as unsent. How many ran depends on the machine's load (a race-enabled build on
		// two shared cores may fall behind), so only the accounting is checked exactly.
		due := NewSchedule(epoch, rate, rand.New(rand.NewPCG(1, 0))).countBefore(epoch.Add(time.Second))
		if tr.ErrorCount != 0 || tr.Txns+tr.Unsent != due || tr.Txns == 0 {
			t.Errorf("txns %d + unsent %d, want %d arrivals, some sent; errors %v", tr.Txns, tr.Unsent, due, tr.Errors)
		}
	})

	t.Run("sqlstate", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "div.sql")
		os.WriteFile(file, []byte("\\set zero :client_id * 0\nSELECT 1 / :zero;\n"), 0o644)
		w, err := FileWorkload([]string{file})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := Run(ctx, Config{
			Targets: []Target{{Name: "pg", DSN: dsn}}, Workload: w, Protocol: ProtocolPrepared,
			Clients: 1, Duration: 200 * time.Millisecond, Rounds: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		tr := rep.Targets[0]
		if tr.Txns != 0 || tr.ErrorCount == 0 || tr.Errors["22012"] != tr.ErrorCount {
			t.Errorf("txns %d, errors %v: want only division_by_zero (22012)", tr.Txns, tr.Errors)
		}
	})

	t.Run("idle", func(t *testing.T) {
		res, err := RunIdle(ctx, IdleConfig{
			Target: Target{Name: "pg", DSN: dsn}, Clients: 30, Concurrency: 8,
			Processes:      []Process{self},
			SettleInterval: 20 * time.Millisecond, SettleTimeout: 5 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.Connected != 30 || len(res.ConnectErrors) != 0 || res.Connect.Count != 30 {
			t.Errorf("connected %d, errors %v", res.Connected, res.ConnectErrors)
		}
		if p := res.Processes[0]; p.Error != "" || p.RSSBeforeBytes <= 0 || p.RSSAfterBytes <= 0 {
			t.Errorf("process %+v", p)
		}
		// The idle connections are closed again; backends exit shortly after the Terminate.
		var n string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			n, err = pg.QueryValue(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
			if err != nil || n == "1" {
				break
			}
		}
		if err != nil || n != "1" {
			t.Errorf("client backends after RunIdle: %s, %v; want 1 (the query's own)", n, err)
		}
	})
}
