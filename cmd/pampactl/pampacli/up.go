package pampacli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

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
			res, err := f.StopWorkers(c.Context, c.StringSlice("node"), f.Config.Worker.GracePeriod+5*time.Second)
			e.printProcesses(res)
			return err
		},
	}
}

// proceed reports a partial failure on stderr and goes on with the nodes
// that worked; anything else stops `up`.
func (e *env) proceed(err error) error {
	var partial *orchestrator.PartialError
	if errors.As(err, &partial) && len(partial.Failed) < partial.Total {
		fmt.Fprintln(e.stderr, "pampactl: warning:", err)
		return nil
	}
	return err
}

// goOnWith is what is left of active after a step failed with err on some
// nodes: the nodes ok says the step worked on. It warns on stderr and
// returns them, or returns err when none is left or `up` was interrupted.
func (e *env) goOnWith(ctx context.Context, active []string, ok map[string]bool, err error) ([]string, error) {
	if ctx.Err() != nil {
		return nil, err
	}
	var left []string
	for _, n := range active {
		if ok[n] {
			left = append(left, n)
		}
	}
	if len(left) == 0 {
		return nil, err
	}
	fmt.Fprintln(e.stderr, "pampactl: warning:", err)
	fmt.Fprintf(e.stderr, "pampactl: warning: going on with %s only\n", strings.Join(left, ", "))
	return left, nil
}

// up deploys, opens the db tunnels, starts the workers and runs the
// dispatcher. A node that fails a step is left out of the next ones: its
// workers are not started where the binary or the config may be stale, nor
// where the db tunnel did not open (they would hand the database
// credentials to whatever holds the tunnel's port on the node).
func (e *env) up(c *cli.Context) error {
	ctx := c.Context
	f, err := e.sshFleet(c)
	if err != nil {
		return err
	}
	configFor, err := e.nodeConfigs(f.Config, true)
	if err != nil {
		return err
	}
	nodes, err := f.Nodes(c.StringSlice("node"))
	if err != nil {
		return err
	}
	active := make([]string, 0, len(nodes))
	byName := map[string]orchestrator.Node{}
	for _, n := range nodes {
		active = append(active, n.Name)
		byName[n.Name] = n
	}

	dep, err := f.Deploy(ctx, orchestrator.DeployOptions{Names: active, Binary: e.binaryFunc(c), ConfigFor: configFor})
	e.printDeploy(dep)
	if err != nil {
		ok := map[string]bool{}
		for _, d := range dep {
			ok[d.Node] = true
		}
		for _, n := range nodes {
			if n.Local { // nothing to deploy
				ok[n.Name] = true
			}
		}
		if active, err = e.goOnWith(ctx, active, ok, err); err != nil {
			return err
		}
	}

	var tunnelled []string
	for _, name := range active {
		if byName[name].Tunnel {
			tunnelled = append(tunnelled, name)
		}
	}
	if len(tunnelled) > 0 {
		tunnels, err := f.OpenTunnels(ctx, tunnelled, dispatcherDialer(f.Config))
		if tunnels != nil {
			defer tunnels.Close()
		}
		if err != nil {
			ok := map[string]bool{}
			for _, name := range active {
				ok[name] = !byName[name].Tunnel
			}
			if tunnels != nil {
				for _, name := range tunnels.Nodes() {
					ok[name] = true
				}
			}
			if active, err = e.goOnWith(ctx, active, ok, err); err != nil {
				return err
			}
		}
	}

	started, err := f.StartWorkers(ctx, active)
	e.printProcesses(started)
	if err := e.proceed(err); err != nil {
		return err
	}
	d, rows, closeLog, err := e.newDispatcher(c, f.Config)
	if err != nil {
		return err
	}
	defer closeLog()
	fmt.Fprintln(e.stderr, "pampactl: dispatcher running; interrupt to stop it (workers keep running: pampactl down stops them)")
	defer e.consoleBeside(c, f.Config, d)()
	defer e.progressLine(c, d, rows)()
	return e.serveDispatcher(c, f.Config, d)
}
