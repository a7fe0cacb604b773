package logcap

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A file written through O_APPEND by another holder is capped: copies
// shift up to Keep, the file starts again empty, and the writer goes on at
// its new end without reopening it.
func TestCapRotatesUnderAnAppendingWriter(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "worker.w1.1.log")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c := Cap{Path: path, Max: 1000, Keep: 2}
	line := strings.Repeat("x", 99) + "\n"
	for round := 1; round <= 3; round++ {
		for range 11 {
			fmt.Fprint(w, line)
		}
		if rotated, err := c.Check(); err != nil || !rotated {
			t.Fatalf("round %d: Check = %v, %v; want a rotation past 1000 bytes", round, rotated, err)
		}
		if st, _ := os.Stat(path); st.Size() != 0 {
			t.Fatalf("round %d: the log holds %d bytes after rotation", round, st.Size())
		}
	}
	fmt.Fprint(w, "after\n")
	if b, _ := os.ReadFile(path); string(b) != "after\n" {
		t.Fatalf("the writer's next line went elsewhere: the log holds %q", b)
	}
	for _, f := range []string{path + ".1", path + ".2"} {
		if st, err := os.Stat(f); err != nil || st.Size() != 1100 {
			t.Errorf("%s: %v, size %v; want a copy of 1100 bytes", f, err, st)
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Error("a third copy was kept with Keep 2")
	}
	if rotated, _ := c.Check(); rotated {
		t.Error("a small log was rotated")
	}
}
