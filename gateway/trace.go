package gateway

import (
	"bytes"
	"context"
	"net/url"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/asyncgate/asyncgate/wire"
)

// Tracing (Config.TracerProvider, --otlp-endpoint): each request unit becomes a span, with a
// child for its queue wait and one for its backend time, in the caller's trace when the unit's
// SQL carries an sqlcommenter comment /*traceparent='00-…'*/ (else in a trace of its own). The
// spans are made when the unit ends, from the time stamps the statistics take anyway, so a unit
// in flight holds no span. With tracing off the only cost is a nil check per unit.

// traceKey is what the session looks for in a unit's SQL, only while tracing is on.
var traceKey = []byte("traceparent=")

// noteTraceparent reads the trace context of the unit that frame f starts, if it has one.
func (s *session) noteTraceparent(f *wire.Frame) {
	tr := s.traceState()
	tr.parent = trace.SpanContext{}
	if !f.Whole || (f.Type != 'Q' && f.Type != 'P') {
		return
	}
	i := bytes.Index(f.Body, traceKey)
	if i < 0 {
		return
	}
	v := f.Body[i+len(traceKey):]
	if len(v) == 0 || v[0] != '\'' {
		return
	}
	end := bytes.IndexByte(v[1:], '\'')
	if end < 0 {
		return
	}
	tp, err := url.QueryUnescape(string(v[1 : 1+end])) // sqlcommenter URL-encodes values
	if err != nil {
		return
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp})
	tr.parent = trace.SpanContextFromContext(ctx)
}

// unitTrace is what tracing keeps of the unit in flight. Sessions have one only while tracing is
// on: a span context is 64 bytes, and every idle client holds a session.
type unitTrace struct {
	parent trace.SpanContext // the unit's caller, from its SQL comment
	err    string            // SQLSTATE of the unit's last error
}

func (s *session) traceState() *unitTrace {
	if s.tr == nil {
		s.tr = new(unitTrace)
	}
	return s.tr
}

// traceUnit records the unit that just ended: start and end bound it, wait is its queue wait
// (taken at its start) and busy when the backend started owing it responses.
func (s *session) traceUnit(from, to instant, wait time.Duration, busy instant) {
	start, end, st := from.Time(), to.Time(), s.traceState()
	ctx := context.Background()
	if st.parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, st.parent)
	}
	tr := s.srv.tracer
	ctx, span := tr.Start(ctx, "asyncgate "+s.db.name, trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("db.system.name", "postgresql"),
			attribute.String("db.namespace", s.db.name),
			attribute.String("db.user", s.user),
			attribute.String("asyncgate.pool_mode", s.mode.String()),
		))
	_, w := tr.Start(ctx, "queue wait", trace.WithTimestamp(start))
	w.End(trace.WithTimestamp(start.Add(wait)))
	if !busy.IsZero() {
		_, b := tr.Start(ctx, "backend", trace.WithTimestamp(busy.Time()), trace.WithSpanKind(trace.SpanKindClient))
		b.End(trace.WithTimestamp(end))
	}
	if st.err != "" {
		span.SetAttributes(attribute.String("db.response.status_code", st.err))
		span.SetStatus(codes.Error, "SQLSTATE "+st.err)
	}
	span.End(trace.WithTimestamp(end))
}
