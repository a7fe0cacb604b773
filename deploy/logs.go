package deploy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
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
	buf   []byte // an incomplete line of the command's output
	files map[string]*logState
}

type logState struct {
	inode   string
	sent    int64  // offset just past the bytes received
	partial []byte // received bytes after the file's last newline
}

// Cursors returns where each file seen so far resumes.
func (r *LogReader) Cursors() map[string]LogCursor {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]LogCursor, len(r.files))
	for name, s := range r.files {
		out[name] = LogCursor{Inode: s.inode, Offset: s.sent - int64(len(s.partial))}
	}
	return out
}

// Resume forgets what the last command sent beyond the files' last
// complete lines: the next command, started from Cursors, sends it again.
func (r *LogReader) Resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = nil
	for _, s := range r.files {
		s.sent -= int64(len(s.partial))
		s.partial = nil
	}
}

// Write fails on a chunk it cannot decode, which ends the command: its
// cursors are intact, so the next one resends the chunk.
func (r *LogReader) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, p...)
	for {
		i := bytes.IndexByte(r.buf, '\n')
		if i < 0 {
			break
		}
		line := r.buf[:i]
		r.buf = r.buf[i+1:]
		if err := r.line(line); err != nil {
			r.buf = nil
			return 0, err
		}
	}
	if len(r.buf) == 0 {
		r.buf = nil
	}
	return len(p), nil
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
		r.restart(r.state(f[1]), f[1], f[2], off)
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
			r.restart(s, f[1], f[2], off)
		}
		s.sent += int64(len(data))
		s.partial = append(s.partial, data...)
		r.emitLines(f[1], s)
	case len(f) == 2 && f[0] == "eof":
		if s := r.files[f[1]]; s != nil && len(s.partial) > 0 {
			r.Emit(f[1], string(s.partial))
			s.partial = nil
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
		r.files[name] = s
	}
	return s
}

// restart moves a file's cursor where the node says it now reads. A
// partial last line of the file it read before (truncated or rotated)
// will never be completed: it is shown as it is.
func (r *LogReader) restart(s *logState, name, inode string, off int64) {
	if s.sent == off && (s.inode == inode || s.inode == "-") {
		s.inode = inode
		return
	}
	if len(s.partial) > 0 {
		r.Emit(name, string(s.partial))
	}
	s.inode, s.sent, s.partial = inode, off, nil
}

func (r *LogReader) emitLines(name string, s *logState) {
	rest := s.partial
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		r.Emit(name, string(rest[:i]))
		rest = rest[i+1:]
	}
	if len(rest) == 0 {
		s.partial = nil
		return
	}
	s.partial = append([]byte(nil), rest...)
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
