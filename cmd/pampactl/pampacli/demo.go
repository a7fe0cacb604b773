package pampacli

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/pampa-go/pampa/internal/demo"
)

func (e *env) demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run the seed's example: find the odd numbers among 1..100,000 with a dispatcher and two local workers (a Go handler, results stored by result_sql)",
		Description: "Uses $PAMPA_DATABASE_URL when set (in schema " + demo.Schema + "); otherwise starts a private\n" +
			"PostgreSQL from the installed server binaries in a temporary directory, removed at exit.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "rows", Value: 100_000, Usage: "how many numbers"},
			&cli.IntFlag{Name: "workers", Value: 2, Usage: "local worker processes"},
			&cli.IntFlag{Name: "queue-size", Value: 500, Usage: "rows reserved per worker at a time"},
			&cli.BoolFlag{Name: "verbose", Usage: "log what the dispatcher does"},
		},
		Action: func(c *cli.Context) error {
			if c.Int("rows") < 1 || c.Int("workers") < 1 || c.Int("queue-size") < 1 {
				return usagef("--rows, --workers and --queue-size must be at least 1")
			}
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			log, closeLog, err := e.logger(c, "")
			if err != nil {
				return err
			}
			defer closeLog()
			if !c.Bool("verbose") {
				log = nil
			}
			res, err := demo.Run(c.Context, demo.Options{
				DatabaseURL: e.getenv("PAMPA_DATABASE_URL"), Rows: c.Int("rows"), Workers: c.Int("workers"),
				QueueSize: c.Int("queue-size"), Binary: bin, Progress: e.stderr, Terminal: isTerminal(e.stderr), Logger: log,
			})
			if err != nil {
				return err
			}
			s := res.Status
			fmt.Fprintf(e.stdout, "job %s: %d total, %d completed, %d failed, %d pending; every is_odd checked: %d wrong\n",
				s.Job, s.Total, s.Completed, s.Failed, s.Pending, res.Wrong)
			fmt.Fprintf(e.stdout, "took %s (%.0f rows/s end to end)\n", res.Elapsed.Round(10e6), float64(s.Completed)/res.Elapsed.Seconds())
			return nil
		},
	}
}

func isTerminal(w any) bool {
	if l, ok := w.(*lockedWriter); ok {
		w = l.w
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
