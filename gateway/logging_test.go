package gateway_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/asyncgate/asyncgate/gateway"
)

// syncBuffer is a log sink safe for the gateway's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// Logins, disconnections and refused clients are logged with who and why, as PgBouncer does.
func TestConnectionLogging(t *testing.T) {
	var out syncBuffer
	g := startGateway(t, func(c *gateway.Config) {
		c.Log = slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	c := g.connect(t)
	c.Close(ctxT(t))
	if _, err := g.connectAs(appUser, "wrong", testDatabase); err == nil {
		t.Fatal("a wrong password logged in")
	}
	for _, want := range []string{
		`msg=login user=app database=` + testDatabase,
		`msg="client disconnected" user=app database=` + testDatabase,
		`msg="closing client" user=app`,
		`code=28P01`,
	} {
		eventually(t, "log line "+want, func() bool { return strings.Contains(out.String(), want) })
	}
}
