package gateway_test

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/gateway/auth"
	"github.com/asyncgate/asyncgate/internal/pgtest"
)

// backend is the PostgreSQL every test in the package talks to through a gateway.
var backend *pgtest.Cluster

func TestMain(m *testing.M) {
	code := pgtest.Main(m, pgtest.Options{MaxConnections: 300}, 0, &backend)
	if err := stopReplicaSet(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

const (
	appUser, appPassword   = "app", "app-secret"
	scramUser, scramPass   = "scrammy", "scram-secret"
	md5User, md5Password   = "md5er", "md5-secret"
	testDatabase           = "appdb"
	waitLimit              = 10 * time.Second // bound on any poll in these tests
	defaultTestPoolSize    = 10
	defaultTestClientLimit = 1000
)

// gw is one gateway under test, listening on a free port.
type gw struct {
	srv  *gateway.Server
	addr string
	cfg  gateway.Config
}

// startGateway runs a gateway in front of the shared backend; mutate adjusts its settings.
func startGateway(t testing.TB, mutate func(*gateway.Config)) *gw {
	t.Helper()
	cfg := gateway.Defaults()
	cfg.Listen = "127.0.0.1:0"
	cfg.Databases = map[string]string{testDatabase: backend.DSN("postgres", "postgres")}
	cfg.AuthFile = writeUserlist(t)
	cfg.PoolSize = defaultTestPoolSize
	cfg.MaxClientConn = defaultTestClientLimit
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if driver := os.Getenv("ASYNCGATE_TEST_LOOP_DRIVER"); driver != "" {
		cfg.LoopDriver = driver // the whole suite under each driver (make test does)
	}
	if mode := os.Getenv("ASYNCGATE_TEST_POOL_MODE"); mode != "" {
		cfg.PoolMode = mode // the whole suite again under another pool mode (make test does)
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		srv.Shutdown()
	})
	return &gw{srv: srv, addr: ln.Addr().String(), cfg: cfg}
}

func writeUserlist(t testing.TB) string {
	t.Helper()
	scram, err := auth.SCRAMSecret(scramPass)
	if err != nil {
		t.Fatal(err)
	}
	md5 := fmt.Sprintf("md5%x", md5sum(md5Password+md5User))
	body := fmt.Sprintf("%q %q\n%q %q\n%q %q\n", appUser, appPassword, scramUser, scram, md5User, md5)
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (g *gw) dsn(user, password, database string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", user, password, g.addr, database)
}

// connect opens a pgx connection through the gateway as the app user.
func (g *gw) connect(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := g.connectAs(appUser, appPassword, testDatabase)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (g *gw) connectAs(user, password, database string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	return pgx.Connect(ctx, g.dsn(user, password, database))
}

// pgCode returns the SQLSTATE of err, or "" if it carries none.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// direct opens a connection straight to the backend, for looking behind the gateway.
func direct(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	conn, err := pgx.Connect(ctx, backend.DSN("postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not true after %s: %s", waitLimit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLimit)
	t.Cleanup(cancel)
	return ctx
}

func md5sum(s string) [16]byte { return md5.Sum([]byte(s)) }

// sessionOnly skips a test that is about session pooling when the suite runs in another mode.
func sessionOnly(t *testing.T) {
	if mode := os.Getenv("ASYNCGATE_TEST_POOL_MODE"); mode != "" && mode != "session" {
		t.Skipf("holds a backend across transactions: session pooling only, suite runs in %s mode", mode)
	}
}

// concurrently runs n clients at once, each on its own pgx connection through g, and reports
// every client's error.
func concurrently(t *testing.T, g *gw, n int, client func(ctx context.Context, conn *pgx.Conn, i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, g.dsn(appUser, appPassword, testDatabase))
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			defer conn.Close(ctx)
			if err := client(ctx, conn, i); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
