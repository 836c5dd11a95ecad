//go:build !unix

package main

import (
	"errors"
	"net"
	"time"
)

// listen opens the client listener; SO_REUSEPORT (--reuse-port) needs a Unix system.
func listen(addr string, reusePort bool) (net.Listener, error) {
	if reusePort {
		return nil, errors.New("--reuse-port: SO_REUSEPORT is not available on this system")
	}
	return net.Listen("tcp", addr)
}

func handOver(net.Listener, time.Duration) error { return nil }
