// Package demo runs the seed's example end to end: the numbers 1..N, a job
// that finds the odd ones, a dispatcher and local worker processes that
// reach it over the worker protocol (no database session of their own),
// live progress, a check of every row and the totals.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/pgserver"
	"github.com/pampa-go/pampa/internal/pgurl"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/worker"
)

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Options configure a demo run.
type Options struct {
	DatabaseURL string // empty: start a private PostgreSQL
	Rows        int
	Workers     int
	QueueSize   int
	Binary      string // executable whose "worker run" starts a worker
	Progress    io.Writer
	Terminal    bool // redraw one progress line instead of printing lines
	Logger      *slog.Logger
}

// Result is what the demo measured.
type Result struct {
	Status  dispatcher.JobStatus
	Wrong   int64 // rows whose is_odd is not value % 2 = 1
	Elapsed time.Duration
}

// Schema is where the demo keeps its table and Pampa's, on any database.
const Schema = "pampa_demo"

// Config is the demo's cluster.toml; %s is the database URL.
const Config = `# The seed's example: find the odd numbers among 1..N.
[database]
url = %q
url_env = ""  # the URL above already points at the demo schema

[dispatcher]
delay = "200ms"
log_file = ""
heartbeat_timeout = "10s"
listen = %q
secret_env = ""

[worker]
delay = "500ms"
log_file = ""
heartbeat_interval = "2s"
grace_period = "5s"

[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = %d

[[jobs]]
name = "search_odd_numbers"
table = "numbers"
field_primary_key = "value"
field_prefix = "odd_checking"
max_assigned_workers = 5
max_pending_tasks = 500
queue_size = %d
# No step: the workers run demo.Handler, a Go handler, and the dispatcher
# stores what it returns in the transaction that marks the row done.
result_sql = "update numbers set is_odd = $2::boolean where value = $1::bigint"
`

// HandlerEnv, set to 1 in a worker's environment, registers Handler for
// the demo's job in the stock pampactl: the demo starts its workers so.
const HandlerEnv = "PAMPA_DEMO_HANDLER"

// Job is the demo job's name.
const Job = "search_odd_numbers"

// Handler finds whether the row's value is odd; its result is the row's
// is_odd, written by result_sql.
func Handler(ctx context.Context, t *worker.Task) (any, error) {
	var row struct {
		Value *int64 `json:"value"`
	}
	if err := t.Decode(&row); err != nil {
		return nil, err
	}
	if row.Value == nil {
		return nil, fmt.Errorf("row %s has no value", t.Key)
	}
	if *row.Value%2 == 1 {
		return "true", nil
	}
	return "false", nil
}

// Run runs the demo and returns its result; a wrong row is an error.
func Run(ctx context.Context, o Options) (Result, error) {
	start := time.Now()
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	url := o.DatabaseURL
	if url == "" {
		fmt.Fprintln(o.Progress, "starting a private PostgreSQL server (set PAMPA_DATABASE_URL to use yours)...")
		srv, err := pgserver.Start(ctx)
		if err != nil {
			return Result{}, fmt.Errorf("demo database: %w", err)
		}
		defer srv.Close()
		url = srv.URL()
	}
	url, err := prepare(ctx, url, o.Rows)
	if err != nil {
		return Result{}, err
	}
	dir, err := os.MkdirTemp("", "pampa-demo-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "cluster.toml")
	port, err := freePort()
	if err != nil {
		return Result{}, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	if err := os.WriteFile(cfgPath, fmt.Appendf(nil, Config, url, listen, o.Workers, o.QueueSize), 0o600); err != nil {
		return Result{}, err
	}
	cfg, err := orchestrator.Load(cfgPath)
	if err != nil {
		return Result{}, err
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return Result{}, fmt.Errorf("demo database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := dispatcher.Setup(ctx, conn, dispatcher.Postgres, cfg.Jobs); err != nil {
		return Result{}, err
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	secret, _, err := cfg.EnsureSecret(func(string) string { return "" })
	if err != nil {
		return Result{}, err
	}
	d, err := dispatcher.New(dispatcher.Config{DatabaseURL: url, Jobs: cfg.Jobs, Delay: cfg.Dispatcher.Delay,
		HeartbeatTimeout: cfg.Dispatcher.HeartbeatTimeout, Logger: log.With("component", "dispatcher"),
		Secret: secret, KnownWorker: cfg.KnownWorker})
	if err != nil {
		return Result{}, err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return Result{}, err
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = d.Serve(runCtx, ln, nil) }()
	workers, err := startWorkers(runCtx, o.Binary, cfgPath, cfg.Nodes[0].WorkerIDs(), dir)
	if err != nil {
		stop()
		wg.Wait()
		return Result{}, err
	}
	allExited := make(chan struct{})
	go func() {
		for _, w := range workers {
			<-w
		}
		close(allExited)
	}()
	status, err := watch(ctx, conn, cfg.Jobs, o, allExited)
	if errors.Is(err, errWorkersExited) {
		err = fmt.Errorf("%w; their logs:\n%s", err, logTails(dir))
	}
	stop()
	for _, w := range workers {
		<-w
	}
	wg.Wait()
	if err != nil {
		return Result{}, err
	}
	var wrong int64
	if err := conn.QueryRow(ctx, `select count(*) from numbers where is_odd is distinct from (value % 2 = 1)`).Scan(&wrong); err != nil {
		return Result{}, err
	}
	res := Result{Status: status, Wrong: wrong, Elapsed: time.Since(start)}
	if wrong > 0 {
		return res, fmt.Errorf("demo: %d rows have a wrong is_odd", wrong)
	}
	return res, nil
}

// prepare creates the demo schema with the numbers table and returns a URL
// whose search_path points at it.
func prepare(ctx context.Context, dbURL string, rows int) (string, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return "", fmt.Errorf("demo database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, s := range []string{
		`drop schema if exists ` + Schema + ` cascade`,
		`create schema ` + Schema,
		`create table ` + Schema + `.numbers (value bigint primary key, is_odd boolean)`,
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return "", fmt.Errorf("prepare demo schema: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, `insert into `+Schema+`.numbers (value) select generate_series(1, $1::int)`, rows); err != nil {
		return "", fmt.Errorf("insert demo rows: %w", err)
	}
	u, err := pgurl.WithSearchPath(dbURL, Schema)
	if err != nil {
		return "", fmt.Errorf("database URL: %w", err)
	}
	return u, nil
}

var errWorkersExited = errors.New("demo: every worker exited before the job was done")

// logTails returns the end of every worker log in dir.
func logTails(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "worker.*.log"))
	var b strings.Builder
	for _, f := range files {
		data, _ := os.ReadFile(f)
		if len(data) > 1500 {
			data = data[len(data)-1500:]
		}
		fmt.Fprintf(&b, "==> %s <==\n%s\n", filepath.Base(f), data)
	}
	return b.String()
}

// startWorkers runs worker processes as children that die with the demo:
// TERM when ctx ends, KILL if they outlive a grace period.
func startWorkers(ctx context.Context, bin, cfgPath string, ids []string, dir string) ([]chan struct{}, error) {
	var dones []chan struct{}
	for _, id := range ids {
		cmd := exec.CommandContext(ctx, bin, "--config", cfgPath, "worker", "run", "--no-log-file", "--id", id)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), HandlerEnv+"=1")
		logf, err := os.Create(filepath.Join(dir, "worker."+id+".log"))
		if err != nil {
			return dones, err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		if err := cmd.Start(); err != nil {
			logf.Close()
			return dones, fmt.Errorf("start worker %s: %w", id, err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
		dones = append(dones, done)
	}
	return dones, nil
}

// watch prints progress until every row ended or ctx ends.
func watch(ctx context.Context, conn *pgx.Conn, jobs []dispatcher.Job, o Options, exited <-chan struct{}) (dispatcher.JobStatus, error) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	begin := time.Now()
	lastLine := time.Time{}
	for {
		st, err := dispatcher.Report(ctx, conn, jobs)
		if err != nil {
			return dispatcher.JobStatus{}, err
		}
		s := st[0]
		done := s.Completed + s.Failed
		rate := float64(done) / max(time.Since(begin).Seconds(), 0.001)
		line := fmt.Sprintf("%s: %d/%d done (%.0f%%), %d running, %d queued, %d failed, %.0f rows/s",
			s.Job, done, s.Total, 100*float64(done)/float64(max(s.Total, 1)), s.Running, s.Queued, s.Failed, rate)
		switch {
		case o.Terminal:
			fmt.Fprintf(o.Progress, "\r\033[K%s", line)
		case time.Since(lastLine) >= 2*time.Second || done == s.Total:
			fmt.Fprintln(o.Progress, line)
			lastLine = time.Now()
		}
		if done == s.Total {
			if o.Terminal {
				fmt.Fprintln(o.Progress)
			}
			return s, nil
		}
		select {
		case <-exited:
			return s, errWorkersExited
		case <-ctx.Done():
			if o.Terminal {
				fmt.Fprintln(o.Progress)
			}
			return s, errors.Join(fmt.Errorf("demo interrupted at %d/%d rows", done, s.Total), ctx.Err())
		case <-tick.C:
		}
	}
}
