package loop

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// echo sends every byte back, upgrading to TLS when it reads the byte 'T' first.
type echo struct {
	c   Conn
	cfg *tls.Config
	n   int
}

func (e *echo) OnData(b []byte) {
	if e.n == 0 && e.cfg != nil && len(b) > 0 && b[0] == 'T' {
		e.c.Write([]byte{'S'})
		e.c.StartTLS(e.cfg)
		b = b[1:]
	}
	e.n += len(b)
	e.c.Write(b)
}
func (e *echo) OnClose(error) {}
func (e *echo) Flush()        {}

// driverKinds are the drivers every test runs against (epoll_linux_test.go adds "epoll").
var driverKinds = []string{"goroutine"}

func forEachDriver(t *testing.T, test func(t *testing.T, kind string)) {
	for _, kind := range driverKinds {
		t.Run(kind, func(t *testing.T) { test(t, kind) })
	}
}

func newDriver(t testing.TB, kind string, cfg Config) Driver {
	d, err := New(kind, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// serve runs d on a fresh loopback listener; stop closes the listener and shuts d down.
func serve(t testing.TB, d Driver, accept func(Conn) Handler) (addr string, stop func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.Serve(ln, accept); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	return ln.Addr().String(), func() {
		ln.Close()
		<-done
		d.Shutdown()
	}
}

func serveEcho(t testing.TB, kind string, cfg *tls.Config) (addr string, stop func()) {
	return serve(t, newDriver(t, kind, Config{}), func(c Conn) Handler { return &echo{c: c, cfg: cfg} })
}

// Bursts of small writes on many connections must all be echoed: a parked connection that
// misses a wake-up, or TLS bytes stranded inside crypto/tls, would hang here.
func TestEchoManyConnectionsNoLostWakeups(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, testEchoManyConnections)
}

func testEchoManyConnections(t *testing.T, kind string) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			var srvCfg *tls.Config
			if useTLS {
				srvCfg = selfSigned(t)
			}
			addr, stop := serveEcho(t, kind, srvCfg)
			defer stop()
			const conns, rounds = 100, 20
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			for i := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- echoClient(addr, useTLS, i, rounds)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func echoClient(addr string, useTLS bool, id, rounds int) error {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	var rw io.ReadWriter = nc
	if useTLS {
		nc.Write([]byte{'T'})
		var s [1]byte
		if _, err := io.ReadFull(nc, s[:]); err != nil || s[0] != 'S' {
			return fmt.Errorf("client %d: no TLS answer: %v", id, err)
		}
		tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
		rw = tc
	}
	for r := range rounds {
		// Several records per burst, written separately, so the server sees them arrive together.
		var want []byte
		for k := range 5 {
			msg := []byte(fmt.Sprintf("client %d round %d part %d;", id, r, k))
			want = append(want, msg...)
			if _, err := rw.Write(msg); err != nil {
				return err
			}
		}
		got := make([]byte, len(want))
		if _, err := io.ReadFull(rw, got); err != nil {
			return fmt.Errorf("client %d round %d: %v", id, r, err)
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("client %d round %d: got %q", id, r, got)
		}
	}
	return nil
}

// Output beyond MaxOutput makes Exec wait for the client to read, instead of buffering without
// bound.
func TestExecBlocksOnSlowClient(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, testExecBlocksOnSlowClient)
}

func testExecBlocksOnSlowClient(t *testing.T, kind string) {
	conns := make(chan Conn, 1)
	addr, stop := serve(t, newDriver(t, kind, Config{MaxOutput: 64 << 10}),
		func(c Conn) Handler { conns <- c; return &echo{c: c} })
	defer stop()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := <-conns
	chunk := make([]byte, 32<<10)
	var sent sync.WaitGroup
	sent.Add(1)
	var produced int
	var mu sync.Mutex
	go func() {
		defer sent.Done()
		for range 2000 { // 64 MiB, far beyond socket buffers plus MaxOutput
			if !c.Exec(func() { c.Write(chunk) }) {
				return
			}
			mu.Lock()
			produced += len(chunk)
			mu.Unlock()
		}
	}()
	// The producer stalls: what it got out is bounded by socket buffers plus MaxOutput.
	var last int
	deadline := time.Now().Add(10 * time.Second)
	for {
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		p := produced
		mu.Unlock()
		if p == last && p > 0 {
			break
		}
		last = p
		if time.Now().After(deadline) {
			t.Fatalf("producer never stalled: %d bytes produced", p)
		}
	}
	if last >= 2000*len(chunk) {
		t.Fatalf("producer finished without the client reading")
	}
	// Reading unblocks it.
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(io.Discard, nc)
	}()
	sent.Wait()
	nc.Close()
	<-copied
}

func selfSigned(t testing.TB) *tls.Config {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "loop"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}
