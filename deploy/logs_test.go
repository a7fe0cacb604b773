package deploy_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pampa-go/pampa/deploy"
	"github.com/pampa-go/pampa/internal/poll"
)

// lines collects what a LogReader emits, as "file|line".
type lines struct {
	mu  sync.Mutex
	got []string
}

func (l *lines) emit(file, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, file+"|"+line)
}

func (l *lines) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.got
	l.got = nil
	return out
}

func chunk(file, ino string, off int, data string) string {
	return fmt.Sprintf("chunk %s %s %d %s\n", file, ino, off, base64.StdEncoding.EncodeToString([]byte(data)))
}

func TestLogReader(t *testing.T) {
	t.Parallel()
	var got lines
	r := &deploy.LogReader{Emit: got.emit}
	out := "motd from a login script\n" + "at a 7 4\n" + chunk("a", "7", 4, "one\ntw") + "at b - 0\n" + ".\n" + chunk("b", "9", 0, "x\n") + chunk("a", "7", 10, "o\nthr")
	// Any split of the output gives the same lines.
	for i := 0; i < len(out); i += 5 {
		if _, err := r.Write([]byte(out[i:min(i+5, len(out))])); err != nil {
			t.Fatal(err)
		}
	}
	if l, want := got.take(), []string{"a|one", "b|x", "a|two"}; !slices.Equal(l, want) {
		t.Fatalf("lines %q, want %q", l, want)
	}
	// The unfinished "thr" is not shown and its bytes are not counted: a
	// resumed command sends them again.
	want := map[string]deploy.LogCursor{"a": {Inode: "7", Offset: 12}, "b": {Inode: "9", Offset: 2}}
	if c := r.Cursors(); !maps.Equal(c, want) {
		t.Fatalf("cursors %v, want %v", c, want)
	}
	r.Write([]byte("chunk a 7 18 ZQ")) // cut mid-line by a dropped link
	r.Resume()
	r.Write([]byte(chunk("a", "7", 12, "three\nfour\n")))
	if l, want := got.take(), []string{"a|three", "a|four"}; !slices.Equal(l, want) {
		t.Fatalf("after resume: lines %q, want %q", l, want)
	}
	// A truncated file starts again at 0; a rotated one (another inode)
	// too, and its unfinished line is shown as it is.
	r.Write([]byte(chunk("a", "7", 23, "five") + "at a 8 0\n" + chunk("a", "8", 0, "new\n") + "at b 9 0\n" + chunk("b", "9", 0, "x again\n")))
	if l, want := got.take(), []string{"a|five", "a|new", "b|x again"}; !slices.Equal(l, want) {
		t.Fatalf("after rotation: lines %q, want %q", l, want)
	}
	r.Write([]byte(chunk("a", "8", 4, "end") + "eof a\n"))
	if l, want := got.take(), []string{"a|end"}; !slices.Equal(l, want) {
		t.Fatalf("at eof: lines %q, want %q", l, want)
	}
	if _, err := r.Write([]byte("chunk a 8 7 !!!\n")); err == nil {
		t.Fatal("a chunk that is not base64 was accepted")
	}
}

func FuzzLogReader(f *testing.F) {
	f.Add("at a 1 0\n"+chunk("a", "1", 0, "one\ntwo"), 3)
	f.Fuzz(func(t *testing.T, data string, cut int) {
		r := &deploy.LogReader{Emit: func(file, line string) {
			if strings.Contains(line, "\n") {
				t.Fatalf("line with a newline: %q", line)
			}
		}}
		if cut < 0 || cut > len(data) {
			cut = len(data) / 2
		}
		r.Write([]byte(data[:cut]))
		r.Write([]byte(data[cut:]))
		r.Resume()
		for name, c := range r.Cursors() {
			if c.Offset < 0 {
				t.Fatalf("cursor of %s: %+v", name, c)
			}
		}
	})
}

// tailDir runs TailCommand on this host, the way a node runs it: the real
// script with sh, stat, tail, head and base64.
type tailDir struct {
	t   *testing.T
	dir string
	r   *deploy.LogReader
	got lines
}

func newTailDir(t *testing.T) *tailDir {
	d := &tailDir{t: t, dir: t.TempDir()}
	d.r = &deploy.LogReader{Emit: d.got.emit}
	return d
}

func (d *tailDir) write(name, text string) {
	d.t.Helper()
	f, err := os.OpenFile(filepath.Join(d.dir, name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		d.t.Fatal(err)
	}
}

// once reads the files from the reader's cursors, as a reconnection does.
func (d *tailDir) once(n int, files ...string) []string {
	d.t.Helper()
	d.r.Resume()
	err := deploy.Local{}.Stream(d.t.Context(), deploy.TailCommand(d.dir, files, d.r.Cursors(), n, false), nil, d.r, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	return d.got.take()
}

func TestTailScriptLastLines(t *testing.T) {
	t.Parallel()
	d := newTailDir(t)
	d.write("a.log", "1\n2\n3\n4\n")
	d.write("b.log", "x\n\ny\nunfinished")
	if got, want := d.once(2, "a.log", "b.log", "missing.log"), []string{"a.log|3", "a.log|4", "b.log|y", "b.log|unfinished"}; !slices.Equal(got, want) {
		t.Errorf("-n 2: %q, want %q", got, want)
	}
	d = newTailDir(t)
	d.write("a.log", "1\n2\n")
	if got := d.once(0, "a.log"); len(got) != 0 {
		t.Errorf("-n 0: %q", got)
	}
	// Lines longer than the script's first 64 KiB window.
	d = newTailDir(t)
	long := []string{strings.Repeat("a", 50000), strings.Repeat("b", 50000), strings.Repeat("c", 50000)}
	d.write("a.log", strings.Join(long, "\n")+"\n")
	if got, want := d.once(2, "a.log"), []string{"a.log|" + long[1], "a.log|" + long[2]}; !slices.Equal(got, want) {
		t.Errorf("-n 2 of long lines: got %d lines, want the last two", len(got))
	}
	// More than a chunk (256 KiB) to send.
	d = newTailDir(t)
	var all []string
	for i := range 20000 {
		all = append(all, fmt.Sprintf("a.log|line %05d of a log longer than one chunk", i))
		d.write("a.log", fmt.Sprintf("line %05d of a log longer than one chunk\n", i))
	}
	if got := d.once(100000, "a.log"); !slices.Equal(got, all) {
		t.Errorf("a log of %d lines: got %d lines", len(all), len(got))
	}
}

// TestTailScriptResumes reads files, then reads them again from the
// cursors after they changed, the way a follower resumes after losing its
// node: appended lines exactly once, a truncated or replaced file from its
// start, a file that appeared from its start.
func TestTailScriptResumes(t *testing.T) {
	t.Parallel()
	d := newTailDir(t)
	d.write("a.log", "old\na1\n")
	d.write("b.log", "b1\nb2 half")
	files := []string{"a.log", "b.log", "c.log"}
	if got, want := d.once(1, files...), []string{"a.log|a1", "b.log|b2 half"}; !slices.Equal(got, want) {
		t.Fatalf("first read: %q, want %q", got, want)
	}
	// eof showed "b2 half" as a line; what follows it on that line is
	// shown as a line of its own.
	d.write("a.log", "a2\n")
	d.write("b.log", " done\nb3\n")
	d.write("c.log", "c1\n")
	if got, want := d.once(1, files...), []string{"a.log|a2", "b.log| done", "b.log|b3", "c.log|c1"}; !slices.Equal(got, want) {
		t.Fatalf("resumed: %q, want %q", got, want)
	}
	if got := d.once(1, files...); len(got) != 0 {
		t.Fatalf("nothing new, but got %q", got)
	}
	// Truncated to less than was read.
	if err := os.WriteFile(filepath.Join(d.dir, "a.log"), []byte("t1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Rotated: renamed away and replaced by a longer file.
	if err := os.Rename(filepath.Join(d.dir, "b.log"), filepath.Join(d.dir, "b.log.1")); err != nil {
		t.Fatal(err)
	}
	d.write("b.log", "r1 of the new file, longer than the old one was\n")
	if got, want := d.once(1, files...), []string{"a.log|t1", "b.log|r1 of the new file, longer than the old one was"}; !slices.Equal(got, want) {
		t.Fatalf("after truncation and rotation: %q, want %q", got, want)
	}
}

// TestTailScriptFollows follows a growing file and is cancelled.
func TestTailScriptFollows(t *testing.T) {
	t.Parallel()
	d := newTailDir(t)
	d.write("a.log", "1\n")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- deploy.Local{}.Stream(ctx, deploy.TailCommand(d.dir, []string{"a.log", "b.log"}, nil, 5, true), nil, d.r, nil)
	}()
	var got []string
	want := []string{"a.log|1", "b.log|b", "a.log|2"}
	wait := func(n int) {
		t.Helper()
		poll.Until(t, "the tail to follow", 20*time.Second, func() string {
			if got = append(got, d.got.take()...); len(got) < n {
				return fmt.Sprintf("followed %q, want %q", got, want[:n])
			}
			return ""
		})
	}
	wait(1)
	d.write("b.log", "b\n")
	wait(2)
	d.write("a.log", "2\n")
	wait(3)
	cancel()
	<-done
	if !slices.Equal(got, want) {
		t.Fatalf("followed %q, want %q", got, want)
	}
}

func TestGoPlatform(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"Linux x86_64": "linux/amd64", "Linux aarch64": "linux/arm64", "Linux armv7l": "linux/arm",
		"Darwin arm64": "darwin/arm64", "Linux i686": "linux/386", "FreeBSD amd64": "freebsd/amd64",
	} {
		if os, arch := deploy.GoPlatform(in); os+"/"+arch != want {
			t.Errorf("GoPlatform(%q) = %s/%s, want %s", in, os, arch, want)
		}
	}
}
