//go:build linux

package loop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loops' socket calls never block (the descriptors are non-blocking), so they are made
// without telling the scheduler. A goroutine that enters a system call the usual way leaves its
// P in the "syscall" state, and a loop making a few of those per request kept the runtime's
// monitor thread polling every 20 µs to take such Ps away: measured at 4,000 wake-ups per second
// and a quarter of the gateway's CPU per transaction.

func rawRead(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(bufPtr(b)), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(bufPtr(b)), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func rawEpollWait(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func bufPtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}
