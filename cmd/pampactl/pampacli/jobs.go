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

func (e *env) jobsCommand() *cli.Command {
	return &cli.Command{
		Name:  "jobs",
		Usage: "report job progress, retry failed rows",
		Subcommands: []*cli.Command{{
			Name:  "status",
			Usage: "rows per job: total, pending, scheduled, queued, running, completed, failed, and whether it is paused",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "json", Usage: "print JSON: a list of {job,total,pending,scheduled,queued,running,completed,failed,paused}"},
				&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "report again every --interval until interrupted (a terminal is redrawn)"},
				&cli.DurationFlag{Name: "interval", Value: 2 * time.Second, Usage: "with --watch, the time between two reports"},
			},
			Action: func(c *cli.Context) error {
				if c.Duration("interval") <= 0 {
					return usagef("--interval %s: must be positive", c.Duration("interval"))
				}
				cfg, conn, err := e.connect(c)
				if err != nil {
					return err
				}
				defer conn.Close(context.Background())
				// Missing columns get the db setup hint, not an SQL error.
				if err := dispatcher.Check(c.Context, conn, cfg.Jobs); err != nil {
					return err
				}
				tick := time.NewTicker(c.Duration("interval"))
				defer tick.Stop()
				for {
					st, err := dispatcher.Report(c.Context, conn, cfg.Jobs)
					if err != nil {
						if c.Context.Err() != nil {
							return nil // interrupted while reading
						}
						return err
					}
					switch {
					case c.Bool("json"):
						enc := json.NewEncoder(e.stdout)
						enc.SetIndent("", "  ")
						if err := enc.Encode(st); err != nil {
							return err
						}
					case c.Bool("watch") && isTerminal(e.stdout):
						fmt.Fprint(e.stdout, "\033[H\033[2J") // redraw in place
						fmt.Fprintf(e.stdout, "%s (every %s; interrupt to stop)\n\n", time.Now().Format("15:04:05"), c.Duration("interval"))
						printJobs(e, st)
					case c.Bool("watch"):
						fmt.Fprintf(e.stdout, "%s\n", time.Now().Format(time.RFC3339))
						printJobs(e, st)
					default:
						printJobs(e, st)
					}
					if !c.Bool("watch") {
						return nil
					}
					select {
					case <-c.Context.Done():
						return nil
					case <-tick.C:
					}
				}
			},
		}, {
			Name:  "retry",
			Usage: "give rows that failed on their last allowed attempt a new series of max_try_times attempts",
			Description: "Run it after fixing what made rows fail: every row that ended unsuccessfully with no tries\n" +
				"left (the jobs status FAILED column) becomes available again, with its attempts counted\n" +
				"from 0 and its last error description kept until the next attempt ends. Rows with tries\n" +
				"left, queued, running and completed rows are untouched. On PostgreSQL the dispatcher is\n" +
				"woken so the rows start at once.",
			Flags: []cli.Flag{
				&cli.StringSliceFlag{Name: "job", Usage: "only this job (repeatable; default: every job)"},
				&cli.BoolFlag{Name: "dry-run", Usage: "only count the rows that would be reset"},
			},
			Action: e.jobsRetry,
		}, {
			Name:      "pause",
			Usage:     "stop giving the jobs' rows to workers; queued rows go back, running rows finish",
			ArgsUsage: "JOB...",
			Description: "Stored in the database (pampa_jobs), so a restarted dispatcher keeps it; on PostgreSQL\n" +
				"the dispatcher hears of it at once, on CockroachDB within its delay.",
			Action: func(c *cli.Context) error { return e.jobsPause(c, true) },
		}, {
			Name:      "resume",
			Usage:     "give the jobs' rows to workers again",
			ArgsUsage: "JOB...",
			Action:    func(c *cli.Context) error { return e.jobsPause(c, false) },
		}},
	}
}

func (e *env) jobsPause(c *cli.Context, pause bool) error {
	if c.NArg() == 0 {
		return usagef("name the jobs to %s, such as: pampactl jobs %s JOB", c.Command.Name, c.Command.Name)
	}
	cfg, jobs, conn, err := e.connectJobs(c, c.Args().Slice())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	names := make([]string, len(jobs))
	for i, j := range jobs {
		names[i] = j.Name
	}
	if err := dispatcher.SetPaused(c.Context, conn, flavor(cfg), names, pause, operator()); err != nil {
		return err
	}
	verb := "resumed"
	if pause {
		verb = "paused"
	}
	for _, n := range names {
		fmt.Fprintf(e.stdout, "%s: %s\n", n, verb)
	}
	return nil
}

func (e *env) jobsRetry(c *cli.Context) error {
	cfg, jobs, conn, err := e.connectJobs(c, c.StringSlice("job"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	dry := c.Bool("dry-run")
	var total int64
	for _, j := range jobs {
		kt, err := dispatcher.KeyType(c.Context, conn, j)
		if err != nil {
			return err
		}
		q := dispatcher.NewQueries(j, kt)
		if dry {
			n, err := dispatcher.CountFailedForGood(c.Context, conn, q)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: %s would be reset (dry run)\n", j.Name, plural(int(n), "row"))
			continue
		}
		n, err := dispatcher.RetryFailed(c.Context, conn, q)
		if err != nil {
			return err
		}
		total += n
		fmt.Fprintf(e.stdout, "%s: %s reset, up to %s each\n", j.Name, plural(int(n), "row"), plural(j.MaxTryTimes, "attempt"))
	}
	if total > 0 && flavor(cfg) == dispatcher.Postgres {
		if err := dispatcher.WakeDispatcher(c.Context, conn, "retry"); err != nil {
			// The rows are reset; the dispatcher finds them at its next poll.
			fmt.Fprintf(e.stderr, "pampactl: %v (the dispatcher will find the rows within its delay)\n", err)
		}
	}
	return nil
}

// connectJobs loads the config, selects the jobs named (all when none)
// before connecting, since a typo needs no database, and connects with the
// schema checked, so that missing columns get the db setup hint rather
// than an SQL error.
func (e *env) connectJobs(c *cli.Context, names []string) (*orchestrator.Config, []dispatcher.Job, *pgx.Conn, error) {
	cfg, err := e.loadConfig(c)
	if err != nil {
		return nil, nil, nil, err
	}
	jobs, err := selectJobs(cfg.Jobs, names)
	if err != nil {
		return nil, nil, nil, err
	}
	conn, err := e.dial(c, cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := dispatcher.Check(c.Context, conn, jobs); err != nil {
		conn.Close(context.Background())
		return nil, nil, nil, err
	}
	return cfg, jobs, conn, nil
}

// selectJobs returns the jobs named, in config order, or every job when
// names is empty.
func selectJobs(all []dispatcher.Job, names []string) ([]dispatcher.Job, error) {
	if len(names) == 0 {
		return all, nil
	}
	known := make([]string, len(all))
	for i, j := range all {
		known[i] = j.Name
	}
	for _, n := range names {
		if !slices.Contains(known, n) {
			return nil, usagef("--job %q: no such job; the jobs are: %s", n, strings.Join(known, ", "))
		}
	}
	var out []dispatcher.Job
	for _, j := range all {
		if slices.Contains(names, j.Name) {
			out = append(out, j)
		}
	}
	return out, nil
}

func printJobs(e *env, st []dispatcher.JobStatus) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "JOB\tTOTAL\tPENDING\tRETRYING\tSCHEDULED\tQUEUED\tRUNNING\tCOMPLETED\tFAILED\tSTATE\t")
	for _, s := range st {
		state := "active"
		if s.Paused {
			state = "paused"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n", s.Job, s.Total, s.Pending, s.Retrying, s.Scheduled, s.Queued, s.Running, s.Completed, s.Failed, state)
	}
	tw.Flush()
}
