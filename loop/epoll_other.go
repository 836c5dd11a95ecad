//go:build !linux

package loop

import "errors"

func newEpoll(Config) (Driver, error) {
	return nil, errors.New("loop: the epoll driver needs Linux")
}

// OnLoop reports whether the caller runs on an event loop goroutine: there are none here.
func OnLoop() bool { return false }
