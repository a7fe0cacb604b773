package pampacli

import (
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/worker"
)

func (e *env) periodicCommand() *cli.Command {
	return &cli.Command{
		Name:      "periodic",
		Usage:     "run a command every --delay, measured from start to start (a stand-alone process)",
		ArgsUsage: "-- COMMAND [ARGS...]",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "delay", Value: 10 * time.Second, Usage: "time between starts; a longer run is followed at once"},
			&cli.BoolFlag{Name: "once", Usage: "run once and exit with the command's result"},
			&cli.StringFlag{Name: "log-file", Usage: "append logs to this file too"},
		},
		Action: func(c *cli.Context) error {
			argv := c.Args().Slice()
			if len(argv) == 0 {
				return usagef("periodic: give the command to run after --")
			}
			log, closeLog, err := e.logger(c, c.String("log-file"))
			if err != nil {
				return err
			}
			defer closeLog()
			dir, _ := os.Getwd()
			p := worker.Periodic{Delay: c.Duration("delay"), RunOnce: c.Bool("once"), Logger: log,
				Func: worker.CommandFunc(argv, dir, os.Environ())}
			return p.Run(c.Context)
		},
	}
}
