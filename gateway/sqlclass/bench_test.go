package sqlclass

import "testing"

var benchQueries = []struct{ name, sql string }{
	{"pgbench", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"},
	{"10lines", `SELECT o.id, o.created_at, c.name, sum(i.quantity * i.price) AS total
FROM orders o
JOIN customers c ON c.id = o.customer_id
LEFT JOIN order_items i ON i.order_id = o.id
WHERE o.created_at >= now() - interval '7 days'
  AND c.region = ANY ($1)
  AND o.status IN ('paid', 'shipped')
GROUP BY o.id, o.created_at, c.name
HAVING sum(i.quantity * i.price) > $2
ORDER BY total DESC LIMIT 50`},
}

func BenchmarkClassify(b *testing.B) {
	for _, q := range benchQueries {
		b.Run(q.name+"/cached", func(b *testing.B) {
			c := New(1000)
			c.Classify(q.sql)
			b.ReportAllocs()
			for b.Loop() {
				c.Classify(q.sql)
			}
		})
		b.Run(q.name+"/uncached", func(b *testing.B) {
			c := New(0)
			b.ReportAllocs()
			for b.Loop() {
				c.Classify(q.sql)
			}
		})
	}
}
