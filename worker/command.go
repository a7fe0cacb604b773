package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stderrTail is how much of a failed command's stderr becomes the row's
// error description.
const stderrTail = 2048

// runCommand runs argv in dir with stdin, logging its output. When ctx ends
// the whole process group gets TERM, then KILL after killDelay. A non-zero
// exit returns an error ending with the tail of stderr.
func runCommand(ctx context.Context, argv []string, stdin []byte, dir string, env []string, killDelay time.Duration, log *slog.Logger) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdin = bytes.NewReader(stdin)
	// Its own process group, so TERM and KILL reach the command's children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	tail := &tailBuffer{max: stderrTail}
	outLog := &lineLogger{log: log, msg: "task output"}
	errLog := &lineLogger{log: log, msg: "task stderr"}
	cmd.Stdout = outLog
	cmd.Stderr = io.MultiWriter(tail, errLog)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", argv[0], err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(killDelay)
		select {
		case <-done:
		case <-t.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
		}
		t.Stop()
	}
	outLog.Flush()
	errLog.Flush()
	if ctx.Err() != nil {
		return fmt.Errorf("%s was stopped: %w", argv[0], ctx.Err())
	}
	if waitErr != nil {
		msg := strings.TrimSpace(tail.String())
		var exitErr *exec.ExitError
		if errors.As(waitErr, &exitErr) && msg != "" {
			return fmt.Errorf("%s: %s: %s", argv[0], exitErr, msg)
		}
		return fmt.Errorf("%s: %w", argv[0], waitErr)
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// lineLogger logs each complete line written to it.
type lineLogger struct {
	mu      sync.Mutex
	log     *slog.Logger
	msg     string
	partial []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	consumed := 0
	for {
		i := bytes.IndexByte(l.partial[consumed:], '\n')
		if i < 0 {
			break
		}
		l.log.Info(l.msg, "line", string(l.partial[consumed:consumed+i]))
		consumed += i + 1
	}
	l.partial = append(l.partial[:0], l.partial[consumed:]...)
	if len(l.partial) > 64<<10 { // a runaway line without newline
		l.log.Info(l.msg, "line", string(l.partial))
		l.partial = l.partial[:0]
	}
	return len(p), nil
}

// Flush logs a last line that had no newline.
func (l *lineLogger) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.log.Info(l.msg, "line", string(l.partial))
		l.partial = nil
	}
}
