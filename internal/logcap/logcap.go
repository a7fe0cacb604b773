// Package logcap bounds a log file that other processes may be writing:
// past a size, it is copied to path.1 (older copies shift up to
// path.KEEP, the oldest dropped) and truncated in place. Writers that
// opened it with O_APPEND (the shell's >> that starts a worker, the
// dispatcher's own log) go on writing at its new end, so nothing needs to
// reopen it. A line written during the copy may land in neither copy.
package logcap

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// Cap is one file's bound.
type Cap struct {
	Path  string
	Max   int64 // bytes; 0 turns the cap off
	Keep  int   // rotated copies kept, at least 1
	Every time.Duration
}

// Run checks the file every c.Every until ctx ends.
func (c Cap) Run(ctx context.Context) {
	if c.Max <= 0 || c.Path == "" {
		return
	}
	t := time.NewTicker(c.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = c.Check()
		}
	}
}

// Check rotates the file if it is past Max and says whether it did.
func (c Cap) Check() (bool, error) {
	st, err := os.Stat(c.Path)
	if err != nil || st.Size() <= c.Max {
		return false, nil
	}
	keep := max(c.Keep, 1)
	for i := keep - 1; i >= 1; i-- {
		_ = os.Rename(fmt.Sprintf("%s.%d", c.Path, i), fmt.Sprintf("%s.%d", c.Path, i+1))
	}
	if err := copyFile(c.Path, c.Path+".1"); err != nil {
		return false, err
	}
	if err := os.Truncate(c.Path, 0); err != nil {
		return false, fmt.Errorf("truncate %s: %w", c.Path, err)
	}
	return true, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
