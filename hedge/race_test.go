package hedge

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestRaceScenarios(t *testing.T) {
	t.Run("original wins before the delay", func(t *testing.T) {
		var r Race
		if a := r.Start(); a != 0 {
			t.Fatalf("Start = %d", a)
		}
		if won, losers := r.FirstFrame(0); !won || len(losers) != 0 {
			t.Fatalf("FirstFrame(0) = %v, %v", won, losers)
		}
		if _, ok := r.Hedge(); ok {
			t.Fatal("hedged after the original answered")
		}
		if won, _ := r.FirstFrame(0); !won {
			t.Fatal("the winner's later frames are refused")
		}
		if r.Winner() != 0 {
			t.Fatalf("Winner = %d", r.Winner())
		}
	})
	t.Run("hedge wins, original cancelled, its late frame discarded", func(t *testing.T) {
		var r Race
		r.Start()
		if a, ok := r.Hedge(); !ok || a != 1 {
			t.Fatalf("Hedge = %d, %v", a, ok)
		}
		won, losers := r.FirstFrame(1)
		if !won || !slices.Equal(losers, []int{0}) {
			t.Fatalf("FirstFrame(1) = %v, %v; want true, [0]", won, losers)
		}
		var stats Stats
		stats.Decided(r.Winner(), losers)
		if s := stats.Snapshot(); s.WonByHedge != 1 || s.Cancelled != 1 {
			t.Fatalf("stats %+v", s)
		}
		if won, losers := r.FirstFrame(0); won || losers != nil {
			t.Fatalf("the loser's frame: %v, %v", won, losers)
		}
		if r.Failed(0, true, "57014") {
			t.Fatal("the cancelled loser's error asked for a hedge")
		}
		if _, failed := r.Failure(); failed || r.Winner() != 1 {
			t.Fatal("the loser's error changed the outcome")
		}
	})
	t.Run("connection failure before any byte hedges at once", func(t *testing.T) {
		var r Race
		r.Start()
		if !r.Failed(0, true, "08006") || !r.HedgeDue() {
			t.Fatal("a broken connection did not ask for a hedge")
		}
		if _, failed := r.Failure(); failed {
			t.Fatal("failed while the hedge is due")
		}
		r.Hedge()
		if won, losers := r.FirstFrame(1); !won || len(losers) != 0 {
			t.Fatalf("FirstFrame(1) = %v, %v", won, losers)
		}
	})
	t.Run("hedge due but not sendable", func(t *testing.T) {
		var r Race
		r.Start()
		r.Failed(0, true, "57P01")
		if cancel := r.Abort(""); len(cancel) != 0 {
			t.Fatalf("Abort cancelled %v", cancel)
		}
		if code, failed := r.Failure(); !failed || code != "57P01" {
			t.Fatalf("Failure = %q, %v; want the attempt's 57P01", code, failed)
		}
		if _, ok := r.Hedge(); ok {
			t.Fatal("hedged after Abort")
		}
	})
	t.Run("both fail: the last error", func(t *testing.T) {
		var r Race
		r.Start()
		r.Hedge()
		if r.Failed(1, true, "08006") {
			t.Fatal("asked for a hedge with one running")
		}
		if r.Failed(0, true, "57P03") {
			t.Fatal("asked for a third attempt")
		}
		if code, failed := r.Failure(); !failed || code != "57P03" {
			t.Fatalf("Failure = %q, %v", code, failed)
		}
	})
	t.Run("query error fails without a hedge", func(t *testing.T) {
		var r Race
		r.Start()
		if r.Failed(0, true, "57014") {
			t.Fatal("a cancelled query asked for a hedge")
		}
		if code, failed := r.Failure(); !failed || code != "57014" {
			t.Fatalf("Failure = %q, %v", code, failed)
		}
	})
	t.Run("failure after bytes reached the client", func(t *testing.T) {
		var r Race
		r.Start()
		if r.Failed(0, false, "08006") {
			t.Fatal("asked for a hedge after bytes reached the client")
		}
	})
	t.Run("winner fails later", func(t *testing.T) {
		var r Race
		r.Start()
		r.FirstFrame(0)
		if r.Failed(0, true, "08006") {
			t.Fatal("a winner's failure asked for a hedge")
		}
		if _, failed := r.Failure(); failed || r.Winner() != 0 {
			t.Fatal("a winner's failure changed the race")
		}
	})
	t.Run("abort cancels the running", func(t *testing.T) {
		var r Race
		r.Start()
		r.Hedge()
		if cancel := r.Abort("57014"); !slices.Equal(cancel, []int{0, 1}) {
			t.Fatalf("Abort = %v", cancel)
		}
		if won, _ := r.FirstFrame(1); won {
			t.Fatal("a frame won after Abort")
		}
		if code, _ := r.Failure(); code != "57014" {
			t.Fatalf("Failure = %q", code)
		}
	})
	t.Run("misuse", func(t *testing.T) {
		var r Race
		if _, ok := r.Hedge(); ok {
			t.Fatal("hedged before Start")
		}
		if won, _ := r.FirstFrame(0); won {
			t.Fatal("an attempt never started won")
		}
		if r.Start() != 0 || r.Start() != -1 {
			t.Fatal("Start twice")
		}
		if won, _ := r.FirstFrame(1); won {
			t.Fatal("the hedge won before it was sent")
		}
		if won, _ := r.FirstFrame(5); won {
			t.Fatal("attempt 5 won")
		}
		if r.Failed(-1, true, "08006") || r.Failed(2, true, "08006") {
			t.Fatal("a failure of an attempt out of range asked for a hedge")
		}
		r.Hedge()
		if _, ok := r.Hedge(); ok {
			t.Fatal("hedged twice")
		}
	})
}

func TestHedgeable(t *testing.T) {
	for code, want := range map[string]bool{
		"08006": true, "08001": true, "08P01": true, "08000": true, "57P01": true, "57P02": true,
		"57P03": true, "53300": true, "57014": false, "40001": false, "42P01": false, "53400": false,
		"": false, "08": false, "XX000": false,
	} {
		if got := Hedgeable(code); got != want {
			t.Errorf("Hedgeable(%q) = %v, want %v", code, got, want)
		}
	}
}

// The events of a race, as the gateway would report them.
type raceEvent struct {
	name   string
	hedge  bool // Hedge()
	frame  int  // FirstFrame(frame), if >= 0
	fail   int  // Failed(fail, before, code), if >= 0
	before bool
	code   string
	abort  bool
}

var raceEvents = []raceEvent{
	{name: "H", hedge: true, frame: -1, fail: -1},
	{name: "F0", frame: 0, fail: -1},
	{name: "F1", frame: 1, fail: -1},
	{name: "X0", frame: -1, fail: 0, before: true, code: "08006"},
	{name: "X1", frame: -1, fail: 1, before: true, code: "57P01"},
	{name: "Q0", frame: -1, fail: 0, before: true, code: "57014"},
	{name: "Q1", frame: -1, fail: 1, before: true, code: "40001"},
	{name: "B0", frame: -1, fail: 0, before: false, code: "08003"},
	{name: "A", frame: -1, fail: -1, abort: true, code: "57015"},
}

// checkRace runs Start and then events on a fresh Race, checking the rules against a model kept
// only from what the Race reported: at most one winner, ever; every started attempt ends
// exactly one way (won, listed once to cancel, or failed while running); a failed race fails
// with the last error; a hedge is asked for only when the rules allow it.
func checkRace(events []raceEvent) error {
	var r Race
	type att struct {
		started, running, failed, won, listed bool
	}
	var m [MaxAttempts]att
	winner := -1
	lastErr := ""
	hedgeDue := false
	var trace []string
	fail := func(format string, args ...any) error {
		return fmt.Errorf("after %s: %s", strings.Join(trace, " "), fmt.Sprintf(format, args...))
	}
	list := func(who string, cancel []int) error {
		for _, a := range cancel {
			if a < 0 || a >= MaxAttempts || !m[a].running {
				return fail("%s listed attempt %d, which is not running", who, a)
			}
			m[a].running, m[a].listed = false, true
		}
		return nil
	}
	if r.Start() != 0 {
		return fail("Start")
	}
	m[0].started, m[0].running = true, true
	trace = append(trace, "S")

	for _, e := range events {
		trace = append(trace, e.name)
		switch {
		case e.hedge:
			a, ok := r.Hedge()
			mayHedge := winner < 0 && !m[1].started && (m[0].running || hedgeDue)
			if ok != mayHedge {
				return fail("Hedge = %v, want %v", ok, mayHedge)
			}
			if ok {
				if a != 1 {
					return fail("Hedge started attempt %d", a)
				}
				m[1].started, m[1].running = true, true
				hedgeDue = false
			}
		case e.frame >= 0:
			a := e.frame
			won, losers := r.FirstFrame(a)
			switch {
			case won && winner >= 0 && a != winner:
				return fail("a second winner: %d after %d", a, winner)
			case won && winner < 0:
				if !m[a].running {
					return fail("attempt %d won without running", a)
				}
				m[a].running, m[a].won = false, true
				winner = a
				hedgeDue = false
				if err := list("FirstFrame", losers); err != nil {
					return err
				}
				for i := range m {
					if m[i].running {
						return fail("attempt %d still running after %d won, not listed", i, a)
					}
				}
			case won:
				if len(losers) != 0 {
					return fail("losers listed twice: %v", losers)
				}
			default:
				if a == winner || m[a].running {
					return fail("frame of attempt %d refused", a)
				}
				if losers != nil {
					return fail("a refused frame listed %v", losers)
				}
			}
		case e.fail >= 0:
			a := e.fail
			wasRunning := m[a].running
			codeBefore, failedBefore := r.Failure()
			hedgeNow := r.Failed(a, e.before, e.code)
			code, failed := r.Failure()
			if !wasRunning {
				if hedgeNow || code != codeBefore || failed != failedBefore {
					return fail("the failure of an attempt not running changed the race")
				}
				break
			}
			m[a].running, m[a].failed = false, true
			lastErr = e.code
			others := m[0].running || m[1].running
			want := !others && !m[1].started && e.before && Hedgeable(e.code)
			if hedgeNow != want {
				return fail("Failed = %v, want %v", hedgeNow, want)
			}
			hedgeDue = hedgeNow
			if failed != (!others && !hedgeNow) {
				return fail("Failure = %q, %v; want failed %v", code, failed, !others && !hedgeNow)
			}
			if failed && code != lastErr {
				return fail("failed with %q, want the last error %q", code, lastErr)
			}
		case e.abort:
			_, failedBefore := r.Failure()
			cancel := r.Abort(e.code)
			if winner >= 0 || failedBefore {
				if cancel != nil {
					return fail("Abort of a finished race cancelled %v", cancel)
				}
				continue
			}
			if err := list("Abort", cancel); err != nil {
				return err
			}
			for i := range m {
				if m[i].running {
					return fail("attempt %d still running after Abort", i)
				}
			}
			hedgeDue = false
			lastErr = e.code
		}
		if r.Winner() != winner {
			return fail("Winner = %d, want %d", r.Winner(), winner)
		}
		if r.HedgeDue() != hedgeDue {
			return fail("HedgeDue = %v, want %v", r.HedgeDue(), hedgeDue)
		}
	}

	// Close the request out the way the gateway would: a race still open is aborted.
	if _, failed := r.Failure(); winner < 0 && !failed {
		if err := list("final Abort", r.Abort("57014")); err != nil {
			return err
		}
	}
	code, failed := r.Failure()
	if (winner >= 0) == failed {
		return fail("winner %d and failed %v (%q): want exactly one", winner, failed, code)
	}
	for i, a := range m {
		ends := 0
		for _, b := range []bool{a.won, a.listed, a.failed} {
			if b {
				ends++
			}
		}
		if a.started != (ends == 1) || ends > 1 {
			return fail("attempt %d: %+v", i, a)
		}
	}
	return nil
}

// Every sequence of up to six events after Start.
func TestRaceEveryInterleaving(t *testing.T) {
	seqs := 0
	var walk func(prefix []raceEvent)
	walk = func(prefix []raceEvent) {
		seqs++
		if err := checkRace(prefix); err != nil {
			t.Fatal(err)
		}
		if len(prefix) == 6 {
			return
		}
		for _, e := range raceEvents {
			walk(append(prefix, e))
		}
	}
	walk(make([]raceEvent, 0, 6))
	t.Logf("%d sequences", seqs)
}

// Longer random sequences, with a fixed seed.
func TestRaceRandomSequences(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 8))
	for range 20_000 {
		events := make([]raceEvent, rng.IntN(16))
		for i := range events {
			events[i] = raceEvents[rng.IntN(len(raceEvents))]
		}
		if err := checkRace(events); err != nil {
			t.Fatal(err)
		}
	}
}
