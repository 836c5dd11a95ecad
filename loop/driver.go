package loop

import "fmt"

// New returns the driver of the given kind: "goroutine" (portable, one goroutine per
// connection) or "epoll" (Linux, a few event loops).
func New(kind string, cfg Config) (Driver, error) {
	switch kind {
	case "goroutine":
		return NewGoroutines(cfg), nil
	case "epoll":
		return newEpoll(cfg)
	}
	return nil, fmt.Errorf("loop: unknown driver %q (want goroutine or epoll)", kind)
}
