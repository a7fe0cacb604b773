package orchestrator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pampa-go/pampa/internal/logcap"
	"github.com/pampa-go/pampa/worker"
)

// WorkerConfig is what worker id (node.N) runs with, from the config: the
// dispatchers its node dials, the worker secret, TLS, the jobs it may take
// (not the sql ones: the dispatcher runs those), its node's limits, its
// work dir (a worker on an SSH node is started in it), and
// PAMPA_DATABASE_URL for handlers that write themselves. Handlers and
// Logger are the caller's. `pampactl worker run` and the worker-only build
// (cmd/pampa-worker) both run workers so.
func (c *Config) WorkerConfig(id string, getenv func(string) string) (worker.Config, error) {
	if err := c.KnownWorker(id); err != nil {
		return worker.Config{}, err
	}
	nodeName, _, _ := strings.Cut(id, ".")
	node, _ := c.Node(nodeName)
	secret, err := c.Secret(getenv)
	if err != nil {
		return worker.Config{}, err
	}
	tlsConfig, err := c.WorkerTLS()
	if err != nil {
		return worker.Config{}, err
	}
	workDir := node.WorkDir
	if !node.Local {
		workDir, _ = os.Getwd() // started in the work dir
	}
	var jobs []worker.Job
	for _, j := range c.Jobs {
		if j.Step.SQL == "" && j.WorkerMatches(id) {
			jobs = append(jobs, worker.Job{Name: j.Name, Command: j.Step.Command, MaxJobDuration: j.MaxJobDuration, Slots: j.Slots})
		}
	}
	return worker.Config{
		ID: id, Node: nodeName, Dispatchers: c.WorkerDispatchers(node), Secret: secret, TLS: tlsConfig,
		Jobs: jobs, GracePeriod: c.Worker.GracePeriod, WorkDir: workDir, StartCommand: c.Worker.StartCommand,
		Limits: node.Limits, DatabaseURL: getenv("PAMPA_DATABASE_URL"),
	}, nil
}

// CapWorkerLogs keeps worker w's logs under log_max_mb until ctx ends: the
// output `workers start` appends to the node's log file, and logFile.
func (c *Config) CapWorkerLogs(ctx context.Context, w worker.Config, logFile string) {
	for _, p := range slices.Compact([]string{filepath.Join(w.WorkDir, WorkerLogFile(w.ID)), logFile}) {
		go c.Worker.Logs.Cap(ctx, p)
	}
}

// Cap keeps the log at path under l's bound until ctx ends; nothing
// without a path or a bound.
func (l LogCap) Cap(ctx context.Context, path string) {
	if path == "" || l.MaxMB == 0 {
		return
	}
	logcap.Cap{Path: path, Max: int64(l.MaxMB) << 20, Keep: l.Keep, Every: 10 * time.Second}.Run(ctx)
}

// LimitPlan says how this host enforces the limits of node name (the
// config's only node when name is ""), for a worker in its work dir: what
// `worker limits` prints and `nodes check` asks a node.
func (c *Config) LimitPlan(name string) ([]worker.LimitPlan, error) {
	if name == "" && len(c.Nodes) == 1 {
		name = c.Nodes[0].Name
	}
	node, ok := c.Node(name)
	if !ok {
		return nil, &ConfigError{File: c.Path, Key: "nodes", Msg: fmt.Sprintf("no node %q; name one of %v", name, nodeNames(c.Nodes))}
	}
	workDir := node.WorkDir
	if !node.Local {
		workDir, _ = os.Getwd()
	}
	plan := worker.PlanLimits(node.Limits, workDir)
	if plan == nil {
		plan = []worker.LimitPlan{}
	}
	return plan, nil
}
