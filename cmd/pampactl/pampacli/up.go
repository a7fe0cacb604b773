package pampacli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/orchestrator"
)

func (e *env) upCommand() *cli.Command {
	return &cli.Command{
		Name: "up",
		Usage: "deploy to the nodes, open db tunnels, start the workers, then run the dispatcher in the foreground " +
			"(workers keep running when it stops: pampactl down stops them)",
		Flags: append(withSSHFlags(binaryFlag(),
			&cli.DurationFlag{Name: "delay", Usage: "dispatcher idle poll period (default: [dispatcher] delay)"},
		), logFlags()...),
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

func (e *env) up(c *cli.Context) error {
	f, err := e.sshFleet(c)
	if err != nil {
		return err
	}
	data, err := e.configData(f.Config)
	if err != nil {
		return err
	}
	names := c.StringSlice("node")
	dep, err := f.Deploy(c.Context, orchestrator.DeployOptions{Names: names, Binary: e.binaryFunc(c), ConfigData: data})
	e.printDeploy(dep)
	if err := e.proceed(err); err != nil {
		return err
	}
	dbAddr := ""
	for _, n := range f.Config.Nodes {
		if n.DBTunnel {
			if dbAddr, err = f.Config.DatabaseAddr(e.getenv); err != nil {
				return err
			}
			break
		}
	}
	if dbAddr != "" {
		tunnels, err := f.OpenTunnels(c.Context, names, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dbAddr)
		})
		if err := e.proceed(err); err != nil {
			return err
		}
		if tunnels != nil {
			defer tunnels.Close()
		}
	}
	started, err := f.StartWorkers(c.Context, names)
	e.printProcesses(started)
	if err := e.proceed(err); err != nil {
		return err
	}
	d, closeLog, err := e.newDispatcher(c, f.Config)
	if err != nil {
		return err
	}
	defer closeLog()
	fmt.Fprintln(e.stderr, "pampactl: dispatcher running; interrupt to stop it (workers keep running: pampactl down stops them)")
	return d.Run(c.Context)
}
