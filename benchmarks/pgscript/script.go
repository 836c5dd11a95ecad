// Package pgscript parses pgbench-style transaction scripts: SQL statements with :variables, and
// the meta-commands \set and \sleep. Statements end with a ';' at the end of a line, so one
// statement may span several lines.
//
// Variables are resolved to slots when the script is parsed, so running a transaction allocates
// nothing per variable, and a reference to a variable that no earlier line defines is reported with
// its line number instead of failing at run time.
package pgscript

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Builtin variables, always present in these slots.
const (
	SlotScale    = 0 // :scale, the pgbench scale factor
	SlotClientID = 1 // :client_id, 0-based client number
)

var builtins = []string{"scale", "client_id"}

// Kind says what a Command does.
type Kind int

const (
	KindSQL   Kind = iota // run SQL with Args as $1..$n
	KindSet               // Vars[Var] = Expr
	KindSleep             // sleep Expr × Unit
)

// Command is one step of a script.
type Command struct {
	Line int // 1-based line where the command starts
	Kind Kind

	// KindSQL: statement text with each :var replaced by $n, and the slot of each $n.
	SQL  string
	Args []int

	// KindSet: the slot to assign.
	Var int
	// KindSet and KindSleep: the value.
	Expr Expr
	// KindSleep: the unit of Expr.
	Unit time.Duration
}

// Script is a parsed transaction script.
type Script struct {
	Name     string
	Weight   float64  // relative frequency among several scripts
	Vars     []string // slot names; the first are the builtins
	Commands []Command
}

// ParseError reports a problem at a line of a script.
type ParseError struct {
	File string
	Line int
	Msg  string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("pgscript: %s:%d: %s", e.File, e.Line, e.Msg)
}

// Parse parses src. name is used in error messages.
func Parse(name, src string) (*Script, error) {
	p := &parser{s: &Script{Name: name, Weight: 1}, slots: map[string]int{}}
	for _, b := range builtins {
		p.slot(b)
	}

	var stmt strings.Builder
	stmtLine := 0
	lines := strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n")
	for i, raw := range lines {
		lineNo := i + 1
		line := strings.TrimSpace(raw)
		if stmt.Len() == 0 {
			if line == "" || strings.HasPrefix(line, "--") {
				continue
			}
			if strings.HasPrefix(line, `\`) {
				if err := p.meta(line, lineNo); err != nil {
					return nil, err
				}
				continue
			}
			stmtLine = lineNo
		} else if strings.HasPrefix(line, `\`) {
			return nil, p.errorf(lineNo, "meta-command inside an unterminated SQL statement (started at line %d)", stmtLine)
		}
		if stmt.Len() > 0 {
			stmt.WriteByte('\n')
		}
		stmt.WriteString(raw)
		if strings.HasSuffix(line, ";") {
			if err := p.sql(stmt.String(), stmtLine); err != nil {
				return nil, err
			}
			stmt.Reset()
		}
	}
	if stmt.Len() > 0 {
		if err := p.sql(stmt.String(), stmtLine); err != nil {
			return nil, err
		}
	}
	if len(p.s.Commands) == 0 {
		return nil, &ParseError{File: name, Line: len(lines), Msg: "script has no commands"}
	}
	return p.s, nil
}

type parser struct {
	s     *Script
	slots map[string]int
}

func (p *parser) errorf(line int, format string, args ...any) error {
	return &ParseError{File: p.s.Name, Line: line, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) slot(name string) int {
	if i, ok := p.slots[name]; ok {
		return i
	}
	i := len(p.s.Vars)
	p.slots[name] = i
	p.s.Vars = append(p.s.Vars, name)
	return i
}

func (p *parser) meta(line string, lineNo int) error {
	cmd, rest, _ := strings.Cut(line[1:], " ")
	rest = strings.TrimSpace(rest)
	switch cmd {
	case "set":
		name, exprSrc, _ := strings.Cut(rest, " ")
		if !isIdent(name) {
			return p.errorf(lineNo, `\set: bad variable name %q`, name)
		}
		expr, err := parseExpr(exprSrc, p.slots)
		if err != nil {
			return p.errorf(lineNo, `\set %s: %v`, name, err)
		}
		// Slot after the expression: "\set x :x + 1" must not see x defined by itself.
		p.s.Commands = append(p.s.Commands, Command{Line: lineNo, Kind: KindSet, Var: p.slot(name), Expr: expr})
	case "sleep":
		fields := strings.Fields(rest)
		if len(fields) < 1 || len(fields) > 2 {
			return p.errorf(lineNo, `\sleep: want "\sleep N [us|ms|s]"`)
		}
		expr, err := parseExpr(fields[0], p.slots)
		if err != nil {
			return p.errorf(lineNo, `\sleep: %v`, err)
		}
		unit := time.Second
		if len(fields) == 2 {
			switch fields[1] {
			case "us":
				unit = time.Microsecond
			case "ms":
				unit = time.Millisecond
			case "s":
			default:
				return p.errorf(lineNo, `\sleep: unknown unit %q`, fields[1])
			}
		}
		p.s.Commands = append(p.s.Commands, Command{Line: lineNo, Kind: KindSleep, Expr: expr, Unit: unit})
	default:
		return p.errorf(lineNo, `unknown meta-command \%s`, cmd)
	}
	return nil
}

// sql replaces :var references with $n placeholders. Quoted strings, quoted identifiers,
// comments and :: casts are left alone, so "'12:30'" or "x::int" are not taken for variables.
func (p *parser) sql(text string, lineNo int) error {
	text = strings.TrimSpace(text)
	text = strings.TrimSpace(strings.TrimSuffix(text, ";"))
	if text == "" {
		return p.errorf(lineNo, "empty SQL statement")
	}
	var out strings.Builder
	var args []int
	argOf := map[int]int{}
	line := lineNo
	for i := 0; i < len(text); {
		c := text[i]
		switch {
		case c == '\n':
			line++
			out.WriteByte(c)
			i++
		case c == '\'' || c == '"':
			j := skipQuoted(text, i)
			line += strings.Count(text[i:j], "\n")
			out.WriteString(text[i:j])
			i = j
		case c == '-' && strings.HasPrefix(text[i:], "--"):
			j := strings.IndexByte(text[i:], '\n')
			if j < 0 {
				j = len(text) - i
			}
			out.WriteString(text[i : i+j])
			i += j
		case c == ':' && i+1 < len(text) && text[i+1] == ':':
			out.WriteString("::")
			i += 2
		case c == ':' && i+1 < len(text) && isIdentStart(text[i+1]):
			j := i + 1
			for j < len(text) && isIdentChar(text[j]) {
				j++
			}
			name := text[i+1 : j]
			slot, ok := p.slots[name]
			if !ok {
				return p.errorf(line, "undefined variable :%s", name)
			}
			n, ok := argOf[slot]
			if !ok {
				args = append(args, slot)
				n = len(args)
				argOf[slot] = n
			}
			out.WriteString("$" + strconv.Itoa(n))
			i = j
		default:
			out.WriteByte(c)
			i++
		}
	}
	p.s.Commands = append(p.s.Commands, Command{Line: lineNo, Kind: KindSQL, SQL: out.String(), Args: args})
	return nil
}

// skipQuoted returns the index just past the quoted token starting at s[i]. A doubled quote
// inside is an escaped quote; an unterminated token runs to the end.
func skipQuoted(s string, i int) int {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		if s[j] == q {
			if j+1 < len(s) && s[j+1] == q {
				j++
				continue
			}
			return j + 1
		}
	}
	return len(s)
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentChar(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

func isIdent(s string) bool {
	if s == "" || !isIdentStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isIdentChar(s[i]) {
			return false
		}
	}
	return true
}

// State is one client's variables for one script.
type State struct {
	Vars []int64
	Rand *rand.Rand
}

// NewState returns the variables of s for a client, with the builtins set.
func (s *Script) NewState(scale int64, clientID int, rng *rand.Rand) *State {
	st := &State{Vars: make([]int64, len(s.Vars)), Rand: rng}
	st.Vars[SlotScale] = scale
	st.Vars[SlotClientID] = int64(clientID)
	return st
}

// Args fills dst with the values of c's arguments and returns it.
func (st *State) Args(c *Command, dst []any) []any {
	dst = dst[:0]
	for _, slot := range c.Args {
		dst = append(dst, st.Vars[slot])
	}
	return dst
}

// Set runs a KindSet command.
func (st *State) Set(c *Command) error {
	v, err := c.Expr.Eval(st)
	if err != nil {
		return fmt.Errorf("pgscript: line %d: %w", c.Line, err)
	}
	st.Vars[c.Var] = v
	return nil
}

// SleepFor evaluates a KindSleep command's duration.
func (st *State) SleepFor(c *Command) (time.Duration, error) {
	v, err := c.Expr.Eval(st)
	if err != nil {
		return 0, fmt.Errorf("pgscript: line %d: %w", c.Line, err)
	}
	return time.Duration(v) * c.Unit, nil
}
