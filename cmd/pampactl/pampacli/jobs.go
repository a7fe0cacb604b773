package pampacli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
)

func (e *env) jobsCommand() *cli.Command {
	return &cli.Command{
		Name:  "jobs",
		Usage: "report job progress",
		Subcommands: []*cli.Command{{
			Name:  "status",
			Usage: "rows per job: total, pending, queued, running, completed, failed",
			Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON: a list of {job,total,pending,queued,running,completed,failed}"}},
			Action: func(c *cli.Context) error {
				cfg, conn, err := e.connect(c)
				if err != nil {
					return err
				}
				defer conn.Close(c.Context)
				st, err := dispatcher.Report(c.Context, conn, cfg.Jobs)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					enc := json.NewEncoder(e.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(st)
				}
				printJobs(e, st)
				return nil
			},
		}},
	}
}

func printJobs(e *env, st []dispatcher.JobStatus) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "JOB\tTOTAL\tPENDING\tQUEUED\tRUNNING\tCOMPLETED\tFAILED\t")
	for _, s := range st {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", s.Job, s.Total, s.Pending, s.Queued, s.Running, s.Completed, s.Failed)
	}
	tw.Flush()
}
