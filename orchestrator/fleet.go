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
)

// Conn is an open connection to a node: *sshx.Client, or the control host
// itself for a local node. SSH connections also listen on the node (for db
// tunnels).
type Conn interface {
	deploy.Remote
	Stream(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) error
	io.Closer
}

// DialFunc opens a connection to a node.
type DialFunc func(ctx context.Context, n Node) (Conn, error)

// Fleet runs operations across the nodes of a cluster, in parallel, one
// connection per node, and reports per-node results.
type Fleet struct {
	Config   *Config
	Binary   string   // this executable: what local workers run
	Parallel int      // nodes handled at once; default 16
	DialSSH  DialFunc // how SSH nodes are reached
	Logger   *slog.Logger
}

type localConn struct{ deploy.Local }

func (localConn) Close() error { return nil }

func (f *Fleet) dial(ctx context.Context, n Node) (Conn, error) {
	if n.Local {
		return localConn{}, nil
	}
	if f.DialSSH == nil {
		return nil, fmt.Errorf("node %q is an SSH node and this command cannot reach SSH nodes", n.Name)
	}
	return f.DialSSH(ctx, n)
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

// each runs fn on every node with at most Parallel at once; one node's
// failure never stops the others.
func (f *Fleet) each(ctx context.Context, op string, nodes []Node, fn func(context.Context, Node, Conn) error) error {
	limit := f.Parallel
	if limit <= 0 {
		limit = 16
	}
	sem := make(chan struct{}, limit)
	var mu sync.Mutex
	failed := map[string]error{}
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				mu.Lock()
				failed[n.Name] = ctx.Err()
				mu.Unlock()
				return
			}
			defer func() { <-sem }()
			err := func() error {
				conn, err := f.dial(ctx, n)
				if err != nil {
					return err
				}
				defer conn.Close()
				return fn(ctx, n, conn)
			}()
			if err != nil {
				mu.Lock()
				failed[n.Name] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return nodeErrors(op, failed, len(nodes))
}

// Layout is where a node keeps the worker and how a worker is started there.
func (f *Fleet) Layout(n Node) (deploy.Node, error) {
	if n.Local {
		cfgPath, err := filepath.Abs(f.Config.Path)
		if err != nil {
			return deploy.Node{}, err
		}
		// A local worker is stale only when the config changed: its binary
		// is whichever pampactl ran `workers start`, and the one running
		// this command may be another (go run builds a new one each time),
		// so comparing it would call workers stale for nothing.
		return deploy.Node{WorkDir: n.WorkDir, Command: workerArgv(f.Binary, cfgPath), Files: []string{cfgPath}}, nil
	}
	// Workers start in the work dir, so paths relative to it hold.
	return deploy.Node{WorkDir: n.WorkDir, Command: workerArgv("./"+RemoteBinary, RemoteConfig), Files: []string{RemoteBinary, RemoteConfig}}, nil
}

// Where deploy puts the binary and config on SSH nodes, under the work dir.
const (
	RemoteBinary = "bin/pampactl"
	RemoteConfig = "cluster.toml"
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

// StopWorkers stops the nodes' workers (with ids, only those): TERM, then
// KILL after grace.
func (f *Fleet) StopWorkers(ctx context.Context, names []string, grace time.Duration, ids ...string) ([]NodeWorkers, error) {
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
