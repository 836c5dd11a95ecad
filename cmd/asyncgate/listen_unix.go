//go:build unix

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listen opens the client listener; with reusePort (--reuse-port) it sets SO_REUSEPORT, so a
// second process can bind the same address while the first still runs: the kernel spreads new
// connections over both until the first closes its listener, and a restart refuses no client.
func listen(addr string, reusePort bool) (net.Listener, error) {
	lc := net.ListenConfig{}
	if reusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	return lc.Listen(context.Background(), "tcp", addr)
}

// handOver prepares a --reuse-port listener for closing without refusing anyone. Closing a
// listener resets the connections waiting in its queue, unless the kernel migrates them to
// another listener of the port (net.ipv4.tcp_migrate_req = 1, Linux 5.14 and later). Without
// that, it steers the connections that arrive from now on to the listener that joined the port
// after it (a cBPF program returning index 1 of the port's group, which is the newcomer when two
// processes share it; with no newcomer the kernel spreads as usual), then waits, up to limit,
// until the connections already queued on it have been accepted.
func handOver(ln net.Listener, limit time.Duration) error {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req"); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil // the kernel hands the queue over on close
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("steering new connections to the successor (SO_ATTACH_REUSEPORT_CBPF): %w; set net.ipv4.tcp_migrate_req = 1 so that closing hands the queue over", serr)
	}
	// Handshakes under way when the program was attached still end up here: a queue that
	// stays empty for a few round trips on the loopback has seen them all.
	deadline := time.Now().Add(limit)
	emptySince := time.Time{}
	for time.Now().Before(deadline) {
		var queued uint32
		rc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				queued = info.Unacked // for a listener: connections waiting to be accepted
			}
		})
		switch {
		case queued > 0:
			emptySince = time.Time{}
		case emptySince.IsZero():
			emptySince = time.Now()
		case time.Since(emptySince) >= 50*time.Millisecond:
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("connections still queued after %s", limit)
}
