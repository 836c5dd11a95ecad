package loop

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// handler is a Handler made of functions; nil ones do nothing.
type handler struct {
	data   func(b []byte)
	closed func(err error)
	flush  func()
}

func (h *handler) OnData(b []byte) {
	if h.data != nil {
		h.data(b)
	}
}

func (h *handler) OnClose(err error) {
	if h.closed != nil {
		h.closed(err)
	}
}

func (h *handler) Flush() {
	if h.flush != nil {
		h.flush()
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return nc
}

func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

func TestNew(t *testing.T) {
	for _, kind := range driverKinds {
		d, err := New(kind, Config{})
		if err != nil || d == nil {
			t.Fatalf("New(%q): %v", kind, err)
		}
		d.Shutdown()
	}
	if _, err := New("threads", Config{}); err == nil {
		t.Fatal("New accepted an unknown kind")
	}
}

// Client bytes (echoed as 'D' frames) and functions that other goroutines Exec (each writes an 'E'
// frame with its producer and sequence number) interleave, but each stream keeps its order and
// nothing runs concurrently with anything else of the connection (the race detector checks the
// handler's unguarded counter).
func TestExecConcurrentWithClientData(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, testExecConcurrentWithClientData)
}

func testExecConcurrentWithClientData(t *testing.T, kind string) {
	const conns, producers, execs, chunks = 8, 2, 300, 100
	frame := func(c Conn, typ byte, payload []byte) {
		var hdr [5]byte
		hdr[0] = typ
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
		c.Write(hdr[:])
		c.Write(payload)
	}
	type server struct {
		c     Conn
		calls int // touched by callbacks and Exec functions alike, without a lock
	}
	servers := make(chan *server, conns)
	addr, stop := serve(t, newDriver(t, kind, Config{}), func(c Conn) Handler {
		s := &server{c: c}
		return &handler{data: func(b []byte) {
			if s.calls == 0 {
				// Published from a callback, not from accept: the goroutine driver sets up the
				// connection after accept returns.
				servers <- s
				b = b[1:]
			}
			s.calls++
			if len(b) > 0 {
				frame(c, 'D', b)
			}
		}}
	})
	defer stop()

	var wg sync.WaitGroup
	errs := make(chan error, conns*(producers+1))
	for range conns {
		nc := dial(t, addr)
		defer nc.Close()
		nc.Write([]byte("!"))
		s := <-servers
		for p := range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range execs {
					ok := s.c.Exec(func() {
						s.calls++
						var b [8]byte
						binary.BigEndian.PutUint32(b[:4], uint32(p))
						binary.BigEndian.PutUint32(b[4:], uint32(i))
						frame(s.c, 'E', b[:])
					})
					if !ok {
						errs <- fmt.Errorf("producer %d: Exec %d refused", p, i)
						return
					}
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- checkInterleaved(nc, producers, execs, chunks)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// checkInterleaved sends chunks of random bytes and checks what comes back: all of them in
// order, and every producer's sequence in order.
func checkInterleaved(nc net.Conn, producers, execs, chunks int) error {
	var sent []byte
	var parts [][]byte
	for range chunks {
		b := make([]byte, 1+rand.IntN(2000))
		for i := range b {
			b[i] = byte(rand.Uint32())
		}
		sent = append(sent, b...)
		parts = append(parts, b)
	}
	go func() {
		for _, b := range parts {
			if _, err := nc.Write(b); err != nil {
				return // the reader reports it
			}
		}
	}()
	next := make([]int, producers)
	var echoed []byte
	var hdr [5]byte
	for done := 0; done < producers*execs || len(echoed) < len(sent); {
		if _, err := io.ReadFull(nc, hdr[:]); err != nil {
			return fmt.Errorf("after %d execs and %d bytes: %w", done, len(echoed), err)
		}
		payload := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(nc, payload); err != nil {
			return err
		}
		switch hdr[0] {
		case 'D':
			echoed = append(echoed, payload...)
		case 'E':
			p, i := binary.BigEndian.Uint32(payload[:4]), int(binary.BigEndian.Uint32(payload[4:]))
			if i != next[p] {
				return fmt.Errorf("producer %d: got exec %d, want %d", p, i, next[p])
			}
			next[p]++
			done++
		default:
			return fmt.Errorf("bad frame type %q", hdr[0])
		}
	}
	if !bytes.Equal(echoed, sent) {
		return fmt.Errorf("echo differs: %d bytes back for %d sent", len(echoed), len(sent))
	}
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A callback may Exec on another connection (a pool handing over a backend does): it must not
// deadlock, and f has run when Exec returns.
func TestExecOnOtherConnectionFromCallback(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, func(t *testing.T, kind string) {
		conns := make(chan Conn, 2)
		var first Conn
		var mu sync.Mutex
		addr, stop := serve(t, newDriver(t, kind, Config{Loops: 1}), func(c Conn) Handler {
			conns <- c
			return &handler{data: func(b []byte) {
				mu.Lock()
				other := first
				mu.Unlock()
				ran := false
				if !other.Exec(func() { ran = true; other.Write([]byte("poked;")) }) || !ran {
					c.Write([]byte("not run"))
					return
				}
				c.Write([]byte("done"))
			}}
		})
		defer stop()
		a := dial(t, addr)
		defer a.Close()
		mu.Lock()
		first = <-conns
		mu.Unlock()
		b := dial(t, addr)
		defer b.Close()
		<-conns
		b.Write([]byte("x"))
		if got := string(readN(t, b, 4)); got != "done" {
			t.Fatalf("poker got %q", got)
		}
		if got := string(readN(t, a, 6)); got != "poked;" {
			t.Fatalf("poked got %q", got)
		}
	})
}

// Timers fire once, in deadline order; Stop before firing (from the loop or another goroutine)
// prevents f, Stop afterwards reports false.
func TestAfterFunc(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, func(t *testing.T, kind string) {
		conns := make(chan Conn, 1)
		outside := make(chan func() bool, 1)
		addr, stop := serve(t, newDriver(t, kind, Config{}), func(c Conn) Handler {
			conns <- c
			started := false
			return &handler{data: func([]byte) {
				if started {
					return
				}
				started = true
				w := func(s string) func() { return func() { c.Write([]byte(s)) } }
				stopA := c.AfterFunc(10*time.Millisecond, w("A"))
				stopB := c.AfterFunc(40*time.Millisecond, w("B"))
				if !stopB() {
					c.Write([]byte("stopB=false;"))
				}
				outside <- c.AfterFunc(60*time.Millisecond, w("D"))
				c.AfterFunc(80*time.Millisecond, func() {
					// A has fired: stopping it now, or B again, reports false.
					c.Write([]byte(fmt.Sprintf("C%v%v", stopA(), stopB())))
				})
				c.AfterFunc(30*time.Second, w("never")) // pending at Shutdown: must not leak
			}}
		})
		defer stop()
		nc := dial(t, addr)
		defer nc.Close()
		c := <-conns
		nc.Write([]byte("go"))
		if !(<-outside)() {
			t.Error("Stop of a pending timer from another goroutine reported false")
		}
		if got := string(readN(t, nc, len("ACfalsefalse"))); got != "ACfalsefalse" {
			t.Fatalf("got %q, want A, then C with both stops false (and no B or D)", got)
		}
		// A timer armed from outside the loop.
		c.AfterFunc(time.Millisecond, func() { c.Write([]byte("G")) })
		if got := string(readN(t, nc, 1)); got != "G" {
			t.Fatalf("got %q, want G", got)
		}
	})
}

// PauseReads stops OnData while the client keeps sending; ResumeReads delivers every byte.
func TestPauseResumeReads(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, func(t *testing.T, kind string) {
		conns := make(chan Conn, 1)
		var got []byte // guarded by the connection's serialisation; read through Exec
		addr, stop := serve(t, newDriver(t, kind, Config{}), func(c Conn) Handler {
			conns <- c
			return &handler{data: func(b []byte) {
				if len(got) == 0 && b[0] == 'P' {
					c.PauseReads()
					c.Write([]byte("p"))
				}
				got = append(got, b...)
			}}
		})
		defer stop()
		nc := dial(t, addr)
		defer nc.Close()
		c := <-conns
		nc.Write([]byte("P"))
		readN(t, nc, 1)

		want := make([]byte, 256<<10)
		for i := range want {
			want[i] = byte(i * 7)
		}
		wrote := make(chan error, 1)
		go func() { _, err := nc.Write(want); wrote <- err }()
		n := func() (n int) {
			if !c.Exec(func() { n = len(got) }) {
				t.Fatal("Exec refused")
			}
			return n
		}
		// Paused: nothing arrives, however long the client keeps sending.
		for deadline := time.Now().Add(100 * time.Millisecond); time.Now().Before(deadline); {
			if n() != 1 {
				t.Fatalf("OnData while paused: %d bytes", n())
			}
			time.Sleep(5 * time.Millisecond)
		}
		c.Exec(c.ResumeReads)
		waitFor(t, "all bytes after ResumeReads", func() bool { return n() == 1+len(want) })
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
		c.Exec(func() {
			if !bytes.Equal(got[1:], want) {
				t.Error("bytes differ after resume")
			}
		})
	})
}

// A client that resets the connection while reads are paused is noticed once reads resume, and
// the wait in between costs no CPU (a level-triggered hang-up must not spin the loop).
func TestResetWhilePaused(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, func(t *testing.T, kind string) {
		conns := make(chan Conn, 1)
		closed := make(chan error, 1)
		addr, stop := serve(t, newDriver(t, kind, Config{}), func(c Conn) Handler {
			conns <- c
			return &handler{
				data: func([]byte) {
					c.PauseReads()
					c.Write([]byte("p"))
				},
				closed: func(err error) { closed <- err },
			}
		})
		defer stop()
		nc := dial(t, addr)
		c := <-conns
		nc.Write([]byte("x"))
		readN(t, nc, 1)
		nc.Write([]byte("more"))
		nc.(*net.TCPConn).SetLinger(0)
		nc.Close() // RST

		before := cpuTime()
		time.Sleep(200 * time.Millisecond)
		if used := cpuTime() - before; used > 100*time.Millisecond {
			t.Errorf("%v of CPU in 200ms while paused after a reset", used)
		}
		select {
		case err := <-closed:
			t.Fatalf("OnClose(%v) while paused", err)
		default:
		}
		c.Exec(c.ResumeReads)
		select {
		case err := <-closed:
			if err == nil {
				t.Error("OnClose(nil) after a reset")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no OnClose after ResumeReads")
		}
	})
}

// Close sends the queued output first, then drains the client's input instead of resetting
// the connection; OnClose runs exactly once.
func TestCloseSendsOutputThenLingers(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, func(t *testing.T, kind string) {
		var closes atomic.Int32
		var closeErr atomic.Value
		big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
		addr, stop := serve(t, newDriver(t, kind, Config{}), func(c Conn) Handler {
			done := false
			return &handler{
				data: func([]byte) {
					if !done {
						done = true
						c.Write(big)
						c.Close()
						c.Write([]byte("!")) // same callback: still sent
					}
				},
				closed: func(err error) { closes.Add(1); closeErr.Store(err) },
			}
		})
		nc := dial(t, addr)
		defer nc.Close()
		nc.Write([]byte("bye"))
		nc.Write(make([]byte, 64<<10)) // unread input: closing without draining would reset
		got, err := io.ReadAll(nc)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		if len(got) != len(big)+1 || !bytes.Equal(got[:len(big)], big) || got[len(big)] != '!' {
			t.Fatalf("got %d bytes, want %d", len(got), len(big)+1)
		}
		nc.Close()
		waitFor(t, "OnClose", func() bool { return closes.Load() == 1 })
		stop()
		if n := closes.Load(); n != 1 {
			t.Fatalf("OnClose ran %d times", n)
		}
		if err, _ := closeErr.Load().(error); !errors.Is(err, errClosing) {
			t.Fatalf("OnClose(%v), want errClosing", err)
		}
	})
}

// Shutdown closes every connection, running OnClose for each before it returns.
func TestShutdownClosesEveryConnection(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, func(t *testing.T, kind string) {
		const n = 50
		var closes atomic.Int32
		d := newDriver(t, kind, Config{})
		addr, stop := serve(t, d, func(c Conn) Handler {
			e := &echo{c: c}
			return &handler{data: e.OnData, closed: func(error) { closes.Add(1) }}
		})
		var ncs []net.Conn
		for range n {
			nc := dial(t, addr)
			defer nc.Close()
			nc.Write([]byte("hi"))
			readN(t, nc, 2)
			ncs = append(ncs, nc)
		}
		stop()
		if got := closes.Load(); got != n {
			t.Fatalf("OnClose ran %d times for %d connections", got, n)
		}
		for _, nc := range ncs {
			if _, err := nc.Read(make([]byte, 1)); err == nil {
				t.Fatal("client still connected after Shutdown")
			}
		}
	})
}

// After StartTLS the Conn keeps working for Exec and AfterFunc, now through TLS.
func TestExecAfterTLS(t *testing.T) {
	defer goleak.VerifyNone(t)
	forEachDriver(t, func(t *testing.T, kind string) {
		cfg := selfSigned(t)
		conns := make(chan Conn, 1)
		closes := make(chan error, 2)
		addr, stop := serve(t, newDriver(t, kind, Config{}), func(c Conn) Handler {
			conns <- c
			e := &echo{c: c, cfg: cfg}
			return &handler{data: e.OnData, closed: func(err error) { closes <- err }}
		})
		defer stop()
		nc := dial(t, addr)
		defer nc.Close()
		c := <-conns
		nc.Write([]byte{'T'})
		readN(t, nc, 1)
		tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
		tc.Write([]byte("ping"))
		if got := string(readN(t, tc, 4)); got != "ping" {
			t.Fatalf("echo %q", got)
		}
		var isTLS bool
		if !c.Exec(func() { isTLS = c.TLS(); c.Write([]byte("exec")) }) || !isTLS {
			t.Fatalf("Exec after TLS: TLS()=%v", isTLS)
		}
		if got := string(readN(t, tc, 4)); got != "exec" {
			t.Fatalf("got %q", got)
		}
		c.AfterFunc(time.Millisecond, func() { c.Write([]byte("tick")) })
		if got := string(readN(t, tc, 4)); got != "tick" {
			t.Fatalf("got %q", got)
		}
		tc.Close()
		select {
		case <-closes:
		case <-time.After(10 * time.Second):
			t.Fatal("no OnClose")
		}
		if c.Exec(func() {}) {
			t.Fatal("Exec ran on a closed connection")
		}
		select {
		case err := <-closes:
			t.Fatalf("second OnClose(%v)", err)
		default:
		}
	})
}

// One client, 64-byte ping-pong.
func BenchmarkEchoRoundTrip(b *testing.B) {
	for _, kind := range driverKinds {
		b.Run(kind, func(b *testing.B) {
			addr, stop := serveEcho(b, kind, nil)
			defer stop()
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			msg := make([]byte, 64)
			buf := make([]byte, 64)
			b.SetBytes(64)
			b.ResetTimer()
			for range b.N {
				if _, err := nc.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(nc, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Connect, upgrade to TLS and echo once: with the epoll driver this includes handing the
// connection over to the goroutine driver.
func BenchmarkTLSConnect(b *testing.B) {
	for _, kind := range driverKinds {
		b.Run(kind, func(b *testing.B) {
			addr, stop := serveEcho(b, kind, selfSigned(b))
			defer stop()
			cfg := &tls.Config{InsecureSkipVerify: true}
			for range b.N {
				nc, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				nc.Write([]byte{'T'})
				var s [1]byte
				if _, err := io.ReadFull(nc, s[:]); err != nil {
					b.Fatal(err)
				}
				tc := tls.Client(nc, cfg)
				tc.Write([]byte("ping"))
				if _, err := io.ReadFull(tc, make([]byte, 4)); err != nil {
					b.Fatal(err)
				}
				tc.Close()
			}
		})
	}
}
