// Package deploy knows what goes on one node and how: the work directory,
// the worker binary and config, and the worker processes with their pid
// files. It drives a node through a Remote, which is the control host itself
// for a local node (Local) or an SSH connection (*sshx.Client).
//
// Every command sent to a node is a fixed POSIX shell script whose inputs
// are positional parameters, quoted by the Remote, never pasted into the
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

// The worker's id is the last argument, so "--id ID " (NUL turned to space)
// matches exactly one worker's /proc/PID/cmdline: a reused pid is never
// signalled by mistake.
const aliveFunc = `alive() { kill -0 "$1" 2>/dev/null && tr '\0' ' ' < /proc/"$1"/cmdline 2>/dev/null | grep -qF -- "--id $2 "; }
`

// startScript: $1 work dir, $2 the number K of ids, then the K ids, then
// the worker argv. All workers of a node start in one round trip: each SSH
// command costs the login shell's start-up on the node. Ids are node.N with
// node names of [A-Za-z0-9_-] only, so $ids splits safely. setsid in the
// background returns at once and the worker survives the session that
// started it; the pid it writes is its process group, which stop signals
// as a whole. Not `setsid -f`: BusyBox's setsid has no -f, and a
// background child is never a group leader, so every setsid makes it a
// session leader in place.
const startScript = aliveFunc + `set -e
cd "$1"; k=$2; shift 2
ids=""; i=0
while [ $i -lt "$k" ]; do ids="$ids $1"; shift; i=$((i+1)); done
mkdir -p run
for id in $ids; do
  pidfile=run/$id.pid
  if [ -s "$pidfile" ] && alive "$(cat "$pidfile")" "$id"; then continue; fi
  rm -f "$pidfile"
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" --id "$id" >> "worker.$id.log" 2>&1 < /dev/null &
  echo "$id new"
done
for id in $ids; do
  pidfile=run/$id.pid
  i=0
  while [ ! -s "$pidfile" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  [ -s "$pidfile" ] || { echo "worker $id did not start; see worker.$id.log" >&2; exit 1; }
  echo "$id $(cat "$pidfile")"
done
`

// stopScript: $1 work dir, $2 grace seconds, then ids. TERM to each
// worker's group, wait up to the grace period, then KILL what is left.
const stopScript = aliveFunc + `cd "$1" || exit 1
grace=$2; shift 2
pids=""
for id in "$@"; do
  f=run/$id.pid
  [ -s "$f" ] || { echo "$id none"; continue; }
  pid=$(cat "$f")
  if alive "$pid" "$id"; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"; pids="$pids $pid:$id"
  else echo "$id none"; rm -f "$f"; fi
done
end=$(( $(date +%s) + grace ))
while [ -n "$pids" ]; do
  left=""
  for p in $pids; do
    if alive "${p%%:*}" "${p#*:}"; then left="$left $p"; else echo "${p#*:} stopped"; rm -f "run/${p#*:}.pid"; fi
  done
  pids=$left
  [ -z "$pids" ] && break
  [ "$(date +%s)" -ge "$end" ] && break
  sleep 0.1
done
for p in $pids; do
  kill -KILL -- "-${p%%:*}" 2>/dev/null || kill -KILL "${p%%:*}"
  echo "${p#*:} killed"; rm -f "run/${p#*:}.pid"
done
`

// statusScript: $1 work dir, $2 the number K of ids, then the K ids, then
// the files a worker loads (Node.Files; last, as only they may hold
// spaces). Prints "id pid state" per worker, with " stale" after a running
// worker's state when one of the files is newer than its pid file, which
// the worker wrote as it started (see statusArgs for why -nt is enough).
const statusScript = aliveFunc + `wd=$1; k=$2; shift 2
ids=""; i=0
while [ $i -lt "$k" ]; do ids="$ids $1"; shift; i=$((i+1)); done
cd "$wd" 2>/dev/null || { for id in $ids; do echo "$id 0 none"; done; exit 0; }
for id in $ids; do
  f=run/$id.pid
  if [ -s "$f" ]; then
    pid=$(cat "$f")
    if alive "$pid" "$id"; then
      stale=
      for x in "$@"; do [ "$x" -nt "$f" ] && stale=" stale"; done
      echo "$id $pid running$stale"
    else echo "$id $pid dead"; fi
  else echo "$id 0 none"; fi
done
`

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
// left alone, so Start is idempotent. It costs one command on the node.
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

// Stop sends TERM to the workers, waits up to grace, then KILLs the rest.
func Stop(ctx context.Context, r Remote, n Node, ids []string, grace time.Duration) ([]ProcessState, error) {
	secs := strconv.Itoa(int(grace.Round(time.Second) / time.Second))
	stdout, err := r.Run(ctx, sh(stopScript, append([]string{n.WorkDir, secs}, ids...)...), nil)
	if err != nil {
		return nil, fmt.Errorf("stop workers: %w", err)
	}
	return parseStates(stdout, false), nil
}

// Status reads the workers' pid files, checks their processes and tells
// which running ones are stale, in one command on the node.
func Status(ctx context.Context, r Remote, n Node, ids []string) ([]ProcessState, error) {
	stdout, err := r.Run(ctx, sh(statusScript, statusArgs(n, ids)...), nil)
	if err != nil {
		return nil, fmt.Errorf("read worker pid files: %w", err)
	}
	return parseStates(stdout, true), nil
}

// statusArgs are statusScript's arguments.
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
