// Command leanworker is a worker process and nothing else: it reads the
// same cluster file as pampactl and runs `worker run` for one id, with the
// no-op Go handler for the bench job, without pampactl's other commands
// (SSH, deploy, the CLI framework). The idle scenario runs it beside
// benchctl to show what those cost an idle worker in resident memory.
//
//	leanworker CONFIG ID
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/worker"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: leanworker CONFIG ID")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "leanworker:", err)
		os.Exit(1)
	}
}

func run(path, id string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := orchestrator.Load(path)
	if err != nil {
		return err
	}
	if err := cfg.KnownWorker(id); err != nil {
		return err
	}
	nodeName, _, _ := strings.Cut(id, ".")
	node, _ := cfg.Node(nodeName)
	secret, err := cfg.Secret(os.Getenv)
	if err != nil {
		return err
	}
	var jobs []worker.Job
	for _, j := range cfg.Jobs {
		if j.Step.SQL == "" && j.WorkerMatches(id) {
			jobs = append(jobs, worker.Job{Name: j.Name, Command: j.Step.Command, MaxJobDuration: j.MaxJobDuration})
		}
	}
	w, err := worker.New(worker.Config{
		ID: id, Node: nodeName, Dispatchers: cfg.WorkerDispatchers(node), Secret: secret,
		Jobs: jobs, GracePeriod: cfg.Worker.GracePeriod, WorkDir: node.WorkDir,
		Handlers: map[string]worker.Handler{"bench": func(context.Context, *worker.Task) (any, error) { return nil, nil }},
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	return w.Run(ctx)
}
