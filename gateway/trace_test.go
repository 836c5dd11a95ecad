package gateway_test

import (
	"testing"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/asyncgate/asyncgate/gateway"
)

// A unit whose SQL carries an sqlcommenter traceparent becomes a span in the caller's trace, a
// child of the caller's span, with queue-wait and backend children; a unit without one gets a
// trace of its own.
func TestTraceparentFromComment(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(ctxT(t)) })
	g := startGateway(t, func(c *gateway.Config) { c.TracerProvider = tp })
	conn := g.connect(t)

	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		exp.Reset()
		q := "SELECT 1 /*traceparent='00-" + traceID + "-" + parentID + "-01'*/"
		if _, err := conn.Exec(ctxT(t), q, mode); err != nil {
			t.Fatal(err)
		}
		var unit *tracetest.SpanStub
		eventually(t, "the unit's span exported", func() bool {
			for _, s := range exp.GetSpans() {
				if s.Parent.SpanID().String() == parentID {
					unit = &s
					return true
				}
			}
			return false
		})
		if got := unit.SpanContext.TraceID().String(); got != traceID {
			t.Fatalf("%v: span in trace %s, want the comment's %s", mode, got, traceID)
		}
		children := map[string]bool{}
		for _, s := range exp.GetSpans() {
			if s.Parent.SpanID() == unit.SpanContext.SpanID() {
				if s.SpanContext.TraceID().String() != traceID {
					t.Fatalf("child %s in another trace", s.Name)
				}
				children[s.Name] = true
			}
		}
		if !children["queue wait"] || !children["backend"] {
			t.Fatalf("%v: children of the unit's span: %v, want queue wait and backend", mode, children)
		}
	}

	exp.Reset()
	if _, err := conn.Exec(ctxT(t), "SELECT 2", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a span for a unit without a trace context", func() bool { return len(exp.GetSpans()) >= 2 })
	for _, s := range exp.GetSpans() {
		if s.SpanContext.TraceID().String() == traceID {
			t.Fatalf("a unit without a comment joined the previous unit's trace")
		}
	}
}
