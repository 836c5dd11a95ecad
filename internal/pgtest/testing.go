package pgtest

import (
	"context"
	"fmt"
	"os"
	"testing"
)

// StartT starts a primary and n replicas for one test, stops them in
// t.Cleanup and calls t.Fatal if they cannot be started. When the test
// fails, the tail of each server log is logged before the clusters go away.
func StartT(t testing.TB, opts Options, replicas int) *Cluster {
	t.Helper()
	c, err := StartWithReplicas(context.Background(), opts, replicas)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, cl := range append([]*Cluster{c}, c.Replicas()...) {
				t.Logf("pgtest: %s %s log tail:\n%s", cl.role(), cl.Addr(), cl.LogTail(20))
			}
		}
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// Main starts one cluster shared by a package's tests, runs them and stops
// it. Use it from TestMain:
//
//	var db *pgtest.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pgtest.Options{}, 1, &db)) }
func Main(m *testing.M, opts Options, replicas int, out **Cluster) int {
	c, err := StartWithReplicas(context.Background(), opts, replicas)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*out = c
	code := m.Run()
	if err := c.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}
