package pampacli

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
)

func (e *env) initCommand() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "write a starter cluster.toml for an existing table, its primary key read from the database",
		Description: "The database is --db-url, else $PAMPA_DATABASE_URL. The file names the URL's variable, not the\n" +
			"URL (keep secrets out of files), one local node and one job on the table, whose step you then\n" +
			"write: sql, command, or a Go handler. Nothing is overwritten without --force.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "table", Required: true, Usage: "the table whose rows are the tasks: table or schema.table"},
			&cli.StringFlag{Name: "db-url", Usage: "the database (default: $PAMPA_DATABASE_URL)"},
			&cli.StringFlag{Name: "out", Value: "cluster.toml", Usage: "the file to write"},
			&cli.BoolFlag{Name: "force", Usage: "overwrite the file"},
		},
		Action: e.initConfig,
	}
}

func (e *env) initConfig(c *cli.Context) error {
	table, out := c.String("table"), c.String("out")
	if err := dispatcher.ValidateTable(table); err != nil {
		return usagef("--table %q: %v", table, err)
	}
	if _, err := os.Stat(out); err == nil && !c.Bool("force") {
		return usagef("%s exists; pass --force to overwrite it, or --out another file", out)
	}
	url := c.String("db-url")
	if url == "" {
		url = e.getenv("PAMPA_DATABASE_URL")
	}
	if url == "" {
		return usagef("no database: pass --db-url, or export PAMPA_DATABASE_URL")
	}
	conn, err := pgx.Connect(c.Context, url)
	if err != nil {
		return fmt.Errorf("connect to the database: %w", err)
	}
	defer conn.Close(context.Background())
	pk, err := primaryKey(c.Context, conn, table)
	if err != nil {
		return err
	}
	name := table[strings.LastIndex(table, ".")+1:]
	urlLine := fmt.Sprintf("url_env = %q  # export the URL there; keep it out of this file", "PAMPA_DATABASE_URL")
	if c.IsSet("db-url") {
		urlLine = fmt.Sprintf("url = %q\nurl_env = \"PAMPA_DATABASE_URL\"", url)
	}
	text := fmt.Sprintf(`# Written by pampactl init --table %[1]s. Every key: cluster.toml.example.
[database]
%[2]s

[dispatcher]
listen = "127.0.0.1:7543"

[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = 2

[[jobs]]
name = %[3]q
table = %[1]q
field_primary_key = %[4]q
field_prefix = %[3]q
queue_size = 100
# The step, run per row; write one of (none: a Go handler registered as %[3]q):
# sql = "update %[1]s set done = true where %[4]s = $1"
# command = ["./step.sh"]   # the row's columns as JSON on stdin
`, table, urlLine, name, pk)
	// What init writes must load.
	if _, err := orchestrator.Parse(out, []byte(text)); err != nil {
		return fmt.Errorf("the config written for table %s does not load: %w", table, err)
	}
	if err := os.WriteFile(out, []byte(text), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %s: job %q on table %s, primary key %s; write its step, then: pampactl --config %s db setup\n",
		out, name, table, pk, out)
	return nil
}

// primaryKey reads the one-column primary key of a table.
func primaryKey(ctx context.Context, conn *pgx.Conn, table string) (string, error) {
	var cols []string
	rows, err := conn.Query(ctx, `select a.attname from pg_index i
join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
where i.indrelid = to_regclass($1) and i.indisprimary order by a.attnum`, table)
	if err != nil {
		return "", fmt.Errorf("read the primary key of %s: %w", table, err)
	}
	if cols, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return "", fmt.Errorf("read the primary key of %s: %w", table, err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, `select to_regclass($1) is not null`, table).Scan(&exists); err != nil {
		return "", err
	}
	switch {
	case !exists:
		return "", usageError{fmt.Errorf("%w: %s is not in the database (check the name and the URL's search_path)", dispatcher.ErrNoTable, table)}
	case len(cols) == 0:
		return "", usagef("table %s has no primary key: Pampa needs one to tell rows apart (alter table %s add primary key (...))", table, table)
	case len(cols) > 1:
		return "", usagef("table %s has a primary key of %d columns (%s); Pampa needs a one-column key: add one, such as a bigint identity",
			table, len(cols), strings.Join(cols, ", "))
	}
	return cols[0], nil
}
