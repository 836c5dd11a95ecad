package gateway

import (
	"testing"
)

// BenchmarkUnitAccounting is what the request-unit statistics add to one unit of a client that
// waits for its backend: the time stamps, the counters and the three histogram observations.
// Compare with the gateway's CPU time per transaction (tens of microseconds).
func BenchmarkUnitAccounting(b *testing.B) {
	srv := &Server{metrics: newUnitMetrics()}
	s := &session{srv: srv, st: srv.unitStatsFor("db", "user"), state: stLinked}
	b.ReportAllocs()
	for b.Loop() {
		// The client's bytes: the unit starts, a backend is at hand, the query goes out.
		s.inEvent = true
		s.recvBytes += 30
		if s.unitStart.IsZero() {
			s.unitStart = s.now()
		}
		s.waitStart = s.now()
		w := s.now().Sub(s.waitStart)
		s.waitStart = 0
		s.unitWait += w
		s.st.assignments.Add(1)
		s.st.waitTime.Add(w.Microseconds())
		now := s.now()
		s.busyStart, s.xactStart = now, now
		s.endEvent()
		// The backend's answer up to ReadyForQuery.
		s.inEvent = true
		s.sentBytes += 60
		s.st.queries.Add(1)
		s.st.xacts.Add(1)
		s.st.xactTime.Add(s.now().Sub(s.xactStart).Microseconds())
		s.xactStart = 0
		s.unitEnded()
		s.endEvent()
	}
}
