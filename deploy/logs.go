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
// The output is LogReader's to read.
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

// tailScript: $1 work dir, $2 line count, $3 "follow" or "once", then per
// file its name, inode ("-" unknown) and offset (-1: its last $2 lines).
//
// GNU tail -F cannot start several files at different offsets, and a
// fresh tail after a reconnection either loses what was written meanwhile
// or repeats lines, so the script polls: one stat per round for every
// file, then the new bytes of each file as one line
//
//	chunk NAME INODE OFFSET BASE64
//
// Base64 keeps a chunk on one line whatever the log holds, and its
// decoded length is what was really read even if the file shrank under
// us. "at NAME INODE OFFSET" says where a file starts (its last lines, or
// 0 after truncation or rotation: a shorter file or another inode).
// Without follow, "eof NAME" ends a file, so its unfinished last line is
// shown in its place. An idle follower prints "." now and then: the write
// fails once the session is gone, which ends the script instead of
// leaving it polling forever.
//
// start finds where the last $n lines begin from a window that ends at
// the size stat gave, doubled until it holds them, rather than from tail
// -n on the file: a line appended meanwhile would shift the result into
// the middle of a line. stat's output is matched by "NAME ": log names
// (worker.ID.log) hold no blanks. POSIX sh has no arrays: the state is in
// numbered variables (i1, o1, …), and "$@" ends up holding the names.
const tailScript = `cd "$1" || exit 1
n=$2 mode=$3; shift 3
nl='
'
max=262144
start() {
  w=65536
  while :; do
    [ "$w" -lt "$2" ] || w=$2
    c=$(tail -c +$(($2 - w + 1)) -- "$1" | head -c "$w" | tail -n "$n" | wc -c)
    c=$((c))
    if [ "$c" -lt "$w" ] || [ "$w" -ge "$2" ]; then echo $(($2 - c)); return; fi
    w=$((w * 2))
  done
}
k=0 count=$(($# / 3))
while [ "$k" -lt "$count" ]; do
  k=$((k + 1))
  eval "i$k=\$2 o$k=\$3"
  set -- "$@" "$1"; shift 3
done
idle=0
while :; do
  st=$nl$(stat -L -c '%n %i %s' -- "$@" 2>/dev/null)$nl
  j=0
  for f in "$@"; do
    j=$((j + 1))
    eval "ino=\$i$j off=\$o$j"
    case $st in
    *"$nl$f "*) r=${st#*"$nl$f "}; r=${r%%"$nl"*}; ci=${r% *} size=${r#* } ;;
    *) ci=- size=-1 ;;
    esac
    if [ "$size" -ge 0 ]; then
      if [ "$off" -lt 0 ]; then
        off=$(start "$f" "$size") ino=$ci
        echo "at $f $ino $off"
      elif [ "$ino" = - ]; then
        ino=$ci
      elif [ "$ci" != "$ino" ] || [ "$size" -lt "$off" ]; then
        off=0 ino=$ci
        echo "at $f $ino $off"
      fi
      while [ "$size" -gt "$off" ]; do
        len=$((size - off))
        [ "$len" -le "$max" ] || len=$max
        printf 'chunk %s %s %s ' "$f" "$ino" "$off"
        tail -c +$((off + 1)) -- "$f" | head -c "$len" | base64 | tr -d '\n'
        echo || exit 0
        off=$((off + len)) idle=0
      done
    elif [ "$off" -lt 0 ]; then
      off=0
      echo "at $f - 0"
    fi
    [ "$mode" = follow ] || echo "eof $f"
    eval "i$j=\$ino o$j=\$off"
  done
  [ "$mode" = follow ] || exit 0
  idle=$((idle + 1))
  if [ "$idle" -ge 20 ]; then echo . || exit 0; idle=0; fi
  sleep 0.25
done
`

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
