package pampacli

import (
	"fmt"
	"os"
	"os/user"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
)

func (e *env) dbCommand() *cli.Command {
	return &cli.Command{
		Name:  "db",
		Usage: "set up the database",
		Subcommands: []*cli.Command{{
			Name:  "setup",
			Usage: "create Pampa's tables and add the bookkeeping columns and indexes of every job (idempotent)",
			Action: func(c *cli.Context) error {
				cfg, conn, err := e.connect(c)
				if err != nil {
					return err
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

// connect loads the config and opens a connection to its database.
func (e *env) connect(c *cli.Context) (*orchestrator.Config, *pgx.Conn, error) {
	cfg, err := e.loadConfig(c)
	if err != nil {
		return nil, nil, err
	}
	conn, err := e.dial(c, cfg)
	return cfg, conn, err
}

// dial connects to cfg's database.
func (e *env) dial(c *cli.Context, cfg *orchestrator.Config) (*pgx.Conn, error) {
	url, err := cfg.DatabaseURL(e.getenv)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(c.Context, url)
	if err != nil {
		return nil, fmt.Errorf("connect to the database: %w", err)
	}
	return conn, nil
}

// operator names who gave an order, for the record: user@host.
func operator() string {
	host, _ := os.Hostname()
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return name + "@" + host
}
