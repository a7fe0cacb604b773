package pampacli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/internal/logcap"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/worker"
)

func (e *env) workerCommand() *cli.Command {
	return &cli.Command{
		Name:  "worker",
		Usage: "run one worker process in the foreground (pampactl workers start runs these for you)",
		Subcommands: []*cli.Command{{
			Name:  "run",
			Usage: "process the rows the dispatcher sends this worker",
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "id", Usage: "worker id, node.N (like local.1)", Required: true},
			}, logFlags()...),
			Action: func(c *cli.Context) error {
				cfg, err := e.loadConfig(c)
				if err != nil {
					return err
				}
				id := c.String("id")
				if err := cfg.KnownWorker(id); err != nil {
					return usageError{err}
				}
				nodeName, _, _ := strings.Cut(id, ".")
				node, _ := cfg.Node(nodeName)
				secret, err := cfg.Secret(e.getenv)
				if err != nil {
					return err
				}
				tlsConfig, err := cfg.WorkerTLS()
				if err != nil {
					return err
				}
				logFile := strings.ReplaceAll(logFileFlag(c, cfg.Worker.LogFile), "{id}", id)
				log, closeLog, err := e.logger(c, logFile)
				if err != nil {
					return err
				}
				defer closeLog()
				workDir := node.WorkDir
				if !node.Local {
					workDir, _ = os.Getwd() // started in the work dir
				}
				// The output workers start writes (workers start's >>), and
				// the worker's own log file, stay under log_max_mb.
				for _, p := range slices.Compact([]string{filepath.Join(workDir, orchestrator.WorkerLogFile(id)), logFile}) {
					go capLog(c.Context, p, cfg.Worker.Logs)
				}
				var jobs []worker.Job
				for _, j := range cfg.Jobs {
					if j.Step.SQL == "" && j.WorkerMatches(id) { // the dispatcher runs sql steps
						jobs = append(jobs, worker.Job{Name: j.Name, Command: j.Step.Command, MaxJobDuration: j.MaxJobDuration, Slots: j.Slots})
					}
				}
				w, err := worker.New(worker.Config{
					ID: id, Node: nodeName, Dispatchers: cfg.WorkerDispatchers(node), Secret: secret, TLS: tlsConfig,
					Jobs: jobs, Handlers: e.opts.Handlers, GracePeriod: cfg.Worker.GracePeriod,
					WorkDir: workDir, StartCommand: cfg.Worker.StartCommand, Limits: node.Limits,
					DatabaseURL: e.getenv("PAMPA_DATABASE_URL"), Logger: log,
				})
				if err != nil {
					return usageError{err}
				}
				return w.Run(c.Context)
			},
		}, {
			Name:  "limits",
			Usage: "how this host enforces a node's max_ram, max_cpu, max_disk_io and max_net_io (nodes check asks it)",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "node", Usage: "the node (default: the config's only node)"},
				&cli.BoolFlag{Name: "json", Usage: "print JSON: a list of {limit,value,unit,by,reason}"},
			},
			Action: func(c *cli.Context) error {
				cfg, err := e.loadConfig(c)
				if err != nil {
					return err
				}
				name := c.String("node")
				if name == "" && len(cfg.Nodes) == 1 {
					name = cfg.Nodes[0].Name
				}
				node, ok := cfg.Node(name)
				if !ok {
					return usagef("--node %q: no such node", name)
				}
				workDir := node.WorkDir
				if !node.Local {
					workDir, _ = os.Getwd()
				}
				plan := worker.PlanLimits(node.Limits, workDir)
				if c.Bool("json") {
					if plan == nil {
						plan = []worker.LimitPlan{}
					}
					return e.printJSON(plan)
				}
				for _, p := range plan {
					fmt.Fprintf(e.stdout, "%s %d %s: %s (%s)\n", p.Limit, p.Value, p.Unit, p.By, p.Reason)
				}
				return nil
			},
		}},
	}
}

// capLog keeps the log at path under its bound until ctx ends.
func capLog(ctx context.Context, path string, l orchestrator.LogCap) {
	if path == "" || l.MaxMB == 0 {
		return
	}
	logcap.Cap{Path: path, Max: int64(l.MaxMB) << 20, Keep: l.Keep, Every: 10 * time.Second}.Run(ctx)
}
