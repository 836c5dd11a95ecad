package benchmarks

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"github.com/asyncgate/asyncgate/benchmarks/pgscript"
)

// Workload is a set of transaction scripts; each transaction runs one, chosen by weight.
type Workload struct {
	Name    string
	Scripts []*pgscript.Script
	total   float64
}

// NewWorkload builds a workload from parsed scripts.
func NewWorkload(name string, scripts ...*pgscript.Script) (*Workload, error) {
	w := &Workload{Name: name, Scripts: scripts}
	for _, s := range scripts {
		if s.Weight < 0 {
			return nil, fmt.Errorf("benchmarks: script %s: negative weight", s.Name)
		}
		w.total += s.Weight
	}
	if len(scripts) == 0 || w.total <= 0 {
		return nil, fmt.Errorf("benchmarks: workload %s: no script with positive weight", name)
	}
	return w, nil
}

// pick returns the index of a script chosen by weight.
func (w *Workload) pick(rng *rand.Rand) int {
	if len(w.Scripts) == 1 {
		return 0
	}
	x := rng.Float64() * w.total
	for i, s := range w.Scripts {
		x -= s.Weight
		if x < 0 {
			return i
		}
	}
	return len(w.Scripts) - 1
}

// UsesPgbenchTables reports whether the workload is a builtin one that needs the pgbench tables.
func (w *Workload) UsesPgbenchTables() bool {
	for _, name := range BuiltinWorkloads {
		if w.Name == name {
			return true
		}
	}
	return false
}

// BuiltinWorkloads lists the names BuiltinWorkload accepts.
var BuiltinWorkloads = []string{"select-only", "tpcb-like", "read-mostly", "long-tail"}

const (
	selectOnlySQL = `\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
`
	// pgbench's default "TPC-B (sort of)" transaction.
	tpcbSQL = `\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
`
	updateOneSQL = `\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
`
	slowSelectSQL = `\set aid random(1, 100000 * :scale)
SELECT abalance, pg_sleep(%s) FROM pgbench_accounts WHERE aid = :aid;
`
)

// WorkloadOptions tune the builtin workloads.
type WorkloadOptions struct {
	SlowShare float64 // long-tail: share of transactions that sleep
	SlowMs    float64 // long-tail: how long they sleep, in milliseconds
}

// BuiltinWorkload returns a named builtin workload.
func BuiltinWorkload(name string, opts WorkloadOptions) (*Workload, error) {
	script := func(name, src string, weight float64) *pgscript.Script {
		s, err := pgscript.Parse(name, src)
		if err != nil {
			panic(err) // the builtin scripts are constants
		}
		s.Weight = weight
		return s
	}
	switch name {
	case "select-only":
		return NewWorkload(name, script("select-only", selectOnlySQL, 1))
	case "tpcb-like":
		return NewWorkload(name, script("tpcb-like", tpcbSQL, 1))
	case "read-mostly":
		return NewWorkload(name,
			script("point-read", selectOnlySQL, 9),
			script("point-update", updateOneSQL, 1))
	case "long-tail":
		if opts.SlowShare < 0 || opts.SlowShare > 1 {
			return nil, fmt.Errorf("benchmarks: slow share %v not in [0, 1]", opts.SlowShare)
		}
		if opts.SlowMs < 0 {
			return nil, fmt.Errorf("benchmarks: negative slow-ms")
		}
		secs := strconv.FormatFloat(opts.SlowMs/1000, 'f', -1, 64)
		scripts := []*pgscript.Script{script("point-read", selectOnlySQL, 1-opts.SlowShare)}
		if opts.SlowShare > 0 {
			scripts = append(scripts, script("slow-read", fmt.Sprintf(slowSelectSQL, secs), opts.SlowShare))
		}
		return NewWorkload(name, scripts...)
	}
	return nil, fmt.Errorf("benchmarks: unknown workload %q (want one of %s)", name, strings.Join(BuiltinWorkloads, ", "))
}

// FileWorkload reads scripts from files given as "path" or "path@weight", as pgbench -f does.
func FileWorkload(specs []string) (*Workload, error) {
	var scripts []*pgscript.Script
	for _, spec := range specs {
		path, weight := spec, 1.0
		if i := strings.LastIndexByte(spec, '@'); i > 0 {
			w, err := strconv.ParseFloat(spec[i+1:], 64)
			if err == nil {
				path, weight = spec[:i], w
			}
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("benchmarks: %w", err)
		}
		s, err := pgscript.Parse(path, string(src))
		if err != nil {
			return nil, err
		}
		s.Weight = weight
		scripts = append(scripts, s)
	}
	names := make([]string, len(scripts))
	for i, s := range scripts {
		names[i] = s.Name
	}
	return NewWorkload("file:"+strings.Join(names, ","), scripts...)
}
