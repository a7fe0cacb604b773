package pampacli

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/orchestrator"
)

func (e *env) upCommand() *cli.Command {
	return &cli.Command{
		Name: "up",
		Usage: "deploy to the nodes, open db tunnels, start the workers, then run the dispatcher in the foreground " +
			"(workers keep running when it stops: pampactl down stops them)",
		Flags: append(append(withSSHFlags(binaryFlag(),
			&cli.DurationFlag{Name: "delay", Usage: "dispatcher idle poll period", DefaultText: "[dispatcher] delay"},
		), logFlags()...), append(consoleFlags(),
			&cli.BoolFlag{Name: "progress", Usage: "print a status line every second; the default on a terminal", DefaultText: "on a terminal"})...),
		Action: e.up,
	}
}

func (e *env) downCommand() *cli.Command {
	return &cli.Command{
		Name:  "down",
		Usage: "stop every worker: TERM, then KILL after the grace period",
		Flags: withSSHFlags(),
		Action: func(c *cli.Context) error {
			f, err := e.sshFleet(c)
			if err != nil {
				return err
			}
			res, err := f.StopWorkers(c.Context, c.StringSlice("node"))
			e.printProcesses(res)
			return err
		},
	}
}

// up readies the fleet (orchestrator.Fleet.Up: deploy, tunnels, workers)
// and runs the dispatcher in the foreground.
func (e *env) up(c *cli.Context) error {
	f, err := e.sshFleet(c)
	if err != nil {
		return err
	}
	configFor, err := e.nodeConfigs(f.Config, true)
	if err != nil {
		return err
	}
	up, err := f.Up(c.Context, orchestrator.UpOptions{Names: c.StringSlice("node"), Binary: e.binaryFunc(c), ConfigFor: configFor})
	if up != nil {
		if up.Tunnels != nil {
			defer up.Tunnels.Close()
		}
		e.printDeploy(up.Deployed)
		e.printProcesses(up.Started)
		for _, w := range up.Warnings {
			fmt.Fprintln(e.stderr, "pampactl: warning:", w)
		}
	}
	if err != nil {
		return err
	}
	d, rows, closeLog, err := e.newDispatcher(c, f.Config)
	if err != nil {
		return err
	}
	defer closeLog()
	fmt.Fprintln(e.stderr, "pampactl: dispatcher running; interrupt to stop it (workers keep running: pampactl down stops them)")
	// A second after the start, beside the dispatcher the workers are
	// reaching already: which of them did not last.
	go func() {
		if died := f.DiedAtOnce(c.Context, up.Started); len(died) > 0 {
			fmt.Fprintln(e.stderr, "pampactl: warning:", e.printDied(died, len(startedIDs(up.Started))))
		}
	}()
	defer e.consoleBeside(c, f.Config, d)()
	defer e.progressLine(c, d, rows)()
	return e.serveDispatcher(c, f.Config, d)
}
