package orchestrator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pampa-go/pampa/deploy"
	"github.com/pampa-go/pampa/sshx"
)

// Conn is an open connection to a node: *sshx.Client, or the control host
// itself for a local node. SSH connections also listen on the node (for db
// tunnels).
type Conn interface {
	deploy.Remote
	Stream(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) error
	io.Closer
}

// Fleet runs operations across the nodes of a cluster, in parallel, one
// connection per node, and reports per-node results.
type Fleet struct {
	Config   *Config
	Binary   string // what local workers run (pampa-worker beside pampactl, or pampactl)
	Parallel int    // nodes handled at once; default 16
	// SSH says how to reach an SSH node (see Node.SSHConfig); nil for a
	// command that reaches local nodes only.
	SSH    func(Node) (sshx.Config, error)
	Logger *slog.Logger
}

type localConn struct{ deploy.Local }

func (localConn) Close() error { return nil }

func (f *Fleet) dial(ctx context.Context, n Node) (Conn, error) {
	if n.Local {
		return localConn{}, nil
	}
	cfg, err := f.sshConfig(n)
	if err != nil {
		return nil, err
	}
	c, err := sshx.Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (f *Fleet) sshConfig(n Node) (sshx.Config, error) {
	if f.SSH == nil {
		return sshx.Config{}, fmt.Errorf("node %q is an SSH node and this command cannot reach SSH nodes", n.Name)
	}
	return f.SSH(n)
}

// Nodes returns the named nodes, or all of them when names is empty.
func (f *Fleet) Nodes(names []string) ([]Node, error) {
	if len(names) == 0 {
		return f.Config.Nodes, nil
	}
	var out []Node
	for _, name := range names {
		n, ok := f.Config.Node(name)
		if !ok {
			return nil, &ConfigError{File: f.Config.Path, Key: "nodes", Msg: fmt.Sprintf("no node named %q; known nodes: %v", name, nodeNames(f.Config.Nodes))}
		}
		out = append(out, n)
	}
	return out, nil
}

func nodeNames(nodes []Node) []string {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	return names
}

// forEach runs fn on every node with at most Parallel at once; one node's
// failure never stops the others, and the failures come back as one error
// (see nodeErrors).
func (f *Fleet) forEach(ctx context.Context, op string, nodes []Node, fn func(context.Context, Node) error) error {
	limit := f.Parallel
	if limit <= 0 {
		limit = 16
	}
	sem := make(chan struct{}, limit)
	var mu sync.Mutex
	failed := map[string]error{}
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			var err error
			select {
			case sem <- struct{}{}:
				err = fn(ctx, n)
				<-sem
			case <-ctx.Done():
				err = ctx.Err()
			}
			if err != nil {
				mu.Lock()
				failed[n.Name] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return nodeErrors(op, failed, len(nodes))
}

// each is forEach with a connection to each node.
func (f *Fleet) each(ctx context.Context, op string, nodes []Node, fn func(context.Context, Node, Conn) error) error {
	return f.forEach(ctx, op, nodes, func(ctx context.Context, n Node) error {
		conn, err := f.dial(ctx, n)
		if err != nil {
			return err
		}
		defer conn.Close()
		return fn(ctx, n, conn)
	})
}

// Layout is where a node keeps the worker and how a worker is started there.
func (f *Fleet) Layout(n Node) (deploy.Node, error) {
	if n.Local {
		cfgPath, err := filepath.Abs(f.Config.Path)
		if err != nil {
			return deploy.Node{}, err
		}
		// A local worker is stale only when the config changed: its binary
		// is whichever build `workers start` picked, and the one running
		// this command may be another (go run builds a new one each time),
		// so comparing it would call workers stale for nothing.
		return deploy.Node{WorkDir: n.WorkDir, Command: workerArgv(f.Binary, cfgPath), Files: []string{cfgPath}}, nil
	}
	// Workers start in the work dir, so paths relative to it hold.
	return deploy.Node{WorkDir: n.WorkDir, Command: workerArgv("./"+RemoteBinary, RemoteConfig), Files: []string{RemoteBinary, RemoteConfig}}, nil
}

// Where deploy puts the binary and config on SSH nodes, under the work dir.
const (
	RemoteBinary = deploy.BinaryFile
	RemoteConfig = deploy.ConfigFile
)

// workerArgv is the worker command line; deploy appends "--id ID", so ps
// shows each worker's id.
func workerArgv(bin, cfg string) []string {
	return []string{bin, "--config", cfg, "worker", "run", "--no-log-file"}
}

// NodeWorkers is what one node reported about its workers.
type NodeWorkers struct {
	Node    string                `json:"node"`
	Workers []deploy.ProcessState `json:"workers"`
}

func (f *Fleet) collect(ctx context.Context, op string, names []string, fn func(context.Context, Node, Conn, deploy.Node) ([]deploy.ProcessState, error)) ([]NodeWorkers, error) {
	nodes, err := f.Nodes(names)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var out []NodeWorkers
	err = f.each(ctx, op, nodes, func(ctx context.Context, n Node, c Conn) error {
		layout, err := f.Layout(n)
		if err != nil {
			return err
		}
		st, err := fn(ctx, n, c, layout)
		mu.Lock()
		out = append(out, NodeWorkers{Node: n.Name, Workers: st})
		mu.Unlock()
		return err
	})
	sort.Slice(out, func(a, b int) bool { return out[a].Node < out[b].Node })
	return out, err
}

// StartWorkers starts the missing workers of the nodes, up to max_workers;
// with ids, only those of them.
func (f *Fleet) StartWorkers(ctx context.Context, names []string, ids ...string) ([]NodeWorkers, error) {
	return f.collect(ctx, "start workers", names, func(ctx context.Context, n Node, c Conn, l deploy.Node) ([]deploy.ProcessState, error) {
		return deploy.Start(ctx, c, l, only(n.WorkerIDs(), ids))
	})
}

// stopSlack is how much longer than a worker's own grace_period a stop
// waits before KILL: the worker needs that long to hand its outcomes over
// and say goodbye once its steps are done.
const stopSlack = 5 * time.Second

// StopWorkers stops the nodes' workers (with ids, only those): TERM, then
// KILL once the workers' grace_period and a little slack have passed.
func (f *Fleet) StopWorkers(ctx context.Context, names []string, ids ...string) ([]NodeWorkers, error) {
	grace := f.Config.Worker.GracePeriod + stopSlack
	return f.collect(ctx, "stop workers", names, func(ctx context.Context, n Node, c Conn, l deploy.Node) ([]deploy.ProcessState, error) {
		return deploy.Stop(ctx, c, l, only(n.WorkerIDs(), ids), grace)
	})
}

// only keeps the ids of all that are in some, or all of them when some is
// empty.
func only(all, some []string) []string {
	if len(some) == 0 {
		return all
	}
	var out []string
	for _, id := range all {
		if slices.Contains(some, id) {
			out = append(out, id)
		}
	}
	return out
}

// WorkerNodes checks worker ids against the config and returns their
// nodes, for the operations that take ids.
func (c *Config) WorkerNodes(ids []string) ([]string, error) {
	var nodes []string
	for _, id := range ids {
		if err := c.KnownWorker(id); err != nil {
			return nil, err
		}
		n, _, _ := strings.Cut(id, ".")
		if !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}

// WorkerProcesses reports which of the nodes' workers run.
func (f *Fleet) WorkerProcesses(ctx context.Context, names []string) ([]NodeWorkers, error) {
	return f.collect(ctx, "read worker status", names, func(ctx context.Context, n Node, c Conn, l deploy.Node) ([]deploy.ProcessState, error) {
		return deploy.Status(ctx, c, l, n.WorkerIDs())
	})
}

// StartGrace is how long a started worker must live to count as started:
// one that cannot run (a bad config on the node, a missing secret) exits
// within it.
const StartGrace = time.Second

// DeadWorker is a worker that exited within StartGrace of its start.
type DeadWorker struct {
	ID      string
	Node    string
	LogTail []string // the last lines of its log
}

// DiedAtOnce looks again, StartGrace after a start, at the workers that
// res says were started, and returns those already gone with the end of
// their logs. A node that does not answer counts as fine: the start
// itself went through.
func (f *Fleet) DiedAtOnce(ctx context.Context, res []NodeWorkers) []DeadWorker {
	var started, nodes []string
	for _, n := range res {
		for _, w := range n.Workers {
			if w.State == "started" {
				started = append(started, w.ID)
				if !slices.Contains(nodes, n.Node) {
					nodes = append(nodes, n.Node)
				}
			}
		}
	}
	if len(started) == 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(StartGrace):
	}
	now, err := f.WorkerProcesses(ctx, nodes)
	if err != nil {
		return nil
	}
	var dead []DeadWorker
	var ids []string
	for _, n := range now {
		for _, w := range n.Workers {
			if slices.Contains(started, w.ID) && w.State != "running" {
				dead = append(dead, DeadWorker{ID: w.ID, Node: n.Node})
				ids = append(ids, w.ID)
			}
		}
	}
	if len(dead) == 0 {
		return nil
	}
	tails := map[string][]string{}
	_ = f.TailLogs(ctx, TailOptions{Names: nodes, Workers: ids, Lines: 5,
		Emit: func(_, worker, line string) { tails[worker] = append(tails[worker], line) }})
	for i := range dead {
		dead[i].LogTail = tails[dead[i].ID]
	}
	return dead
}
