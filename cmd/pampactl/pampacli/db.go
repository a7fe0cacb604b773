package pampacli

import (
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
)

func (e *env) dbCommand() *cli.Command {
	return &cli.Command{
		Name:  "db",
		Usage: "set up the database",
		Subcommands: []*cli.Command{{
			Name:  "setup",
			Usage: "create Pampa's tables and add the bookkeeping columns and indexes of every job (idempotent)",
			Action: func(c *cli.Context) error {
				cfg, err := e.loadConfig(c)
				if err != nil {
					return err
				}
				url, err := cfg.DatabaseURL(e.getenv)
				if err != nil {
					return err
				}
				conn, err := pgx.Connect(c.Context, url)
				if err != nil {
					return fmt.Errorf("connect to the database: %w", err)
				}
				defer conn.Close(c.Context)
				if err := dispatcher.Setup(c.Context, conn, flavor(cfg), cfg.Jobs); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "database ready for %s\n", plural(len(cfg.Jobs), "job"))
				return nil
			},
		}},
	}
}
