package gateway_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/asyncgate/asyncgate/gateway"
	"github.com/asyncgate/asyncgate/internal/pgtest"
)

// rawExchange sends bytes on a fresh connection and returns everything the gateway answers
// before it closes the connection.
func rawExchange(t *testing.T, addr string, send []byte) []byte {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(waitLimit))
	nc.Write(send)
	got, err := io.ReadAll(nc)
	if err != nil {
		t.Fatalf("reading the answer to %x: %v", send[:min(len(send), 16)], err)
	}
	return got
}

func startupPacket(version uint32, params ...string) []byte {
	body := binary.BigEndian.AppendUint32(nil, version)
	for _, p := range params {
		body = append(body, p...)
		body = append(body, 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

func TestMalformedStartupPackets(t *testing.T) {
	g := startGateway(t, nil)
	cases := []struct {
		name     string
		send     []byte
		wantCode string
	}{
		{"huge claimed length", []byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0}, "08P01"},
		{"oversized packet", append(binary.BigEndian.AppendUint32(nil, 20000), make([]byte, 20000)...), "08P01"},
		{"too short", []byte{0, 0, 0, 4}, "08P01"},
		{"protocol 2.0", startupPacket(2<<16, "user", "app"), "0A000"},
		{"no user", startupPacket(3<<16, "database", "appdb"), "08P01"},
		{"unterminated", append(binary.BigEndian.AppendUint32(nil, 16), 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 'x', 'x', 'x'), "08P01"},
		{"garbage after SSLRequest refusal", append(binary.BigEndian.AppendUint32(nil, 8), 0x04, 0xd2, 0x16, 0x2f, 'G', 'E', 'T', ' ', '/', ' ', 'H', 'T'), "08P01"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := rawExchange(t, g.addr, c.send)
			got = bytes.TrimPrefix(got, []byte{'N'}) // the SSLRequest's refusal
			if len(got) == 0 || got[0] != 'E' {
				t.Fatalf("answer %q, want an ErrorResponse", got)
			}
			if !bytes.Contains(got, []byte("C"+c.wantCode+"\x00")) {
				t.Fatalf("answer %q, want SQLSTATE %s", got, c.wantCode)
			}
		})
	}
	// A client that says nothing and hangs up, and one that sends half a header.
	for _, send := range [][]byte{nil, {0, 0}} {
		nc, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.Write(send)
		nc.Close()
	}
	// The gateway keeps serving others.
	conn := g.connect(t)
	if err := conn.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestOversizedMessageAfterLogin(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { c.MaxPacketSize = 1 << 20 })
	conn := g.connect(t)
	_, err := conn.Exec(ctxT(t), "SELECT length($1::text)", strings.Repeat("z", 2<<20))
	if err == nil {
		t.Fatal("a 2 MiB message passed --max-packet-size 1 MiB")
	}
	// The rejection is the client's alone.
	other := g.connect(t)
	if err := other.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestClientTLS(t *testing.T) {
	cert, key := writeSelfSigned(t)
	g := startGateway(t, func(c *gateway.Config) {
		c.TLSCert, c.TLSKey, c.ClientTLSMode = cert, key, "require"
	})
	ctx := ctxT(t)
	_, err := g.connectAs(appUser, appPassword, testDatabase) // sslmode=disable
	if pgCode(err) != "28000" || !strings.Contains(err.Error(), "--client-tls-mode") {
		t.Fatalf("plaintext client under require: got %v, want 28000", err)
	}
	dsn := strings.Replace(g.dsn(appUser, appPassword, testDatabase), "sslmode=disable", "sslmode=require", 1)
	conn, err := connectDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("connection is %T, not TLS", conn.PgConn().Conn())
	}
	// Many small answers and a large one: decrypted bytes left inside crypto/tls must not be
	// stranded while the connection waits on the socket.
	batch := conn.PgConn().Exec(ctx, strings.Repeat("SELECT 1;", 200))
	results, err := batch.ReadAll()
	if err != nil || len(results) != 200 {
		t.Fatalf("200 statements over TLS: %d results, %v", len(results), err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT length(repeat('q', 4000000))").Scan(&n); err != nil || n != 4000000 {
		t.Fatalf("over TLS: %d, %v", n, err)
	}
	big := strings.Repeat("w", 3<<20)
	if err := conn.QueryRow(ctx, "SELECT length($1::text)", big).Scan(&n); err != nil || n != len(big) {
		t.Fatalf("3 MiB parameter over TLS: %d, %v", n, err)
	}
}

func TestClientTLSAllow(t *testing.T) {
	cert, key := writeSelfSigned(t)
	g := startGateway(t, func(c *gateway.Config) { c.TLSCert, c.TLSKey = cert, key })
	ctx := ctxT(t)
	plain := g.connect(t)
	if _, ok := plain.PgConn().Conn().(*tls.Conn); ok {
		t.Fatal("sslmode=disable got TLS")
	}
	dsn := strings.Replace(g.dsn(appUser, appPassword, testDatabase), "sslmode=disable", "sslmode=require", 1)
	conn, err := connectDSN(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestNoGoroutinesLeftAfterClientsLeave(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	func() {
		cfg := gateway.Defaults()
		cfg.Databases = map[string]string{testDatabase: backend.DSN("postgres", "postgres")}
		cfg.AuthFile = writeUserlist(t)
		cfg.PoolSize = 3
		srv, err := gateway.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		g := &gw{srv: srv, addr: ln.Addr().String()}
		ctx := context.Background()
		for range 5 {
			conn, err := g.connectAs(appUser, appPassword, testDatabase)
			if err != nil {
				t.Fatal(err)
			}
			conn.Exec(ctx, "SELECT 1")
			conn.Close(ctx)
		}
		// One client leaves mid-query, one is cancelled.
		conn, err := g.connectAs(appUser, appPassword, testDatabase)
		if err != nil {
			t.Fatal(err)
		}
		qctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		conn.Exec(qctx, "SELECT pg_sleep(10)")
		cancel()
		conn.Close(ctx)
		ln.Close()
		<-served
		srv.Shutdown()
	}()
}

func connectDSN(ctx context.Context, dsn string) (*pgx.Conn, error) { return pgx.Connect(ctx, dsn) }

// writeSelfSigned writes a throwaway certificate and key for 127.0.0.1.
func writeSelfSigned(t *testing.T) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "asyncgate-test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certPath, keyPath
}

// TLS to the server comes from the DSN's sslmode; the backend connection is then a TLS stream
// the gateway writes through its writer goroutine.
func TestServerTLS(t *testing.T) {
	dir, err := os.MkdirTemp("", "asyncgate-server-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // the server runs as another OS user when the tests run as root
	certPath, keyPath := writeSelfSigned(t)
	cert, _ := os.ReadFile(certPath)
	key, _ := os.ReadFile(keyPath)
	certPath, keyPath = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(certPath, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if u, err := user.Lookup("postgres"); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			os.Chown(keyPath, uid, gid)
		}
	}
	tlsBackend := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{
		"ssl": "on", "ssl_cert_file": certPath, "ssl_key_file": keyPath,
	}}, 0)
	g := startGateway(t, func(c *gateway.Config) {
		c.Databases[testDatabase] = strings.Replace(tlsBackend.DSN("postgres", "postgres"), "sslmode=disable", "sslmode=require", 1)
	})
	conn := g.connect(t)
	ctx := ctxT(t)
	var ssl bool
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
		t.Fatal(err)
	}
	if !ssl {
		t.Fatal("the backend connection is not TLS")
	}
	// Enough traffic both ways to go through the writer goroutine and TLS records.
	big := strings.Repeat("t", 2<<20)
	var n int
	if err := conn.QueryRow(ctx, "SELECT length($1::text)", big).Scan(&n); err != nil || n != len(big) {
		t.Fatalf("2 MiB over a TLS backend: %d, %v", n, err)
	}
}
