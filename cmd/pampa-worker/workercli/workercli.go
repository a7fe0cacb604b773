// Package workercli is the command line of the worker-only build: the
// `worker run` and `worker limits` of pampactl, with the same arguments
// (what `workers start` and `nodes check` run on a node), and nothing
// else. A binary of your own with Go handlers calls Main with them, as it
// would pampacli.Main; it links no CLI framework, console, SSH or SQL
// client, so an idle worker holds fewer pages of it.
package workercli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pampa-go/pampa/internal/slogfile"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/worker"
)

// Exit codes, as pampactl's.
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2
	ExitInterrupted = 130
)

// Options customise the worker.
type Options struct {
	Handlers map[string]worker.Handler // Go steps by job name
}

// Main runs the command line and exits.
func Main(opts Options) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, os.Args, os.Stdout, os.Stderr, os.Getenv, opts)
	stop()
	os.Exit(code)
}

const usage = `usage:
  %[1]s [--config FILE] [-v] worker run --id NODE.N [--log-file FILE | --no-log-file]
  %[1]s [--config FILE] worker limits [--node NODE] [--json]
`

// usageError is a command line that does not parse: the usage follows.
type usageError struct{ error }

// refusal is a worker that cannot run as configured: exit 2, as pampactl.
type refusal struct{ error }

// Run runs one command and returns its exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, opts Options) int {
	name := filepath.Base(args[0])
	err := run(ctx, args, stdout, stderr, getenv, opts)
	var ue usageError
	var rf refusal
	switch {
	case err == nil && ctx.Err() != nil:
		return ExitInterrupted
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintf(stdout, usage, name)
		return ExitOK
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, usage, name)
		return ExitUsage
	case errors.As(err, &rf), errors.Is(err, orchestrator.ErrConfig):
		return ExitUsage
	case ctx.Err() != nil:
		return ExitInterrupted
	}
	return ExitFailure
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, opts Options) error {
	global := flag.NewFlagSet(args[0], flag.ContinueOnError)
	global.SetOutput(io.Discard)
	config := global.String("config", "", "the cluster file (default $PAMPA_CONFIG, else cluster.toml)")
	verbose := global.Bool("v", false, "debug logs")
	if err := global.Parse(args[1:]); err != nil {
		return usageError{err}
	}
	rest := global.Args()
	if len(rest) < 2 || rest[0] != "worker" || (rest[1] != "run" && rest[1] != "limits") {
		return usageError{fmt.Errorf("this is the worker-only build: it runs `worker run` and `worker limits` (pampactl does the rest), not %q", strings.Join(rest, " "))}
	}
	cfg, err := orchestrator.Load(orchestrator.ConfigPath(*config, getenv))
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	sub := flag.NewFlagSet("worker "+rest[1], flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	if rest[1] == "limits" {
		node := sub.String("node", "", "the node (default: the config's only node)")
		asJSON := sub.Bool("json", false, "print JSON: a list of {limit,value,unit,by,reason}")
		if err := sub.Parse(rest[2:]); err != nil {
			return usageError{err}
		}
		plan, err := cfg.LimitPlan(*node)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(plan)
		}
		for _, p := range plan {
			fmt.Fprintf(stdout, "%s %d %s: %s (%s)\n", p.Limit, p.Value, p.Unit, p.By, p.Reason)
		}
		return nil
	}
	id := sub.String("id", "", "worker id, node.N (like local.1)")
	logFile := sub.String("log-file", "", "append logs to this file too")
	noLogFile := sub.Bool("no-log-file", false, "log to stderr only")
	if err := sub.Parse(rest[2:]); err != nil {
		return usageError{err}
	}
	if sub.NArg() > 0 {
		return usageError{fmt.Errorf("worker run takes no arguments, got %q", sub.Args())}
	}
	if err := cfg.KnownWorker(*id); err != nil {
		return refusal{err}
	}
	wc, err := cfg.WorkerConfig(*id, getenv)
	if err != nil {
		return err
	}
	file := cfg.Worker.LogFile
	sub.Visit(func(f *flag.Flag) {
		if f.Name == "log-file" {
			file = *logFile
		}
	})
	if *noLogFile {
		file = ""
	}
	file = strings.ReplaceAll(file, "{id}", *id)
	log, closeLog, err := slogfile.New(stderr, file, *verbose)
	if err != nil {
		return err
	}
	defer closeLog()
	cfg.CapWorkerLogs(ctx, wc, file)
	wc.Handlers, wc.Logger = opts.Handlers, log
	w, err := worker.New(wc)
	if err != nil {
		return refusal{err}
	}
	return w.Run(ctx)
}
