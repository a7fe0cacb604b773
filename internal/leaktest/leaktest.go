// Package leaktest runs a test binary's tests and then fails it if any
// goroutine it started is still running: whoever starts a goroutine stops it.
package leaktest

import (
	"fmt"
	"os"

	"go.uber.org/goleak"
)

// Check returns code, or 1 if code is 0 and goroutines leaked.
func Check(code int) int {
	if code != 0 {
		return code
	}
	if err := goleak.Find(); err != nil {
		fmt.Fprintln(os.Stderr, "leaked goroutines:", err)
		return 1
	}
	return code
}
