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

func serveEcho(t *testing.T, cfg *tls.Config) (addr string, stop func()) {
	d := NewGoroutines(Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Serve(ln, func(c Conn) Handler { return &echo{c: c, cfg: cfg} })
	}()
	return ln.Addr().String(), func() {
		ln.Close()
		<-done
		d.Shutdown()
	}
}

// Bursts of small writes on many connections must all be echoed: a parked connection that
// misses a wake-up, or TLS bytes stranded inside crypto/tls, would hang here.
func TestEchoManyConnectionsNoLostWakeups(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			var srvCfg *tls.Config
			if useTLS {
				srvCfg = selfSigned(t)
			}
			addr, stop := serveEcho(t, srvCfg)
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
	d := NewGoroutines(Config{MaxOutput: 64 << 10})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan Conn, 1)
	go d.Serve(ln, func(c Conn) Handler { conns <- c; return &echo{c: c} })
	defer func() { ln.Close(); d.Shutdown() }()
	nc, err := net.Dial("tcp", addrOf(ln))
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
	go io.Copy(io.Discard, nc)
	sent.Wait()
}

func addrOf(ln net.Listener) string { return ln.Addr().String() }

func selfSigned(t *testing.T) *tls.Config {
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
