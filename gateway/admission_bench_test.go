package gateway_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/asyncgate/asyncgate/gateway"
)

// What a refusal costs a client, against a query that is admitted, in the same run: one client
// runs SELECT 1 in the simple protocol through a gateway with a pool of one, first with the slot
// free (admitted: the round trip through the gate, the pool and PostgreSQL), then with the slot
// held and the queue of one full, so that every query is refused with 53300 by the gate.
func BenchmarkAdmission(b *testing.B) {
	g := startGateway(b, func(c *gateway.Config) {
		transactionMode(1)(c)
		c.MaxQueue = 1
		c.QueryWaitTimeout = time.Minute
	})
	ctx := context.Background()
	conn := func() *pgx.Conn {
		c, err := g.connectAs(appUser, appPassword, testDatabase)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	client := conn()
	b.Run("admitted", func(b *testing.B) {
		var lat []time.Duration
		for b.Loop() {
			start := time.Now()
			if _, err := client.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		reportP99(b, lat)
	})
	holder, waiter := conn(), conn()
	if _, err := holder.Exec(ctx, "BEGIN"); err != nil {
		b.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol)
		waited <- err
	}()
	for deadline := time.Now().Add(waitLimit); ; time.Sleep(time.Millisecond) {
		if st, _ := g.srv.Admission(testDatabase, 0); st.Waiting == 1 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the waiter never queued")
		}
	}
	b.Run("refused", func(b *testing.B) {
		var lat []time.Duration
		for b.Loop() {
			start := time.Now()
			if _, err := client.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); pgCode(err) != "53300" {
				b.Fatalf("got %v, want 53300", err)
			}
			lat = append(lat, time.Since(start))
		}
		reportP99(b, lat)
	})
	if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
		b.Fatal(err)
	}
	if err := <-waited; err != nil {
		b.Fatal(err)
	}
}

// reportP99 adds the 99th percentile of lat to the benchmark's results: the bar for refusals is
// on the tail, not the mean.
func reportP99(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
