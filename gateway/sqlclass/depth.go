package sqlclass

import (
	"fmt"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/proto"
)

// The parser's C code turns the tree into protobuf recursively and without a
// stack check, so a deep enough tree overflows the C stack and kills the
// process. Grammar rules that nest by recursion on the right (prefix
// operators, parentheses, subqueries) are cut off by the parser's own stack
// at about 11,000 levels; left-recursive chains (a+b+c..., UNION, JOIN,
// ISNULL) are not, and with 8 MB thread stacks the crash comes at about
// 22,000 levels. A left-recursive level costs at least two bytes of text
// ("+1"), so text up to shallowLen cannot get near it and goes straight to
// the parser; longer text is scanned first, which is iterative and safe, and
// refused if its tokens allow a tree deeper than maxDepthBound.
const (
	shallowLen    = 8 << 10
	maxDepthBound = 6000

	// maxMessageDepth lets the decoder take any tree the C side could
	// produce; Go stacks grow as needed.
	maxMessageDepth = 1 << 17
)

// parse parses sql into a tree. The error is a *parser.Error for text the
// parser rejects; any other error means the text could not be analyzed.
func parse(sql string) (*pg_query.ParseResult, error) {
	buf, err := parser.ParseToProtobuf(sql)
	if err != nil {
		return nil, err
	}
	tree := &pg_query.ParseResult{}
	if err := (proto.UnmarshalOptions{RecursionLimit: maxMessageDepth}).Unmarshal(buf, tree); err != nil {
		return nil, fmt.Errorf("decode parse tree: %w", err)
	}
	return tree, nil
}

// tooDeep reports whether the parse tree of sql might be deep enough to
// endanger the parser. The error is a *parser.Error for text the scanner
// rejects (an unterminated string), which the parser would reject too.
func tooDeep(sql string) (bool, error) {
	if len(sql) <= shallowLen {
		return false, nil
	}
	scan, err := pg_query.Scan(sql)
	if err != nil {
		return false, err
	}
	return depthBound(scan.Tokens) > maxDepthBound, nil
}

// depthBound bounds the depth of the tree that tokens can parse into, in
// tree levels give or take a small factor. Lists (target lists, arguments,
// VALUES rows) are flat in the tree and separated by commas, so within one
// pair of brackets only the longest comma-separated element counts, plus
// whatever brackets nest inside it. Set operations are the one chain whose
// links contain top-level commas (SELECT a, b UNION SELECT c, d), so they
// count for the whole bracket group.
func depthBound(tokens []*pg_query.ScanToken) int {
	type group struct {
		elem   int // tokens in the current element
		child  int // deepest bracket group in the current element
		best   int // deepest element so far
		setOps int
	}
	endElem := func(g *group) {
		g.best = max(g.best, g.elem+g.child)
		g.elem, g.child = 0, 0
	}
	depth := func(g *group) int {
		endElem(g)
		return g.best + g.setOps
	}

	stack := []group{{}}
	deepest := 0
	for _, t := range tokens {
		g := &stack[len(stack)-1]
		switch t.Token {
		case pg_query.Token_SQL_COMMENT, pg_query.Token_C_COMMENT:
		case pg_query.Token_ASCII_40, pg_query.Token_ASCII_91: // ( [
			// Count the brackets and the nodes a group can open (a
			// subquery is a SubLink, a SelectStmt and a ResTarget).
			g.elem += 3
			stack = append(stack, group{})
		case pg_query.Token_ASCII_41, pg_query.Token_ASCII_93: // ) ]
			if len(stack) == 1 {
				g.elem++ // unbalanced: the parser will reject it
				continue
			}
			d := depth(g)
			stack = stack[:len(stack)-1]
			parent := &stack[len(stack)-1]
			parent.child = max(parent.child, d)
		case pg_query.Token_ASCII_44: // ,
			endElem(g)
		case pg_query.Token_ASCII_59: // ;
			if len(stack) > 1 {
				endElem(g) // a list of rule actions
				continue
			}
			deepest = max(deepest, depth(g))
			*g = group{}
		case pg_query.Token_UNION, pg_query.Token_INTERSECT, pg_query.Token_EXCEPT:
			g.setOps++
			g.elem++
		default:
			g.elem++
		}
	}
	// Close what the text left open, innermost first.
	for len(stack) > 1 {
		d := depth(&stack[len(stack)-1])
		stack = stack[:len(stack)-1]
		parent := &stack[len(stack)-1]
		parent.child = max(parent.child, d)
	}
	return max(deepest, depth(&stack[0]))
}
