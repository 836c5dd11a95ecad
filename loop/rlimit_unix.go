//go:build unix

package loop

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit and
// returns the limit now in force: every client holds a descriptor.
func RaiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("loop: getrlimit: %w", err)
	}
	if lim.Cur < lim.Max {
		cur := lim.Cur
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return uint64(cur), fmt.Errorf("loop: setrlimit: %w", err)
		}
	}
	return uint64(lim.Cur), nil
}
