//go:build linux && !amd64 && !arm64

package loop

import "runtime"

// getg identifies the calling goroutine by its id, parsed from the stack header: slow (µs), but
// only architectures without getg_*.s use it.
func getg() uintptr {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	var id uintptr
	for _, b := range buf[len("goroutine "):n] {
		if b < '0' || b > '9' {
			break
		}
		id = id*10 + uintptr(b-'0')
	}
	return id
}
