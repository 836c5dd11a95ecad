package gateway_test

import (
	"context"
	"testing"
	"time"
)

// A graceful shutdown (SIGTERM) waits for a running transaction, which then commits; Drain
// gives up at its deadline when one does not end.
func TestDrainLetsTransactionsFinish(t *testing.T) {
	g := startGateway(t, transactionMode(2))
	ctx := ctxT(t)
	setup := direct(t)
	if _, err := setup.Exec(ctx, "CREATE TABLE IF NOT EXISTS drained (v int); TRUNCATE drained"); err != nil {
		t.Fatal(err)
	}
	c := g.connect(t)
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO drained VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	drained := make(chan bool, 1)
	go func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		drained <- g.srv.Drain(dctx)
	}()
	if _, err := tx.Exec(ctx, "INSERT INTO drained VALUES (2)"); err != nil { // a round trip later
		t.Fatal(err)
	}
	select {
	case <-drained:
		t.Fatal("Drain returned while a transaction was running")
	default:
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case ok := <-drained:
		if !ok {
			t.Fatal("Drain timed out after the transaction committed")
		}
	case <-time.After(waitLimit):
		t.Fatal("Drain did not return after the transaction committed")
	}
	if err := expectInt(ctx, setup, 2, "SELECT count(*)::int FROM drained"); err != nil {
		t.Fatal(err)
	}

	// A transaction left open: Drain reports false at its deadline.
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if g.srv.Drain(dctx) {
		t.Fatal("Drain saw no running transaction while one was open")
	}
}
