package benchmarks

import "testing"

func TestParseTarget(t *testing.T) {
	cases := []struct{ in, name, dsn string }{
		{"pgb=postgres://u@127.0.0.1:6432/db", "pgb", "postgres://u@127.0.0.1:6432/db"},
		{"postgres://u@h/db?sslmode=disable", "dflt", "postgres://u@h/db?sslmode=disable"},
		{"host=127.0.0.1 port=5432 user=u", "dflt", "host=127.0.0.1 port=5432 user=u"},
		{"ag=host=127.0.0.1 port=5433", "ag", "host=127.0.0.1 port=5433"},
	}
	for _, c := range cases {
		got, err := ParseTarget(c.in, "dflt")
		if err != nil || got.Name != c.name || got.DSN != c.dsn {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %s=%s", c.in, got, err, c.name, c.dsn)
		}
	}
	if p, err := ParseProcess("pgbouncer=123"); err != nil || p.PID != 123 || p.Name != "pgbouncer" {
		t.Errorf("ParseProcess = %+v, %v", p, err)
	}
	for _, bad := range []string{"123", "x=abc", "x=-1"} {
		if _, err := ParseProcess(bad); err == nil {
			t.Errorf("ParseProcess(%q): want error", bad)
		}
	}
}

func TestRedactDSN(t *testing.T) {
	cases := map[string]string{
		"postgres://u:secret@h:5432/db?sslmode=disable": "postgres://u:xxxxx@h:5432/db?sslmode=disable",
		"postgres://u@h/db?password=secret":             "postgres://u@h/db?password=xxxxx",
		"host=h password=secret user=u":                 "host=h password=xxxxx user=u",
		"host=h password = 'se cret' user=u":            "host=h password = xxxxx user=u",
		"postgres://u@h/db":                             "postgres://u@h/db",
	}
	for in, want := range cases {
		if got := RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}
