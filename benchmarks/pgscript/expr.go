package pgscript

import (
	"errors"
	"fmt"
	"strconv"
)

// Expr is an integer expression of a \set or \sleep command.
type Expr interface {
	Eval(st *State) (int64, error)
}

type constExpr int64

func (e constExpr) Eval(*State) (int64, error) { return int64(e), nil }

type varExpr int

func (e varExpr) Eval(st *State) (int64, error) { return st.Vars[e], nil }

type negExpr struct{ x Expr }

func (e negExpr) Eval(st *State) (int64, error) {
	v, err := e.x.Eval(st)
	return -v, err
}

type binExpr struct {
	op   byte
	l, r Expr
}

var errDivZero = errors.New("division by zero")

func (e binExpr) Eval(st *State) (int64, error) {
	l, err := e.l.Eval(st)
	if err != nil {
		return 0, err
	}
	r, err := e.r.Eval(st)
	if err != nil {
		return 0, err
	}
	switch e.op {
	case '+':
		return l + r, nil
	case '-':
		return l - r, nil
	case '*':
		return l * r, nil
	case '/':
		if r == 0 {
			return 0, errDivZero
		}
		return l / r, nil
	default: // '%'
		if r == 0 {
			return 0, errDivZero
		}
		return l % r, nil
	}
}

type callExpr struct {
	fn   string
	args []Expr
}

func (e callExpr) Eval(st *State) (int64, error) {
	vals := make([]int64, len(e.args))
	for i, a := range e.args {
		v, err := a.Eval(st)
		if err != nil {
			return 0, err
		}
		vals[i] = v
	}
	switch e.fn {
	case "random":
		lo, hi := vals[0], vals[1]
		if lo > hi {
			return 0, fmt.Errorf("random(%d, %d): empty range", lo, hi)
		}
		return lo + st.Rand.Int64N(hi-lo+1), nil
	case "abs":
		if vals[0] < 0 {
			return -vals[0], nil
		}
		return vals[0], nil
	case "least":
		return minMax(vals, func(a, b int64) bool { return a < b }), nil
	default: // "greatest"
		return minMax(vals, func(a, b int64) bool { return a > b }), nil
	}
}

func minMax(vals []int64, better func(a, b int64) bool) int64 {
	m := vals[0]
	for _, v := range vals[1:] {
		if better(v, m) {
			m = v
		}
	}
	return m
}

// arity of the supported functions; -1 means one or more.
var funcs = map[string]int{"random": 2, "abs": 1, "least": -1, "greatest": -1}

// parseExpr parses src, a pgbench expression restricted to integers: literals, :variables,
// + - * / % with the usual precedence, unary minus, parentheses and the functions in funcs.
func parseExpr(src string, slots map[string]int) (Expr, error) {
	p := &exprParser{src: src, slots: slots}
	e, err := p.expr()
	if err != nil {
		return nil, err
	}
	p.space()
	if p.pos < len(p.src) {
		return nil, fmt.Errorf("unexpected %q at column %d", p.src[p.pos:], p.pos+1)
	}
	return e, nil
}

type exprParser struct {
	src   string
	pos   int
	slots map[string]int
}

func (p *exprParser) space() {
	for p.pos < len(p.src) && (p.src[p.pos] == ' ' || p.src[p.pos] == '\t') {
		p.pos++
	}
}

func (p *exprParser) peek() byte {
	p.space()
	if p.pos < len(p.src) {
		return p.src[p.pos]
	}
	return 0
}

func (p *exprParser) expr() (Expr, error) {
	l, err := p.term()
	if err != nil {
		return nil, err
	}
	for {
		op := p.peek()
		if op != '+' && op != '-' {
			return l, nil
		}
		p.pos++
		r, err := p.term()
		if err != nil {
			return nil, err
		}
		l = binExpr{op: op, l: l, r: r}
	}
}

func (p *exprParser) term() (Expr, error) {
	l, err := p.unary()
	if err != nil {
		return nil, err
	}
	for {
		op := p.peek()
		if op != '*' && op != '/' && op != '%' {
			return l, nil
		}
		p.pos++
		r, err := p.unary()
		if err != nil {
			return nil, err
		}
		l = binExpr{op: op, l: l, r: r}
	}
}

func (p *exprParser) unary() (Expr, error) {
	switch p.peek() {
	case '-':
		p.pos++
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		if c, ok := x.(constExpr); ok {
			return -c, nil
		}
		return negExpr{x}, nil
	case '+':
		p.pos++
		return p.unary()
	}
	return p.primary()
}

func (p *exprParser) primary() (Expr, error) {
	c := p.peek()
	switch {
	case c == 0:
		return nil, errors.New("unexpected end of expression")
	case c == '(':
		p.pos++
		e, err := p.expr()
		if err != nil {
			return nil, err
		}
		if p.peek() != ')' {
			return nil, fmt.Errorf("missing ')' at column %d", p.pos+1)
		}
		p.pos++
		return e, nil
	case c >= '0' && c <= '9':
		start := p.pos
		for p.pos < len(p.src) && p.src[p.pos] >= '0' && p.src[p.pos] <= '9' {
			p.pos++
		}
		v, err := strconv.ParseInt(p.src[start:p.pos], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad integer %q", p.src[start:p.pos])
		}
		return constExpr(v), nil
	case c == ':':
		p.pos++
		name := p.ident()
		if name == "" {
			return nil, fmt.Errorf("missing variable name after ':' at column %d", p.pos)
		}
		slot, ok := p.slots[name]
		if !ok {
			return nil, fmt.Errorf("undefined variable :%s", name)
		}
		return varExpr(slot), nil
	case isIdentStart(c):
		start := p.pos
		name := p.ident()
		arity, ok := funcs[name]
		if !ok {
			return nil, fmt.Errorf("unknown function %q at column %d", name, start+1)
		}
		if p.peek() != '(' {
			return nil, fmt.Errorf("missing '(' after %s", name)
		}
		p.pos++
		var args []Expr
		if p.peek() != ')' {
			for {
				a, err := p.expr()
				if err != nil {
					return nil, err
				}
				args = append(args, a)
				if p.peek() != ',' {
					break
				}
				p.pos++
			}
		}
		if p.peek() != ')' {
			return nil, fmt.Errorf("missing ')' after arguments of %s", name)
		}
		p.pos++
		if (arity >= 0 && len(args) != arity) || len(args) == 0 {
			return nil, fmt.Errorf("%s takes %d arguments, got %d", name, max(arity, 1), len(args))
		}
		return callExpr{fn: name, args: args}, nil
	}
	return nil, fmt.Errorf("unexpected %q at column %d", c, p.pos+1)
}

func (p *exprParser) ident() string {
	start := p.pos
	if p.pos < len(p.src) && isIdentStart(p.src[p.pos]) {
		p.pos++
		for p.pos < len(p.src) && isIdentChar(p.src[p.pos]) {
			p.pos++
		}
	}
	return p.src[start:p.pos]
}
