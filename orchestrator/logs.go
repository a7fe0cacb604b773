package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/pampa-go/pampa/deploy"
	"github.com/pampa-go/pampa/internal/backoff"
)

// TailOptions configure Fleet.TailLogs.
type TailOptions struct {
	Names   []string // nodes; all when empty
	Workers []string // worker ids; all of the nodes' when empty
	Lines   int      // last lines of each log to print first
	Follow  bool     // keep printing, reconnecting to nodes that drop and resuming each log where it was left
	// Emit receives each line; calls are serialised.
	Emit func(node, worker, line string)
	// Backoff is the first wait before reconnecting (default 500ms); it
	// doubles up to MaxBackoff (default 15s) while the node stays away.
	Backoff, MaxBackoff time.Duration
}

// TailLogs prints the last lines of the workers' logs, one session per
// node for all of its workers (deploy.TailCommand). With Follow it runs
// until ctx ends, and a node that drops is reconnected with backoff and
// resumed where each log was left: lines the workers wrote while the
// link was down are printed after the reconnection, and no line is
// printed twice. The reconnections are logged. Without Follow, failures
// are per node (*PartialError).
func (f *Fleet) TailLogs(ctx context.Context, opts TailOptions) error {
	nodes, err := f.Nodes(opts.Names)
	if err != nil {
		return err
	}
	ids := map[string][]string{}
	var keep []Node
	matched := map[string]bool{}
	for _, n := range nodes {
		for _, id := range n.WorkerIDs() {
			if len(opts.Workers) == 0 || slices.Contains(opts.Workers, id) {
				ids[n.Name] = append(ids[n.Name], id)
				matched[id] = true
			}
		}
		if len(ids[n.Name]) > 0 {
			keep = append(keep, n)
		}
	}
	for _, w := range opts.Workers {
		if !matched[w] {
			return &ConfigError{File: f.Config.Path, Key: "nodes", Msg: fmt.Sprintf("no worker %q on the selected nodes; worker ids are <node>.<1..max_workers>", w)}
		}
	}
	var mu sync.Mutex
	emit := func(node string) func(file, line string) {
		return func(file, line string) {
			mu.Lock()
			defer mu.Unlock()
			opts.Emit(node, deploy.WorkerOfLog(file), line)
		}
	}
	if !opts.Follow {
		return f.each(ctx, "read logs", keep, func(ctx context.Context, n Node, c Conn) error {
			return tailOnce(ctx, c, n, ids[n.Name], opts.Lines, emit(n.Name))
		})
	}
	var wg sync.WaitGroup
	for _, n := range keep {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.follow(ctx, n, ids[n.Name], opts, emit(n.Name))
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}

func tailOnce(ctx context.Context, c Conn, n Node, ids []string, lines int, emit func(file, line string)) error {
	r := &deploy.LogReader{Emit: emit}
	return c.Stream(ctx, deploy.TailCommand(n.WorkDir, logFiles(ids), nil, lines, false), nil, r, nil)
}

func logFiles(ids []string) []string {
	files := make([]string, len(ids))
	for i, id := range ids {
		files[i] = deploy.LogFile(id)
	}
	return files
}

// follow streams one node's logs until ctx ends, reconnecting as needed.
// The reader outlives the connections: its cursors are where the next
// connection resumes.
func (f *Fleet) follow(ctx context.Context, n Node, ids []string, opts TailOptions, emit func(file, line string)) {
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	first, max := opts.Backoff, opts.MaxBackoff
	if first <= 0 {
		first = 500 * time.Millisecond
	}
	if max <= 0 {
		max = 15 * time.Second
	}
	bo := backoff.New(first, max)
	files := logFiles(ids)
	got := false // lines came through this connection
	r := &deploy.LogReader{Emit: func(file, line string) {
		got = true
		emit(file, line)
	}}
	for attempt := 0; ; attempt++ {
		got = false
		err := func() error {
			c, err := f.dial(ctx, n)
			if err != nil {
				return err
			}
			defer c.Close()
			if attempt > 0 {
				log.Info("reconnected; following logs again from where they were left", "node", n.Name)
			}
			r.Resume()
			// Stream returns once its output is copied: got is not
			// written after it.
			return c.Stream(ctx, deploy.TailCommand(n.WorkDir, files, r.Cursors(), opts.Lines, true), nil, r, nil)
		}()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("the log reader on the node ended")
		}
		if got {
			bo.Reset() // it worked for a while: retry soon
		}
		log.Warn("lost the node's log stream; reconnecting", "node", n.Name, "addr", n.Addr(), "in", bo.Peek(), "err", err)
		if bo.Wait(ctx); ctx.Err() != nil {
			return
		}
	}
}
