package workercli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/syncbuf"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/cmd/pampa-worker/workercli"
	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/internal/nettest"
	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/worker"
)

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }

const config = `[database]
url = %q
url_env = ""
[dispatcher]
delay = "100ms"
log_file = ""
listen = %q
[console]
listen = ""
[worker]
heartbeat_interval = "200ms"
grace_period = "2s"
[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = 1
work_dir = %q
max_ram = 256
[[jobs]]
name = "square"
table = "numbers"
field_primary_key = "value"
result_sql = "update numbers set result = $2 where value = $1::bigint"
`

// setup writes the config for a table of n numbers, sets the table up and
// returns the config's path and a connection.
func setup(t *testing.T, n int) (string, *pgx.Conn) {
	t.Helper()
	url := pgtest.Schema(t)
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(t.Context(), fmt.Sprintf(`create table numbers (value bigint primary key, result text);
insert into numbers (value) select generate_series(1, %d)`, n)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, url, nettest.FreeAddr(t), dir), 0o600); err != nil {
		t.Fatal(err)
	}
	// The secret `dispatcher run` would create: the worker may start first.
	if err := os.WriteFile(filepath.Join(dir, "pampa.secret"), []byte(strings.Repeat("k", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := pampacli.Run(t.Context(), []string{"pampactl", "--config", cfg, "db", "setup"}, strings.NewReader(""), &out, &out,
		func(string) string { return "" }, pampacli.Options{}); code != 0 {
		t.Fatalf("db setup: exit %d\n%s", code, &out)
	}
	return cfg, conn
}

func run(ctx context.Context, opts workercli.Options, args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := workercli.Run(ctx, append([]string{"pampa-worker"}, args...), &stdout, &stderr, func(string) string { return "" }, opts)
	return code, stdout.String(), stderr.String()
}

// The worker-only build runs the rows a dispatcher (pampactl's) sends it,
// with a Go handler of the binary's, from the same config and arguments as
// `pampactl worker run`; a signal stops it as it stops pampactl's.
func TestWorkerOnlyBuildRunsRows(t *testing.T) {
	t.Parallel()
	cfg, conn := setup(t, 50)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var dout, wout syncbuf.Buffer
	go pampacli.Run(ctx, []string{"pampactl", "--config", cfg, "dispatcher", "run", "--no-log-file"}, strings.NewReader(""),
		&dout, &dout, func(string) string { return "" }, pampacli.Options{})
	square := func(_ context.Context, t *worker.Task) (any, error) {
		var row struct{ Value int64 }
		if err := t.Decode(&row); err != nil {
			return nil, err
		}
		return row.Value * row.Value, nil
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() {
		done <- workercli.Run(wctx, []string{"pampa-worker", "--config", cfg, "worker", "run", "--id", "local.1", "--no-log-file"},
			&wout, &wout, func(string) string { return "" }, workercli.Options{Handlers: map[string]worker.Handler{"square": square}})
	}()
	poll.Until(t, "every row squared", 30*time.Second, func() string {
		var n int
		if err := conn.QueryRow(context.Background(), `select count(*) from numbers where result = (value * value)::text`).Scan(&n); err != nil {
			return err.Error()
		}
		if n != 50 {
			return fmt.Sprintf("%d of 50 rows done; dispatcher:\n%s\nworker:\n%s", n, dout.String(), wout.String())
		}
		return ""
	})
	stop()
	select {
	case code := <-done:
		if code != workercli.ExitInterrupted {
			t.Errorf("stopped by a signal, the worker exited %d, want %d", code, workercli.ExitInterrupted)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not stop")
	}
}

// What it does not do, it says, exit 2; `worker limits --json` answers as
// pampactl's does (nodes check asks it).
func TestWorkerOnlyBuildCommands(t *testing.T) {
	t.Parallel()
	cfg, _ := setup(t, 1)
	if code, _, stderr := run(t.Context(), workercli.Options{}, "--config", cfg, "nodes", "deploy"); code != workercli.ExitUsage ||
		!strings.Contains(stderr, "worker-only build") || !strings.Contains(stderr, "usage:") {
		t.Errorf("nodes deploy: exit %d, %q", code, stderr)
	}
	if code, _, stderr := run(t.Context(), workercli.Options{}, "--config", cfg, "worker", "run", "--id", "local.2"); code != workercli.ExitUsage ||
		!strings.Contains(stderr, "max_workers = 1") {
		t.Errorf("worker run --id local.2 with max_workers 1: exit %d, %q", code, stderr)
	}
	if code, _, stderr := run(t.Context(), workercli.Options{}, "--config", cfg, "worker", "run", "--id", "local.1"); code != workercli.ExitUsage ||
		!strings.Contains(stderr, `"square"`) {
		t.Errorf("a job with no step and no handler: exit %d, %q", code, stderr)
	}
	code, stdout, stderr := run(t.Context(), workercli.Options{}, "--config", cfg, "worker", "limits", "--json")
	var plan []worker.LimitPlan
	if err := json.Unmarshal([]byte(stdout), &plan); code != 0 || err != nil || len(plan) != 1 || plan[0].Limit != "max_ram" {
		t.Errorf("worker limits --json: exit %d, %q %q (%v)", code, stdout, stderr, err)
	}
}
