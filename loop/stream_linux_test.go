package loop

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// streamPair returns a connected non-blocking descriptor for AttachStream and its peer.
func streamPair(t *testing.T) (int, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "peer")
	peer, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	peer.SetDeadline(time.Now().Add(20 * time.Second))
	return fds[0], peer
}

type streamHandler struct {
	mu       sync.Mutex
	got      bytes.Buffer
	data     func(b []byte)
	writable chan struct{}
	closed   chan error
}

func newStreamHandler() *streamHandler {
	return &streamHandler{writable: make(chan struct{}, 16), closed: make(chan error, 2)}
}

func (h *streamHandler) OnData(b []byte) {
	if h.data != nil {
		h.data(b)
		return
	}
	h.mu.Lock()
	h.got.Write(b)
	h.mu.Unlock()
}

func (h *streamHandler) OnWritable()       { h.writable <- struct{}{} }
func (h *streamHandler) OnClose(err error) { h.closed <- err }

func (h *streamHandler) received() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.got.String()
}

// A stream reads, writes, reports writability after WantWrite, and closes once with the reason.
func TestStreamReadWriteClose(t *testing.T) {
	defer goleak.VerifyNone(t)
	d := newEpollT(t, Config{Loops: 2})
	defer d.Shutdown()
	fd, peer := streamPair(t)
	h := newStreamHandler()
	s, err := d.AttachStream(fd, 1, h)
	if err != nil {
		t.Fatal(err)
	}
	if s.Loop() != 1 {
		t.Fatalf("stream on loop %d, want 1", s.Loop())
	}
	peer.Write([]byte("hello"))
	waitFor(t, "bytes from the peer", func() bool { return h.received() == "hello" })

	if n, err := s.Write([]byte("world")); n != 5 || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	if got := string(readN(t, peer, 5)); got != "world" {
		t.Fatalf("peer got %q", got)
	}

	// Fill the socket until it takes nothing more, then ask to hear when it does.
	chunk := make([]byte, 64<<10)
	filled := 0
	for {
		n, err := s.Write(chunk)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		filled += n
	}
	s.WantWrite()
	select {
	case <-h.writable:
		t.Fatal("OnWritable while the socket is full")
	case <-time.After(50 * time.Millisecond):
	}
	readN(t, peer, filled)
	select {
	case <-h.writable:
	case <-time.After(10 * time.Second):
		t.Fatal("no OnWritable after the peer drained the socket")
	}

	peer.Close()
	if err := <-h.closed; !errors.Is(err, io.EOF) {
		t.Fatalf("OnClose(%v), want EOF", err)
	}
	s.Close() // after the peer's close: no second OnClose
	if _, err := s.Write([]byte("x")); err == nil {
		waitFor(t, "writes to fail after close", func() bool { _, err := s.Write([]byte("x")); return err != nil })
	}
	select {
	case err := <-h.closed:
		t.Fatalf("second OnClose(%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
}

// Close from any goroutine ends the stream with one OnClose; Shutdown closes the rest.
func TestStreamCloseAndShutdown(t *testing.T) {
	defer goleak.VerifyNone(t)
	d := newEpollT(t, Config{Loops: 1})
	fd1, peer1 := streamPair(t)
	defer peer1.Close()
	fd2, peer2 := streamPair(t)
	defer peer2.Close()
	h1, h2 := newStreamHandler(), newStreamHandler()
	s1, err := d.AttachStream(fd1, -1, h1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.AttachStream(fd2, -1, h2); err != nil {
		t.Fatal(err)
	}
	s1.Close()
	s1.Close()
	if err := <-h1.closed; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("OnClose(%v)", err)
	}
	if _, err := peer1.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer of a closed stream read %v, want EOF", err)
	}
	d.Shutdown()
	if err := <-h2.closed; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("OnClose at shutdown: %v", err)
	}
	if len(h1.closed) != 0 {
		t.Fatal("second OnClose")
	}
}

const (
	sameLoop  = -1
	otherLoop = -2 // of two
)

// relayThrough serves one client connection on d and relays a stream's bytes to it with Exec, as
// the gateway relays a backend's answer; the stream is on loop streamLoop (or sameLoop, otherLoop).
func relayThrough(t *testing.T, d *Epoll, streamLoop int) (client net.Conn, peer net.Conn, stop func()) {
	t.Helper()
	return relayWith(t, d, streamLoop, func(c Conn, b []byte) {
		if !c.Exec(func() { c.Write(b) }) {
			t.Error("Exec refused")
		}
	})
}

func relayWith(t *testing.T, d *Epoll, streamLoop int, relay func(c Conn, b []byte)) (client net.Conn, peer net.Conn, stop func()) {
	t.Helper()
	conns := make(chan Conn, 1)
	addr, stopServe := serve(t, d, func(c Conn) Handler {
		conns <- c
		return &handler{}
	})
	client = dial(t, addr)
	c := <-conns
	fd, peer := streamPair(t)
	h := newStreamHandler()
	h.data = func(b []byte) { relay(c, b) }
	switch streamLoop {
	case sameLoop:
		streamLoop = c.Loop()
	case otherLoop:
		streamLoop = 1 - c.Loop()
	}
	if _, err := d.AttachStream(fd, streamLoop, h); err != nil {
		t.Fatal(err)
	}
	return client, peer, func() {
		client.Close()
		peer.Close()
		stopServe()
	}
}

// pattern is n bytes that differ from any shift of themselves, so reused buffers would show.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// A stream on another loop than the client hands its bytes over without copying them: they must
// stay intact until the client's loop has written them, so the stream may not read meanwhile.
func TestStreamBytesStayValidAcrossLoops(t *testing.T) {
	defer goleak.VerifyNone(t)
	d := newEpollT(t, Config{Loops: 2})
	var inFlight atomic.Int32
	slow := func(c Conn, b []byte) {
		if inFlight.Add(1) != 1 {
			t.Error("the stream read again while its last bytes were still on their way")
		}
		c.Exec(func() {
			time.Sleep(time.Millisecond) // a busy client loop: widens the window, not a wait
			c.Write(b)
			inFlight.Add(-1)
		})
	}
	client, peer, stop := relayWith(t, d, otherLoop, slow)
	defer stop()
	want := pattern(1 << 20)
	go func() {
		for b := want; len(b) > 0; b = b[min(len(b), 1000):] {
			if _, err := peer.Write(b[:min(len(b), 1000)]); err != nil {
				return
			}
		}
	}()
	if got := readN(t, client, len(want)); !bytes.Equal(got, want) {
		t.Fatal("bytes changed on their way from the stream to the client")
	}
}

// A client that does not read stops the stream that feeds it, on its own loop and on another
// one, so the peer is throttled by TCP instead of the gateway buffering without bound.
func TestStreamBackpressure(t *testing.T) {
	for _, tc := range []struct {
		name       string
		streamLoop int
	}{{"same loop", sameLoop}, {"other loop", otherLoop}} {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			const maxOutput = 64 << 10
			d := newEpollT(t, Config{Loops: 2, MaxOutput: maxOutput})
			client, peer, stop := relayThrough(t, d, tc.streamLoop)
			defer stop()
			want := pattern(16 << 20)
			var sent int
			done := make(chan struct{})
			go func() {
				defer close(done)
				peer.SetWriteDeadline(time.Now().Add(time.Second))
				sent, _ = peer.Write(want) // stops at the deadline once everything is full
			}()
			<-done
			if sent == len(want) {
				t.Fatalf("the peer wrote all %d bytes to a client that reads nothing", sent)
			}
			_, pending := d.held()
			if pending > 2*maxOutput+streamReadSize {
				t.Fatalf("%d bytes wait for the client, bound %d", pending, maxOutput)
			}
			// Once the client reads, everything written so far arrives intact.
			if got := readN(t, client, sent); !bytes.Equal(got, want[:sent]) {
				t.Fatal("bytes changed on their way")
			}
		})
	}
}
