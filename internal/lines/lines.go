// Package lines cuts a byte stream into lines: a command's output arrives
// in chunks that end anywhere, and its readers want whole lines.
package lines

import (
	"bytes"
	"sync"
)

// Writer calls Line with each complete line written to it and keeps a
// partial last line for the next Write, or for Flush. It is safe for
// concurrent use (an output copier writes while its caller flushes); Line
// runs under its lock, so Line must not call the Writer.
type Writer struct {
	// Line gets each line without its newline; the slice is only valid
	// during the call. An error ends Write, which returns it and drops
	// what it holds.
	Line func(line []byte) error
	// Max, if positive, bounds the partial line kept between writes: past
	// it, the partial line goes to Line as it is, so a runaway line
	// without newline is not held whole.
	Max int

	mu  sync.Mutex
	buf []byte
}

func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	rest := w.buf
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		if err := w.Line(rest[:i]); err != nil {
			w.buf = nil
			return 0, err
		}
		rest = rest[i+1:]
	}
	if w.Max > 0 && len(rest) > w.Max {
		err := w.Line(rest)
		rest = nil
		if err != nil {
			w.buf = nil
			return 0, err
		}
	}
	if len(rest) == 0 {
		w.buf = nil // a stream of whole lines holds no memory between writes
	} else {
		w.buf = append(w.buf[:0], rest...)
	}
	return len(p), nil
}

// Flush passes a partial last line, if any, to Line.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) == 0 {
		return nil
	}
	line := w.buf
	w.buf = nil
	return w.Line(line)
}

// Buffered returns the length of the partial line held.
func (w *Writer) Buffered() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.buf)
}

// Reset drops the partial line held.
func (w *Writer) Reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = nil
}
