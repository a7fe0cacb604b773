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

	"github.com/pampa-go/pampa/internal/lines"
)

// stderrTail is how much of a failed command's stderr becomes the row's
// error description.
const stderrTail = 2048

// DefaultOutputLimit is how much of a command's stdout is kept as the
// step's output (result_sql's $2); a command that prints more fails its row.
const DefaultOutputLimit = 1 << 20

// logLimit is how much of one step's output goes to the worker's log.
const logLimit = 64 << 10

// command is one run of argv.
type command struct {
	argv        []string
	stdin       []byte
	dir         string
	env         []string
	killDelay   time.Duration // TERM, then KILL this much later
	outputLimit int           // 0: stdout is only logged
	log         *slog.Logger
	// started, if set, is told the process group as soon as it exists.
	started func(pgid int)
	// limits, if set, holds the step to the node's max_ram and the rest.
	limits *stepLimits
}

// errOutputTooLong fails a row whose command printed past the limit.
var errOutputTooLong = errors.New("stdout is longer than the output limit")

// run runs the command and returns its stdout (within outputLimit). When
// ctx ends the whole process group gets TERM, then KILL after killDelay.
// The command dies with the worker, even by SIGKILL (Pdeathsig). A non-zero
// exit returns an error ending with the tail of stderr.
func (c command) run(ctx context.Context) (string, error) {
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Dir, cmd.Env = c.dir, c.env
	if c.limits != nil {
		c.limits.wrap(cmd)
	}
	cmd.Stdin = bytes.NewReader(c.stdin)
	// Its own process group, so TERM and KILL reach the command's children;
	// the parent-death signal, so it does not outlive a killed worker.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if c.limits != nil {
		c.limits.sysProcAttr(cmd.SysProcAttr)
		defer c.limits.remove()
	}
	tail := &tailBuffer{max: stderrTail}
	budget := &logBudget{left: logLimit}
	outLog := lineLogger(c.log, "task output", budget)
	errLog := lineLogger(c.log, "task stderr", budget)
	out := &limitBuffer{max: c.outputLimit}
	cmd.Stdout = io.MultiWriter(out, outLog)
	cmd.Stderr = io.MultiWriter(tail, errLog)
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start %s: %w", c.argv[0], err)
	}
	if c.started != nil {
		c.started(cmd.Process.Pid)
	}
	stopWatch := func() {}
	if c.limits != nil {
		stopWatch = c.limits.started(cmd.Process.Pid)
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); stopWatch(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(c.killDelay)
		select {
		case <-done:
		case <-t.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
		}
		t.Stop()
	}
	_ = outLog.Flush() // a last line without newline
	_ = errLog.Flush()
	if budget.dropped > 0 {
		c.log.Info("task output not logged past the limit", "bytes", budget.dropped, "limit", logLimit)
	}
	if c.limits != nil {
		if v := c.limits.verdict(); v != "" {
			return "", fmt.Errorf("%s: %s", c.argv[0], v)
		}
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("%s was stopped: %w", c.argv[0], ctx.Err())
	}
	if waitErr != nil {
		msg := strings.TrimSpace(tail.String())
		var exitErr *exec.ExitError
		if errors.As(waitErr, &exitErr) && msg != "" {
			return "", fmt.Errorf("%s: %w: %s", c.argv[0], exitErr, msg)
		}
		return "", fmt.Errorf("%s: %w", c.argv[0], waitErr)
	}
	if out.over {
		return "", fmt.Errorf("%s: %w (%d bytes)", c.argv[0], errOutputTooLong, c.outputLimit)
	}
	return out.String(), nil
}

// runCommand runs argv with no stdin and no output kept (start_command,
// periodic runs).
func runCommand(ctx context.Context, argv []string, dir string, env []string, killDelay time.Duration, log *slog.Logger) error {
	_, err := command{argv: argv, dir: dir, env: env, killDelay: killDelay, log: log}.run(ctx)
	return err
}

// limitBuffer keeps up to max bytes and notes whether more came.
type limitBuffer struct {
	mu   sync.Mutex
	max  int
	buf  bytes.Buffer
	over bool
}

func (l *limitBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p) // a short count would stop io.MultiWriter
	if room := l.max - l.buf.Len(); len(p) > room {
		l.over = l.over || l.max > 0
		p = p[:max(room, 0)]
	}
	l.buf.Write(p)
	return n, nil
}

func (l *limitBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
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

// logBudget bounds what one step's output adds to the log.
type logBudget struct {
	mu      sync.Mutex
	left    int
	dropped int
}

func (b *logBudget) take(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.left {
		b.left = 0
		b.dropped += n
		return false
	}
	b.left -= n
	return true
}

// lineLogger logs each line written to it, within budget. A partial line
// past 64 KiB (a runaway line without newline) is logged as it is.
func lineLogger(log *slog.Logger, msg string, budget *logBudget) *lines.Writer {
	return &lines.Writer{Max: 64 << 10, Line: func(line []byte) error {
		if budget.take(len(line)) {
			log.Info(msg, "line", string(line))
		}
		return nil
	}}
}
