package main

import (
	"strings"
	"testing"
)

func TestOutcome(t *testing.T) {
	tg := targetResult{Name: "gw", Patterns: []patternResult{
		{Key: "a", Works: true, Runs: 5, Controlled: true, Moved: 5},
		{Key: "b", Works: true, Runs: 5, Controlled: true, Moved: 2},
		{Key: "c", Works: true, Runs: 5, Controlled: true},
		{Key: "d", Works: true, Runs: 5},
		{Key: "e", Runs: 5, Failed: 3, Reason: "x | y"},
	}}
	want := []string{
		"works",
		"works (client moved between backends in 2/5 runs)",
		"untested: passed, but the client never changed backend (5 runs)",
		"works",
		"broken: x | y (3/5)",
	}
	for i, w := range want {
		if got := outcome(tg, i); got != w {
			t.Errorf("pattern %d: got %q, want %q", i, got, w)
		}
	}
	if got := outcome(targetResult{Error: "refused"}, 0); got != "not reached" {
		t.Errorf("unreachable target: got %q", got)
	}
}

func TestMarkdownEscapesCells(t *testing.T) {
	var b strings.Builder
	rep := report{
		Runs:     5,
		Noise:    4,
		Patterns: []patternInfo{{Key: "e", Title: "pattern"}},
		Targets: []targetResult{
			{Name: "gw", Patterns: []patternResult{{Key: "e", Runs: 5, Failed: 1, Reason: "a|b\nc"}}},
			{Name: "down", Error: "cannot connect"},
		},
	}
	if err := writeMarkdown(&b, rep); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| pattern | broken: a\\|b c (1/5) | not reached |") {
		t.Errorf("row not found in:\n%s", b.String())
	}
	if !strings.Contains(b.String(), "- down: cannot connect") {
		t.Errorf("note for the unreachable target missing:\n%s", b.String())
	}
}

func TestTargetsFlag(t *testing.T) {
	var tf targetsFlag
	if err := tf.Set("a=postgres://u:p@h/db?x=1"); err != nil {
		t.Fatal(err)
	}
	if tf[0].Name != "a" || tf[0].DSN != "postgres://u:p@h/db?x=1" {
		t.Errorf("got %+v", tf[0])
	}
	for _, bad := range []string{"a=x", "noequals", "=dsn", "b="} {
		if err := tf.Set(bad); err == nil {
			t.Errorf("Set(%q): want an error", bad)
		}
	}
}
