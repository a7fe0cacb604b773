package pampacli

import (
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/worker"
)

func (e *env) workerCommand() *cli.Command {
	return &cli.Command{
		Name:  "worker",
		Usage: "run one worker process in the foreground (pampactl workers start runs these for you)",
		Subcommands: []*cli.Command{{
			Name:  "run",
			Usage: "process the rows the dispatcher reserves for this worker",
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "id", Usage: "worker id, node.N (like local.1)", Required: true},
			}, logFlags()...),
			Action: func(c *cli.Context) error {
				cfg, err := e.loadConfig(c)
				if err != nil {
					return err
				}
				id := c.String("id")
				nodeName, _, _ := strings.Cut(id, ".")
				node, ok := cfg.Node(nodeName)
				if !ok {
					return usagef("worker id %q: no node %q in %s", id, nodeName, cfg.Path)
				}
				url, err := cfg.NodeDatabaseURL(node, e.getenv) // through the db tunnel when the node has one
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
				w, err := worker.New(worker.Config{
					ID: id, Node: nodeName, DatabaseURL: url, Flavor: flavor(cfg), Jobs: cfg.Jobs,
					Handlers: e.opts.Handlers, Delay: cfg.Worker.Delay,
					HeartbeatInterval: cfg.Worker.HeartbeatInterval, GracePeriod: cfg.Worker.GracePeriod,
					WorkDir: workDir, StartSQL: cfg.Worker.StartSQL, StartCommand: cfg.Worker.StartCommand,
					Logger: log,
				})
				if err != nil {
					return usageError{err}
				}
				return w.Run(c.Context)
			},
		}},
	}
}
