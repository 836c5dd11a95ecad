//go:build linux

package loop

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/asyncgate/asyncgate/wire"
)

const (
	// flushAt is how much output a connection collects before it is written in the middle of an
	// iteration rather than at its end.
	flushAt = 64 << 10
	// maxReads bounds the reads for one connection per iteration, so a fast sender cannot
	// starve the others on its loop.
	maxReads = 4
)

// Epoll is the event-loop driver (Linux): a few loops, each a goroutine waiting in its own
// epoll instance, serve all connections. An idle connection costs its descriptor and a small
// struct; buffers are leased only while bytes are in flight.
//
// Handler code runs on the connection's loop goroutine. Exec from other goroutines queues the
// function for the loop and waits, as the contract requires. Exec from a loop goroutine must not
// wait (the loop would wait for itself, or two loops for each other), so it does not: for a
// connection of the same loop f runs at once, or right after the current callback if that
// callback is the connection's own; for a connection of another loop f is queued and Exec
// returns true at once. A queued f always runs before the connection's OnClose.
//
// Sockets are level-triggered: PauseReads and the output bound just drop EPOLLIN and bytes wait
// in the kernel; with edge triggering every stop before EAGAIN would need its own bookkeeping to
// avoid losing the wake-up.
type Epoll struct {
	cfg   Config
	loops []*eloop
	gd    *Goroutines // connections that moved to TLS, and listeners without a descriptor

	mu     sync.Mutex
	closed bool
	quit   chan struct{} // closed by Shutdown: ends an accept back-off

	loopWG   sync.WaitGroup
	helperWG sync.WaitGroup // goroutines forwarding work to moved connections
}

// loopsByG maps each running loop's goroutine to its loop, for Exec to tell where it is called.
var loopsByG sync.Map

// OnLoop reports whether the caller runs on an event loop goroutine, where Exec never waits:
// code that may be called from anywhere uses it to decide whether handing work to a connection
// could block it.
func OnLoop() bool {
	_, ok := loopsByG.Load(getg())
	return ok
}

// NewEpoll starts cfg.Loops event loops.
func NewEpoll(cfg Config) (*Epoll, error) {
	cfg = cfg.withDefaults()
	n := cfg.Loops
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	d := &Epoll{cfg: cfg, gd: NewGoroutines(cfg), quit: make(chan struct{})}
	for i := range n {
		l, err := newLoop(d, i)
		if err != nil {
			for _, l := range d.loops {
				l.closeFDs()
			}
			return nil, err
		}
		d.loops = append(d.loops, l)
	}
	ready := make(chan struct{})
	for _, l := range d.loops {
		d.loopWG.Add(1)
		go l.run(ready)
		<-ready
	}
	d.loopWG.Add(1)
	go func() {
		defer d.loopWG.Done()
		newTrimmer(d.connections).run(d.quit)
	}()
	return d, nil
}

// connections counts the connections of every loop.
func (d *Epoll) connections() int {
	n := 0
	for _, l := range d.loops {
		n += int(l.count.Load())
	}
	return n
}

func newEpoll(cfg Config) (Driver, error) {
	d, err := NewEpoll(cfg)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Serve implements Driver. While the backlog has connections it takes them with accept4 on the
// listener's descriptor (inside RawConn.Control), so they never enter the runtime's poller and no
// *net.TCPConn is made for them. Only when the backlog is empty does it park in ln.Accept, which
// lets the runtime wait for readiness and handle ln.Close and deadlines; the one connection that
// wakes it is detached from its *net.TCPConn by dup. Listeners other than TCP and Unix ones are
// served by the goroutine driver.
func (d *Epoll) Serve(ln net.Listener, accept func(Conn) Handler) error {
	var rc syscall.RawConn
	var err error
	switch l := ln.(type) {
	case *net.TCPListener:
		rc, err = l.SyscallConn()
	case *net.UnixListener:
		rc, err = l.SyscallConn()
	default:
		return d.gd.Serve(ln, accept)
	}
	if err != nil {
		return fmt.Errorf("loop: listener: %w", err)
	}
	_, tcp := ln.Addr().(*net.TCPAddr)
	var delay time.Duration
	backoff := func() bool {
		// Out of descriptors (or memory): clients wait in the backlog while existing ones are
		// served, and a connection that ends makes room.
		delay = min(max(2*delay, 5*time.Millisecond), time.Second)
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-d.quit:
			return false
		}
	}
	for {
		var nfd int
		var sa unix.Sockaddr
		var aerr error
		if err := rc.Control(func(fd uintptr) {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		}); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("loop: accept: %w", err)
		}
		var addr netip.AddrPort
		switch aerr {
		case nil:
			addr = sockaddrToAddrPort(sa)
		case unix.EAGAIN:
			nc, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return nil
				}
				if isTemporaryAccept(err) {
					if !backoff() {
						return nil
					}
					continue
				}
				return fmt.Errorf("loop: accept: %w", err)
			}
			if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
				addr = a.AddrPort()
			}
			if nfd, err = detach(nc); err != nil {
				// No descriptor for the duplicate (at the limit): rather than drop the client,
				// serve it as it is.
				if !d.gd.serveConn(nc, accept) {
					return nil
				}
				continue
			}
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			if !backoff() {
				return nil
			}
			continue
		default:
			return fmt.Errorf("loop: accept: %w", os.NewSyscallError("accept4", aerr))
		}
		delay = 0
		if tcp {
			setTCPOptions(nfd)
		}
		if !d.dispatch(nfd, addr, accept) {
			unix.Close(nfd)
			return nil
		}
	}
}

func isTemporaryAccept(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, unix.EMFILE) ||
		errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM)
}

// detach takes the socket out of nc: a non-blocking duplicate, with nc closed (which also
// removes it from the runtime's poller). On error nc is left open.
func detach(nc net.Conn) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("loop: %T has no descriptor", nc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	nc.Close()
	return nfd, nil
}

// setTCPOptions gives accepted sockets what net.Listen's would have: no Nagle delay, and the
// default keep-alive (15 s idle and interval).
func setTCPOptions(fd int) {
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15)
}

// sockaddrToAddrPort keeps a TCP peer's address inline in its connection: a net.Addr would cost
// every idle client two more allocations (the TCPAddr and its IP). Unix-domain peers, which have
// no address worth showing, get the zero AddrPort.
func sockaddrToAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		ip := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				ip = ip.WithZone(ifi.Name)
			}
		}
		return netip.AddrPortFrom(ip, uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// fdTable finds a loop's connections by descriptor. Descriptors are small and dense, so a slice
// indexed by them costs an idle client 8 bytes (per loop) where a map cost about 30, and finding the
// connection of an event is an index rather than a hash.
type fdTable struct{ s []*econn }

func (t *fdTable) get(fd int) *econn {
	if uint(fd) < uint(len(t.s)) {
		return t.s[fd]
	}
	return nil
}

func (t *fdTable) put(fd int, c *econn) {
	if fd >= len(t.s) {
		if c == nil {
			return
		}
		t.s = append(t.s, make([]*econn, max(fd+1, 2*len(t.s), 64)-len(t.s))...)
	}
	t.s[fd] = c
}

// dispatch hands an accepted socket to the loop with the fewest connections.
func (d *Epoll) dispatch(fd int, addr netip.AddrPort, accept func(Conn) Handler) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	best := d.loops[0]
	for _, l := range d.loops[1:] {
		if l.count.Load() < best.count.Load() {
			best = l
		}
	}
	best.count.Add(1)
	if !best.post(func(l *eloop) { l.register(fd, addr, accept) }) {
		best.count.Add(-1)
		return false
	}
	return true
}

// Shutdown implements Driver.
func (d *Epoll) Shutdown() {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		close(d.quit)
	}
	d.mu.Unlock()
	for _, l := range d.loops {
		l.post(func(l *eloop) { l.stopping = true })
	}
	d.loopWG.Wait()
	d.gd.Shutdown()
	d.helperWG.Wait()
}

// held reports the buffers leased and the output bytes waiting across all loops (for tests).
func (d *Epoll) held() (buffers, pending int) {
	for _, l := range d.loops {
		l.do(func(l *eloop) {
			buffers += l.leased
			for _, c := range l.conns.s {
				if c != nil {
					pending += c.pending()
				}
			}
		})
	}
	return buffers, pending
}

// helper runs f on a goroutine that Shutdown waits for.
func (d *Epoll) helper(f func()) {
	d.helperWG.Add(1)
	go func() {
		defer d.helperWG.Done()
		f()
	}()
}

// task is work for a loop: a function serialised with a connection's callbacks (c, f), or the
// driver's own (fn).
type task struct {
	c      *econn
	f      func()
	fn     func(*eloop)
	async  bool      // nobody waits: recycled by the loop
	wait   chan bool // the result for the waiting Exec
	stream *estream  // suspended until f has run and c's output is within its bound
}

var taskPool = sync.Pool{New: func() any { return &task{wait: make(chan bool, 1)} }}

func newTask(c *econn, f func(), fn func(*eloop), async bool) *task {
	t := taskPool.Get().(*task)
	t.c, t.f, t.fn, t.async = c, f, fn, async
	return t
}

func (t *task) free() {
	t.c, t.f, t.fn, t.stream = nil, nil, nil, nil
	taskPool.Put(t)
}

// finish reports to the waiting Exec (which recycles t) or recycles an unwaited task, and lets
// the stream that handed t over read again.
func (t *task) finish(ok bool) {
	if s := t.stream; s != nil {
		t.stream = nil
		resumeStream(s)
	}
	if t.async {
		t.free()
		return
	}
	t.wait <- ok
}

type eloop struct {
	drv   *Epoll
	index int
	epfd  int
	efd   int     // eventfd that wakes the loop for queued tasks
	g     uintptr // the loop goroutine (getg)

	// The epoll descriptor is itself pollable: registered with the runtime's poller (as an
	// os.File), it lets the loop goroutine park like any goroutine waiting for a socket, and
	// epoll_wait is only called with a zero timeout. Blocking in epoll_wait instead holds a thread
	// outside the scheduler, and every wake-up becomes a thread handoff: a 64-byte ping-pong
	// took 2.7 times as long that way.
	epf      *os.File
	epc      syscall.RawConn
	deadline time.Time          // of epf, for the next timer
	pollFn   func(uintptr) bool // l.poll
	nready   int
	werr     error

	count    atomic.Int32 // connections, for placement
	nstreams atomic.Int32 // streams, for placement

	mu    sync.Mutex
	tasks []*task
	dead  bool // the loop has ended: nothing more is queued
	woken atomic.Bool

	// Owned by the loop goroutine.
	conns     fdTable
	streams   map[int]*estream
	curStream *estream // the stream whose OnData runs
	events    []unix.EpollEvent
	spare     []*task
	local     []*task  // Exec on a connection from inside its own callback
	ran       []*task  // Exec tasks done this iteration, answered after the flush
	touched   []*econn // connections to flush and settle at the end of the iteration
	due       []*timer // scratch for expiring timers
	wheel     wheel
	leased    int // buffers taken from the wire pool and not yet returned
	stopping  bool
}

func newLoop(d *Epoll, index int) (*eloop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("loop: epoll_create1: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("loop: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(efd)
		return nil, fmt.Errorf("loop: epoll_ctl eventfd: %w", err)
	}
	// Non-blocking, so that os.NewFile registers it with the runtime's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(efd)
		return nil, fmt.Errorf("loop: epoll fd: %w", err)
	}
	l := &eloop{drv: d, index: index, epfd: epfd, efd: efd,
		streams: make(map[int]*estream), events: make([]unix.EpollEvent, 256)}
	l.epf = os.NewFile(uintptr(epfd), "epoll")
	rc, err := l.epf.SyscallConn()
	if err == nil {
		// Deadlines work only for a file the runtime polls: check it is one.
		err = l.epf.SetReadDeadline(time.Time{})
	}
	if err != nil {
		l.closeFDs()
		return nil, fmt.Errorf("loop: polling the epoll fd: %w", err)
	}
	l.epc = rc
	l.pollFn = l.poll
	l.wheel.start = time.Now()
	return l, nil
}

func (l *eloop) closeFDs() {
	l.epf.Close()
	unix.Close(l.efd)
}

// wait returns the next batch of events, parking the goroutine while there are none, until the
// next timer is due.
func (l *eloop) wait() []unix.EpollEvent {
	if next := l.wheel.next(); next != l.deadline {
		l.epf.SetReadDeadline(next)
		l.deadline = next
	}
	l.nready, l.werr = 0, nil
	err := l.epc.Read(l.pollFn)
	switch {
	case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		// Not expected while the loop runs; end it rather than spin.
		l.stopping = true
		return nil
	case err != nil || l.werr != nil || l.nready <= 0:
		return nil
	}
	return l.events[:l.nready]
}

// poll is wait's RawConn.Read callback (a method value made once, not a closure per wait): false
// parks until the epoll descriptor is readable.
func (l *eloop) poll(fd uintptr) bool {
	for {
		l.nready, l.werr = rawEpollWait(int(fd), l.events)
		if l.werr != unix.EINTR {
			return l.nready != 0 || l.werr != nil
		}
	}
}

// enqueue queues t unless the loop has ended; c, when set, must still be open.
func (l *eloop) enqueue(t *task) (ok, moved bool) {
	l.mu.Lock()
	if t.c != nil && t.c.moved {
		l.mu.Unlock()
		return false, true
	}
	if l.dead || t.c != nil && t.c.closed {
		l.mu.Unlock()
		return false, false
	}
	l.tasks = append(l.tasks, t)
	l.mu.Unlock()
	if !l.woken.Swap(true) {
		var b [8]byte
		binary.NativeEndian.PutUint64(b[:], 1)
		rawWrite(l.efd, b[:])
	}
	return true, false
}

// post queues fn for the loop without waiting.
func (l *eloop) post(fn func(*eloop)) bool {
	t := newTask(nil, nil, fn, true)
	if ok, _ := l.enqueue(t); !ok {
		t.free()
		return false
	}
	return true
}

// do runs fn on the loop and waits for it; not for use on a loop goroutine.
func (l *eloop) do(fn func(*eloop)) bool {
	t := newTask(nil, nil, fn, false)
	if ok, _ := l.enqueue(t); !ok {
		t.free()
		return false
	}
	ok := <-t.wait
	t.free()
	return ok
}

func (l *eloop) lease(n int) *[]byte {
	l.leased++
	return wire.GetBuffer(n)
}

func (l *eloop) release(b *[]byte) {
	l.leased--
	wire.PutBuffer(b)
}

func (l *eloop) run(ready chan<- struct{}) {
	defer l.drv.loopWG.Done()
	l.g = getg()
	loopsByG.Store(l.g, l)
	defer loopsByG.Delete(l.g)
	ready <- struct{}{}
	for !l.stopping {
		for _, ev := range l.wait() {
			if int(ev.Fd) == l.efd {
				var b [8]byte
				rawRead(l.efd, b[:])
				l.woken.Store(false)
				continue
			}
			if c := l.conns.get(int(ev.Fd)); c != nil {
				l.event(c, ev.Events)
			} else if s := l.streams[int(ev.Fd)]; s != nil {
				l.streamEvent(s, ev.Events)
			}
		}
		l.runTasks()
		l.expireTimers()
		l.settle()
	}
	l.shutdown()
}

// shutdown closes every connection and answers what is still queued.
func (l *eloop) shutdown() {
	for _, c := range l.conns.s {
		if c != nil {
			l.closeConn(c, net.ErrClosed)
		}
	}
	for _, s := range l.streams {
		l.closeStream(s, net.ErrClosed)
	}
	l.mu.Lock()
	l.dead = true
	rest := l.tasks
	l.tasks = nil
	l.mu.Unlock()
	for _, t := range rest {
		if t.fn != nil {
			t.fn(l) // register closes the socket once stopping
			t.finish(true)
			continue
		}
		t.finish(false) // every connection is closed, so none of these was accepted
	}
	l.settle()
	l.closeFDs()
}

func (l *eloop) runTasks() {
	l.mu.Lock()
	batch := l.tasks
	l.tasks = l.spare[:0]
	l.mu.Unlock()
	for i, t := range batch {
		batch[i] = nil
		if t.fn != nil {
			t.fn(l)
			t.finish(true)
			continue
		}
		l.runTask(t)
	}
	l.spare = batch[:0]
}

func (l *eloop) runTask(t *task) {
	c := t.c
	if g := c.g.Load(); g != nil {
		// Queued on itself from the Flush just before a TLS handover: its callbacks run on
		// g's goroutine now.
		l.drv.helper(func() { t.finish(g.Exec(t.f)) })
		return
	}
	if c.closed {
		// Not expected: closeConn runs what was queued before the connection closed, and
		// nothing is queued after.
		t.finish(false)
		return
	}
	l.call(c, t.f)
	if t.async && t.stream == nil {
		t.free()
		return
	}
	l.ran = append(l.ran, t)
}

// call runs handler code for c on the loop goroutine.
func (l *eloop) call(c *econn, f func()) {
	c.inCall = true
	f()
	c.inCall = false
	c.ran = true
	l.touch(c)
}

func (l *eloop) touch(c *econn) {
	if !c.touched {
		c.touched = true
		l.touched = append(l.touched, c)
	}
}

func (l *eloop) expireTimers() {
	if l.wheel.n == 0 {
		return
	}
	l.due = l.wheel.expire(time.Now(), l.due[:0])
	for i, t := range l.due {
		l.due[i] = nil
		l.fire(t)
	}
}

func (l *eloop) fire(t *timer) {
	if !t.state.CompareAndSwap(timerPending, timerFired) {
		return
	}
	c := t.c
	switch {
	case c == nil:
		t.f()
	case c.g.Load() != nil:
		g := c.g.Load()
		l.drv.helper(func() { g.Exec(t.f) })
	case !c.closed:
		l.call(c, t.f)
	}
}

// settle ends an iteration: each connection touched gets its output written in one go, its
// handler's Flush, and what it asked for (close, TLS) or what happened to it (errors).
func (l *eloop) settle() {
	for len(l.local) > 0 || len(l.touched) > 0 {
		for i := 0; i < len(l.local); i++ { // a task may queue more
			t := l.local[i]
			l.local[i] = nil
			l.runTask(t)
		}
		l.local = l.local[:0]
		for i := 0; i < len(l.touched); i++ { // Flush may Exec and touch more
			c := l.touched[i]
			c.touched = false
			if c.closed || c.g.Load() != nil {
				continue
			}
			if c.dead == nil && !c.lingering {
				l.send(c)
			}
			if c.ran {
				c.ran = false
				if c.dead == nil {
					c.inCall = true
					c.h.Flush()
					c.inCall = false
				}
			}
			l.advance(c)
		}
		clear(l.touched)
		l.touched = l.touched[:0]
	}
	for i, t := range l.ran {
		l.ran[i] = nil
		c := t.c
		if !c.closed && c.g.Load() == nil && c.pending() > l.drv.cfg.MaxOutput {
			c.drainers = append(c.drainers, t) // backpressure: answered once the client reads
			continue
		}
		t.finish(true)
	}
	l.ran = l.ran[:0]
}

// advance carries out a connection's pending state change once its output allows.
func (l *eloop) advance(c *econn) {
	switch {
	case c.dead != nil:
		l.closeConn(c, c.dead)
		return
	case c.lingering:
	case c.closing && c.pending() == 0:
		l.linger(c)
	case c.tlsCfg != nil && c.pending() == 0:
		l.handover(c)
		return
	}
	l.setInterest(c)
}

func (l *eloop) setInterest(c *econn) {
	want := c.wantEvents(l.drv.cfg.MaxOutput)
	if c.parked {
		if want == 0 {
			return
		}
		ev := unix.EpollEvent{Events: want, Fd: int32(c.fd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
			l.fail(c, "epoll_ctl", err)
			return
		}
		c.parked = false
		c.events = want
		return
	}
	if want == c.events {
		return
	}
	ev := unix.EpollEvent{Events: want, Fd: int32(c.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev); err != nil {
		l.fail(c, "epoll_ctl", err)
		return
	}
	c.events = want
}

// fail records a fatal error for c; settle closes it.
func (l *eloop) fail(c *econn, op string, err error) {
	if c.dead == nil {
		c.dead = &net.OpError{Op: op, Net: "tcp", Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, err)}
	}
	l.touch(c)
}

func (l *eloop) register(fd int, addr netip.AddrPort, accept func(Conn) Handler) {
	if l.stopping {
		unix.Close(fd)
		l.count.Add(-1)
		return
	}
	c := &econn{l: l, fd: fd, addr: addr}
	l.conns.put(fd, c)
	c.inCall = true
	c.h = accept(c)
	c.inCall = false
	c.events = c.wantEvents(l.drv.cfg.MaxOutput)
	ev := unix.EpollEvent{Events: c.events, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		c.parked = true // not registered
		l.fail(c, "epoll_ctl", err)
	}
}

// event handles readiness of c.
func (l *eloop) event(c *econn, ev uint32) {
	if c.closed {
		return
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		if c.pending() > 0 {
			l.send(c)
		}
		l.touch(c) // settle updates the interest and what waited for the output
	}
	if ev&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP) != 0 && c.events&unix.EPOLLIN != 0 {
		l.readable(c)
	}
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 && c.events == 0 && c.dead == nil {
		// Hang-ups are reported whatever the interest, and level-triggered they would spin the
		// loop while reads are paused: leave epoll until ResumeReads, when reading tells the
		// handler what happened after the bytes it has yet to see.
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
		c.parked = true
	}
}

// readable reads what c has into leased buffers and hands it to the handler.
func (l *eloop) readable(c *econn) {
	for range maxReads {
		if !c.lingering && !c.wantsInput(l.drv.cfg.MaxOutput) {
			return
		}
		bp := l.lease(readSize)
		n, err := rawRead(c.fd, *bp)
		if err == nil && n > 0 && !c.lingering {
			c.inCall = true
			c.h.OnData((*bp)[:n])
			c.inCall = false
			c.ran = true
			l.touch(c)
		}
		full := n == len(*bp)
		l.release(bp)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			l.fail(c, "read", err)
			return
		case n == 0:
			if c.lingering {
				c.dead = errClosing
			} else {
				c.dead = io.EOF
			}
			l.touch(c)
			return
		case !full:
			return // most likely drained; level triggering reports the rest
		}
	}
}

// send writes c's output as far as the socket takes it; the rest waits for EPOLLOUT.
func (l *eloop) send(c *econn) {
	for c.pending() > 0 {
		n, err := rawWrite(c.fd, (*c.out)[c.outOff:c.outLen])
		if n > 0 {
			c.outOff += n
		}
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			l.dropOutput(c)
			l.fail(c, "write", err)
			return
		}
	}
	if c.pending() == 0 {
		l.dropOutput(c)
	}
	if (len(c.drainers) > 0 || len(c.blocked) > 0) && c.pending() <= l.drv.cfg.MaxOutput {
		l.releaseDrainers(c)
	}
}

func (l *eloop) dropOutput(c *econn) {
	if c.out != nil {
		l.release(c.out)
		c.out, c.outOff, c.outLen = nil, 0, 0
	}
}

func (l *eloop) releaseDrainers(c *econn) {
	for i, t := range c.drainers {
		c.drainers[i] = nil
		t.finish(true)
	}
	c.drainers = nil
	for _, s := range c.blocked {
		l.resume(s)
	}
	c.blocked = nil
}

// appendOutput queues b for c in a leased buffer, growing it by size class.
func (l *eloop) appendOutput(c *econn, b []byte) {
	if c.out == nil {
		c.out = l.lease(len(b))
	}
	if c.outLen+len(b) > len(*c.out) {
		live := c.outLen - c.outOff
		if live+len(b) <= len(*c.out) {
			copy(*c.out, (*c.out)[c.outOff:c.outLen])
		} else {
			nb := l.lease(live + len(b))
			copy(*nb, (*c.out)[c.outOff:c.outLen])
			l.release(c.out)
			c.out = nb
		}
		c.outOff, c.outLen = 0, live
	}
	c.outLen += copy((*c.out)[c.outLen:], b)
}

// linger half-closes c and drains its input for up to lingerTime (see gconn.linger) without
// blocking the loop: reads discard, EOF or the timer close.
func (l *eloop) linger(c *econn) {
	c.lingering = true
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil {
		c.dead = errClosing
		l.touch(c)
		return
	}
	t := &timer{l: l, f: func() {
		if c.dead == nil {
			c.dead = errClosing
		}
		l.touch(c)
	}}
	c.lingerTimer = t
	l.wheel.add(t, time.Now().Add(lingerTime))
}

// closeConn ends c: what was queued for it runs first, then OnClose.
func (l *eloop) closeConn(c *econn, err error) {
	if c.closed {
		return
	}
	l.mu.Lock()
	c.closed = true
	queued := extract(&l.tasks, c)
	l.mu.Unlock()
	queued = append(extract(&l.local, c), queued...)
	for _, t := range queued {
		l.call(c, t.f)
		t.finish(true)
	}
	if c.lingerTimer != nil {
		c.lingerTimer.stop()
	}
	if c.fd >= 0 {
		unix.Close(c.fd) // also leaves epoll: the descriptor was never duplicated
		l.conns.put(c.fd, nil)
		l.count.Add(-1)
		c.fd = -1
	}
	l.dropOutput(c)
	c.inCall = true
	c.h.OnClose(err)
	c.inCall = false
	l.releaseDrainers(c)
}

// extract removes c's tasks from *q.
func extract(q *[]*task, c *econn) []*task {
	var out []*task
	kept := (*q)[:0]
	for _, t := range *q {
		if t.c == c {
			out = append(out, t)
		} else {
			kept = append(kept, t)
		}
	}
	clear((*q)[len(kept):])
	*q = kept
	return out
}

// handover moves c to the goroutine driver, which runs the TLS handshake and serves it from then
// on with the same Handler: crypto/tls needs a net.Conn, and TLS clients are few enough that a
// goroutine each is fine. The socket is duplicated into a net.Conn with net.FileConn; keeping
// the *net.TCPConn of every connection instead would cost idle plaintext clients memory and a
// runtime poller registration for a rare event.
func (l *eloop) handover(c *econn) {
	cfg := c.tlsCfg
	c.tlsCfg = nil
	if !c.parked {
		// Explicitly: the duplicate keeps the socket open, so closing our descriptor would leave
		// it registered here.
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
		c.parked = true
	}
	f := os.NewFile(uintptr(c.fd), "client")
	nc, err := net.FileConn(f)
	f.Close()
	l.conns.put(c.fd, nil)
	l.count.Add(-1)
	c.fd = -1
	if err != nil {
		l.closeConn(c, fmt.Errorf("loop: handing over for TLS: %w", err))
		return
	}
	g := l.drv.gd.adopt(nc, c.h, cfg, c.paused)
	c.g.Store(g) // before start: from then on the handler may call c from g's goroutine
	if !l.drv.gd.start(g) {
		nc.Close()
		l.closeConn(c, net.ErrClosed)
		return
	}
	l.mu.Lock()
	c.moved = true
	queued := extract(&l.tasks, c)
	l.mu.Unlock()
	if len(queued) > 0 {
		l.drv.helper(func() {
			for _, t := range queued {
				t.finish(g.Exec(t.f))
			}
		})
	}
}

// econn is one client of an epoll loop.
type econn struct {
	l    *eloop
	fd   int
	h    Handler
	addr netip.AddrPort // zero for a Unix-domain peer

	// g is set once the connection has moved to the goroutine driver (TLS); every method then
	// forwards to it.
	g atomic.Pointer[gconn]

	// Written by the loop under l.mu, read by Exec under it (and by the loop freely).
	closed bool
	moved  bool

	// Owned by the loop goroutine.
	events      uint32 // epoll interest
	parked      bool   // not in epoll (hang-up while paused; handed over)
	inCall      bool   // handler code for c is running
	ran         bool   // handler code ran this iteration: Flush is due
	touched     bool
	paused      bool
	closing     bool
	lingering   bool
	lingerTimer *timer
	tlsCfg      *tls.Config
	dead        error // fatal condition, acted on in settle
	out         *[]byte
	outOff      int
	outLen      int
	drainers    []*task    // Exec calls waiting for the output to fall within MaxOutput
	blocked     []*estream // streams of this loop suspended until then
}

func (c *econn) pending() int { return c.outLen - c.outOff }

// wantsInput reports whether OnData may be called.
func (c *econn) wantsInput(maxOutput int) bool {
	// Output over the bound stops reads as the goroutine driver's blocking write does: a client
	// that sends without reading cannot make us buffer without bound.
	return !c.paused && !c.closing && c.tlsCfg == nil && c.dead == nil && c.pending() <= maxOutput
}

func (c *econn) wantEvents(maxOutput int) uint32 {
	var ev uint32
	if c.lingering || c.wantsInput(maxOutput) {
		ev |= unix.EPOLLIN
	}
	if c.pending() > 0 && !c.lingering {
		ev |= unix.EPOLLOUT
	}
	return ev
}

func (c *econn) Write(b []byte) {
	if g := c.g.Load(); g != nil {
		g.Write(b)
		return
	}
	if c.closed || c.dead != nil || c.lingering || len(b) == 0 {
		return
	}
	l := c.l
	l.appendOutput(c, b)
	l.touch(c)
	if c.pending() >= flushAt {
		l.send(c)
	}
}

func (c *econn) Exec(f func()) bool {
	if g := c.g.Load(); g != nil {
		return execMoved(g, f)
	}
	l := c.l
	me := getg()
	if me == l.g {
		if c.closed {
			return false
		}
		if c.inCall {
			// From c's own callback: run right after it (it may not nest).
			t := newTask(c, f, nil, true)
			if s := l.curStream; s != nil {
				l.suspend(s)
				t.stream = s
			}
			l.local = append(l.local, t)
			return true
		}
		l.call(c, f)
		if s := l.curStream; s != nil && c.pending() > l.drv.cfg.MaxOutput {
			l.suspend(s)
			c.blocked = append(c.blocked, s)
		}
		return true
	}
	v, onLoop := loopsByG.Load(me)
	t := newTask(c, f, nil, onLoop)
	if onLoop {
		// From a stream of another loop: its bytes stay put until f has run there.
		if from := v.(*eloop); from.curStream != nil {
			from.suspend(from.curStream)
			t.stream = from.curStream
		}
	}
	ok, moved := l.enqueue(t)
	if !ok {
		if s := t.stream; s != nil {
			t.stream = nil
			resumeStream(s)
		}
		t.free()
		if moved {
			return execMoved(c.g.Load(), f)
		}
		return false
	}
	if onLoop {
		return true // another loop: waiting could deadlock two loops Exec'ing into each other
	}
	ok = <-t.wait
	t.free()
	return ok
}

// execMoved runs f on a connection that moved to the goroutine driver. A loop goroutine must not
// wait for a slow client: f runs at once, and its output is sent from a helper goroutine; a
// stream whose OnData called is suspended until it is out.
func execMoved(g *gconn, f func()) bool {
	v, onLoop := loopsByG.Load(getg())
	if !onLoop {
		return g.Exec(f)
	}
	if !g.call(f) {
		return false
	}
	l := v.(*eloop)
	s := l.curStream
	if s != nil {
		l.suspend(s)
	}
	l.drv.helper(func() {
		g.afterCall()
		if s != nil {
			resumeStream(s)
		}
	})
	return true
}

// Loop implements Conn.
func (c *econn) Loop() int {
	if c.g.Load() != nil {
		return -1
	}
	return c.l.index
}

func (c *econn) AfterFunc(d time.Duration, f func()) func() bool {
	if g := c.g.Load(); g != nil {
		return g.AfterFunc(d, f)
	}
	l := c.l
	t := &timer{l: l, c: c, f: f}
	due := time.Now().Add(d)
	if getg() == l.g {
		l.wheel.add(t, due)
	} else {
		l.post(func(l *eloop) {
			if t.state.Load() == timerPending {
				l.wheel.add(t, due)
			}
		})
	}
	return t.stop
}

func (c *econn) StartTLS(cfg *tls.Config) {
	if g := c.g.Load(); g != nil {
		g.StartTLS(cfg)
		return
	}
	c.tlsCfg = cfg
	c.l.touch(c)
}

func (c *econn) TLS() bool {
	if g := c.g.Load(); g != nil {
		return g.TLS()
	}
	return false
}

func (c *econn) PauseReads() {
	if g := c.g.Load(); g != nil {
		g.PauseReads()
		return
	}
	c.paused = true
	c.l.touch(c)
}

func (c *econn) ResumeReads() {
	if g := c.g.Load(); g != nil {
		g.ResumeReads()
		return
	}
	c.paused = false
	c.l.touch(c)
}

func (c *econn) Close() {
	if g := c.g.Load(); g != nil {
		g.Close()
		return
	}
	c.closing = true
	c.l.touch(c)
}

func (c *econn) RemoteAddr() net.Addr {
	if !c.addr.IsValid() {
		return &net.UnixAddr{Net: "unix"}
	}
	return net.TCPAddrFromAddrPort(c.addr)
}
