// Package pampacli is pampactl's command line. It is importable so that a
// project can build its own pampactl with Go handlers registered:
//
//	func main() {
//		pampacli.Main(pampacli.Options{Handlers: map[string]worker.Handler{
//			"scrape": scrape,
//		}})
//	}
//
// That one binary is then the controller, the dispatcher and the worker
// that `pampactl nodes deploy` pushes to nodes: the worker-only build
// (pampa-worker) would not have the handlers. For lighter workers, build
// one from workercli with the same handlers and push it with --binary.
package pampacli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/demo"
	"github.com/pampa-go/pampa/internal/slogfile"
	"github.com/pampa-go/pampa/internal/suggest"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/worker"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2 // bad flags or configuration
	ExitPartial     = 3 // some nodes failed
	ExitInterrupted = 130
)

// Options customise the CLI.
type Options struct {
	Handlers map[string]worker.Handler // Go steps by job name
}

// Main runs the CLI on the process's arguments and exits.
func Main(opts Options) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr, os.Getenv, opts)
	stop()
	os.Exit(code)
}

// env is what every command gets: streams, environment and options.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	opts           Options
	warned         bool // the config's warnings were printed
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// usageError marks errors in how the command was called (exit code 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// Run runs the CLI and returns the exit code; it never calls os.Exit.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string, opts Options) int {
	if getenv(demo.HandlerEnv) == "1" {
		// A worker the demo started: the demo's job runs its Go handler.
		h := map[string]worker.Handler{demo.Job: demo.Handler}
		for k, v := range opts.Handlers {
			h[k] = v
		}
		opts.Handlers = h
	}
	// Loggers of goroutines that run side by side (the dispatcher and the
	// console beside it) share these streams: one write at a time.
	e := &env{stdin: stdin, stdout: &lockedWriter{w: stdout}, stderr: &lockedWriter{w: stderr}, getenv: getenv, opts: opts}
	app := e.app()
	ownHelpCommands(app) // concurrent Runs must not share urfave's help command
	if len(args) == 2 && (args[1] == "--help" || args[1] == "-h") {
		// The root's help flag is urfave's global one, which we replace.
		args = []string{args[0], "help"}
	}
	if len(args) > 3 && args[1] == "help" {
		// urfave's help command shows the first name's help only: `help
		// jobs status` is `jobs status --help`.
		args = append(slices.Clone(args[:1]), append(slices.Clone(args[2:]), "--help")...)
	}
	if len(args) == 2 && args[1] == "--version" {
		// So is its version flag, which would also take -v from --verbose.
		args = []string{args[0], "version"}
	}
	// Only when a shell asks: urfave's completion flag is a package
	// variable that concurrent Runs would share.
	app.EnableBashCompletion = slices.Contains(args, completeFlag)
	err := app.RunContext(ctx, args)
	return e.exitCode(ctx, err)
}

func (e *env) exitCode(ctx context.Context, err error) int {
	if err == nil {
		if ctx.Err() != nil {
			return ExitInterrupted // stopped by a signal, as a shell expects
		}
		return ExitOK
	}
	fmt.Fprintln(e.stderr, "pampactl:", err)
	var ue usageError
	var partial *orchestrator.PartialError
	switch {
	case errors.As(err, &partial):
		return ExitPartial
	case errors.As(err, &ue), errors.Is(err, orchestrator.ErrConfig), errors.Is(err, dispatcher.ErrNotSetUp), errors.Is(err, dispatcher.ErrNoTable), errors.Is(err, dispatcher.ErrBadSQL),
		errors.Is(err, dispatcher.ErrBadColumn):
		return ExitUsage
	case ctx.Err() != nil:
		return ExitInterrupted
	}
	return ExitFailure
}

func (e *env) app() *cli.App {
	app := &cli.App{
		Name:      "pampactl",
		Usage:     "distribute the rows of your own tables over workers on many machines",
		Writer:    e.stdout,
		ErrWriter: e.stderr,
		// urfave must never exit behind our back; Run maps errors to codes.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "cluster file (env PAMPA_CONFIG)", Value: ""},
			&cli.StringFlag{Name: "db", Usage: "database flavor: postgres or crdb (overrides [database] flavor)"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "debug logs"},
		}, sshFlags()...),
		Commands: []*cli.Command{
			e.dbCommand(),
			e.dispatcherCommand(),
			e.workerCommand(),
			e.workersCommand(),
			e.jobsCommand(),
			e.rowsCommand(),
			e.relayCommand(),
			e.consoleCommand(),
			e.completionCommand(),
			e.initCommand(),
			e.demoCommand(),
			e.periodicCommand(),
			e.nodesCommand(),
			e.logsCommand(),
			e.upCommand(),
			e.downCommand(),
			e.versionCommand(),
		},
	}
	app.Action = func(c *cli.Context) error {
		if c.NArg() > 0 {
			return unknownCommand("", c.Args().First(), app.Commands)
		}
		return cli.ShowAppHelp(c)
	}
	markUsageErrors("", app.Commands)
	return app
}

// markUsageErrors makes flag errors of every subcommand exit with code 2,
// and so an unknown subcommand of a group such as jobs.
func markUsageErrors(parent string, cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err} }
		if len(c.Subcommands) == 0 && c.Action != nil && c.ArgsUsage == "" {
			// A command that takes no arguments says so rather than
			// ignoring them (workers stop local.2 once stopped them all).
			name, action := parent+c.Name, c.Action
			c.Action = func(ctx *cli.Context) error {
				if ctx.NArg() > 0 {
					return usagef("pampactl %s takes no arguments, got %q; see pampactl %s --help", name, ctx.Args().Slice(), name)
				}
				return action(ctx)
			}
		}
		if len(c.Subcommands) > 0 && c.Action == nil {
			group, subs := parent+c.Name+" ", c.Subcommands
			c.Action = func(ctx *cli.Context) error {
				if ctx.NArg() > 0 {
					return unknownCommand(group, ctx.Args().First(), subs)
				}
				return cli.ShowSubcommandHelp(ctx)
			}
		}
		markUsageErrors(parent+c.Name+" ", c.Subcommands)
	}
}

// unknownCommand is the usage error for a command name pampactl lacks,
// with the nearest one it has.
func unknownCommand(group, name string, cmds []*cli.Command) error {
	var names []string
	for _, c := range cmds {
		names = append(names, c.Names()...)
	}
	if best := suggest.Closest(name, names); best != "" {
		return usagef("no command %q; did you mean: pampactl %s%s", group+name, group, best)
	}
	return usagef("no command %q; see: pampactl %shelp", group+name, group)
}

// configPath is --config, else $PAMPA_CONFIG, else ./cluster.toml.
func (e *env) configPath(c *cli.Context) string {
	return orchestrator.ConfigPath(c.String("config"), e.getenv)
}

func (e *env) loadConfig(c *cli.Context) (*orchestrator.Config, error) {
	cfg, err := orchestrator.Load(e.configPath(c))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w (pass --config, set PAMPA_CONFIG, or start from cluster.toml.example)", err)
		}
		return nil, err
	}
	if f := c.String("db"); f != "" {
		if f != orchestrator.FlavorPostgres && f != orchestrator.FlavorCockroach {
			return nil, usagef("--db %q: want postgres or crdb", f)
		}
		cfg.Database.Flavor = f
	}
	if !e.warned {
		e.warned = true
		for _, w := range cfg.Warnings {
			fmt.Fprintln(e.stderr, "pampactl: warning:", w)
		}
	}
	return cfg, nil
}

func flavor(cfg *orchestrator.Config) dispatcher.Flavor {
	if cfg.Database.Flavor == orchestrator.FlavorCockroach {
		return dispatcher.CockroachDB
	}
	return dispatcher.Postgres
}

// logger logs to stderr and, unless logFile is "", to logFile (appended).
// The returned close function closes the file.
func (e *env) logger(c *cli.Context, logFile string) (*slog.Logger, func(), error) {
	return slogfile.New(e.stderr, logFile, c.Bool("verbose"))
}

// logFileFlag resolves --log-file / --no-log-file against a default.
func logFileFlag(c *cli.Context, def string) string {
	if c.Bool("no-log-file") {
		return ""
	}
	if c.IsSet("log-file") {
		return c.String("log-file")
	}
	return def
}

// logFlags are made per command: urfave/cli writes to a flag while parsing,
// so one flag value shared by two apps is a data race.
func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-file", Usage: "append logs to this file too"},
		&cli.BoolFlag{Name: "no-log-file", Usage: "log to stderr only"},
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}
