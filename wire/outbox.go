package wire

import (
	"io"
	"sync"
)

// Outbox is a bounded queue of bytes waiting to be written to one stream. Producers append under
// their own serialisation and flush outside it; only one goroutine writes at a time, and a flush
// that finds another writer busy waits only while the queue is over Max, so producers slow down to
// the stream's pace without holding a buffer while the stream is idle.
type Outbox struct {
	Max int // bytes; producers block in Flush beyond it (<=0: 1 MiB)

	mu      sync.Mutex
	cond    sync.Cond
	buf     []byte
	writing bool
	err     error
}

// Write queues a copy of b. After a failed write everything is dropped.
func (o *Outbox) Write(b []byte) {
	o.mu.Lock()
	if o.err == nil {
		if o.buf == nil {
			o.buf = getOut(len(b))
		}
		o.buf = append(o.buf, b...)
	}
	o.mu.Unlock()
}

// Buffered reports how many bytes wait.
func (o *Outbox) Buffered() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.buf)
}

// Flush writes the queue to w until it is empty, or, when another goroutine is writing, waits
// until the queue is within its bound. It returns the first write error, then and forever.
func (o *Outbox) Flush(w io.Writer) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.cond.L == nil {
		o.cond.L = &o.mu
	}
	for {
		if o.err != nil {
			return o.err
		}
		if o.writing {
			if len(o.buf) <= o.max() {
				return nil
			}
			o.cond.Wait()
			continue
		}
		if len(o.buf) == 0 {
			putOut(o.buf)
			o.buf = nil
			return nil
		}
		buf := o.buf
		o.buf = nil
		o.writing = true
		o.mu.Unlock()
		_, err := w.Write(buf)
		o.mu.Lock()
		putOut(buf)
		o.writing = false
		if err != nil {
			o.fail(err)
		}
		o.cond.Broadcast()
	}
}

// TryFlush writes what is queued with one call to write, which must not block (a non-blocking
// socket write). It reports whether the queue is now empty; if not, the caller leaves the rest
// to a Flush on a goroutine that may block. Nothing is written while another flush runs.
func (o *Outbox) TryFlush(write func([]byte) (int, error)) (empty bool, err error) {
	o.mu.Lock()
	if o.err != nil || o.writing {
		defer o.mu.Unlock()
		return false, o.err
	}
	if len(o.buf) == 0 {
		o.mu.Unlock()
		return true, nil
	}
	buf := o.buf
	o.buf = nil
	o.writing = true
	o.mu.Unlock()
	n, err := write(buf)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.writing = false
	if o.cond.L != nil {
		o.cond.Broadcast()
	}
	if err != nil {
		o.fail(err)
		return false, err
	}
	if n < len(buf) {
		// Put the rest back in front of whatever producers queued meanwhile.
		rest := append(buf[:0], buf[n:]...)
		o.buf = append(rest, o.buf...)
		return false, nil
	}
	if len(o.buf) == 0 {
		o.buf = buf[:0]
		return true, nil
	}
	putOut(buf)
	return false, nil
}

// Fail marks the stream broken: queued bytes are dropped and waiting producers released.
func (o *Outbox) Fail(err error) {
	o.mu.Lock()
	o.fail(err)
	if o.cond.L != nil {
		o.cond.Broadcast()
	}
	o.mu.Unlock()
}

func (o *Outbox) fail(err error) {
	if o.err == nil {
		o.err = err
	}
	if !o.writing {
		putOut(o.buf)
		o.buf = nil
	}
}

func (o *Outbox) max() int {
	if o.Max <= 0 {
		return 1 << 20
	}
	return o.Max
}

var outPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// getOut returns an empty buffer for a queue; idle streams hold none.
func getOut(n int) []byte {
	if n > 4096 {
		return make([]byte, 0, n)
	}
	return (*outPool.Get().(*[]byte))[:0]
}

func putOut(b []byte) {
	if b == nil || cap(b) > 64<<10 {
		return
	}
	b = b[:0]
	outPool.Put(&b)
}
