package worker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/leaktest"
	"github.com/pampa-go/pampa/internal/pgtest"
)

// The test binary doubles as a worker process for the SIGKILL test.
const asWorkerEnv = "PAMPA_TEST_AS_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(asWorkerEnv) != "" {
		os.Exit(runAsWorker())
	}
	os.Exit(leaktest.Check(pgtest.RunMain(m)))
}

func runAsWorker() int {
	j := numbersJob()
	j.Step.SQL = os.Getenv("PAMPA_TEST_SQL")
	w, err := New(Config{ID: os.Getenv(asWorkerEnv), DatabaseURL: os.Getenv("PAMPA_TEST_URL"),
		Jobs: []dispatcher.Job{j}, Delay: 50 * time.Millisecond, HeartbeatInterval: 100 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := w.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func numbersJob() dispatcher.Job {
	return dispatcher.Job{
		Name: "search_odd_numbers", Table: "numbers",
		Fields:          dispatcher.FieldsFor("odd_checking", "value"),
		MaxPendingTasks: 10, QueueSize: 5,
		Step: dispatcher.Step{SQL: "update numbers set is_odd = (value % 2 = 1) where value = $1"},
	}.WithDefaults()
}

type cluster struct {
	t    *testing.T
	url  string
	pool *pgxpool.Pool
	job  dispatcher.Job
	wg   sync.WaitGroup
	stop []context.CancelFunc
}

func newCluster(t *testing.T, rows int, edit func(*dispatcher.Job)) *cluster {
	t.Helper()
	pool, url := pgtest.Pool(t)
	c := &cluster{t: t, url: url, pool: pool, job: numbersJob()}
	if edit != nil {
		edit(&c.job)
	}
	c.exec(`create table numbers (value bigint primary key, is_odd boolean)`)
	c.exec(`create table hits (value bigint not null, at timestamptz default clock_timestamp())`)
	c.exec(`insert into numbers (value) select generate_series(1, $1::int)`, rows)
	if err := dispatcher.Setup(context.Background(), pool, dispatcher.Postgres, []dispatcher.Job{c.job}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.shutdown)
	return c
}

func (c *cluster) exec(sql string, args ...any) {
	c.t.Helper()
	if _, err := c.pool.Exec(context.Background(), sql, args...); err != nil {
		c.t.Fatalf("%s: %v", sql, err)
	}
}

func (c *cluster) count(sql string, args ...any) int64 {
	c.t.Helper()
	var n int64
	if err := c.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		c.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (c *cluster) dispatcher(heartbeatTimeout time.Duration) {
	d, err := dispatcher.New(dispatcher.Config{DatabaseURL: c.url, Jobs: []dispatcher.Job{c.job},
		Delay: 50 * time.Millisecond, HeartbeatTimeout: heartbeatTimeout})
	if err != nil {
		c.t.Fatal(err)
	}
	c.goRun(func(ctx context.Context) error { return d.Run(ctx) })
}

func (c *cluster) workerConfig(id string) Config {
	return Config{ID: id, DatabaseURL: c.url, Jobs: []dispatcher.Job{c.job}, Delay: 50 * time.Millisecond,
		HeartbeatInterval: 100 * time.Millisecond, GracePeriod: 5 * time.Second, WorkDir: c.t.TempDir()}
}

// worker starts a worker and returns the function that stops it and waits.
func (c *cluster) worker(cfg Config) func() error {
	w, err := New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.goRun(w.Run)
}

func (c *cluster) goRun(run func(context.Context) error) func() error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	c.wg.Add(1)
	go func() { defer c.wg.Done(); done <- run(ctx) }()
	c.stop = append(c.stop, cancel)
	return func() error { cancel(); return <-done }
}

func (c *cluster) shutdown() {
	for _, s := range c.stop {
		s()
	}
	c.wg.Wait()
}

// waitFor polls cond until it holds or the deadline passes.
func (c *cluster) waitFor(what string, timeout time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) ended() int64 {
	return c.count(`select count(*) from numbers where odd_checking_end_time is not null and
  (odd_checking_success or odd_checking_reservation_times >= $1)`, c.job.MaxTryTimes)
}

func TestSQLStepProcessesEveryRowOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3000, func(j *dispatcher.Job) {
		j.QueueSize = 100
		j.Step.SQL = `with h as (insert into hits (value) values ($1))
update numbers set is_odd = (value % 2 = 1) where value = $1`
	})
	c.dispatcher(30 * time.Second)
	c.worker(c.workerConfig("local.1"))
	c.worker(c.workerConfig("local.2"))
	c.waitFor("all rows to end", 60*time.Second, func() bool { return c.ended() == 3000 })
	if n := c.count(`select count(*) from numbers where is_odd is distinct from (value % 2 = 1)`); n != 0 {
		t.Fatalf("%d rows with a wrong is_odd", n)
	}
	if n := c.count(`select count(*) from (select value from hits group by value having count(*) <> 1) d`); n != 0 {
		t.Fatalf("%d rows whose step ran other than exactly once", n)
	}
	if n := c.count(`select count(*) from numbers where odd_checking_reservation_times <> 1 or not odd_checking_success`); n != 0 {
		t.Fatalf("%d rows took more than one attempt", n)
	}
	if n := c.count(`select sum(rows_done) from pampa_workers`); n != 3000 {
		t.Fatalf("workers counted %d rows done", n)
	}
}

func TestFailingRowsDoNotStopOthers(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 100, func(j *dispatcher.Job) {
		j.QueueSize = 20
		j.MaxTryTimes = 2
		// Multiples of 7 divide by zero.
		j.Step.SQL = `update numbers set is_odd = (1 / (value % 7) >= 0) and (value % 2 = 1) where value = $1`
	})
	c.dispatcher(30 * time.Second)
	c.worker(c.workerConfig("local.1"))
	c.waitFor("all rows to end", 60*time.Second, func() bool { return c.ended() == 100 })
	if n := c.count(`select count(*) from numbers where odd_checking_success`); n != 100-14 {
		t.Fatalf("%d successes, want 86", n)
	}
	if n := c.count(`select count(*) from numbers where not odd_checking_success and odd_checking_reservation_times = 2
  and odd_checking_error_description like '%division by zero%'`); n != 14 {
		t.Fatalf("%d rows failed twice with the division error, want 14", n)
	}
}

func TestCommandStep(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 10, func(j *dispatcher.Job) {
		j.Step = dispatcher.Step{Command: []string{"sh", "-c", `cat > "task.$PAMPA_TASK_ID.json"
echo "$PAMPA_JOB $PAMPA_WORKER_ID $PAMPA_ATTEMPT" > "task.$PAMPA_TASK_ID.env"
if [ $((PAMPA_TASK_ID % 5)) -eq 0 ]; then echo "row $PAMPA_TASK_ID is bad" >&2; exit 3; fi`}}
		j.MaxTryTimes = 1
	})
	cfg := c.workerConfig("local.1")
	c.dispatcher(30 * time.Second)
	c.worker(cfg)
	c.waitFor("all rows to end", 60*time.Second, func() bool { return c.ended() == 10 })
	b, err := os.ReadFile(filepath.Join(cfg.WorkDir, "task.3.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"value":3`) || !strings.Contains(string(b), `"odd_checking_reservation_id":"local.1"`) {
		t.Fatalf("stdin of the command was %s, want the row as JSON", b)
	}
	envLine, _ := os.ReadFile(filepath.Join(cfg.WorkDir, "task.3.env"))
	if got := strings.TrimSpace(string(envLine)); got != "search_odd_numbers local.1 1" {
		t.Fatalf("environment: %q", got)
	}
	var desc string
	if err := c.pool.QueryRow(context.Background(), `select odd_checking_error_description from numbers where value = 5`).Scan(&desc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(desc, "row 5 is bad") || !strings.Contains(desc, "exit status 3") {
		t.Fatalf("error description %q should carry the exit status and stderr", desc)
	}
	if n := c.count(`select count(*) from numbers where odd_checking_success`); n != 8 {
		t.Fatalf("%d successes, want 8", n)
	}
}

func TestCommandKilledPastMaxDuration(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, func(j *dispatcher.Job) {
		j.Step = dispatcher.Step{Command: []string{"sh", "-c", `trap '' TERM; echo $$ > pid; sleep 60`}}
		j.MaxJobDuration = 300 * time.Millisecond
		j.MaxTryTimes = 1
	})
	c.dispatcher(30 * time.Second)
	c.worker(c.workerConfig("local.1"))
	c.waitFor("the row to fail", 30*time.Second, func() bool { return c.ended() == 1 })
	var desc string
	if err := c.pool.QueryRow(context.Background(), `select odd_checking_error_description from numbers`).Scan(&desc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(desc, "max_job_duration") {
		t.Fatalf("error description %q does not say the task ran too long", desc)
	}
}

func TestGoHandler(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 20, func(j *dispatcher.Job) { j.Step = dispatcher.Step{}; j.MaxTryTimes = 1 })
	cfg := c.workerConfig("local.1")
	var mu sync.Mutex
	attempts := map[string]int{}
	cfg.Handlers = map[string]Handler{"search_odd_numbers": func(ctx context.Context, task *Task) error {
		mu.Lock()
		attempts[task.KeyText] = task.Attempt
		mu.Unlock()
		if task.KeyText == "13" {
			panic("unlucky")
		}
		_, err := task.DB.Exec(ctx, `update numbers set is_odd = $2 where value = $1`, task.Key, task.Row["value"].(interface{ String() string }).String()[len(task.KeyText)-1]%2 == 1)
		return err
	}}
	c.dispatcher(30 * time.Second)
	c.worker(cfg)
	c.waitFor("all rows to end", 60*time.Second, func() bool { return c.ended() == 20 })
	if n := c.count(`select count(*) from numbers where odd_checking_success and is_odd = (value % 2 = 1)`); n != 19 {
		t.Fatalf("%d rows done right by the handler, want 19", n)
	}
	if n := c.count(`select count(*) from numbers where value = 13 and odd_checking_error_description like '%panicked: unlucky%'`); n != 1 {
		t.Fatal("a panicking handler should fail its row with the panic")
	}
	if attempts["1"] != 1 {
		t.Fatalf("first attempt numbered %d, want 1", attempts["1"])
	}
}

func TestGracefulStopFinishesRunningRowAndReleasesQueue(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 10, func(j *dispatcher.Job) {
		j.Step = dispatcher.Step{Command: []string{"sh", "-c", `touch "started.$PAMPA_TASK_ID"; sleep 1`}}
	})
	cfg := c.workerConfig("local.1")
	c.dispatcher(30 * time.Second)
	stop := c.worker(cfg)
	c.waitFor("a row to start", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(cfg.WorkDir, "started.1"))
		return err == nil
	})
	if err := stop(); err != nil {
		t.Fatalf("graceful stop returned %v", err)
	}
	if n := c.count(`select count(*) from numbers where value = 1 and odd_checking_success`); n != 1 {
		t.Fatal("the running row did not finish during the grace period")
	}
	if n := c.count(`select count(*) from numbers where odd_checking_reservation_id = 'local.1' and odd_checking_end_time is null`); n != 0 {
		t.Fatalf("the stopped worker still holds %d rows", n)
	}
	if n := c.count(`select count(*) from pampa_workers where id = 'local.1' and state = 'stopped' and job is null`); n != 1 {
		t.Fatal("the stop is not recorded in the registry")
	}
}

// TestKilledWorkerRowCompletesOnceElsewhere kills a worker process with
// SIGKILL in the middle of a row: the row must be completed by another
// worker, and its step's effects must land exactly once.
func TestKilledWorkerRowCompletesOnceElsewhere(t *testing.T) {
	t.Parallel()
	// The first attempt of row 1 sleeps, so the kill lands mid-row.
	step := `insert into hits (value) select $1::bigint from pg_sleep(case when
  (select odd_checking_reservation_times from numbers where value = $1) = 1 and $1 = 1 then 4 else 0 end)`
	c := newCluster(t, 3, func(j *dispatcher.Job) { j.Step.SQL = step; j.QueueSize = 1 })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), asWorkerEnv+"=node1.1", "PAMPA_TEST_URL="+c.url, "PAMPA_TEST_SQL="+step)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	c.dispatcher(time.Second)
	c.waitFor("the worker process to be in the middle of row 1", 30*time.Second, func() bool {
		return c.count(`select count(*) from pg_stat_activity where state = 'active' and query like '%pg_sleep%' and pid <> pg_backend_pid()`) > 0 &&
			c.count(`select count(*) from numbers where value = 1 and odd_checking_start_time is not null and odd_checking_end_time is null`) == 1
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waited = true
	c.worker(c.workerConfig("node2.1"))
	c.waitFor("every row to end", 60*time.Second, func() bool { return c.ended() == 3 })
	if n := c.count(`select count(*) from numbers where odd_checking_success`); n != 3 {
		t.Fatalf("%d of 3 rows succeeded", n)
	}
	if n := c.count(`select count(*) from hits where value = 1`); n != 1 {
		t.Fatalf("row 1's step took effect %d times, want exactly once", n)
	}
	if n := c.count(`select odd_checking_reservation_times from numbers where value = 1`); n != 2 {
		t.Fatalf("row 1 took %d attempts, want 2 (the killed one counts)", n)
	}
	if n := c.count(`select count(*) from pampa_workers where id = 'node1.1' and state = 'dead'`); n != 1 {
		t.Fatal("the killed worker is not marked dead")
	}
}

// TestPostgresRestartMidRun restarts the server while rows flow; every row
// must still complete exactly once. Not parallel: the restart breaks every
// connection of the test binary.
func TestPostgresRestartMidRun(t *testing.T) {
	srv := pgtest.Server(t)
	c := newCluster(t, 4000, func(j *dispatcher.Job) {
		j.QueueSize = 20
		j.Step.SQL = `with h as (insert into hits (value) values ($1))
update numbers set is_odd = (value % 2 = 1) from pg_sleep(0.001) where value = $1`
	})
	c.dispatcher(30 * time.Second)
	c.worker(c.workerConfig("local.1"))
	c.worker(c.workerConfig("local.2"))
	c.waitFor("some rows to end", 60*time.Second, func() bool { return c.ended() > 200 })
	srv.Restart(t)
	c.pool.Reset()
	c.waitFor("every row to end after the restart", 120*time.Second, func() bool {
		var n int64
		err := c.pool.QueryRow(context.Background(), `select count(*) from numbers where odd_checking_success`).Scan(&n)
		return err == nil && n == 4000
	})
	if n := c.count(`select count(*) from (select value from hits group by value having count(*) <> 1) d`); n != 0 {
		t.Fatalf("%d rows whose step took effect other than exactly once", n)
	}
}
