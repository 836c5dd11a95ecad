package main

import (
	"fmt"
	"io"
	"strings"
)

type report struct {
	Runs     int            `json:"runs_per_pattern"`
	Noise    int            `json:"noise_clients"`
	Patterns []patternInfo  `json:"patterns"`
	Targets  []targetResult `json:"targets"`
}

type patternInfo struct {
	Key   string `json:"key"`
	Title string `json:"title"`
}

type targetResult struct {
	Name string `json:"name"`
	// Error is set when the target could not be reached or set up; nothing else is then.
	Error      string          `json:"error,omitempty"`
	Patterns   []patternResult `json:"patterns,omitempty"`
	NoiseStats *noiseStats     `json:"noise,omitempty"`
}

type patternResult struct {
	Key    string `json:"key"`
	Works  bool   `json:"works"`
	Runs   int    `json:"runs"`
	Failed int    `json:"failed_runs"`
	// Controlled says the runs began with control statements; Moved counts the runs in which
	// those landed on more than one backend. A pass with no move shows nothing.
	Controlled bool `json:"controlled"`
	Moved      int  `json:"runs_client_moved_before_pattern"`
	// Reason is the first failed run's; Reasons lists every distinct one.
	Reason  string   `json:"reason,omitempty"`
	Reasons []string `json:"reasons,omitempty"`
}

// maxReason keeps cells readable; the JSON has the whole text.
const maxReason = 110

func writeMarkdown(w io.Writer, rep report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## Session-state patterns through transaction-mode gateways\n\n")
	fmt.Fprintf(&b, "Each pattern ran %d times on a fresh connection while %d noise clients ran `SELECT pg_sleep(0.005)` "+
		"on the same target; broken if any run failed (failed runs in parentheses). Each run first sent %d "+
		"`SELECT pg_backend_pid()`: a pass counts only if these show the client changing backend before it "+
		"created its state, else the cell says untested.\n\n", rep.Runs, rep.Noise, controlStatements)

	b.WriteString("| pattern |")
	for _, t := range rep.Targets {
		fmt.Fprintf(&b, " %s |", cell(t.Name))
	}
	b.WriteString("\n|---|")
	for range rep.Targets {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for i, p := range rep.Patterns {
		fmt.Fprintf(&b, "| %s |", cell(p.Title))
		for _, t := range rep.Targets {
			fmt.Fprintf(&b, " %s |", cell(outcome(t, i)))
		}
		b.WriteString("\n")
	}

	var notes []string
	for _, t := range rep.Targets {
		if t.Error != "" {
			notes = append(notes, fmt.Sprintf("%s: %s", t.Name, t.Error))
			continue
		}
		var ns noiseStats
		if t.NoiseStats != nil {
			ns = *t.NoiseStats
		}
		note := fmt.Sprintf("%s: noise %d/%d clients connected, %d queries, %d errors", t.Name, ns.Clients, rep.Noise, ns.Queries, ns.Errors)
		if ns.FirstError != "" {
			note += fmt.Sprintf(" (first: %s)", ns.FirstError)
		}
		if ns.Notifications > 0 {
			note += fmt.Sprintf("; **%d notification(s) meant for the LISTEN client reached noise clients**", ns.Notifications)
		}
		if pid := find(t, "backend_pid"); pid != nil && pid.Works {
			note += "; an unpinned client never changed backend, so passes prove little here"
		}
		notes = append(notes, note)
	}
	if len(notes) > 0 {
		b.WriteString("\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// outcome is the cell for pattern i of target t.
func outcome(t targetResult, i int) string {
	if t.Error != "" {
		return "not reached"
	}
	if i >= len(t.Patterns) {
		return "-"
	}
	p := t.Patterns[i]
	switch {
	case p.Works && (!p.Controlled || p.Moved == p.Runs):
		return "works"
	case p.Works && p.Moved > 0:
		return fmt.Sprintf("works (client moved between backends in %d/%d runs)", p.Moved, p.Runs)
	case p.Works:
		return fmt.Sprintf("untested: passed, but the client never changed backend (%d runs)", p.Runs)
	}
	reason := p.Reason
	if r := []rune(reason); len(r) > maxReason {
		reason = string(r[:maxReason-1]) + "…"
	}
	return fmt.Sprintf("broken: %s (%d/%d)", reason, p.Failed, p.Runs)
}

func find(t targetResult, key string) *patternResult {
	for i := range t.Patterns {
		if t.Patterns[i].Key == key {
			return &t.Patterns[i]
		}
	}
	return nil
}

// cell makes text safe inside a markdown table cell.
func cell(s string) string {
	return strings.ReplaceAll(oneLine(s), "|", `\|`)
}
