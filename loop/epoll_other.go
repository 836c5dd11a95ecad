//go:build !linux

package loop

import "errors"

func newEpoll(Config) (Driver, error) {
	return nil, errors.New("loop: the epoll driver needs Linux")
}
