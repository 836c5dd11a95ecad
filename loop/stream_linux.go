//go:build linux

package loop

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// streamReadSize is the most a stream reads at once: a backend's answer to a small query fits,
// and a large result streams through it without a bigger lease per read.
const streamReadSize = 32 << 10

// AttachStream implements StreamServer. Serving a backend socket on the loop of the clients it
// answers saves, per round trip, the reader goroutine's wake-up and extra read and the hand-off
// through the loop's eventfd: the bytes are read and relayed in one loop iteration.
func (d *Epoll) AttachStream(fd int, i int, h StreamHandler) (Stream, error) {
	if i < 0 || i >= len(d.loops) {
		i = 0
		for j, l := range d.loops {
			if l.nstreams.Load() < d.loops[i].nstreams.Load() {
				i = j
			}
		}
	}
	l := d.loops[i]
	s := &estream{l: l, h: h, fd: fd, parked: true}
	l.nstreams.Add(1)
	if getg() == l.g {
		l.registerStream(s)
		return s, nil
	}
	if !l.post(func(l *eloop) { l.registerStream(s) }) {
		l.nstreams.Add(-1)
		return nil, fmt.Errorf("loop: attach stream: %w", net.ErrClosed)
	}
	return s, nil
}

// estream is an outbound socket served by a loop.
type estream struct {
	l *eloop
	h StreamHandler

	wmu     sync.Mutex // writers on any goroutine, and the loop closing fd
	fd      int        // -1 once closed
	closing atomic.Bool
	wantW   atomic.Bool

	// Owned by the loop goroutine.
	events    uint32
	parked    bool    // not in epoll
	suspended int     // reasons not to read: work on the last bytes in flight, a client over its bound
	held      *[]byte // the last read's buffer, kept while work on it is in flight
	closed    bool
}

func (l *eloop) registerStream(s *estream) {
	if l.stopping {
		l.closeStream(s, net.ErrClosed)
		return
	}
	l.streams[s.fd] = s
	l.setStreamInterest(s)
}

// streamEvent handles readiness of s.
func (l *eloop) streamEvent(s *estream, ev uint32) {
	if s.closed {
		return
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && s.events&unix.EPOLLOUT != 0 {
		s.wantW.Store(false) // before OnWritable, which may ask again
		l.setStreamInterest(s)
		s.h.OnWritable()
	}
	if ev&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP) != 0 && s.events&unix.EPOLLIN != 0 {
		l.streamReadable(s)
	}
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 && s.events&unix.EPOLLIN == 0 && !s.closed && !s.parked {
		// As for clients: a hang-up while reads are suspended would spin the loop; reading
		// reports it after resume.
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
		s.parked, s.events = true, 0
	}
}

// streamReadable reads what s has and hands it to its handler.
func (l *eloop) streamReadable(s *estream) {
	for range maxReads {
		if s.suspended > 0 || s.closing.Load() {
			return
		}
		bp := l.lease(streamReadSize)
		n, err := rawRead(s.fd, *bp)
		if n > 0 {
			l.curStream = s
			s.h.OnData((*bp)[:n])
			l.curStream = nil
			if s.suspended > 0 {
				s.held = bp // the work OnData handed on reads these bytes later
				l.setStreamInterest(s)
				return
			}
		}
		full := n == len(*bp)
		l.release(bp)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			l.closeStream(s, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)})
			return
		case n == 0:
			l.closeStream(s, io.EOF)
			return
		case !full:
			return
		}
	}
}

func (l *eloop) suspend(s *estream) { s.suspended++ }

// resume undoes one suspend; the last one frees the held bytes and reads again.
func (l *eloop) resume(s *estream) {
	s.suspended--
	if s.suspended > 0 {
		return
	}
	if s.held != nil {
		l.release(s.held)
		s.held = nil
	}
	if !s.closed {
		l.setStreamInterest(s)
	}
}

// resumeStream resumes s from any goroutine.
func resumeStream(s *estream) {
	if getg() == s.l.g {
		s.l.resume(s)
		return
	}
	s.l.post(func(l *eloop) { l.resume(s) })
}

func (l *eloop) setStreamInterest(s *estream) {
	var want uint32
	if s.suspended == 0 && !s.closing.Load() {
		want |= unix.EPOLLIN
	}
	if s.wantW.Load() {
		want |= unix.EPOLLOUT
	}
	op := unix.EPOLL_CTL_MOD
	switch {
	case s.parked && want == 0:
		return
	case s.parked:
		op = unix.EPOLL_CTL_ADD
	case want == s.events:
		return
	}
	ev := unix.EpollEvent{Events: want, Fd: int32(s.fd)}
	if err := unix.EpollCtl(l.epfd, op, s.fd, &ev); err != nil {
		l.closeStream(s, os.NewSyscallError("epoll_ctl", err))
		return
	}
	s.parked, s.events = false, want
}

// closeStream ends s: the descriptor is closed (which also takes it out of epoll), then OnClose.
func (l *eloop) closeStream(s *estream, err error) {
	if s.closed {
		return
	}
	s.closed = true
	s.closing.Store(true)
	s.wmu.Lock()
	unix.Close(s.fd)
	delete(l.streams, s.fd)
	s.fd = -1
	s.wmu.Unlock()
	l.nstreams.Add(-1)
	if s.suspended == 0 && s.held != nil {
		l.release(s.held)
		s.held = nil
	}
	s.h.OnClose(err)
}

// Write implements Stream.
func (s *estream) Write(b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.fd < 0 {
		return 0, net.ErrClosed
	}
	for {
		n, err := rawWrite(s.fd, b)
		switch err {
		case nil:
			return n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		}
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", err)}
	}
}

// WantWrite implements Stream.
func (s *estream) WantWrite() {
	if s.wantW.Swap(true) {
		return
	}
	if getg() == s.l.g {
		if !s.closed {
			s.l.setStreamInterest(s)
		}
		return
	}
	s.l.post(func(l *eloop) {
		if !s.closed {
			l.setStreamInterest(s)
		}
	})
}

// Loop implements Stream.
func (s *estream) Loop() int { return s.l.index }

// Close implements Stream. It always goes through the task queue: called from the stream's own
// OnData, closing at once would end the stream under its handler.
func (s *estream) Close() {
	if s.closing.Swap(true) {
		return
	}
	s.l.post(func(l *eloop) { l.closeStream(s, net.ErrClosed) })
}
