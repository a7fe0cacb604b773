package pampacli

import (
	"fmt"
	"os"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/worker"
)

func (e *env) dispatcherCommand() *cli.Command {
	return &cli.Command{
		Name:  "dispatcher",
		Usage: "run the dispatcher",
		Subcommands: []*cli.Command{{
			Name:  "run",
			Usage: "reserve rows for workers, relaunch failed and late rows, assign workers to jobs",
			Flags: append(append([]cli.Flag{
				&cli.DurationFlag{Name: "delay", Usage: "idle poll period (default: [dispatcher] delay)"},
				&cli.BoolFlag{Name: "once", Usage: "run one cycle and exit"},
				&cli.BoolFlag{Name: "no-tunnels", Usage: "do not keep the db tunnels of db_tunnel nodes open (another process does)"},
			}, logFlags()...), sshFlags()...),
			Action: func(c *cli.Context) error {
				cfg, err := e.loadConfig(c)
				if err != nil {
					return err
				}
				d, closeLog, err := e.newDispatcher(c, cfg)
				if err != nil {
					return err
				}
				defer closeLog()
				if !c.Bool("once") && !c.Bool("no-tunnels") {
					tunnels, err := e.keepTunnels(c, cfg)
					if err != nil {
						return err
					}
					if tunnels != nil {
						defer tunnels.Close()
					}
				}
				if c.Bool("once") {
					stats, err := d.RunOnce(c.Context)
					if err != nil {
						return err
					}
					for _, name := range d.Jobs() {
						s := stats[name]
						fmt.Fprintf(e.stdout, "%s: reserved %d, relaunched %d, released %d, failed %d, assigned %d\n",
							name, s.Reserved, s.Relaunched, s.Released, s.Failed, s.Assigned)
					}
					return nil
				}
				return d.Run(c.Context)
			},
		}},
	}
}

func (e *env) newDispatcher(c *cli.Context, cfg *orchestrator.Config) (*dispatcher.Dispatcher, func(), error) {
	url, err := cfg.DatabaseURL(e.getenv)
	if err != nil {
		return nil, nil, err
	}
	log, closeLog, err := e.logger(c, logFileFlag(c, cfg.Dispatcher.LogFile))
	if err != nil {
		return nil, nil, err
	}
	delay := cfg.Dispatcher.Delay
	if c.IsSet("delay") {
		delay = c.Duration("delay")
	}
	if len(cfg.Dispatcher.StartCommand) > 0 {
		p := worker.Periodic{RunOnce: true, Logger: log, Func: worker.CommandFunc(cfg.Dispatcher.StartCommand, "", os.Environ())}
		if err := p.Run(c.Context); err != nil {
			closeLog()
			return nil, nil, fmt.Errorf("dispatcher start_command: %w", err)
		}
	}
	d, err := dispatcher.New(dispatcher.Config{
		DatabaseURL: url, Flavor: flavor(cfg), Jobs: cfg.Jobs, Delay: delay,
		HeartbeatTimeout: cfg.Dispatcher.HeartbeatTimeout, StartSQL: cfg.Dispatcher.StartSQL, Logger: log,
	})
	if err != nil {
		closeLog()
		return nil, nil, err
	}
	return d, closeLog, nil
}

// keepTunnels keeps the db tunnels of the config's db_tunnel nodes open
// while the dispatcher runs, so that workers started by `workers start`
// reach the database; a node that cannot be reached now is retried until
// it can. nil when no node has db_tunnel.
func (e *env) keepTunnels(c *cli.Context, cfg *orchestrator.Config) (*orchestrator.Tunnels, error) {
	if !slices.ContainsFunc(cfg.Nodes, func(n orchestrator.Node) bool { return n.DBTunnel }) {
		return nil, nil
	}
	f, err := e.sshFleet(c)
	if err != nil {
		return nil, err
	}
	dialDB, err := e.dbDialer(cfg)
	if err != nil {
		return nil, err
	}
	tunnels, err := f.KeepTunnels(c.Context, nil, dialDB)
	if err != nil {
		fmt.Fprintln(e.stderr, "pampactl: warning:", err, "(retrying in the background)")
	}
	return tunnels, nil
}
