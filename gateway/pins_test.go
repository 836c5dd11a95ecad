package gateway

import "testing"

// mayPin keeps texts that cannot pin away from the parser, and must never drop one that can.
func TestMayPin(t *testing.T) {
	for sql, want := range map[string]bool{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 1": false,
		"UPDATE t SET v = 1 WHERE id = 2":                     false,
		"SELECT * FROM t OFFSET 5":                            false,
		"SELECT setval('s', 1)":                               false,
		"INSERT INTO t VALUES (1)":                            false,
		"":                                                    false,
		"Create TEMP table x (v int)":                         true,
		"create temporary table x (v int)":                    true,
		"SELECT pg_advisory_lock(1)":                          true,
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1":             true,
		"PREPARE p AS SELECT 1":                               true,
		"deallocate p":                                        true,
		"SELECT set_config('x', 'y', false)":                  true,
		"LOAD 'auto_explain'":                                 true,
		"LISTEN ch":                                           true,
		"UNLISTEN *":                                          true,
		"Discard All":                                         true,
		"CLOSE c":                                             true,
		"DROP TABLE x":                                        true,
		"SET work_mem = '8MB'":                                true,
		"  set work_mem = '8MB'":                              true,
		"RESET ALL":                                           true,
		"SELECT 1; SET x = 1":                                 true,
		"/* traceparent='00-1' */ SET x = 1":                  true,
		"-- comment\nSET x = 1":                               true,
		"SELECT U&\"\\0070g_advisory_lock\"(1)":               true,
		"SELECT 1 AS settings":                                false,
		"SELECT * FROM resets":                                false,
	} {
		if got := mayPin([]byte(sql)); got != want {
			t.Errorf("mayPin(%q) = %v, want %v", sql, got, want)
		}
	}
}

func BenchmarkMayPin(b *testing.B) {
	sql := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 4242;")
	for b.Loop() {
		mayPin(sql)
	}
}
