// Package backoff spaces out retries of an operation that keeps failing,
// such as reconnecting to a database that restarts.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff doubles the wait after each failure, from Min up to Max, with
// jitter so that many workers do not retry in step.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

// New returns a Backoff starting at lo and capped at hi.
func New(lo, hi time.Duration) *Backoff { return &Backoff{Min: lo, Max: hi} }

// Peek returns the next wait without taking it.
func (b *Backoff) Peek() time.Duration {
	if b.next == 0 {
		return b.Min
	}
	return b.next
}

// Wait sleeps for the next wait or until ctx ends, then doubles it.
func (b *Backoff) Wait(ctx context.Context) {
	d := b.Peek()
	b.next = min(2*d, b.Max)
	jittered := d/2 + rand.N(d/2+1)
	t := time.NewTimer(jittered)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Reset starts over after a success.
func (b *Backoff) Reset() { b.next = 0 }
