package lines

import (
	"errors"
	"slices"
	"testing"
)

// collect returns a Writer that appends its lines to *got.
func collect(got *[]string) *Writer {
	return &Writer{Line: func(l []byte) error { *got = append(*got, string(l)); return nil }}
}

func TestWriterSplitsAcrossWrites(t *testing.T) {
	var got []string
	w := collect(&got)
	for _, chunk := range []string{"a", "b\nc\n", "", "\n", "d\ne"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", chunk, n, err)
		}
	}
	if want := []string{"ab", "c", "", "d"}; !slices.Equal(got, want) {
		t.Fatalf("lines %q, want %q", got, want)
	}
	if n := w.Buffered(); n != 1 {
		t.Fatalf("Buffered = %d, want 1 (the partial line e)", n)
	}
	if err := w.Flush(); err != nil || !slices.Equal(got, []string{"ab", "c", "", "d", "e"}) {
		t.Fatalf("after Flush: %q, %v", got, err)
	}
	// A second Flush has nothing to pass on.
	if err := w.Flush(); err != nil || len(got) != 5 || w.Buffered() != 0 {
		t.Fatalf("second Flush: %q, %v", got, err)
	}
}

func TestWriterReset(t *testing.T) {
	var got []string
	w := collect(&got)
	_, _ = w.Write([]byte("x\npart"))
	w.Reset()
	_, _ = w.Write([]byte("y\n"))
	if want := []string{"x", "y"}; !slices.Equal(got, want) {
		t.Fatalf("lines %q, want %q", got, want)
	}
}

func TestWriterMax(t *testing.T) {
	var got []string
	w := collect(&got)
	w.Max = 4
	_, _ = w.Write([]byte("ab\n1234")) // at Max: kept
	_, _ = w.Write([]byte("5"))        // past Max: passed on as it is
	_, _ = w.Write([]byte("6\n"))
	if want := []string{"ab", "12345", "6"}; !slices.Equal(got, want) {
		t.Fatalf("lines %q, want %q", got, want)
	}
}

func TestWriterLineError(t *testing.T) {
	bad := errors.New("bad line")
	var got []string
	w := &Writer{Line: func(l []byte) error {
		if string(l) == "bad" {
			return bad
		}
		got = append(got, string(l))
		return nil
	}}
	if n, err := w.Write([]byte("ok\nbad\nlost\npart")); n != 0 || !errors.Is(err, bad) {
		t.Fatalf("Write = %d, %v; want 0, %v", n, err, bad)
	}
	// What followed the bad line was dropped with it.
	_, _ = w.Write([]byte("next\n"))
	if want := []string{"ok", "next"}; !slices.Equal(got, want) {
		t.Fatalf("lines %q, want %q", got, want)
	}
}
