//go:build linux && (amd64 || arm64)

package loop

// getg identifies the calling goroutine: the address of its runtime descriptor, stable for the
// goroutine's life and never shared by two live goroutines. Exec needs to know whether it runs
// on an event loop (waiting there for the loop itself would deadlock), and Go offers no
// goroutine identity; parsing runtime.Stack costs microseconds per call, this one instruction.
func getg() uintptr
