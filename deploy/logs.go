package deploy

import (
	"bytes"
	"strconv"
	"strings"
	"sync"
)

// TailCommand is the argv that prints the last n lines of the workers'
// logs and, with follow, keeps printing what they append, across log
// rotation and files that do not exist yet. tail -v announces each file
// with a "==> name <==" header, which TailSplitter reads.
func TailCommand(workDir string, ids []string, n int, follow bool) []string {
	args := []string{workDir, strconv.Itoa(n)}
	mode := "once"
	if follow {
		mode = "-F"
	}
	args = append(args, mode)
	for _, id := range ids {
		args = append(args, LogFile(id))
	}
	return sh(tailScript, args...)
}

// tailScript: $1 work dir, $2 line count, $3 -F to follow or "once", then
// the log files. Missing files are skipped without follow; with follow,
// tail -F waits for them.
const tailScript = `cd "$1" || exit 1
n=$2; mode=$3; shift 3
if [ "$mode" = -F ]; then exec tail -v -n "$n" -F -- "$@"; fi
for f in "$@"; do [ -f "$f" ] && set -- "$@" "$f"; shift; done
[ $# -gt 0 ] || exit 0
exec tail -v -n "$n" -- "$@"
`

// TailSplitter turns tail -v output into lines attributed to the file they
// come from: Write it tail's stdout; it calls Emit for each complete line
// with the file named by the last header. The blank line tail prints
// before each header after the first is dropped.
type TailSplitter struct {
	Emit func(file, line string)

	mu      sync.Mutex
	buf     []byte
	file    string
	pending bool // a blank line, held until we know it is not a header's
}

// Write never fails.
func (s *TailSplitter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, p...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			break
		}
		s.line(string(s.buf[:i]))
		s.buf = s.buf[i+1:]
	}
	if len(s.buf) == 0 {
		s.buf = nil
	}
	return len(p), nil
}

func (s *TailSplitter) line(l string) {
	if name, ok := header(l); ok {
		s.pending = false
		s.file = name
		return
	}
	if s.pending {
		s.pending = false
		s.Emit(s.file, "")
	}
	if l == "" {
		s.pending = true
		return
	}
	s.Emit(s.file, l)
}

// Flush emits a partial last line and a held blank line.
func (s *TailSplitter) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending {
		s.pending = false
		s.Emit(s.file, "")
	}
	if len(s.buf) > 0 {
		s.Emit(s.file, string(s.buf))
		s.buf = nil
	}
}

func header(l string) (string, bool) {
	if !strings.HasPrefix(l, "==> ") || !strings.HasSuffix(l, " <==") || len(l) < 9 {
		return "", false
	}
	return l[4 : len(l)-4], true
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
