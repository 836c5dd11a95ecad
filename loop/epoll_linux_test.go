package loop

import (
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func init() { driverKinds = append(driverKinds, "epoll") }

func newEpollT(t *testing.T, cfg Config) *Epoll {
	t.Helper()
	d, err := NewEpoll(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Exec from a loop goroutine must not wait for that loop: on the callback's own connection f
// runs right after the callback; on another connection of the same loop it runs at once.
func TestEpollExecReentrant(t *testing.T) {
	defer goleak.VerifyNone(t)
	var mu sync.Mutex
	var first Conn
	conns := make(chan Conn, 2)
	addr, stop := serve(t, newEpollT(t, Config{Loops: 1}), func(c Conn) Handler {
		conns <- c
		return &handler{data: func([]byte) {
			mu.Lock()
			other := first
			mu.Unlock()
			ran := false
			other.Exec(func() { ran = true; other.Write([]byte("poked")) })
			c.Write([]byte(fmt.Sprintf("inline=%v;", ran)))
			if !c.Exec(func() { c.Write([]byte("self")) }) {
				c.Write([]byte("refused"))
			}
			c.Write([]byte("after;"))
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
	if got, want := string(readN(t, b, len("inline=true;after;self"))), "inline=true;after;self"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := string(readN(t, a, 5)); got != "poked" {
		t.Fatalf("got %q", got)
	}
}

// Two loops whose callbacks Exec into each other at the same time: if either waited for the
// other, both would hang.
func TestEpollExecAcrossLoops(t *testing.T) {
	defer goleak.VerifyNone(t)
	var mu sync.Mutex
	var peers []Conn
	var both sync.WaitGroup
	both.Add(2)
	addr, stop := serve(t, newEpollT(t, Config{Loops: 2}), func(c Conn) Handler {
		mu.Lock()
		i := len(peers)
		peers = append(peers, c)
		mu.Unlock()
		return &handler{data: func([]byte) {
			both.Done()
			both.Wait() // both loops are inside a callback now
			mu.Lock()
			other := peers[1-i]
			mu.Unlock()
			if !other.Exec(func() { other.Write([]byte(fmt.Sprintf("from %d", i))) }) {
				c.Write([]byte("refused"))
			}
		}}
	})
	defer stop()
	// The least-loaded placement puts the two connections on different loops.
	a := dial(t, addr)
	defer a.Close()
	b := dial(t, addr)
	defer b.Close()
	waitFor(t, "both connections", func() bool { mu.Lock(); defer mu.Unlock(); return len(peers) == 2 })
	a.Write([]byte("x"))
	b.Write([]byte("x"))
	// Which connection the driver registered first is its business: each must hear the other.
	ga, gb := string(readN(t, a, 6)), string(readN(t, b, 6))
	if !(ga == "from 0" && gb == "from 1" || ga == "from 1" && gb == "from 0") {
		t.Fatalf("a got %q, b got %q", ga, gb)
	}
}

// Exec on a connection that has closed returns false without running f.
func TestEpollExecAfterClose(t *testing.T) {
	defer goleak.VerifyNone(t)
	conns := make(chan Conn, 1)
	closed := make(chan struct{})
	addr, stop := serve(t, newEpollT(t, Config{}), func(c Conn) Handler {
		conns <- c
		return &handler{closed: func(error) { close(closed) }}
	})
	defer stop()
	nc := dial(t, addr)
	c := <-conns
	nc.Close()
	<-closed
	if c.Exec(func() { t.Error("f ran on a closed connection") }) {
		t.Fatal("Exec reported true on a closed connection")
	}
}

// Idle connections hold no buffer and no output, however much they sent and received before.
func TestEpollIdleConnectionsHoldNoBuffers(t *testing.T) {
	defer goleak.VerifyNone(t)
	const n = 1000
	d := newEpollT(t, Config{MaxOutput: 64 << 10})
	big := make([]byte, 16<<20) // beyond what loopback socket buffers take
	addr, stop := serve(t, d, func(c Conn) Handler {
		return &handler{data: func(b []byte) {
			if b[0] == 'B' {
				c.Write(big) // more than the socket takes at once
				return
			}
			c.Write(b)
		}}
	})
	defer stop()
	var ncs []net.Conn
	for i := range n {
		nc := dial(t, addr)
		defer nc.Close()
		ncs = append(ncs, nc)
		msg := []byte(fmt.Sprintf("hello %d", i))
		nc.Write(msg)
		readN(t, nc, len(msg))
	}
	// A client that is slow to read leaves output waiting, then takes it.
	ncs[0].Write([]byte("B"))
	waitFor(t, "output waiting for a slow client", func() bool { _, p := d.held(); return p > 0 })
	readN(t, ncs[0], len(big))
	waitFor(t, "no buffers held", func() bool {
		bufs, pending := d.held()
		return bufs == 0 && pending == 0
	})
}

func TestWheel(t *testing.T) {
	var w wheel
	w.start = time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return w.start.Add(d) }
	var fired []string
	mk := func(name string) *timer { return &timer{f: func() { fired = append(fired, name) }} }
	expire := func(now time.Duration) {
		for _, t := range w.expire(at(now), nil) {
			t.f()
		}
	}
	w.add(mk("10ms"), at(10*time.Millisecond))
	w.add(mk("7s"), at(7*time.Second)) // more than one turn away
	stopped := mk("stopped")
	w.add(stopped, at(50*time.Millisecond))
	w.add(mk("16s"), at(16*time.Second))
	w.remove(stopped)
	if got := w.next(); !got.Equal(at(10 * time.Millisecond)) {
		t.Fatalf("next at %v, want 10ms", got.Sub(w.start))
	}
	expire(9 * time.Millisecond)
	if len(fired) != 0 {
		t.Fatalf("fired early: %v", fired)
	}
	expire(10 * time.Millisecond)
	expire(5200 * time.Millisecond) // a full turn: the 7 s timer shares a slot it must skip
	if fmt.Sprint(fired) != "[10ms]" {
		t.Fatalf("fired %v", fired)
	}
	expire(7 * time.Second)
	expire(60 * time.Second) // a long stall: everything due fires once
	if fmt.Sprint(fired) != "[10ms 7s 16s]" || w.n != 0 {
		t.Fatalf("fired %v, %d left", fired, w.n)
	}
	if got := w.next(); !got.IsZero() {
		t.Fatalf("next at %v with no timers", got)
	}
}

// The step a TLS handover adds: the socket wrapped back into a net.Conn (dup, registration with
// the runtime's poller) and our descriptor closed.
func BenchmarkHandoverFileConn(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	srv, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	fd, err := detach(srv)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	b.ResetTimer()
	for range b.N {
		dup, err := unix.Dup(fd) // stands for the accepted descriptor
		if err != nil {
			b.Fatal(err)
		}
		f := os.NewFile(uintptr(dup), "client")
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		nc.Close()
	}
}
