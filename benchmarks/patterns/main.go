// Command patterns checks which application patterns written for a direct PostgreSQL connection
// still work through gateways in transaction pooling mode, and prints a markdown table (pattern ×
// target) or JSON:
//
//	patterns --target pgbouncer=postgres://app:app@127.0.0.1:16501/postgres?sslmode=disable \
//	    --target asyncgate=postgres://app:app@127.0.0.1:16500/postgres?sslmode=disable [--runs 5] [--json]
//
// Each pattern keeps session state across separate autocommit statements (or short transactions)
// on one client connection and checks a result that differs when that state is lost. Meanwhile
// noise clients keep the target's pool busy with short queries, so that on a gateway that does not
// pin the client, consecutive transactions land on different backends. Give the gateways a small
// pool (2): with a big one, idle backends make a switch less likely.
//
// Every run opens a fresh connection, and names and values carry a per-run suffix, so that state a
// non-pinning gateway left behind on some backend in an earlier run cannot make a later run pass.
// A pattern counts as broken if any run fails. Before its pattern, each run checks with a few
// SELECT pg_backend_pid() that the client, still without state, does change backend: passes
// without such a change are reported as untested, since they show nothing. The pattern
// "pg_backend_pid() stable" is expected to fail wherever a client is not pinned.
//
// The benchmark script benchmarks/scripts/txmode-patterns.sh runs it against PgBouncer and
// asyncgate on a throwaway cluster. Exit status: 1 when a target could not be reached (its column
// says so), 2 on bad flags.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// target is one gateway under test.
type target struct {
	Name string
	DSN  string
}

type targetsFlag []target

func (t *targetsFlag) String() string {
	names := make([]string, len(*t))
	for i, tg := range *t {
		names[i] = tg.Name
	}
	return strings.Join(names, ",")
}

func (t *targetsFlag) Set(v string) error {
	name, dsn, ok := strings.Cut(v, "=")
	if !ok || name == "" || dsn == "" {
		return fmt.Errorf("want NAME=DSN, got %q", v)
	}
	for _, tg := range *t {
		if tg.Name == name {
			return fmt.Errorf("target %q given twice", name)
		}
	}
	*t = append(*t, target{Name: name, DSN: dsn})
	return nil
}

// options are what a check of one target needs from the command line.
type options struct {
	Runs        int
	Noise       int
	RunTimeout  time.Duration
	WaitTimeout time.Duration // for the LISTEN pattern's notification
}

func main() {
	var targets targetsFlag
	opts := options{}
	flag.Var(&targets, "target", "gateway to check, `NAME=DSN` (repeatable; columns in this order)")
	flag.IntVar(&opts.Runs, "runs", 5, "runs per pattern and target; a pattern is broken if any run fails")
	flag.IntVar(&opts.Noise, "noise", 4, "noise clients running SELECT pg_sleep(0.005) in a loop on the same target")
	flag.DurationVar(&opts.RunTimeout, "run-timeout", 20*time.Second, "longest one run of a pattern may take (a hang counts as broken)")
	flag.DurationVar(&opts.WaitTimeout, "notify-wait", 3*time.Second, "how long the LISTEN pattern waits for its notification")
	asJSON := flag.Bool("json", false, "print JSON instead of a markdown table")
	only := flag.String("only", "", "comma-separated pattern `keys` to run (default all): "+patternKeys())
	flag.Parse()
	if *only != "" {
		if err := selectPatterns(*only); err != nil {
			fmt.Fprintln(os.Stderr, "patterns:", err)
			os.Exit(2)
		}
	}
	if len(targets) == 0 || flag.NArg() > 0 || opts.Runs < 1 || opts.Noise < 0 {
		fmt.Fprintln(os.Stderr, "usage: patterns --target NAME=DSN [--target NAME=DSN ...] [--runs N] [--noise N] [--json]")
		os.Exit(2)
	}

	rep := report{Runs: opts.Runs, Noise: opts.Noise}
	for _, p := range patterns {
		rep.Patterns = append(rep.Patterns, patternInfo{Key: p.Key, Title: p.Title})
	}
	unreachable := false
	// Targets run one after another: they share one PostgreSQL cluster and this machine, and a
	// target's noise must not slow another target's pattern runs.
	for _, tg := range targets {
		fmt.Fprintf(os.Stderr, "patterns: checking %s\n", tg.Name)
		res := checkTarget(context.Background(), tg, opts)
		if res.Error != "" {
			unreachable = true
			fmt.Fprintf(os.Stderr, "patterns: %s: %s\n", tg.Name, res.Error)
		}
		rep.Targets = append(rep.Targets, res)
	}

	var err error
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = writeMarkdown(os.Stdout, rep)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "patterns:", err)
		os.Exit(1)
	}
	if unreachable {
		os.Exit(1)
	}
}

// checkTarget runs every pattern against one target, with the noise clients running throughout.
func checkTarget(ctx context.Context, tg target, opts options) targetResult {
	res := targetResult{Name: tg.Name}
	if err := setup(ctx, tg.DSN); err != nil {
		res.Error = "cannot connect or set up: " + errorText(err)
		return res
	}

	noiseCtx, stopNoise := context.WithCancel(ctx)
	nz := startNoise(noiseCtx, tg.DSN, opts.Noise)
	// Give the noise clients time to connect and fill the pool before the first pattern.
	time.Sleep(200 * time.Millisecond)

	for _, p := range patterns {
		pr := patternResult{Key: p.Key, Runs: opts.Runs, Controlled: !p.NoControl}
		for i := range opts.Runs {
			moved, err := runPattern(ctx, tg.DSN, p, i, opts)
			if moved {
				pr.Moved++
			}
			if err == nil {
				continue
			}
			pr.Failed++
			reason := errorText(err)
			if pr.Reason == "" {
				pr.Reason = reason
			}
			if !slices.Contains(pr.Reasons, reason) {
				pr.Reasons = append(pr.Reasons, reason)
			}
		}
		pr.Works = pr.Failed == 0
		res.Patterns = append(res.Patterns, pr)
	}

	stopNoise()
	ns := nz.wait()
	res.NoiseStats = &ns
	return res
}

func patternKeys() string {
	keys := make([]string, len(patterns))
	for i, p := range patterns {
		keys[i] = p.Key
	}
	return strings.Join(keys, ", ")
}

// selectPatterns keeps only the patterns named in list, in their usual order.
func selectPatterns(list string) error {
	want := map[string]bool{}
	for _, k := range strings.Split(list, ",") {
		want[strings.TrimSpace(k)] = true
	}
	var kept []pattern
	for _, p := range patterns {
		if want[p.Key] {
			kept = append(kept, p)
			delete(want, p.Key)
		}
	}
	for k := range want {
		return fmt.Errorf("unknown pattern %q (have %s)", k, patternKeys())
	}
	patterns = kept
	return nil
}

// errorText is an error as one short line, marked when it is a deadline that ran out.
func errorText(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out: " + oneLine(err.Error())
	}
	return oneLine(err.Error())
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
