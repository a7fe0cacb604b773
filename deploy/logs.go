package deploy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/pampa-go/pampa/internal/lines"
)

// LogCursor is where reading a log file resumes: the file's inode and the
// byte offset just past the last complete line shown. Keeping it on the
// control host lets a follower that lost its node resume exactly there,
// so lines written while the link was down are shown and none twice.
type LogCursor struct {
	Inode  string // "-" or "" while unknown (the file did not exist yet)
	Offset int64  // -1: not started; begin with the last n lines
}

// TailCommand is the argv that prints the workers' log files (LogFile
// names, relative to workDir) from their cursors, and with follow keeps
// printing what they append, across truncation, rotation and files that
// do not exist yet. A file without a cursor starts with its last n lines.
// The output is LogReader's to read; scripts/tail.sh says what it is.
func TailCommand(workDir string, files []string, cursors map[string]LogCursor, n int, follow bool) []string {
	mode := "once"
	if follow {
		mode = "follow"
	}
	args := []string{workDir, strconv.Itoa(n), mode}
	for _, f := range files {
		c, ok := cursors[f]
		if !ok {
			c.Offset = -1
		}
		ino := c.Inode
		if ino == "" {
			ino = "-"
		}
		args = append(args, f, ino, strconv.FormatInt(c.Offset, 10))
	}
	return sh(tailScript, args...)
}

// LogReader reads TailCommand's output: Write it the command's stdout; it
// calls Emit with each complete line of each file, in order, and keeps
// every file's cursor. One LogReader follows a node across connections:
// call Resume before each new command, started from Cursors.
type LogReader struct {
	Emit func(file, line string)

	mu    sync.Mutex
	out   lines.Writer // the command's output
	files map[string]*logState
}

type logState struct {
	inode string
	sent  int64        // offset just past the bytes received
	lines lines.Writer // the file's lines; it holds what follows the last newline
}

// Cursors returns where each file seen so far resumes.
func (r *LogReader) Cursors() map[string]LogCursor {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]LogCursor, len(r.files))
	for name, s := range r.files {
		out[name] = LogCursor{Inode: s.inode, Offset: s.sent - int64(s.lines.Buffered())}
	}
	return out
}

// Resume forgets what the last command sent beyond the files' last
// complete lines: the next command, started from Cursors, sends it again.
func (r *LogReader) Resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out.Reset()
	for _, s := range r.files {
		s.sent -= int64(s.lines.Buffered())
		s.lines.Reset()
	}
}

// Write fails on a chunk it cannot decode, which ends the command: its
// cursors are intact, so the next one resends the chunk.
func (r *LogReader) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out.Line = r.line // here, so that the zero LogReader is ready to use
	return r.out.Write(p)
}

var errLogOutput = errors.New("unexpected output from the log reader on the node")

func (r *LogReader) line(l []byte) error {
	f := strings.Fields(string(l))
	switch {
	case len(f) == 4 && f[0] == "at":
		off, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil || off < 0 {
			return fmt.Errorf("%w: %q", errLogOutput, l)
		}
		r.state(f[1]).restart(f[2], off)
	case len(f) == 5 && f[0] == "chunk", len(f) == 4 && f[0] == "chunk":
		off, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil || off < 0 {
			return fmt.Errorf("%w: %q", errLogOutput, l)
		}
		var data []byte
		if len(f) == 5 {
			if data, err = base64.StdEncoding.DecodeString(f[4]); err != nil {
				return fmt.Errorf("%w: a chunk of %s: %w", errLogOutput, f[1], err)
			}
		}
		s := r.state(f[1])
		if s.inode != f[2] || s.sent != off {
			s.restart(f[2], off)
		}
		s.sent += int64(len(data))
		_, _ = s.lines.Write(data)
	case len(f) == 2 && f[0] == "eof":
		if s := r.files[f[1]]; s != nil {
			_ = s.lines.Flush()
		}
	}
	// Anything else ("." keep-alives, or what a login script printed
	// before ours ran) says nothing about the logs.
	return nil
}

func (r *LogReader) state(name string) *logState {
	s := r.files[name]
	if s == nil {
		if r.files == nil {
			r.files = map[string]*logState{}
		}
		s = &logState{inode: "-", sent: -1}
		s.lines.Line = func(l []byte) error { r.Emit(name, string(l)); return nil }
		r.files[name] = s
	}
	return s
}

// restart moves a file's cursor where the node says it now reads. A
// partial last line of the file it read before (truncated or rotated)
// will never be completed: it is shown as it is.
func (s *logState) restart(inode string, off int64) {
	if s.sent == off && (s.inode == inode || s.inode == "-") {
		s.inode = inode
		return
	}
	_ = s.lines.Flush()
	s.inode, s.sent = inode, off
}

// WorkerOfLog returns the worker id of a LogFile name, or "".
func WorkerOfLog(file string) string {
	if i := strings.LastIndexByte(file, '/'); i >= 0 {
		file = file[i+1:]
	}
	id, ok := strings.CutPrefix(file, "worker.")
	if !ok {
		return ""
	}
	id, ok = strings.CutSuffix(id, ".log")
	if !ok {
		return ""
	}
	return id
}
