package pampacli

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
)

func (e *env) rowsCommand() *cli.Command {
	job := &cli.StringFlag{Name: "job", Required: true, Usage: "the job whose rows these are"}
	return &cli.Command{
		Name:  "rows",
		Usage: "list, retry or cancel rows of a job",
		Subcommands: []*cli.Command{{
			Name:  "list",
			Usage: "rows of a job: key, state, attempts, worker, start, end, error",
			Flags: []cli.Flag{job,
				&cli.StringFlag{Name: "state", Usage: "only rows in this state: " + strings.Join(dispatcher.RowStates, ", ")},
				&cli.IntFlag{Name: "limit", Value: 100, Usage: "at most this many rows, in key order"},
				&cli.BoolFlag{Name: "json", Usage: "print JSON: a list of {key,state,attempts,worker,started_at,ended_at,error}"},
			},
			Action: e.rowsList,
		}, {
			Name:      "retry",
			Usage:     "make failed rows available again at once, attempts from 0",
			ArgsUsage: "KEY...",
			Description: "Each named row that failed (for good, or waiting out its retry delay) starts a new series\n" +
				"of max_try_times attempts; --all-failed takes every row failed for good, as jobs retry does.\n" +
				"Rows in other states are left as they are and named.",
			Flags:  []cli.Flag{job, &cli.BoolFlag{Name: "all-failed", Usage: "every row of the job failed for good"}},
			Action: e.rowsRetry,
		}, {
			Name:      "cancel",
			Usage:     "cancel rows: not tried again; a running one has its step stopped",
			ArgsUsage: "KEY...",
			Description: "A pending, scheduled or failed row ends failed with the error \"cancelled\" at once; a queued\n" +
				"or running one when its worker has dropped it or stopped its step (within a second on\n" +
				"PostgreSQL). Completed rows are left as they are. rows retry undoes a cancel.",
			Flags:  []cli.Flag{job},
			Action: e.rowsCancel,
		}},
	}
}

// rowsJob connects for --job's rows, with the statements of the job; keys
// must be given unless allowNone.
func (e *env) rowsJob(c *cli.Context, allowNone bool) (*orchestrator.Config, *dispatcher.Queries, *pgx.Conn, error) {
	if !allowNone && c.NArg() == 0 {
		return nil, nil, nil, usagef("name the rows by key, such as: pampactl rows %s --job %s 17 42", c.Command.Name, c.String("job"))
	}
	cfg, jobs, conn, err := e.connectJobs(c, []string{c.String("job")})
	if err != nil {
		return nil, nil, nil, err
	}
	q, err := queriesFor(c.Context, conn, jobs[0])
	if err != nil {
		conn.Close(context.Background())
		return nil, nil, nil, err
	}
	return cfg, q, conn, nil
}

func (e *env) rowsList(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("rows list takes no arguments; filter with --state and --limit")
	}
	state := c.String("state")
	if state != "" && !slices.Contains(dispatcher.RowStates, state) {
		return usagef("--state %q: the states are %s", state, strings.Join(dispatcher.RowStates, ", "))
	}
	if c.Int("limit") < 1 {
		return usagef("--limit %d: give at least 1", c.Int("limit"))
	}
	_, q, conn, err := e.rowsJob(c, true)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rows, err := dispatcher.ListRows(c.Context, conn, q.Job(), dispatcher.RowFilter{State: state, Limit: c.Int("limit")})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if rows == nil {
			rows = []dispatcher.RowInfo{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tSTATE\tATTEMPTS\tWORKER\tSTARTED\tENDED\tERROR")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Key, r.State, r.Attempts, deref(r.Worker),
			stamp(r.Start), stamp(r.End), firstLineOf(deref(r.Error)))
	}
	return tw.Flush()
}

func (e *env) rowsRetry(c *cli.Context) error {
	all := c.Bool("all-failed")
	if all && c.NArg() > 0 {
		return usagef("give keys or --all-failed, not both")
	}
	cfg, q, conn, err := e.rowsJob(c, all)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	j := q.Job()
	if all {
		n, err := dispatcher.RetryFailed(c.Context, conn, q)
		if err != nil {
			return err
		}
		if n > 0 && flavor(cfg) == dispatcher.Postgres {
			_ = dispatcher.WakeDispatcher(c.Context, conn, dispatcher.ControlNote)
		}
		fmt.Fprintf(e.stdout, "%s: %s reset\n", j.Name, plural(int(n), "row"))
		return nil
	}
	keys := c.Args().Slice()
	done, err := dispatcher.Retry(c.Context, conn, flavor(cfg), q, keys)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: %s reset\n", j.Name, plural(len(done), "row"))
	if left := without(keys, done); len(left) > 0 {
		return fmt.Errorf("job %s: not failed, or not rows, so left as they are: %s", j.Name, strings.Join(left, " "))
	}
	return nil
}

func (e *env) rowsCancel(c *cli.Context) error {
	cfg, q, conn, err := e.rowsJob(c, false)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	j := q.Job()
	res, err := dispatcher.Cancel(c.Context, conn, flavor(cfg), q, c.Args().Slice())
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: %s cancelled\n", j.Name, plural(len(res.Cancelled), "row"))
	if len(res.Finished) > 0 {
		fmt.Fprintf(e.stdout, "%s: already ended, left as they are: %s\n", j.Name, strings.Join(res.Finished, " "))
	}
	if len(res.Unknown) > 0 {
		return fmt.Errorf("job %s: no such rows: %s", j.Name, strings.Join(res.Unknown, " "))
	}
	return nil
}

func queriesFor(ctx context.Context, conn *pgx.Conn, j dispatcher.Job) (*dispatcher.Queries, error) {
	kt, err := dispatcher.KeyType(ctx, conn, j)
	if err != nil {
		return nil, err
	}
	return dispatcher.NewQueries(j, kt), nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func stamp(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func firstLineOf(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// without returns the elements of a not in b.
func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
