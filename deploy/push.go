package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/pampa-go/pampa/internal/lines"
)

// Streamer runs a command with its stdin, stdout and stderr streamed
// (*sshx.Client, Local).
type Streamer interface {
	Stream(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) error
}

// File is a file Push may send.
type File struct {
	Rel    string      // under the work dir: BinaryFile, ConfigFile
	Mode   os.FileMode // its permissions once in place
	SHA256 string      // hex, of what Open returns
	Open   func() (io.ReadCloser, error)
}

// Push probes the node and, within the same remote command, installs the
// files choose picks from what the probe says: sent on the command's
// stdin (where secrets belong), checked against their SHA-256 on the
// node, then renamed over the old files all together. Choosing none, or
// returning an error, leaves the node untouched. sshd runs every command,
// SFTP included, through the login shell, which can cost more than the
// transfer (~150 ms with a slow ~/.bashrc): one command is what scp pays.
// It returns the probe, and which files it installed. The command is
// scripts/push.sh.
func Push(ctx context.Context, s Streamer, workDir string, choose func(Probe) ([]File, error)) (Probe, []string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := &lineFeed{ready: make(chan struct{})}
	out.Line = out.line
	var stderr bytes.Buffer
	stdin, send := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := s.Stream(ctx, sh(pushScript, probeArgs(workDir)...), stdin, out, &stderr)
		stdin.CloseWithError(errors.New("the command on the node ended"))
		out.end()
		done <- err
	}()

	<-out.ready
	if !out.sawReady() {
		err := <-done
		if err == nil {
			err = fmt.Errorf("unexpected output %q", out.before())
		}
		return Probe{}, nil, fmt.Errorf("probe node: %w", err)
	}
	p, perr := parseProbe(out.before())
	var files []File
	if perr == nil {
		files, perr = choose(p)
	}
	var sendErr error
	if perr == nil && len(files) > 0 {
		sendErr = sendFiles(send, files)
	}
	send.CloseWithError(sendErr) // EOF when nothing goes: the script exits
	err := <-done

	installed, failure := out.result()
	switch {
	case perr != nil:
		return p, nil, perr
	case failure != "":
		return p, installed, pushFailure(failure, files, installed, stderr.String())
	case err != nil:
		return p, nil, fmt.Errorf("push to the node: %w", err)
	case sendErr != nil:
		return p, nil, fmt.Errorf("push to the node: %w", sendErr)
	case len(installed) != len(files):
		return p, nil, fmt.Errorf("push to the node: installed %q of %d files; output: %q", installed, len(files), stderr.String())
	}
	return p, installed, nil
}

// sendFiles writes the request pushScript reads: the last file raw, the
// others (a config, small) as one base64 line each.
func sendFiles(w io.Writer, files []File) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	for i, f := range files {
		enc := "b64"
		if i == len(files)-1 {
			enc = "rest"
		}
		fmt.Fprintf(bw, "file %s %o %s %s\n", f.Rel, f.Mode.Perm(), f.SHA256, enc)
		r, err := f.Open()
		if err != nil {
			return err
		}
		if enc == "b64" {
			b64 := base64.NewEncoder(base64.StdEncoding, bw)
			_, err = io.Copy(b64, r)
			if err == nil {
				err = b64.Close()
			}
			if err == nil {
				err = bw.WriteByte('\n')
			}
		} else {
			_, err = io.Copy(bw, r)
		}
		r.Close()
		if err != nil {
			return fmt.Errorf("send %s: %w", f.Rel, err)
		}
	}
	return bw.Flush()
}

func pushFailure(line string, files []File, installed []string, stderr string) error {
	if rest, ok := strings.CutPrefix(line, "mismatch "); ok {
		rel, have, _ := strings.Cut(rest, " ")
		for _, f := range files {
			if f.Rel == rel {
				return fmt.Errorf("push %s: checksum mismatch: sent sha256 %s, node has %s; nothing was replaced", rel, f.SHA256, have)
			}
		}
	}
	// The system's reason (no space, read-only file system) is the last
	// line the failing command wrote to stderr.
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if why := strings.TrimSpace(lines[len(lines)-1]); why != "" {
		line += " (" + why + ")"
	}
	if len(installed) > 0 { // a rename failed after others succeeded
		return fmt.Errorf("push to the node: %s; installed before that: %s", line, strings.Join(installed, ", "))
	}
	return fmt.Errorf("push to the node: %s; nothing was replaced", line)
}

// lineFeed collects pushScript's stdout: the probe before "ready", then
// "installed" and "failed" lines. Other lines (a login script's chatter)
// are ignored.
type lineFeed struct {
	lines.Writer // the command's stdout, with Line set to line

	mu        sync.Mutex
	probe     []byte
	installed []string
	failure   string
	isReady   bool // "ready" came, or the command ended
	gotReady  bool // "ready" came
	ready     chan struct{}
}

func (l *lineFeed) line(b []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := string(b)
	switch {
	case !l.isReady && line == "ready":
		l.isReady, l.gotReady = true, true
		close(l.ready)
	case !l.isReady:
		l.probe = append(l.probe, line+"\n"...)
	case strings.HasPrefix(line, "installed "):
		l.installed = append(l.installed, strings.TrimPrefix(line, "installed "))
	case strings.HasPrefix(line, "failed ") && l.failure == "":
		l.failure = strings.TrimPrefix(line, "failed ")
	}
	return nil
}

// end releases a Push waiting for "ready" when the command ended without it.
func (l *lineFeed) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.isReady {
		l.isReady = true
		close(l.ready)
	}
}

func (l *lineFeed) sawReady() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gotReady
}

func (l *lineFeed) before() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.probe
}

func (l *lineFeed) result() ([]string, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.installed, l.failure
}
