package faultproxy

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startTarget runs a TCP server on 127.0.0.1 that calls handle for each
// connection and closes it afterwards. Everything is torn down at cleanup.
func startTarget(t *testing.T, handle func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

func startProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip writes msg, reads the echo back and returns how long it took.
func roundTrip(t *testing.T, c net.Conn, msg []byte) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
	return time.Since(start)
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// expectDead checks that c's next read fails at once with a reset or EOF.
func expectDead(t *testing.T, c net.Conn) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n > 0 || err == nil {
		t.Fatalf("read %d bytes, err %v; want reset or EOF", n, err)
	}
	if !errors.Is(err, syscall.ECONNRESET) && err != io.EOF {
		t.Fatalf("read error %v; want ECONNRESET or EOF", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("connection died after %v; want at once", d)
	}
}

// expectRefused dials p and checks that the connection is reset at once.
// The reset can beat the client's connect, which then fails instead.
func expectRefused(t *testing.T, p *Proxy) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectDead(t, c)
}

func TestAddr(t *testing.T) {
	p := startProxy(t, startTarget(t, echo))
	if p.Host() != "127.0.0.1" || p.Port() == 0 {
		t.Fatalf("Host %q Port %d", p.Host(), p.Port())
	}
	if want := net.JoinHostPort(p.Host(), strconv.Itoa(int(p.Port()))); p.Addr() != want {
		t.Fatalf("Addr %q, want %q", p.Addr(), want)
	}
}

func TestPassThrough(t *testing.T) {
	p := startProxy(t, startTarget(t, echo))
	const conns, size = 4, 2 << 20

	var wg sync.WaitGroup
	errs := make(chan error, 2*conns)
	for range conns {
		c := dial(t, p)
		payload := make([]byte, size)
		rand.Read(payload)
		wg.Add(2)
		go func() {
			defer wg.Done()
			// Half-closing after the payload checks that end of stream
			// travels both ways: the echo server closes only when it sees it.
			if _, err := c.Write(payload); err != nil {
				errs <- err
				return
			}
			errs <- c.CloseWrite()
		}()
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, payload) {
				err = errors.New("payload changed in transit")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := p.Stats()
	if st.Accepted != conns || st.BytesUp != conns*size || st.BytesDown != conns*size {
		t.Fatalf("stats %+v", st)
	}
	waitFor(t, "connections to close", func() bool { return p.Conns() == 0 })
}

func TestDelay(t *testing.T) {
	p := startProxy(t, startTarget(t, echo))
	const delay = 50 * time.Millisecond
	p.Set(Faults{Delay: delay, UpDelay: 20 * time.Millisecond})
	c := dial(t, p)
	if d := roundTrip(t, c, []byte("hello")); d < delay+20*time.Millisecond {
		t.Fatalf("round trip took %v; want at least %v", d, delay+20*time.Millisecond)
	}

	// Pipelined requests, paced so that each comes back as a chunk of its
	// own: with a sleep per chunk they would take 10×delay.
	p.Set(Faults{Delay: delay})
	before := p.Stats().DelayedChunks
	const n, pace = 10, 5 * time.Millisecond
	start := time.Now()
	lastWrite := make(chan time.Time, 1)
	go func() {
		for i := range n {
			if i > 0 {
				time.Sleep(pace)
			}
			c.Write(binary.BigEndian.AppendUint64(nil, uint64(i)))
		}
		lastWrite <- time.Now()
	}()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 8)
	for i := range n {
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if got := binary.BigEndian.Uint64(buf); got != uint64(i) {
			t.Fatalf("response %d out of order: got %d", i, got)
		}
		if i == 0 && time.Since(start) < delay {
			t.Fatalf("first response after %v; want at least %v", time.Since(start), delay)
		}
	}
	end := time.Now()
	chunks := p.Stats().DelayedChunks - before
	t.Logf("%d pipelined requests in %v, %d response chunks", n, end.Sub(start), chunks)
	// Measured from the last request, so that a slow writer does not count.
	if tail := end.Sub(<-lastWrite); tail > delay+100*time.Millisecond {
		t.Fatalf("last response came %v after the last request; want about %v, not a multiple", tail, delay)
	}
	if chunks < 5 {
		t.Fatalf("responses came back in %d chunks; the test needs them apart", chunks)
	}
}

// TestDelayIndependentDirections checks that a long response delay does
// not hold back requests on their way to the target.
func TestDelayIndependentDirections(t *testing.T) {
	arrived := make(chan time.Time, 1)
	target := startTarget(t, func(c *net.TCPConn) {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		arrived <- time.Now()
		c.Write(buf)
		io.Copy(io.Discard, c)
	})
	p := startProxy(t, target)
	const delay = 300 * time.Millisecond
	p.Set(Faults{Delay: delay})
	c := dial(t, p)
	// A response in flight first, so the down queue is busy.
	start := time.Now()
	d := roundTrip(t, c, []byte("ping"))
	if at := (<-arrived).Sub(start); at > delay/2 {
		t.Fatalf("request reached the target after %v; the response delay held it back", at)
	}
	if d < delay {
		t.Fatalf("round trip %v; want at least %v", d, delay)
	}
}

func TestSpikes(t *testing.T) {
	p := startProxy(t, startTarget(t, echo))
	const (
		n      = 1000
		spikeP = 0.02
		spike  = 30 * time.Millisecond
	)
	p.Set(Faults{SpikeP: spikeP, Spike: spike, Seed: 42})
	c := dial(t, p)
	msg := make([]byte, 8)
	slow := 0
	for i := range n {
		binary.BigEndian.PutUint64(msg, uint64(i))
		if roundTrip(t, c, msg) >= spike {
			slow++
		}
	}
	spiked := int(p.Stats().DelayedChunks)
	mean, sd := n*spikeP, math.Sqrt(n*spikeP*(1-spikeP))
	lo, hi := int(mean-4*sd), int(math.Ceil(mean+4*sd))
	t.Logf("%d of %d round trips slow, %d spikes drawn (expected %.0f±%.1f)", slow, n, spiked, mean, sd)
	if spiked < lo || spiked > hi {
		t.Fatalf("%d spikes; want within [%d, %d]", spiked, lo, hi)
	}
	// Every spiked response is slow; a loaded machine may add a few more.
	if slow < spiked || slow > spiked+10 {
		t.Fatalf("%d slow round trips for %d spikes", slow, spiked)
	}
}

func TestSpikesDeterministic(t *testing.T) {
	target := startTarget(t, echo)
	spikes := func(seed uint64) int64 {
		p := startProxy(t, target)
		p.Set(Faults{SpikeP: 0.3, Spike: time.Microsecond, Seed: seed})
		c := dial(t, p)
		for range 200 {
			roundTrip(t, c, []byte("x"))
		}
		return p.Stats().DelayedChunks
	}
	a, b := spikes(7), spikes(7)
	if a != b {
		t.Fatalf("seed 7 drew %d then %d spikes", a, b)
	}
	if a < 30 || a > 90 {
		t.Fatalf("%d spikes in 200 draws at p=0.3", a)
	}
}

func TestBlackhole(t *testing.T) {
	p := startProxy(t, startTarget(t, echo))
	c := dial(t, p)
	roundTrip(t, c, []byte("before"))

	p.Set(Faults{Blackhole: true})
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackholed read: %d bytes, err %v; want a timeout", n, err)
	}
	// A new connection is accepted but hangs too.
	c2 := dial(t, p)
	c2.Write([]byte("hello"))
	c2.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c2.Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new blackholed conn: %d bytes, err %v; want a timeout", n, err)
	}
	if p.Conns() != 2 {
		t.Fatalf("Conns() = %d, want 2: blackholed connections stay open", p.Conns())
	}

	// Data sent while blackholed was discarded; new data flows again.
	p.Set(Faults{})
	roundTrip(t, c, []byte("after"))
	roundTrip(t, c2, []byte("after"))
}

func TestRefuse(t *testing.T) {
	p := startProxy(t, startTarget(t, echo))
	p.Set(Faults{Refuse: true})
	expectRefused(t, p)
	if n := p.Conns(); n != 0 {
		t.Fatalf("Conns() = %d, want 0", n)
	}
	if st := p.Stats(); st.Accepted != 1 || st.Refused != 1 {
		t.Fatalf("stats %+v", st)
	}
	p.Set(Faults{})
	roundTrip(t, dial(t, p), []byte("back"))
}

func TestTargetDown(t *testing.T) {
	// A bound socket that does not listen holds its port, so nothing else
	// (the proxy itself included) can take it while connects are refused.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)))
	expectRefused(t, p)
	waitFor(t, "the refusal to be counted", func() bool { return p.Stats().Refused == 1 })
}

func TestReset(t *testing.T) {
	p := startProxy(t, startTarget(t, echo))
	var cs []*net.TCPConn
	for range 3 {
		c := dial(t, p)
		roundTrip(t, c, []byte("hi"))
		cs = append(cs, c)
	}
	p.Reset()
	if n := p.Conns(); n != 0 {
		t.Fatalf("Conns() = %d after Reset, want 0", n)
	}
	for _, c := range cs {
		expectDead(t, c)
	}
	if st := p.Stats(); st.Resets != 3 {
		t.Fatalf("stats %+v", st)
	}
	roundTrip(t, dial(t, p), []byte("again"))
}

func TestBandwidthDown(t *testing.T) {
	const size, rate = 1 << 20, 4 << 20
	target := startTarget(t, func(c *net.TCPConn) {
		c.Write(make([]byte, size))
	})
	p := startProxy(t, target)
	p.Set(Faults{BandwidthDown: rate})
	start := time.Now()
	c := dial(t, p)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != size {
		t.Fatalf("read %d bytes, err %v", n, err)
	}
	elapsed := time.Since(start)
	// The bucket starts full with 16 KiB, so the ideal time is 246 ms.
	if elapsed < 240*time.Millisecond || elapsed > 2*time.Second {
		t.Fatalf("1 MiB at 4 MiB/s took %v; want about 250 ms", elapsed)
	}
	t.Logf("1 MiB at 4 MiB/s took %v", elapsed)
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	target := startTarget(t, echo)
	ignore := goleak.IgnoreCurrent()
	p, err := Start(target)
	if err != nil {
		t.Fatal(err)
	}
	// Connections in every state: idle, with a response queued behind a
	// long delay, and blackholed.
	var cs []*net.TCPConn
	for range 3 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, []byte("warm"))
		cs = append(cs, c.(*net.TCPConn))
	}
	p.Set(Faults{Delay: time.Hour})
	cs[1].Write([]byte("queued"))
	waitFor(t, "the response to be queued", func() bool { return p.Stats().DelayedChunks > 0 })
	p.Set(Faults{Blackhole: true})
	cs[2].Write([]byte("held"))

	start := time.Now()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v", d)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, c := range cs {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 16)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after Close: %v; want EOF or reset", err)
		}
	}
	if _, err := net.Dial("tcp", p.Addr()); err == nil {
		t.Fatal("dial succeeded after Close")
	}
	goleak.VerifyNone(t, ignore)
}
