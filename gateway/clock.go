package gateway

import "time"

// instant is a reading of the monotonic clock: nanoseconds since the package started, zero meaning
// unset. A session keeps several time stamps and every idle client holds a session; at 8 bytes
// against time.Time's 24 they save a hundred bytes per client.
type instant int64

var clockBase = time.Now()

// clockNow reads the clock; it never returns the zero instant.
func clockNow() instant { return instant(time.Since(clockBase)) | 1 }

func (t instant) IsZero() bool                { return t == 0 }
func (t instant) Sub(u instant) time.Duration { return time.Duration(t - u) }
func (t instant) Since() time.Duration        { return clockNow().Sub(t) }

// Time converts t for APIs that take a time.Time (trace spans).
func (t instant) Time() time.Time { return clockBase.Add(time.Duration(t)) }
