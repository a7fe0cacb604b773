package pampacli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/sshx"
)

func (e *env) fleet(c *cli.Context) (*orchestrator.Fleet, error) {
	cfg, err := e.loadConfig(c)
	if err != nil {
		return nil, err
	}
	bin, err := e.workerBinary()
	if err != nil {
		return nil, err
	}
	opts := orchestrator.SSHOptions{AcceptNewHostKeys: flagBool(c, "accept-new-host-keys"), Timeout: flagDuration(c, "ssh-timeout", 10*time.Second)}
	return &orchestrator.Fleet{Config: cfg, Binary: bin, SSH: func(n orchestrator.Node) (sshx.Config, error) {
		return n.SSHConfig(opts, e.getenv)
	}}, nil
}

func (e *env) workersCommand() *cli.Command {
	// selection is the nodes and worker ids a command names: --node,
	// and worker ids as arguments (their nodes too).
	selection := func(c *cli.Context, f *orchestrator.Fleet) ([]string, []string, error) {
		ids := c.Args().Slice()
		nodes, err := f.Config.WorkerNodes(ids)
		if err != nil {
			return nil, nil, usageError{err}
		}
		if len(ids) == 0 {
			nodes = c.StringSlice("node")
		} else if len(c.StringSlice("node")) > 0 {
			return nil, nil, usagef("name workers or --node, not both")
		}
		return nodes, ids, nil
	}
	stop := func(c *cli.Context) error {
		f, err := e.fleet(c)
		if err != nil {
			return err
		}
		nodes, ids, err := selection(c, f)
		if err != nil {
			return err
		}
		res, err := f.StopWorkers(c.Context, nodes, ids...)
		e.printProcesses(res)
		return err
	}
	start := func(c *cli.Context) error {
		f, err := e.fleet(c)
		if err != nil {
			return err
		}
		nodes, ids, err := selection(c, f)
		if err != nil {
			return err
		}
		// Local workers read the secret file; remote ones got it by deploy.
		if _, created, err := f.Config.EnsureSecret(e.getenv); err != nil {
			return err
		} else if created {
			fmt.Fprintf(e.stderr, "pampactl: created the worker secret %s (mode 0600)\n", f.Config.Dispatcher.SecretFile)
		}
		res, err := f.StartWorkers(c.Context, nodes, ids...)
		e.printProcesses(res)
		if died := f.DiedAtOnce(c.Context, res); len(died) > 0 {
			return errors.Join(err, e.printDied(died, len(startedIDs(res))))
		}
		return err
	}
	return &cli.Command{
		Name:  "workers",
		Usage: "start, stop and list the worker processes of the nodes",
		Subcommands: []*cli.Command{
			{Name: "start", Usage: "start the missing workers, up to max_workers per node (idempotent); only the ids named, if any",
				ArgsUsage: "[ID...]", Flags: []cli.Flag{newNodeFlag()}, Action: start},
			{Name: "stop", Usage: "stop workers: TERM, then KILL after the grace period; only the ids named, if any",
				ArgsUsage: "[ID...]", Flags: []cli.Flag{newNodeFlag()}, Action: stop},
			{Name: "restart", Usage: "stop, then start; only the ids named, if any", ArgsUsage: "[ID...]", Flags: []cli.Flag{newNodeFlag()}, Action: func(c *cli.Context) error {
				if err := stop(c); err != nil {
					return err
				}
				return start(c)
			}},
			{Name: "status", Usage: "list workers: pid, state, stale (runs replaced files), heartbeat age, job, rows done",
				Flags: []cli.Flag{newNodeFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}}, Action: e.workersStatus},
		},
	}
}

func (e *env) printProcesses(res []orchestrator.NodeWorkers) {
	for _, n := range res {
		for _, w := range n.Workers {
			if w.PID > 0 {
				fmt.Fprintf(e.stdout, "%s\t%s\tpid %d\n", w.ID, w.State, w.PID)
			} else {
				fmt.Fprintf(e.stdout, "%s\t%s\n", w.ID, w.State)
			}
		}
	}
}

func (e *env) workersStatus(c *cli.Context) error {
	f, err := e.fleet(c)
	if err != nil {
		return err
	}
	rep, err := f.WorkersStatus(c.Context, c.StringSlice("node"), func(ctx context.Context) ([]dispatcher.WorkerStatus, error) {
		return e.registry(ctx, f.Config)
	})
	if err != nil {
		return err
	}
	// Without the database the nodes' side is shown all the same, and the
	// command fails after.
	if rep.RegistryErr != nil {
		fmt.Fprintf(e.stderr, "pampactl: the registry is not readable, so STATE, HEARTBEAT, JOB, DONE and FAILED are empty: %v\n", rep.RegistryErr)
	}
	failed := errors.Join(rep.NodesErr, rep.RegistryErr)
	if c.Bool("json") {
		if err := e.printJSON(rep.Workers); err != nil {
			return err
		}
		return failed
	}
	local := map[string]bool{}
	for _, n := range f.Config.Nodes {
		local[n.Name] = n.Local
	}
	var staleSSH, staleLocal int
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tPID\tPROCESS\tSTALE\tSTATE\tHEARTBEAT\tJOB\tDONE\tFAILED")
	for _, r := range rep.Workers {
		hb := "-"
		if r.State != "" {
			hb = fmt.Sprintf("%.1fs ago", r.HeartbeatAge)
		}
		// Staleness is known of running workers only: "-" for the others,
		// so "no" never claims a dead worker was current.
		stale := "-"
		switch {
		case r.Stale && local[r.Node]:
			stale = "yes"
			staleLocal++
		case r.Stale:
			stale = "yes"
			staleSSH++
		case r.Process == "running":
			stale = "no"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", r.ID, r.PID, r.Process, stale, dash(r.State), hb, dash(r.Job), r.RowsDone, r.RowsFailed)
	}
	tw.Flush()
	// The fix differs: deploy does not touch local nodes.
	if staleSSH > 0 {
		fmt.Fprintf(e.stderr, "%s on SSH nodes run a binary or config replaced since they started: `pampactl nodes deploy --restart` restarts them\n", plural(staleSSH, "worker"))
	}
	if staleLocal > 0 {
		fmt.Fprintf(e.stderr, "%s on local nodes run a config changed since they started: `pampactl workers restart --node NODE` restarts them\n", plural(staleLocal, "worker"))
	}
	return failed
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// startedIDs are the workers res says were started.
func startedIDs(res []orchestrator.NodeWorkers) []string {
	var ids []string
	for _, n := range res {
		for _, w := range n.Workers {
			if w.State == "started" {
				ids = append(ids, w.ID)
			}
		}
	}
	return ids
}

// printDied prints the workers that died at once, with the end of their
// logs, and returns the error that says so.
func (e *env) printDied(dead []orchestrator.DeadWorker, started int) error {
	ids := make([]string, len(dead))
	for i, d := range dead {
		ids[i] = d.ID
		fmt.Fprintf(e.stdout, "%s\tdied at once\n", d.ID)
		for _, l := range d.LogTail {
			fmt.Fprintf(e.stderr, "  %s: %s\n", d.ID, l)
		}
	}
	return fmt.Errorf("%d of %d workers started died within %s: %s (their logs end above)",
		len(dead), started, orchestrator.StartGrace, strings.Join(ids, " "))
}

// registry reads pampa_workers.
func (e *env) registry(ctx context.Context, cfg *orchestrator.Config) ([]dispatcher.WorkerStatus, error) {
	url, err := cfg.DatabaseURL(e.getenv)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to the database: %w", err)
	}
	defer conn.Close(context.Background())
	return dispatcher.ListWorkers(ctx, conn)
}
