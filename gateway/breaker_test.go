package gateway_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/internal/faultproxy"
)

// A backend that goes away opens its breaker after --breaker-failures: clients then get 08006
// naming the backend at once instead of waiting out connect attempts; once it is back, a probe
// closes the breaker and clients are served again.
func TestBreakerFailsFastAndRecovers(t *testing.T) {
	px, err := faultproxy.Start(backend.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	g := startGateway(t, func(c *gateway.Config) {
		c.Databases["flaky"] = fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", px.Addr())
		c.ServerConnectTimeout = time.Second // 300 ms was missed by a healthy connect on a loaded machine
		c.BreakerFailures = 2
		c.BreakerOpenTime = 500 * time.Millisecond
	})
	flaky := func() error {
		c, err := g.connectAs(appUser, appPassword, "flaky")
		if err == nil {
			_, err = c.Exec(ctxT(t), "SELECT 1")
			c.Close(ctxT(t))
		}
		return err
	}
	if err := flaky(); err != nil {
		t.Fatalf("healthy backend: %v", err)
	}
	px.Set(faultproxy.Faults{Refuse: true})
	px.Reset() // the idle connection dies too
	var last error
	eventually(t, "the breaker to open", func() bool {
		last = flaky()
		return last != nil && strings.Contains(last.Error(), "circuit breaker open")
	})
	start := time.Now()
	err = flaky()
	if pgCode(err) != "08006" || !strings.Contains(err.Error(), px.Addr()) {
		t.Fatalf("with the breaker open: %v, want 08006 naming %s", err, px.Addr())
	}
	if took := time.Since(start); took > 250*time.Millisecond {
		t.Fatalf("refusal took %s: not fast", took)
	}
	g.connect(t) // other databases are unaffected

	px.Set(faultproxy.Faults{})
	eventually(t, "the breaker to close after the backend came back", func() bool { return flaky() == nil })
}
