package sshx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// stderrTail bounds how much stderr an ExitError keeps.
const stderrTail = 4 << 10

// closeGrace is how long a node may take to confirm closing a cancelled
// session before the whole connection is presumed dead and closed.
const closeGrace = 3 * time.Second

// ExitError reports a remote command that exited non-zero or was killed.
type ExitError struct {
	Code   int    // exit status; -1 when killed by a signal
	Signal string // e.g. "KILL" when killed by a signal
	Stderr string // the last few KiB of stderr
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("exit status %d", e.Code)
	if e.Signal != "" {
		msg = "killed by signal " + e.Signal
	}
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

// Quote quotes args for a POSIX shell: each becomes one word, taken
// literally. Every argument is single-quoted, even plain ones, because an
// unquoted word can still be a reserved word ("if") or an assignment
// ("A=b"). A NUL byte cannot be passed at all; Run refuses it.
func Quote(args ...string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte('\'')
		b.WriteString(strings.ReplaceAll(a, `'`, `'\''`))
		b.WriteByte('\'')
	}
	return b.String()
}

// Run runs argv on the node and returns its stdout. argv[0] is a program,
// not shell code or a builtin: use "sh", "-c", script for that. stdin may be nil;
// otherwise it is read to EOF, and Run does not return before it is. A
// non-zero exit is an *ExitError carrying the tail of stderr. Cancelling
// ctx kills the command.
func (c *Client) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	var stdout bytes.Buffer
	if err := c.run(ctx, argv, stdin, &stdout, nil); err != nil {
		return stdout.Bytes(), fmt.Errorf("run %s on node %s: %w", name(argv), c.addr, err)
	}
	return stdout.Bytes(), nil
}

// Stream runs argv on the node, copying its output to stdout and stderr
// (either may be nil) as it arrives, for long commands such as tail -F.
// Errors are as for Run; the ExitError's Stderr holds the tail of stderr.
func (c *Client) Stream(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if err := c.run(ctx, argv, stdin, stdout, stderr); err != nil {
		return fmt.Errorf("run %s on node %s: %w", name(argv), c.addr, err)
	}
	return nil
}

// name is what errors show of a command: never its arguments, which may
// hold secrets.
func name(argv []string) string {
	if len(argv) == 0 {
		return "empty command"
	}
	return argv[0]
}

func (c *Client) run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(argv) == 0 {
		return errors.New("no command given")
	}
	for _, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("an argument contains a NUL byte, which a remote command cannot receive")
		}
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	s, err := c.newSession(ctx)
	if err != nil {
		return err
	}
	defer s.Close()

	tail := &tailBuffer{max: stderrTail}
	pid := &pidFilter{w: tail}
	if stderr != nil {
		pid.w = io.MultiWriter(stderr, tail)
	}
	s.Stdin, s.Stdout, s.Stderr = stdin, stdout, pid
	// The shell reports its pid, which sshd made a process group leader,
	// then becomes the command. Cancelling can then kill the whole group
	// from another session: OpenSSH ignores signal requests for root.
	if err := s.Start(`echo "` + pidMarker + `$$" >&2; exec ` + Quote(argv...)); err != nil {
		return fmt.Errorf("start: %w", c.why(err))
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()

	select {
	case err = <-done:
	case <-ctx.Done():
		c.kill(s, pid.get())
		select {
		case <-done:
		case <-time.After(closeGrace):
			c.closeConns() // Wait returns once the connection is gone
			<-done
		}
		return context.Cause(ctx)
	}

	var exit *ssh.ExitError
	if errors.As(err, &exit) {
		e := &ExitError{Code: exit.ExitStatus(), Signal: exit.Signal(), Stderr: tail.String()}
		if e.Signal != "" {
			e.Code = -1
		}
		return e
	}
	if err != nil {
		return c.why(err)
	}
	return nil
}

// newSession opens a session, or gives up when ctx ends: opening waits for
// the node's answer, which a frozen link withholds until the keepalives
// close the connection. The abandoned open finishes in the background and
// its session, if any, is closed; the connection is left alone.
func (c *Client) newSession(ctx context.Context) (*ssh.Session, error) {
	type opened struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		s, err := c.conn.NewSession()
		ch <- opened{s, err}
	}()
	select {
	case o := <-ch:
		if o.err != nil {
			return nil, fmt.Errorf("open session: %w", c.why(o.err))
		}
		return o.s, nil
	case <-ctx.Done():
		go func() {
			if o := <-ch; o.s != nil {
				o.s.Close()
			}
		}()
		return nil, context.Cause(ctx)
	}
}

// kill stops a cancelled command: by signal where the server allows it,
// else by killing its process group from a second session, then closes
// the session.
func (c *Client) kill(s *ssh.Session, pgid int) {
	_ = s.Signal(ssh.SIGKILL)
	if pgid > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
		defer cancel()
		if ks, err := c.conn.NewSession(); err == nil {
			stop := context.AfterFunc(ctx, func() { ks.Close() })
			_ = ks.Run(fmt.Sprintf("kill -KILL -- -%d 2>/dev/null || kill -KILL %d", pgid, pgid))
			stop()
			ks.Close()
		}
	}
	_ = s.Close()
}

const pidMarker = "sshx-pid "

// pidFilter takes the pid line the wrapper prints off stderr.
type pidFilter struct {
	w    io.Writer
	mu   sync.Mutex
	head []byte // the first line, until complete
	done bool
	pid  int
}

func (f *pidFilter) Write(p []byte) (int, error) {
	f.mu.Lock()
	if f.done {
		f.mu.Unlock()
		return f.w.Write(p)
	}
	f.head = append(f.head, p...)
	// Lines before ours (a login shell's rc files may print) pass through.
	var out []byte
	for !f.done {
		line, rest, found := bytes.Cut(f.head, []byte("\n"))
		if !found {
			if len(f.head) < 64<<10 {
				break
			}
			f.done, out, f.head = true, append(out, f.head...), nil // no marker: pass everything
			break
		}
		if n, ok := bytes.CutPrefix(line, []byte(pidMarker)); ok {
			f.pid, _ = strconv.Atoi(string(n))
			f.done, out, f.head = true, append(out, rest...), nil
			break
		}
		out = append(append(out, line...), '\n')
		f.head = rest
	}
	f.mu.Unlock()
	if len(out) > 0 {
		if _, err := f.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (f *pidFilter) get() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pid
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }
