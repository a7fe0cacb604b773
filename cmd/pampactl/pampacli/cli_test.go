package pampacli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/worker"
)

// The test binary doubles as pampactl: the worker processes that `workers
// start` and the demo launch are this binary with this variable set.
const asMainEnv = "PAMPACLI_TEST_AS_MAIN"

// quickLogEnv names the file where the Go handler of job "quick" notes
// each row it ran: a step that takes no time, as a worker with spare rows
// runs.
const quickLogEnv = "PAMPACLI_TEST_QUICK_LOG"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) != "" {
		pampacli.Main(pampacli.Options{Handlers: map[string]worker.Handler{"quick": func(_ context.Context, t *worker.Task) (any, error) {
			f, err := os.OpenFile(os.Getenv(quickLogEnv), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			_, err = f.WriteString(t.Key + "\n")
			return nil, err
		}}})
	}
	os.Setenv(asMainEnv, "1") // inherited by the workers we start
	os.Exit(pgtest.RunMain(m))
}

func configFile(t *testing.T, dir, text string) string {
	t.Helper()
	p := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigErrorExitsTwoAndNamesTheLine(t *testing.T) {
	t.Parallel()
	p := configFile(t, t.TempDir(), `[database]
url = "postgres://x@127.0.0.1:1/x"

[[jobs]]
name = "j"
table = "t"
queue_sise = 5
`)
	r := pampactl(t.Context(), t, nil, "--config", p, "jobs", "status")
	if r.code != pampacli.ExitUsage {
		t.Fatalf("exit %d, want 2; stderr: %s", r.code, r.stderr)
	}
	for _, want := range []string{"cluster.toml:7", "queue_sise", `did you mean "queue_size"`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q lacks %q", r.stderr, want)
		}
	}
}

func TestMissingConfigAndBadUsage(t *testing.T) {
	t.Parallel()
	r := pampactl(t.Context(), t, nil, "--config", filepath.Join(t.TempDir(), "none.toml"), "jobs", "status")
	if r.code != pampacli.ExitUsage || !strings.Contains(r.stderr, "cluster.toml.example") {
		t.Fatalf("missing config: exit %d, stderr %q", r.code, r.stderr)
	}
	r = pampactl(t.Context(), t, nil, "dispatcher", "run", "--no-such-flag")
	if r.code != pampacli.ExitUsage {
		t.Fatalf("unknown flag: exit %d, want 2; stderr %q", r.code, r.stderr)
	}
	r = pampactl(t.Context(), t, nil, "periodic", "--once")
	if r.code != pampacli.ExitUsage {
		t.Fatalf("periodic without a command: exit %d, want 2", r.code)
	}
}

// A mistyped command exits 2 with the nearest one, at the top and in a
// group; help of a subcommand is that subcommand's.
func TestUnknownCommandAndNestedHelp(t *testing.T) {
	t.Parallel()
	for args, want := range map[string]string{
		"versoin":     `no command "versoin"; did you mean: pampactl version`,
		"jobs statsu": `no command "jobs statsu"; did you mean: pampactl jobs status`,
		"banana":      `no command "banana"; see: pampactl help`,
	} {
		r := pampactl(t.Context(), t, nil, strings.Fields(args)...)
		if r.code != pampacli.ExitUsage || !strings.Contains(r.stderr, want) {
			t.Errorf("pampactl %s: exit %d, stderr %q; want %d and %q", args, r.code, r.stderr, pampacli.ExitUsage, want)
		}
	}
	r := pampactl(t.Context(), t, nil, "help", "jobs", "status")
	if r.code != pampacli.ExitOK || !strings.Contains(r.stdout, "pampactl jobs status - ") {
		t.Errorf("help jobs status: exit %d, stdout %q; want the help of jobs status", r.code, r.stdout)
	}
}

func TestPeriodicOnce(t *testing.T) {
	t.Parallel()
	if r := pampactl(t.Context(), t, nil, "periodic", "--once", "--", "true"); r.code != 0 {
		t.Fatalf("true: exit %d, stderr %s", r.code, r.stderr)
	}
	r := pampactl(t.Context(), t, nil, "periodic", "--once", "--", "sh", "-c", "echo nope >&2; exit 3")
	if r.code != pampacli.ExitFailure || !strings.Contains(r.stderr, "nope") {
		t.Fatalf("failing command: exit %d, stderr %s", r.code, r.stderr)
	}
}

const localConfig = `[database]
url = %q
url_env = ""

[dispatcher]
delay = "100ms"
log_file = ""
heartbeat_timeout = "5s"
listen = %q

[worker]
delay = "100ms"
heartbeat_interval = "500ms"
grace_period = "5s"

[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = 2
work_dir = %q

[[jobs]]
name = "search_odd_numbers"
table = "numbers"
field_primary_key = "value"
field_prefix = "odd_checking"
queue_size = 50
max_pending_tasks = 100
# The step prints whether the key is odd; result_sql stores it as the row
# is marked done.
command = ["sh", "-c", "echo $((PAMPA_TASK_ID %% 2 == 1))"]
result_sql = "update numbers set is_odd = ($2::int = 1) where value = $1::bigint"
`

// localNumbers is the seed's numbers table (1..rows) in a schema of its
// own, with localConfig set up on it: the config's path, a connection to
// the schema, and the config's directory.
func localNumbers(t *testing.T, rows int) (cfg string, conn *pgx.Conn, dir string) {
	t.Helper()
	url := pgtest.Schema(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, fmt.Sprintf(`create table numbers (value bigint primary key, is_odd boolean);
insert into numbers (value) select generate_series(1, %d)`, rows)); err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	cfg = configFile(t, dir, fmt.Sprintf(localConfig, url, freeAddr(t), dir))
	if r := pampactl(ctx, t, nil, "--config", cfg, "db", "setup"); r.code != 0 {
		t.Fatalf("db setup: %d %s", r.code, r.stderr)
	}
	return cfg, conn, dir
}

// TestLocalWorkflow is a user's story on one machine: set up the database,
// start local workers, run the dispatcher, watch progress, stop.
func TestLocalWorkflow(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg, conn, dir := localNumbers(t, 1000)
	c := func(args ...string) result {
		return pampactl(ctx, t, nil, append([]string{"--config", cfg}, args...)...)
	}
	r := c("workers", "start", "--node", "local")
	if r.code != 0 || strings.Count(r.stdout, "started") != 2 {
		t.Fatalf("workers start: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// Not c: t.Context() is cancelled before cleanups run, and a stop
	// under it stops nothing.
	t.Cleanup(func() { pampactl(context.Background(), t, nil, "--config", cfg, "workers", "stop") })
	if r := c("workers", "start"); r.code != 0 || strings.Count(r.stdout, "running") != 2 {
		t.Fatalf("second workers start should find both running: %q %q", r.stdout, r.stderr)
	}

	dctx, stopDispatcher := context.WithCancel(ctx)
	done := make(chan result, 1)
	go func() { done <- pampactl(dctx, t, nil, "--config", cfg, "dispatcher", "run", "--no-log-file") }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := c("jobs", "status", "--json")
		var st []dispatcher.JobStatus
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("jobs status --json: %v: %q %q", err, r.stdout, r.stderr)
		}
		if st[0].Completed == 1000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not done in time: %+v\n%s", st[0], logs(dir))
		}
		time.Sleep(100 * time.Millisecond)
	}
	r = c("workers", "status", "--json")
	var rows []orchestrator.WorkerStatus
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("workers status --json: %v: %q", err, r.stdout)
	}
	var total int64
	for _, w := range rows {
		if w.Process != "running" || w.PID == 0 || w.State != "alive" {
			t.Fatalf("worker %+v should be running and alive", w)
		}
		total += w.RowsDone
	}
	if total != 1000 {
		t.Fatalf("workers report %d rows done, want 1000", total)
	}
	var wrong int64
	if err := conn.QueryRow(ctx, `select count(*) from numbers where is_odd is distinct from (value % 2 = 1)`).Scan(&wrong); err != nil || wrong != 0 {
		t.Fatalf("%d rows have a wrong is_odd (result_sql), %v", wrong, err)
	}
	if r := c("jobs", "status"); !strings.Contains(r.stdout, "COMPLETED") || !strings.Contains(r.stdout, "1000") {
		t.Fatalf("jobs status table: %q", r.stdout)
	}

	// Workers that stop tell the dispatcher, which records it.
	r = c("workers", "stop")
	if r.code != 0 || strings.Count(r.stdout, "stopped") != 2 {
		t.Fatalf("workers stop: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	poll(t, "stopped workers recorded", func() string {
		r = c("workers", "status", "--json")
		rows = nil
		if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
			return err.Error()
		}
		for _, w := range rows {
			if w.Process != "none" || w.State != "stopped" {
				return fmt.Sprintf("after stop, worker %+v should have no process and be stopped", w)
			}
		}
		return ""
	})
	stopDispatcher()
	if r := <-done; r.code != pampacli.ExitInterrupted {
		t.Fatalf("dispatcher run: exit %d, %s", r.code, r.stderr)
	}
}

// freeAddr is a loopback address nothing listens on, for a dispatcher.

func logs(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	var b strings.Builder
	for _, f := range files {
		data, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "==> %s <==\n%s\n", f, data)
	}
	return b.String()
}

func TestDemo(t *testing.T) {
	t.Parallel()
	env := map[string]string{"PAMPA_DATABASE_URL": pgtest.Schema(t)}
	r := pampactl(t.Context(), t, env, "demo", "--rows", "3000", "--queue-size", "100")
	if r.code != 0 {
		t.Fatalf("demo: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "3000 total, 3000 completed, 0 failed, 0 pending") || !strings.Contains(r.stdout, "0 wrong") {
		t.Fatalf("demo totals: %s", r.stdout)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"help", "workers"}, {"workers", "start", "--help"}} {
		r := pampactl(t.Context(), t, nil, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "USAGE") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
}

// A job naming a table the database lacks is refused with exit code 2
// before anything is written.
func TestSetupMissingTableWritesNothing(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	dir := t.TempDir()
	cfg := configFile(t, dir, fmt.Sprintf(localConfig, url, freeAddr(t), dir))
	r := pampactl(t.Context(), t, nil, "--config", cfg, "db", "setup")
	if r.code != pampacli.ExitUsage || !strings.Contains(r.stderr, "numbers is not in the database") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = pampactl(t.Context(), t, nil, "--config", cfg, "dispatcher", "run", "--no-log-file")
	if r.code != pampacli.ExitUsage || !strings.Contains(r.stderr, "pampactl db setup") {
		t.Fatalf("dispatcher on a database not set up: exit %d, stderr %q", r.code, r.stderr)
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), `select count(*) from information_schema.tables where table_schema = current_schema()`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d tables were created despite the error", n)
	}
}

// db setup with a bookkeeping key naming a user's column (NOT NULL, of
// another type) or a primary key that is not a column exits 2 naming the
// key, and adds no column.
func TestSetupBadColumnsWritesNothing(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), `create table numbers (value bigint primary key, url varchar(8000) not null)`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := fmt.Sprintf(localConfig, url, freeAddr(t), dir)
	for _, tc := range []struct{ key, want string }{
		{`field_error_description = "url"`, `field_error_description = "url" is NOT NULL`},
		{`field_primary_key = "id"`, `field_primary_key = "id" is not a column`},
	} {
		bad := strings.Replace(text, `field_primary_key = "value"`, `field_primary_key = "value"`+"\n"+tc.key, 1)
		if strings.HasPrefix(tc.key, "field_primary_key") {
			bad = strings.Replace(text, `field_primary_key = "value"`, tc.key, 1)
		}
		cfg := configFile(t, t.TempDir(), bad)
		r := pampactl(t.Context(), t, nil, "--config", cfg, "db", "setup")
		if r.code != pampacli.ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("db setup with %s: exit %d, stderr %q; want 2 saying %q", tc.key, r.code, r.stderr, tc.want)
		}
	}
	var n int
	if err := conn.QueryRow(t.Context(), `select count(*) from information_schema.columns where table_name = 'numbers' and table_schema = current_schema()`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("numbers has %d columns (%v); want its 2: nothing written", n, err)
	}
}

// workers start, stop and restart act on the workers named, and only
// them; an id the config does not have is refused with exit 2.
func TestWorkersByID(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg, _, _ := localNumbers(t, 1)
	c := func(args ...string) result {
		return pampactl(ctx, t, nil, append([]string{"--config", cfg}, args...)...)
	}
	// Not c: t.Context() is cancelled before cleanups run, and a stop
	// under it stops nothing.
	t.Cleanup(func() { pampactl(context.Background(), t, nil, "--config", cfg, "workers", "stop") })
	if r := c("workers", "start"); r.code != 0 || strings.Count(r.stdout, "started") != 2 {
		t.Fatalf("workers start: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r := c("workers", "stop", "local.2")
	if r.code != 0 || !strings.Contains(r.stdout, "local.2\tstopped") || strings.Contains(r.stdout, "local.1") {
		t.Fatalf("workers stop local.2: %d %q %q", r.code, r.stdout, r.stderr)
	}
	procs := func() map[string]string {
		r := c("workers", "status", "--json")
		var rows []orchestrator.WorkerStatus
		if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
			t.Fatalf("workers status --json: %v %q", err, r.stdout)
		}
		out := map[string]string{}
		for _, w := range rows {
			out[w.ID] = w.Process
		}
		return out
	}
	if p := procs(); p["local.1"] != "running" || p["local.2"] != "none" {
		t.Fatalf("after stopping local.2: %v; want local.1 running, local.2 none", p)
	}
	if r := c("workers", "start", "local.2"); r.code != 0 || !strings.Contains(r.stdout, "local.2\tstarted") || strings.Contains(r.stdout, "local.1") {
		t.Fatalf("workers start local.2: %d %q %q", r.code, r.stdout, r.stderr)
	}
	for _, args := range [][]string{{"workers", "stop", "local.9"}, {"workers", "start", "w9.1"}, {"workers", "stop", "local.1", "--node", "local"}} {
		if r := c(args...); r.code != pampacli.ExitUsage {
			t.Errorf("pampactl %s: exit %d, want 2: %q", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if p := procs(); p["local.1"] != "running" || p["local.2"] != "running" {
		t.Fatalf("refused commands changed workers: %v", p)
	}
	if r := c("jobs", "status", "extra"); r.code != pampacli.ExitUsage || !strings.Contains(r.stderr, "takes no arguments") {
		t.Errorf("jobs status extra: exit %d %q; want 2 saying it takes no arguments", r.code, r.stderr)
	}
}

// workers start says so when a worker dies at once, with the end of its
// log, instead of reporting it started.
func TestWorkersStartReportsWorkersThatDie(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.Schema(t)
	dir := t.TempDir()
	// A job with no step: the stock worker refuses to start.
	text := strings.Replace(fmt.Sprintf(localConfig, url, freeAddr(t), dir), `command = ["sh", "-c", "echo $((PAMPA_TASK_ID % 2 == 1))"]`, "", 1)
	cfg := configFile(t, dir, text)
	c := func(args ...string) result {
		return pampactl(ctx, t, nil, append([]string{"--config", cfg}, args...)...)
	}
	// Not c: t.Context() is cancelled before cleanups run, and a stop
	// under it stops nothing.
	t.Cleanup(func() { pampactl(context.Background(), t, nil, "--config", cfg, "workers", "stop") })
	r := c("workers", "start", "local.1")
	if r.code != pampacli.ExitFailure || !strings.Contains(r.stdout, "local.1\tdied at once") ||
		!strings.Contains(r.stderr, "has no command") || !strings.Contains(r.stderr, "died within") {
		t.Fatalf("workers start of a worker that cannot run: exit %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}
}
