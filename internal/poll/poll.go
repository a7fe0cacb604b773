// Package poll waits in tests for a condition that other processes make
// true: a worker registering, a row ending, a port closing.
package poll

import (
	"testing"
	"time"
)

// Until calls cond until it returns "", or fails the test with cond's last
// complaint once the deadline passes.
func Until(tb testing.TB, what string, deadline time.Duration, cond func() string) {
	tb.Helper()
	end := time.Now().Add(deadline)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(end) {
			tb.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(20 * time.Millisecond) // polling, not waiting for an effect
	}
}
