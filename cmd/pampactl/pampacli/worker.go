package pampacli

import (
	"fmt"
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
				wc, err := cfg.WorkerConfig(id, e.getenv)
				if err != nil {
					return err
				}
				logFile := strings.ReplaceAll(logFileFlag(c, cfg.Worker.LogFile), "{id}", id)
				log, closeLog, err := e.logger(c, logFile)
				if err != nil {
					return err
				}
				defer closeLog()
				cfg.CapWorkerLogs(c.Context, wc, logFile)
				wc.Handlers, wc.Logger = e.opts.Handlers, log
				w, err := worker.New(wc)
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
				plan, err := cfg.LimitPlan(c.String("node"))
				if err != nil {
					return err
				}
				if c.Bool("json") {
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
