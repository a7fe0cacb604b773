package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// idleResult is the footprint of one idle worker process.
type idleResult struct {
	RSSKB  int64         // VmRSS after settling
	CPU    time.Duration // utime+stime over the window
	Window time.Duration
	Note   string
}

// idleConfig is the cluster.toml of the idle worker; %q is the database URL,
// %q the work directory.
const idleConfig = `[database]
url = %q
url_env = ""

[worker]
delay = "1s"
log_file = ""
heartbeat_interval = "5s"

[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = 1
work_dir = %q

[[jobs]]
name = "bench"
table = "tasks"
field_prefix = "bench"
sql = "select $1::bigint"
`

// runIdle builds pampactl from the main module, runs one worker process with
// no job assigned and no dispatcher, lets it settle, and measures its RSS
// and the CPU it uses over a window.
func runIdle(ctx context.Context, e *env, moduleDir string, settle, window time.Duration) (idleResult, error) {
	res := idleResult{Window: window}
	const schema = "bench_idle"
	dbURL, err := e.freshSchema(ctx, schema)
	if err != nil {
		return res, err
	}
	defer e.dropSchema(schema)
	if err := prepareTasks(ctx, dbURL, "", 0, benchJob(5)); err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp("", "pampabench-idle-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "pampactl")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/pampactl")
	build.Dir = moduleDir
	if out, err := build.CombinedOutput(); err != nil {
		return res, fmt.Errorf("go build ./cmd/pampactl in %s: %w\n%s", moduleDir, err, out)
	}
	cfgPath := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(cfgPath, fmt.Appendf(nil, idleConfig, dbURL, dir), 0o600); err != nil {
		return res, err
	}

	var stderr bytes.Buffer
	cmd := exec.Command(bin, "--config", cfgPath, "worker", "run", "--id", "local.1", "--no-log-file")
	cmd.Dir = dir
	cmd.Stderr = &stderr
	cmd.Env = cleanEnv()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start pampactl worker: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = waitFor(rctx, 50*time.Millisecond, func() (bool, error) {
		select {
		case err := <-exited:
			exited <- err
			return false, fmt.Errorf("pampactl worker exited: %v\n%s", err, stderr.String())
		default:
		}
		var n int
		err := conn.QueryRow(rctx, `select count(*) from pampa_workers where id = 'local.1' and state = 'alive'`).Scan(&n)
		return n == 1, err
	})
	if err != nil {
		return res, fmt.Errorf("wait for the worker process to register: %w", err)
	}
	pid := cmd.Process.Pid
	if err := sleep(ctx, settle); err != nil {
		return res, err
	}
	st0, err := readProcStat(pid)
	if err != nil {
		return res, err
	}
	if err := sleep(ctx, window); err != nil {
		return res, err
	}
	st1, err := readProcStat(pid)
	if err != nil {
		return res, err
	}
	res.CPU = ticks(st1.utime + st1.stime - st0.utime - st0.stime)
	if res.RSSKB, err = vmRSS(strconv.Itoa(pid)); err != nil {
		return res, err
	}
	return res, nil
}

// cleanEnv is this process's environment without PAMPA_ variables, so the
// worker reads only the generated config.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PAMPA_") {
			env = append(env, kv)
		}
	}
	return env
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
