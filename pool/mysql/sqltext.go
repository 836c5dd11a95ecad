package mysql

import (
	"strings"
)

// scan walks MySQL SQL text, calling f for every byte outside string literals, quoted
// identifiers and comments, with its index. f returns false to stop.
func scan(q string, f func(i int) bool) {
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'' || c == '"' || c == '`':
			for i++; i < len(q); i++ {
				if q[i] == '\\' && c != '`' {
					i++ // MySQL's backslash escapes (unless NO_BACKSLASH_ESCAPES)
					continue
				}
				if q[i] == c {
					if i+1 < len(q) && q[i+1] == c {
						i++ // doubled quote
						continue
					}
					break
				}
			}
		case c == '#' || (c == '-' && strings.HasPrefix(q[i:], "-- ")) || (c == '-' && i+2 == len(q) && q[i:] == "--"):
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '/' && strings.HasPrefix(q[i:], "/*"):
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				return
			}
			i += 2 + end + 1
		default:
			if !f(i) {
				return
			}
		}
	}
}

// splitStatements cuts a simple Query's text at the semicolons that end statements, dropping
// empty ones.
func splitStatements(q string) []string {
	var out []string
	start := 0
	scan(q, func(i int) bool {
		if q[i] == ';' {
			if s := strings.TrimSpace(q[start:i]); s != "" {
				out = append(out, s)
			}
			start = i + 1
		}
		return true
	})
	if s := strings.TrimSpace(q[start:]); s != "" {
		out = append(out, s)
	}
	return out
}

// rewritePlaceholders turns PostgreSQL's $1…$n into MySQL's ?, returning for each ? the index of
// the parameter it takes and the number of parameters ($n's largest n).
func rewritePlaceholders(q string) (string, []int, int) {
	var b strings.Builder
	var order []int
	n, last := 0, 0
	scan(q, func(i int) bool {
		if q[i] != '$' || i+1 >= len(q) || q[i+1] < '0' || q[i+1] > '9' {
			return true
		}
		if i > 0 && isIdent(q[i-1]) {
			return true // part of an identifier such as a$1
		}
		j := i + 1
		k := 0
		for j < len(q) && q[j] >= '0' && q[j] <= '9' && k < 100000 {
			k = k*10 + int(q[j]-'0')
			j++
		}
		if k == 0 {
			return true
		}
		b.WriteString(q[last:i])
		b.WriteByte('?')
		last = j
		order = append(order, k-1)
		n = max(n, k)
		return true
	})
	if order == nil {
		return q, nil, 0
	}
	b.WriteString(q[last:])
	return b.String(), order, n
}

func isIdent(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

// words returns the first two keywords of a statement, upper-cased, skipping comments and
// opening parentheses.
func words(q string) (first, second string) {
	var ws []string
	start := -1
	scan(q, func(i int) bool {
		c := q[i]
		if isIdent(c) {
			if start < 0 {
				start = i
			}
			return true
		}
		if start >= 0 {
			ws = append(ws, strings.ToUpper(q[start:i]))
			start = -1
		}
		return len(ws) < 2 && (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '(')
	})
	if start >= 0 && len(ws) < 2 {
		ws = append(ws, strings.ToUpper(q[start:]))
	}
	switch len(ws) {
	case 0:
		return "", ""
	case 1:
		return ws[0], ""
	}
	return ws[0], ws[1]
}

// kind is what the gateway needs to know of a statement before running it.
type kind struct {
	rows  bool   // it may return a result set: run as a query
	tag   string // CommandComplete tag, without counts; "" for the row-count tags
	verb  string // INSERT, UPDATE, DELETE, SELECT, or "" when the tag has no count
	txSet byte   // the transaction status it leaves on success: 'T', 'I', or 0 for unchanged
}

func classify(q string) kind {
	w1, w2 := words(q)
	k := kind{}
	switch w1 {
	case "SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "VALUES", "TABLE", "HELP", "CHECK",
		"CHECKSUM", "ANALYZE", "OPTIMIZE", "REPAIR", "CALL", "EXECUTE":
		k.rows, k.verb = true, "SELECT"
	case "INSERT", "REPLACE":
		k.verb = "INSERT"
	case "UPDATE", "DELETE":
		k.verb = w1
	case "BEGIN":
		k.tag, k.txSet = "BEGIN", 'T'
	case "START":
		k.tag = "START TRANSACTION"
		if w2 == "TRANSACTION" {
			k.txSet = 'T'
		}
	case "COMMIT":
		k.tag, k.txSet = "COMMIT", 'I'
	case "ROLLBACK":
		k.tag = "ROLLBACK"
		if w2 != "TO" {
			k.txSet = 'I'
		}
	case "CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE", "GRANT", "REVOKE", "LOCK", "UNLOCK":
		// These commit the transaction implicitly on MySQL.
		k.tag, k.txSet = strings.TrimSpace(w1+" "+w2), 'I'
		if w1 == "TRUNCATE" || w1 == "GRANT" || w1 == "REVOKE" {
			k.tag = w1
		}
	default:
		k.tag = w1
	}
	if (k.verb == "INSERT" || k.verb == "DELETE") && containsWord(q, "RETURNING") {
		k.rows = true // MariaDB's INSERT/DELETE … RETURNING
	}
	return k
}

// containsWord reports whether w (upper case) appears as a keyword outside literals.
func containsWord(q, w string) bool {
	found := false
	scan(q, func(i int) bool {
		if (i == 0 || !isIdent(q[i-1])) && len(q)-i >= len(w) && strings.EqualFold(q[i:i+len(w)], w) &&
			(i+len(w) == len(q) || !isIdent(q[i+len(w)])) {
			found = true
			return false
		}
		return true
	})
	return found
}
