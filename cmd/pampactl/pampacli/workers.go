package pampacli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
)

func (e *env) fleet(c *cli.Context) (*orchestrator.Fleet, error) {
	cfg, err := e.loadConfig(c)
	if err != nil {
		return nil, err
	}
	bin, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this executable: %w", err)
	}
	return &orchestrator.Fleet{Config: cfg, Binary: bin, DialSSH: e.sshDialer(c, cfg)}, nil
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
		grace := f.Config.Worker.GracePeriod + 5*time.Second
		res, err := f.StopWorkers(c.Context, nodes, grace, ids...)
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
		if died := e.diedAtOnce(c, f, res); died != nil {
			return errors.Join(err, died)
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

// workerRow merges what the node says with what the database says.
type workerRow struct {
	ID           string  `json:"id"`
	Node         string  `json:"node"`
	PID          int     `json:"pid"`
	Process      string  `json:"process"` // running, dead, none, unknown (node unreachable)
	Stale        bool    `json:"stale"`   // running, but the node's binary or config was replaced since it started
	State        string  `json:"state"`   // registry: alive, stopped, dead, or "" if never registered
	Job          string  `json:"job"`
	HeartbeatAge float64 `json:"heartbeat_age_seconds"`
	RowsDone     int64   `json:"rows_done"`
	RowsFailed   int64   `json:"rows_failed"`
}

func (e *env) workersStatus(c *cli.Context) error {
	f, err := e.fleet(c)
	if err != nil {
		return err
	}
	procs, nodeErr := f.WorkerProcesses(c.Context, c.StringSlice("node"))
	// Without the database the nodes' side is shown all the same, and the
	// command fails after: the registry columns are left empty.
	reg, dbErr := e.registry(c, f.Config)
	if dbErr != nil {
		fmt.Fprintf(e.stderr, "pampactl: the registry is not readable, so STATE, HEARTBEAT, JOB, DONE and FAILED are empty: %v\n", dbErr)
		nodeErr = errors.Join(nodeErr, dbErr)
	}
	byID := map[string]dispatcher.WorkerStatus{}
	for _, w := range reg {
		byID[w.ID] = w
	}
	nodes, err := f.Nodes(c.StringSlice("node"))
	if err != nil {
		return err
	}
	seen := map[string]orchestratorProc{}
	for _, n := range procs {
		for _, p := range n.Workers {
			seen[p.ID] = orchestratorProc{pid: p.PID, state: p.State, stale: p.Stale}
		}
	}
	var rows []workerRow
	var staleSSH, staleLocal int
	for _, n := range nodes {
		for _, id := range n.WorkerIDs() {
			r := workerRow{ID: id, Node: n.Name, Process: "unknown"}
			if p, ok := seen[id]; ok {
				r.PID, r.Process, r.Stale = p.pid, p.state, p.stale
			}
			switch {
			case r.Stale && n.Local:
				staleLocal++
			case r.Stale:
				staleSSH++
			}
			if w, ok := byID[id]; ok {
				r.State, r.Job, r.RowsDone, r.RowsFailed = w.State, w.Job, w.RowsDone, w.RowsFailed
				r.HeartbeatAge = w.HeartbeatAge.Round(100 * time.Millisecond).Seconds()
			}
			rows = append(rows, r)
		}
	}
	if c.Bool("json") {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
		return nodeErr
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tPID\tPROCESS\tSTALE\tSTATE\tHEARTBEAT\tJOB\tDONE\tFAILED")
	for _, r := range rows {
		hb := "-"
		if r.State != "" {
			hb = fmt.Sprintf("%.1fs ago", r.HeartbeatAge)
		}
		// Staleness is known of running workers only: "-" for the others,
		// so "no" never claims a dead worker was current.
		stale := "-"
		switch {
		case r.Stale:
			stale = "yes"
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
	return nodeErr
}

type orchestratorProc struct {
	pid   int
	state string
	stale bool
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// startGrace is how long a started worker must live to count as started:
// one that cannot run (a bad config on the node, a missing secret) exits
// within it.
const startGrace = time.Second

// diedAtOnce looks again at the workers just started and reports those
// already gone, each with the end of its log.
func (e *env) diedAtOnce(c *cli.Context, f *orchestrator.Fleet, res []orchestrator.NodeWorkers) error {
	var started, nodes []string
	for _, n := range res {
		for _, w := range n.Workers {
			if w.State == "started" {
				started = append(started, w.ID)
				if !slices.Contains(nodes, n.Node) {
					nodes = append(nodes, n.Node)
				}
			}
		}
	}
	if len(started) == 0 {
		return nil
	}
	select {
	case <-c.Context.Done():
		return nil
	case <-time.After(startGrace):
	}
	now, err := f.WorkerProcesses(c.Context, nodes)
	if err != nil {
		return nil // the nodes said nothing more; the start itself went through
	}
	var dead []string
	for _, n := range now {
		for _, w := range n.Workers {
			if slices.Contains(started, w.ID) && w.State != "running" {
				dead = append(dead, w.ID)
			}
		}
	}
	if len(dead) == 0 {
		return nil
	}
	tails := map[string][]string{}
	_ = f.TailLogs(c.Context, orchestrator.TailOptions{Names: nodes, Workers: dead, Lines: 5,
		Emit: func(_, worker, line string) { tails[worker] = append(tails[worker], line) }})
	for _, id := range dead {
		fmt.Fprintf(e.stdout, "%s\tdied at once\n", id)
		for _, l := range tails[id] {
			fmt.Fprintf(e.stderr, "  %s: %s\n", id, l)
		}
	}
	return fmt.Errorf("%d of %d workers started died within %s: %s (their logs end above)",
		len(dead), len(started), startGrace, strings.Join(dead, " "))
}

// registry reads pampa_workers.
func (e *env) registry(c *cli.Context, cfg *orchestrator.Config) ([]dispatcher.WorkerStatus, error) {
	url, err := cfg.DatabaseURL(e.getenv)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to the database: %w", err)
	}
	defer conn.Close(context.Background())
	return dispatcher.ListWorkers(ctx, conn)
}
