// Package deploy knows what goes on one node and how: the work directory,
// the worker binary and config, and the worker processes with their pid
// files. It drives a node through a Remote, which is the control host itself
// for a local node (Local) or an SSH connection (*sshx.Client).
//
// Every command sent to a node is a fixed POSIX shell script (the files
// under scripts/) whose inputs are positional parameters, quoted by the Remote, never pasted into the
// script text: node names, paths and ids cannot inject anything.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Remote is what deploy needs of a node: run an argv, with stdin, and
// return its stdout. A non-zero exit is an error.
type Remote interface {
	Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error)
}

// Node is one node's worker layout.
type Node struct {
	WorkDir string   // absolute, or relative to the login directory
	Command []string // worker argv without the id, e.g. [bin, worker, run, --config, f, --no-log-file]
	// Files are what a worker loads when it starts (its binary and
	// config), relative to WorkDir or absolute. Status reports a running
	// worker as stale when one of them is newer than its pid file: it was
	// replaced after the worker started, which still runs the old one.
	Files []string
}

// PidFile and LogFile are where a worker's pid and log live, relative to
// WorkDir.
func PidFile(id string) string { return "run/" + id + ".pid" }
func LogFile(id string) string { return "worker." + id + ".log" }

// sh is the argv that runs script (scripts.go composes them) with sh -c,
// args as its $1, $2 and so on.
func sh(script string, args ...string) []string {
	return append([]string{"sh", "-c", script, "sh"}, args...)
}

// ProcessState is what a node says of one worker.
type ProcessState struct {
	ID    string `json:"id"`
	PID   int    `json:"pid"`
	State string `json:"state"` // running, dead (pid file left behind), none, started, stopped, killed
	// Stale (from Status only): the worker runs, but its binary or config
	// on the node was replaced after it started (Node.Files).
	Stale bool `json:"stale,omitempty"`
}

// Start starts the given workers that are not running; running ones are
// left alone, so Start is idempotent. It costs one command on the node
// (scripts/start.sh).
func Start(ctx context.Context, r Remote, n Node, ids []string) ([]ProcessState, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := append([]string{n.WorkDir, strconv.Itoa(len(ids))}, ids...)
	stdout, err := r.Run(ctx, sh(startScript, append(args, n.Command...)...), nil)
	if err != nil {
		return nil, fmt.Errorf("start workers: %w", err)
	}
	return parseStarted(stdout), nil
}

// parseStarted reads "id new" for each worker started, then "id pid" for
// every worker.
func parseStarted(b []byte) []ProcessState {
	started := map[string]bool{}
	var out []ProcessState
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if f[1] == "new" {
			started[f[0]] = true
			continue
		}
		st := ProcessState{ID: f[0], State: "running"}
		st.PID, _ = strconv.Atoi(f[1])
		if started[f[0]] {
			st.State = "started"
		}
		out = append(out, st)
	}
	return out
}

// Stop sends TERM to the workers, waits up to grace, then KILLs the rest
// (scripts/stop.sh).
func Stop(ctx context.Context, r Remote, n Node, ids []string, grace time.Duration) ([]ProcessState, error) {
	secs := strconv.Itoa(int(grace.Round(time.Second) / time.Second))
	stdout, err := r.Run(ctx, sh(stopScript, append([]string{n.WorkDir, secs}, ids...)...), nil)
	if err != nil {
		return nil, fmt.Errorf("stop workers: %w", err)
	}
	return parseStates(stdout, false), nil
}

// Status reads the workers' pid files, checks their processes and tells
// which running ones are stale, in one command on the node
// (scripts/status.sh).
func Status(ctx context.Context, r Remote, n Node, ids []string) ([]ProcessState, error) {
	stdout, err := r.Run(ctx, sh(statusScript, statusArgs(n, ids)...), nil)
	if err != nil {
		return nil, fmt.Errorf("read worker pid files: %w", err)
	}
	return parseStates(stdout, true), nil
}

// statusArgs are statusScript's arguments (scripts/status.sh).
//
// Stale is "a file is newer than the pid file" (test -nt), and ties count
// as not stale. Shells differ in how finely they compare: dash 0.5.12
// (Debian's /bin/sh) and bash compare nanoseconds, BusyBox sh whole
// seconds, and file systems keep mtimes to a clock tick or coarser. The
// usual order is deploy, then start (`pampactl up` does both within a
// second): calling a tie stale would have every freshly started worker
// restarted by the next `nodes deploy --restart`. The price is that a
// worker started in the same tick before a deploy without --restart is not
// reported; a deploy --restart that uploads something restarts every
// running worker anyway. An upload's mtime is when its data was written,
// just before its rename, so a worker started in between (a deploy and a
// start run at once) is missed too.
func statusArgs(n Node, ids []string) []string {
	args := append([]string{n.WorkDir, strconv.Itoa(len(ids))}, ids...)
	return append(args, n.Files...)
}

func parseStates(b []byte, withPID bool) []ProcessState {
	var out []ProcessState
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case withPID && (len(f) == 3 || len(f) == 4 && f[3] == "stale"):
			pid, _ := strconv.Atoi(f[1])
			out = append(out, ProcessState{ID: f[0], PID: pid, State: f[2], Stale: len(f) == 4})
		case !withPID && len(f) == 2:
			out = append(out, ProcessState{ID: f[0], State: f[1]})
		}
	}
	return out
}
