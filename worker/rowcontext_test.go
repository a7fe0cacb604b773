package worker

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A row's context behaves as context.WithDeadline of the worker's, whether
// the step asks for Done before it ends or never does.
func TestRowContext(t *testing.T) {
	t.Parallel()
	wait := func(t *testing.T, ctx context.Context, want error) {
		t.Helper()
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done never closed")
		}
		if err := ctx.Err(); !errors.Is(err, want) {
			t.Fatalf("Err = %v, want %v", err, want)
		}
	}
	t.Run("deadline, Done asked first", func(t *testing.T) {
		c := &rowContext{parent: context.Background(), deadline: time.Now().Add(20 * time.Millisecond)}
		if c.Err() != nil {
			t.Fatalf("Err before the deadline = %v", c.Err())
		}
		wait(t, c, context.DeadlineExceeded)
		c.stop()
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err after stop = %v, want it to stay DeadlineExceeded", c.Err())
		}
	})
	t.Run("deadline, Done never asked", func(t *testing.T) {
		c := &rowContext{parent: context.Background(), deadline: time.Now().Add(10 * time.Millisecond)}
		time.Sleep(20 * time.Millisecond)
		c.stop() // after the deadline: the error stays what it was
		wait(t, c, context.DeadlineExceeded)
	})
	t.Run("stop", func(t *testing.T) {
		c := &rowContext{parent: context.Background(), deadline: time.Now().Add(time.Hour)}
		child, cancel := context.WithCancel(c)
		defer cancel()
		c.stop()
		// At once, not when a goroutine watching c gets to it: the child
		// is registered in c's own cancelCtx.
		if !errors.Is(child.Err(), context.Canceled) {
			t.Fatalf("child's Err right after stop = %v, want Canceled", child.Err())
		}
		wait(t, c, context.Canceled)
		wait(t, child, context.Canceled)
	})
	t.Run("an error given stays", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		c := &rowContext{parent: parent, deadline: time.Now().Add(10 * time.Millisecond)}
		time.Sleep(20 * time.Millisecond)
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err = %v, want DeadlineExceeded", c.Err())
		}
		cancel()
		wait(t, c, context.DeadlineExceeded)
	})
	t.Run("stop before Done", func(t *testing.T) {
		c := &rowContext{parent: context.Background(), deadline: time.Now().Add(time.Hour)}
		c.stop()
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("Err = %v, want Canceled", c.Err())
		}
		wait(t, c, context.Canceled)
	})
	t.Run("parent", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.WithValue(context.Background(), t, "v"))
		c := &rowContext{parent: parent, deadline: time.Now().Add(time.Hour)}
		if c.Value(t) != "v" {
			t.Fatal("the parent's values are not seen")
		}
		if d, ok := c.Deadline(); !ok || d != c.deadline {
			t.Fatalf("Deadline = %v, %v", d, ok)
		}
		cancel()
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("Err after the parent's cancel = %v", c.Err())
		}
		wait(t, c, context.Canceled)
	})
}
