//go:build !unix

package loop

import "errors"

// RaiseFileLimit is not supported here.
func RaiseFileLimit() (uint64, error) {
	return 0, errors.New("loop: RaiseFileLimit needs a Unix system")
}
