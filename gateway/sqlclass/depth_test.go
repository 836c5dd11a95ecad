package sqlclass

import (
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// messageDepth is the depth of the protobuf tree, which is what the C side
// recurses over.
func messageDepth(m protoreflect.Message) int {
	deepest := 0
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind:
		case fd.IsList():
			for i := range v.List().Len() {
				deepest = max(deepest, messageDepth(v.List().Get(i).Message()))
			}
		default:
			deepest = max(deepest, messageDepth(v.Message()))
		}
		return true
	})
	return deepest + 1
}

// The guard is only as good as depthBound's model of the grammar: check that
// the bound keeps up with the real depth on varied and chained statements.
func TestDepthBoundCoversTree(t *testing.T) {
	const n = 300
	sqls := []string{
		"SELECT 1",
		"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
		"SELECT a, b FROM t JOIN u USING (id) WHERE x = 1 AND y IN (1, 2, 3) ORDER BY a LIMIT 5",
		"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
		"INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y') ON CONFLICT (a) DO UPDATE SET b = excluded.b",
		"UPDATE t SET a = a + 1, b = coalesce(b, 0) WHERE id = (SELECT max(id) FROM t)",
		"SELECT CASE WHEN a THEN 1 WHEN b THEN 2 ELSE 3 END, x::int[], y COLLATE \"C\" FROM t",
		"CREATE TABLE t (a int PRIMARY KEY, b text DEFAULT 'x' CHECK (b <> ''), c numeric(10, 2))",
		"SELECT 1" + strings.Repeat("+1", n),
		"SELECT 1" + strings.Repeat(" ISNULL", n),
		"SELECT 1" + strings.Repeat("::text", n),
		"SELECT 'a'" + strings.Repeat(" COLLATE \"C\"", n),
		"SELECT * FROM a" + strings.Repeat(" NATURAL JOIN a", n),
		"SELECT * FROM a" + strings.Repeat(" JOIN a USING (x, y)", n),
		"SELECT 1, 2" + strings.Repeat(" UNION SELECT 1, 2", n),
		"SELECT 1, 2" + strings.Repeat(" UNION ALL (SELECT 1, 2 INTERSECT SELECT 3, 4)", n),
		"SELECT " + strings.Repeat("-+", n) + "1",
		"SELECT " + strings.Repeat("NOT ", n) + "true",
		"SELECT " + strings.Repeat("(SELECT ", n) + "1" + strings.Repeat(")", n),
		"SELECT " + strings.Repeat("(SELECT a, ", n) + "1" + strings.Repeat(")", n),
		"SELECT " + strings.Repeat("f(a, ", n) + "1" + strings.Repeat(")", n),
		"SELECT " + strings.Repeat("ARRAY[", n) + "1" + strings.Repeat("]", n),
		"SELECT " + strings.Repeat("ROW(1, ", n) + "1" + strings.Repeat(")", n),
		"SELECT " + strings.Repeat("CASE WHEN a THEN ", n) + "1" + strings.Repeat(" END", n),
		"SELECT " + strings.Repeat("(1 + ", n) + "1" + strings.Repeat(") * 2", n),
		"SELECT x" + strings.Repeat(" AT TIME ZONE 'UTC'", n),
		"SELECT x" + strings.Repeat(" AND (y IS DISTINCT FROM z)", n),
		"SELECT x" + strings.Repeat(" + (y BETWEEN 1 AND 2)::int", n),
		"SELECT x" + strings.Repeat(" OR y LIKE 'a' ESCAPE '!'", n),
		"SELECT " + strings.Repeat("EXISTS (SELECT 1 FROM t WHERE ", n) + "true" + strings.Repeat(")", n),
		"SELECT * FROM t WHERE a IN (" + strings.Repeat("SELECT a FROM t WHERE a IN (", n) + "1" + strings.Repeat(")", n+1),
		strings.Repeat("WITH c AS (", n) + "SELECT 1" + strings.Repeat(") SELECT * FROM c", n),
		"SELECT x" + strings.Repeat(" || y", n),
		"SELECT a" + strings.Repeat("[1]", n),
		"SELECT " + strings.Repeat("(a)[1]", 1) + strings.Repeat(".b", n),
	}
	for _, sql := range sqls {
		tree, err := parse(sql)
		if err != nil {
			t.Fatalf("%.40s: %v", sql, err)
		}
		scan, err := pg_query.Scan(sql)
		if err != nil {
			t.Fatal(err)
		}
		levels := messageDepth(tree.ProtoReflect()) / 2 // every node sits in a Node wrapper
		bound := depthBound(scan.Tokens)
		t.Logf("%.40q: levels %d, bound %d", sql, levels, bound)
		if levels > 2*bound+10 {
			t.Errorf("%.60s: %d levels, bound only %d", sql, levels, bound)
		}
	}
}
