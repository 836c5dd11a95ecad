package pool

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/asyncgate/asyncgate/wire"
)

// run sends one simple query that belongs to the pool (a reset or a health check) and calls done
// once, with nil when it ended at ReadyForQuery idle without an error.
func (p *Pool) run(c *Conn, sql string, done func(error)) {
	s := &querySink{done: done}
	c.SetSink(s)
	c.Write(wire.AppendQuery(nil, sql))
	c.Flush()
}

// querySink reads the answer to a pool-internal query.
type querySink struct {
	failed   error // reader goroutine only
	finished atomic.Bool
	once     sync.Once
	done     func(error)
}

func (s *querySink) BackendData(c *Conn, b []byte) {
	err := c.Frames.Feed(b, func(f *wire.Frame) error {
		if s.finished.Load() || !f.Whole {
			return nil
		}
		switch f.Type {
		case 'E':
			_, code, msg, _ := wire.ErrorFields(f.Body)
			s.failed = fmt.Errorf("backend %s: %s (SQLSTATE %s)", c.Addr(), msg, code)
		case 'S':
			if name, value, err := wire.ParseParameterStatus(f.Body); err == nil {
				c.Params[string(name)] = string(value)
			}
		case 'Z':
			status, err := wire.ReadyStatus(f.Body)
			if err == nil && status != 'I' && s.failed == nil {
				err = fmt.Errorf("backend %s: status %q after pool query", c.Addr(), status)
			}
			if err == nil {
				err = s.failed
			}
			s.finish(err)
		}
		return nil
	})
	if err != nil {
		s.finish(err)
		c.Close()
	}
}

func (s *querySink) BackendClosed(c *Conn, err error) {
	s.finish(fmt.Errorf("backend %s: %w", c.Addr(), err))
}

// finish may race between a failed write on the caller's goroutine and the reader's close.
func (s *querySink) finish(err error) {
	s.finished.Store(true)
	s.once.Do(func() { s.done(err) })
}
