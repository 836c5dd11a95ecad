package benchmarks

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeRound builds a round of txns transactions, each lat long.
func fakeRound(round int, txns int64, lat time.Duration, cpu float64, rss int64) *RoundResult {
	r := &RoundResult{
		Round: round, ElapsedS: 2, Txns: txns, TPS: float64(txns) / 2,
		Errors: map[string]int64{}, ConnectErrors: map[string]int64{},
		hist: newHistogram(), connHist: newHistogram(), maxLat: lat, ConnectWallMs: 3,
	}
	for range txns {
		recordLatency(r.hist, lat)
	}
	recordLatency(r.connHist, 2*time.Millisecond)
	for i := range 4 {
		r.throughput = append(r.throughput, ThroughputSample{TimeS: float64(round*10 + i), TPS: float64(txns) / 2, Round: round})
	}
	r.Processes = []ProcessResult{{Name: "pgb", PID: 42, CPUSeconds: cpu, RSSMaxBytes: rss, rssSum: rss * 2, rssN: 2}}
	return r
}

func fakeReport() *Report {
	rep := &Report{Version: ReportVersion, Config: &ReportConfig{
		Workload: "select-only", Protocol: "prepared", Clients: 4, DurationS: 4, Rounds: 2, Scale: 1,
		Processes: []Process{{Name: "pgb", PID: 42}},
	}}
	a := newTargetResult(Target{Name: "a", DSN: "postgres://u:pw@h/db"})
	b := newTargetResult(Target{Name: "b", DSN: "host=h"})
	a.add(fakeRound(1, 1000, time.Millisecond, 0.5, 10<<20))
	b.add(fakeRound(1, 500, 2*time.Millisecond, 0.5, 20<<20))
	r2 := fakeRound(2, 3000, time.Millisecond, 1.5, 12<<20)
	r2.Errors["40001"] = 7
	r2.ErrorCount = 7
	a.add(r2)
	b.add(fakeRound(2, 1500, 2*time.Millisecond, 1.0, 30<<20))
	rep.Targets = []*TargetResult{a, b}
	return rep
}

func TestTargetSumsRounds(t *testing.T) {
	a := fakeReport().Target("a")
	if a.Txns != 4000 || a.ElapsedS != 4 || a.TPS != 1000 {
		t.Errorf("txns %d elapsed %v tps %v, want 4000, 4, 1000", a.Txns, a.ElapsedS, a.TPS)
	}
	if a.ErrorCount != 7 || a.Errors["40001"] != 7 {
		t.Errorf("errors %d %v", a.ErrorCount, a.Errors)
	}
	if a.Latency.Count != 4000 || !near(a.Latency.P99, 1, 0.002) {
		t.Errorf("latency %+v", a.Latency)
	}
	if a.Connect.Connected != 2 || len(a.Connect.WallMs) != 2 {
		t.Errorf("connect %+v", a.Connect)
	}
	if len(a.Processes) != 1 {
		t.Fatalf("processes %+v", a.Processes)
	}
	p := a.Processes[0]
	// 2 CPU seconds over 4000 transactions.
	if !near(p.CPUPerTxnUs, 500, 1e-9) || p.RSSMaxBytes != 12<<20 || p.RSSAvgBytes != 11<<20 {
		t.Errorf("process %+v", p)
	}
	if len(a.Throughput) != 8 {
		t.Errorf("%d throughput samples, want 8", len(a.Throughput))
	}
	if strings.Contains(a.DSN, "pw") {
		t.Errorf("DSN %q leaks the password", a.DSN)
	}
}

func TestWriteText(t *testing.T) {
	var buf bytes.Buffer
	if err := fakeReport().WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"select-only", "pgb cpu µs/txn", "p99.9 ms", "0.500", "a errors: 40001×7"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(out, "\n")
	var rowB string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "b" {
			rowB = l
		}
	}
	// b: 2000 txns in 4s, half of a's rate; 1.5 CPU s / 2000 txns = 750 µs; RSS max 30 MiB.
	if f := strings.Fields(rowB); len(f) != 14 || f[1] != "2000" || f[2] != "500.0" || f[3] != "0.500" || f[12] != "750.0" || f[13] != "30.0" {
		t.Errorf("row b = %q", rowB)
	}
}

func TestWriteJSONAndPlot(t *testing.T) {
	dir := t.TempDir()
	rep := fakeReport()
	path := filepath.Join(dir, "r.json")
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	var back Report
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Targets) != 2 || back.Targets[1].Txns != 2000 || back.Targets[0].Latency.P50 == 0 ||
		back.Targets[0].Processes[0].CPUPerTxnUs != 500 || len(back.Targets[0].Rounds) != 2 {
		t.Errorf("round trip lost data: %s", data)
	}

	png1 := filepath.Join(dir, "r.png")
	if err := rep.WritePlot(png1); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(png1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("plot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 200 {
		t.Errorf("plot is %v", b)
	}
}
