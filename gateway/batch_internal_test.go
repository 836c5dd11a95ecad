package gateway

import "testing"

func TestPlainDML(t *testing.T) {
	for sql, want := range map[string]bool{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 42;": true,
		"  select 1\x00":                                        true,
		"UPDATE t SET a = 1 WHERE b = 2":                        true, // SET is not a statement's first word here
		"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x": true,
		"SELECT 1; BEGIN":                                       false,
		"SELECT 1; SET x = 1":                                   false,
		"BEGIN":                                                 false,
		"SET search_path = a":                                   false,
		"SELECT set_config('a', 'b', false)":                    false,
		"SELECT pg_advisory_lock(1)":                            false,
		"SELECT * INTO TEMP t FROM u":                           false,
		"SELECT 1 -- ;\nBEGIN":                                  false,
		"SELECT 1 /* ; */":                                      false,
		"LOCK t":                                                false,
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1":               false,
		"COPY t FROM STDIN":                                     false,
		"SELECT U&\"\\0073et_config\"('a','b',false)":           false,
		"": false,
	} {
		if got := plainDML([]byte(sql)); got != want {
			t.Errorf("plainDML(%q) = %v, want %v", sql, got, want)
		}
	}
}
