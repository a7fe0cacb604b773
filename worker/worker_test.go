package worker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sys/unix"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/leaktest"
	"github.com/pampa-go/pampa/internal/nettest"
	"github.com/pampa-go/pampa/internal/pgserver"
	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/protocol"
	"github.com/pampa-go/pampa/worker"
)

// The test binary doubles as a worker process for the SIGKILL test.
const asWorkerEnv = "PAMPA_TEST_AS_WORKER"

func TestMain(m *testing.M) {
	if id := os.Getenv(asWorkerEnv); id != "" {
		os.Exit(runAsWorker(id))
	}
	os.Exit(leaktest.Check(pgtest.RunMain(m)))
}

var secret = []byte("s3cret")

const jobName = "search_odd_numbers"

// runAsWorker is a worker process running a command step, until killed.
func runAsWorker(id string) int {
	w, err := worker.New(worker.Config{ID: id, Node: strings.Split(id, ".")[0],
		Dispatchers: []string{os.Getenv("PAMPA_TEST_ADDR")}, Secret: secret,
		Jobs:    []worker.Job{{Name: jobName, Command: []string{"sh", "-c", os.Getenv("PAMPA_TEST_SCRIPT")}, MaxJobDuration: time.Minute}},
		WorkDir: os.Getenv("PAMPA_TEST_DIR")})
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
		Name: jobName, Table: "numbers",
		Fields:          dispatcher.FieldsFor("odd_checking", "value"),
		MaxPendingTasks: 10, QueueSize: 5,
	}.WithDefaults()
}

// cluster is a numbers table set up for a job, a dispatcher serving it on
// a loopback port and in-process workers: the real thing, in one process.
type cluster struct {
	t    *testing.T
	url  string
	pool *pgxpool.Pool
	job  dispatcher.Job
	dir  string // shared by the test's steps
	runs string // file the steps of most tests append a line to per run
	addr string // the dispatcher's, kept across its restarts
	log  *testLog
}

func newCluster(t *testing.T, rows int, edit func(*dispatcher.Job)) *cluster {
	t.Helper()
	pool, url := pgtest.Pool(t)
	return setUp(t, pool, url, rows, edit)
}

func setUp(t *testing.T, pool *pgxpool.Pool, url string, rows int, edit func(*dispatcher.Job)) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{t: t, url: url, pool: pool, job: numbersJob(), dir: dir, runs: filepath.Join(dir, "runs"), log: newTestLog(t)}
	if edit != nil {
		edit(&c.job)
	}
	c.exec(`create table numbers (value bigint primary key, is_odd boolean, result text check (result is distinct from 'bad'))`)
	c.exec(`insert into numbers (value) select generate_series(1, $1::int)`, rows)
	if err := dispatcher.Setup(context.Background(), pool, dispatcher.Postgres, []dispatcher.Job{c.job}); err != nil {
		t.Fatal(err)
	}
	return c
}

// sh is a command step running script, in which RUNS is the runs file.
func (c *cluster) sh(script string) []string {
	return []string{"sh", "-c", strings.ReplaceAll(script, "RUNS", "'"+c.runs+"'")}
}

// appendRun is a step line recording one run: key, attempt, worker.
const appendRun = `echo "$PAMPA_TASK_ID $PAMPA_ATTEMPT $PAMPA_WORKER_ID" >> RUNS`

func (c *cluster) exec(sql string, args ...any) {
	c.t.Helper()
	if _, err := c.pool.Exec(context.Background(), sql, args...); err != nil {
		c.t.Fatalf("%s: %v", sql, err)
	}
}

func (c *cluster) count(sql string, args ...any) int64 {
	c.t.Helper()
	n, err := c.tryCount(sql, args...)
	if err != nil {
		c.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (c *cluster) tryCount(sql string, args ...any) (int64, error) {
	var n int64
	err := c.pool.QueryRow(context.Background(), sql, args...).Scan(&n)
	return n, err
}

// ended counts the rows done for good: successful, or out of tries.
func (c *cluster) ended() (int64, error) {
	return c.tryCount(`select count(*) from numbers where odd_checking_end_time is not null and
  (odd_checking_success or odd_checking_reservation_times >= $1 or odd_checking_final)`, c.job.MaxTryTimes)
}

func (c *cluster) waitEnded(n int64, timeout time.Duration) {
	c.t.Helper()
	poll.Until(c.t, "rows to end", timeout, func() string {
		got, err := c.ended()
		if err != nil {
			return err.Error()
		}
		if got != n {
			return fmt.Sprintf("%d of %d ended", got, n)
		}
		return ""
	})
}

// runsByKey reads the runs file: how many times each key's step ran, and
// the lines per key.
func (c *cluster) runsByKey() map[string][]string {
	c.t.Helper()
	f, err := os.Open(c.runs)
	if errors.Is(err, os.ErrNotExist) {
		return map[string][]string{}
	}
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, _, _ := strings.Cut(sc.Text(), " ")
		out[key] = append(out[key], sc.Text())
	}
	if err := sc.Err(); err != nil {
		c.t.Fatal(err)
	}
	return out
}

// onceEach fails the test unless keys 1..n each ran exactly once.
func (c *cluster) onceEach(n int) {
	c.t.Helper()
	runs := c.runsByKey()
	bad := 0
	for k := 1; k <= n; k++ {
		if l := runs[strconv.Itoa(k)]; len(l) != 1 {
			if bad++; bad <= 5 {
				c.t.Errorf("key %d ran %d times: %q", k, len(l), l)
			}
		}
	}
	if len(runs) != n {
		c.t.Errorf("%d keys ran, want %d", len(runs), n)
	}
	if bad > 0 {
		c.t.Fatalf("%d of %d keys did not run exactly once", bad, n)
	}
}

// disp is a running dispatcher: its loop and its protocol server.
type disp struct {
	d    *dispatcher.Dispatcher
	stop func() // ends both and waits
}

// dispatcher starts a dispatcher on the cluster's address (a free port the
// first time, the same one after).
func (c *cluster) dispatcher(edit ...func(*dispatcher.Config)) *disp {
	c.t.Helper()
	cfg := dispatcher.Config{DatabaseURL: c.url, Jobs: []dispatcher.Job{c.job}, Delay: 200 * time.Millisecond,
		HeartbeatTimeout: 3 * time.Second, Secret: secret, Logger: c.log.logger("dispatcher")}
	for _, f := range edit {
		f(&cfg)
	}
	d, err := dispatcher.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	addr := c.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln := nettest.Listen(c.t, addr)
	c.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := protocol.Serve(ctx, ln, d.Handler(), nil, cfg.Logger); err != nil {
			c.t.Errorf("serve: %v", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := d.Run(ctx); err != nil {
			c.t.Errorf("dispatcher: %v", err)
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait(); ln.WaitClosed(c.t) }) }
	c.t.Cleanup(stop)
	return &disp{d: d, stop: stop}
}

// run is a running worker.
type run struct {
	w      *worker.Worker
	cfg    worker.Config
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// stop stops the worker gracefully and returns what Run returned.
func (r *run) stop() error { r.cancel(); <-r.done; return r.err }

// wait returns what Run returned, once it has.
func (r *run) wait(timeout time.Duration) (error, bool) {
	select {
	case <-r.done:
		return r.err, true
	case <-time.After(timeout):
		return nil, false
	}
}

func (c *cluster) workerConfig(id string) worker.Config {
	return worker.Config{ID: id, Node: strings.Split(id, ".")[0], Dispatchers: []string{c.addr}, Secret: secret,
		Jobs:        []worker.Job{{Name: c.job.Name, Command: c.job.Step.Command, MaxJobDuration: c.job.MaxJobDuration}},
		GracePeriod: 5 * time.Second, WorkDir: c.t.TempDir(), Logger: c.log.logger(id)}
}

// worker starts a worker; it stops when the test ends.
func (c *cluster) worker(id string, edit ...func(*worker.Config)) *run {
	c.t.Helper()
	cfg := c.workerConfig(id)
	for _, f := range edit {
		f(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{w: w, cfg: cfg, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); r.err = w.Run(ctx) }()
	c.t.Cleanup(func() { _ = r.stop() })
	return r
}

// testLog sends the log lines of a test's dispatcher and workers to t.Log
// (shown when the test fails) and keeps them for the test to look at.
type testLog struct {
	mu    sync.Mutex
	t     testing.TB
	done  bool
	lines []string
}

func newTestLog(t testing.TB) *testLog {
	l := &testLog{t: t}
	// Registered first, so it runs last: nothing may log once t is over.
	t.Cleanup(func() { l.mu.Lock(); l.done = true; l.mu.Unlock() })
	return l
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := strings.TrimRight(string(p), "\n")
	l.lines = append(l.lines, line)
	if !l.done {
		l.t.Log(line)
	}
	return len(p), nil
}

func (l *testLog) logger(who string) *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelInfo})).With("who", who)
}

// saw returns the lines that contain all of parts.
func (l *testLog) saw(parts ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// Every row is processed exactly once by several workers running a
// command step, and its bookkeeping says so.
func TestCommandStepRunsEveryRowOnce(t *testing.T) {
	t.Parallel()
	const rows = 600
	c := newCluster(t, rows, func(j *dispatcher.Job) { j.QueueSize = 10 })
	c.job.Step.Command = c.sh(appendRun)
	c.dispatcher()
	for i := 1; i <= 4; i++ {
		c.worker(fmt.Sprintf("local.%d", i))
	}
	c.waitEnded(rows, 60*time.Second)
	c.onceEach(rows)
	if n := c.count(`select count(*) from numbers where odd_checking_success and odd_checking_reservation_times = 1
  and odd_checking_start_time <= odd_checking_end_time and odd_checking_reservation_id like 'local.%'`); n != rows {
		t.Fatalf("%d of %d rows ended well at their first attempt", n, rows)
	}
	if n := c.count(`select sum(rows_done) from pampa_workers`); n != rows {
		t.Fatalf("workers counted %d rows done", n)
	}
	if n := c.count(`select count(*) from pampa_workers where rows_done > 0`); n != 4 {
		t.Fatalf("%d of the 4 workers did rows", n)
	}
}

// A command gets the row as JSON on stdin and its task in the environment;
// a failing one is retried up to max_try_times, then fails for good with
// the exit status and the tail of its stderr.
func TestCommandStepInputsAndRetries(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 10, func(j *dispatcher.Job) { j.MaxTryTimes = 2 })
	c.job.Step.Command = c.sh(`cat > "task.$PAMPA_TASK_ID.json"
echo "$PAMPA_JOB $PAMPA_WORKER_ID $PAMPA_ATTEMPT" > "task.$PAMPA_TASK_ID.env"
` + appendRun + `
if [ $((PAMPA_TASK_ID % 5)) -eq 0 ]; then echo "some noise" >&2; echo "row $PAMPA_TASK_ID is bad" >&2; exit 3; fi`)
	c.dispatcher()
	r := c.worker("local.1")
	c.waitEnded(10, 60*time.Second)
	b, err := os.ReadFile(filepath.Join(r.cfg.WorkDir, "task.3.json"))
	if err != nil {
		t.Fatal(err)
	}
	var row map[string]any
	if err := json.Unmarshal(b, &row); err != nil {
		t.Fatalf("stdin %s: %v", b, err)
	}
	if _, ok := row["odd_checking_reservation_id"]; row["value"] != 3.0 || ok {
		t.Fatalf("stdin of the command was %s, want the row's own columns as JSON", b)
	}
	envLine, _ := os.ReadFile(filepath.Join(r.cfg.WorkDir, "task.3.env"))
	if got := strings.TrimSpace(string(envLine)); got != jobName+" local.1 1" {
		t.Fatalf("environment: %q", got)
	}
	runs := c.runsByKey()
	for k := 1; k <= 10; k++ {
		want := 1
		if k%5 == 0 {
			want = 2
		}
		if n := len(runs[strconv.Itoa(k)]); n != want {
			t.Fatalf("key %d ran %d times, want %d", k, n, want)
		}
	}
	var desc string
	var times int
	if err := c.pool.QueryRow(context.Background(), `select odd_checking_error_description, odd_checking_reservation_times
from numbers where value = 5 and not odd_checking_success`).Scan(&desc, &times); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(desc, "some noise\nrow 5 is bad") || !strings.Contains(desc, "exit status 3") || times != 2 {
		t.Fatalf("row 5: error description %q after %d attempts; want the exit status and stderr after 2", desc, times)
	}
	st, err := dispatcher.Report(context.Background(), c.pool, []dispatcher.Job{c.job})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Completed != 8 || st[0].Failed != 2 || st[0].Pending != 0 {
		t.Fatalf("report %+v, want 8 completed and 2 failed for good", st[0])
	}
}

// A command still running at the worker's max_job_duration is killed, and
// its row fails saying so.
func TestCommandKilledPastMaxJobDuration(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, func(j *dispatcher.Job) { j.MaxTryTimes = 1; j.MaxJobDuration = time.Minute })
	c.job.Step.Command = c.sh(`sleep 60 & echo $! > pid; wait`)
	c.dispatcher()
	r := c.worker("local.1", func(cfg *worker.Config) { cfg.Jobs[0].MaxJobDuration = 300 * time.Millisecond })
	c.waitEnded(1, 30*time.Second)
	var desc string
	var secs float64
	if err := c.pool.QueryRow(context.Background(), `select odd_checking_error_description,
  extract(epoch from odd_checking_end_time - odd_checking_start_time)::float8 from numbers`).Scan(&desc, &secs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(desc, "max_job_duration") || secs > 10 {
		t.Fatalf("error description %q after %.1fs; want max_job_duration, soon", desc, secs)
	}
	b, err := os.ReadFile(filepath.Join(r.cfg.WorkDir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	poll.Until(t, "the step's child to die with it", 10*time.Second, func() string {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			return "" // gone
		}
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return "" // dead, waiting for a reaper
		}
		return "sleep " + pid + " still runs"
	})
}

// A Go handler's value is the step's output: result_sql stores it in the
// transaction that marks the row done, for successful rows only. A failing
// result_sql fails its row alone.
func TestGoHandlerResultSQL(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 20, func(j *dispatcher.Job) {
		j.MaxTryTimes = 1
		j.ResultSQL = `update numbers set result = $2 where value = $1::bigint`
	})
	var mu sync.Mutex
	attempts := map[string]int{}
	handler := func(ctx context.Context, task *worker.Task) (any, error) {
		mu.Lock()
		attempts[task.Key] = task.Attempt
		mu.Unlock()
		if task.Job != jobName || task.WorkerID != "local.1" {
			return nil, fmt.Errorf("task %+v", task)
		}
		switch task.Key {
		case "13":
			panic("unlucky")
		case "7":
			return nil, errors.New("seven is not welcome")
		case "11":
			return "bad", nil // the table's check refuses it
		case "4":
			return nil, nil // no output: result_sql gets null
		}
		var row map[string]any
		if err := task.Decode(&row); err != nil {
			return nil, err
		}
		v, err := row["value"].(json.Number).Int64()
		if err != nil {
			return nil, err
		}
		return struct {
			Key    string `json:"key"`
			Square int64  `json:"square"`
		}{task.Key, v * v}, nil
	}
	c.dispatcher()
	c.worker("local.1", func(cfg *worker.Config) { cfg.Handlers = map[string]worker.Handler{jobName: handler} })
	c.waitEnded(20, 60*time.Second)
	if n := c.count(`select count(*) from numbers where odd_checking_success
  and (result::jsonb->>'square')::bigint = value * value and result::jsonb->>'key' = value::text`); n != 16 {
		t.Fatalf("%d rows with the handler's value stored, want 16", n)
	}
	if n := c.count(`select count(*) from numbers where value = 4 and odd_checking_success and result is null`); n != 1 {
		t.Fatal("a nil value should store null")
	}
	if n := c.count(`select count(*) from numbers where not odd_checking_success and result is null`); n != 3 {
		t.Fatalf("%d failed rows without a result, want 3", n)
	}
	for key, want := range map[int]string{13: "panicked: unlucky", 7: "seven is not welcome", 11: "result_sql: "} {
		var desc string
		if err := c.pool.QueryRow(context.Background(), `select odd_checking_error_description from numbers where value = $1`, key).Scan(&desc); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(desc, want) {
			t.Fatalf("row %d: error description %q, want %q", key, desc, want)
		}
	}
	if attempts["1"] != 1 {
		t.Fatalf("first attempt numbered %d, want 1", attempts["1"])
	}
	if n := c.count(`select count(*) from pampa_workers where id = 'local.1' and rows_done = 17 and rows_failed = 3`); n != 1 {
		ws, _ := dispatcher.ListWorkers(context.Background(), c.pool)
		t.Fatalf("worker counters %+v, want 17 done (row 11's result_sql failed it) and 3 failed", ws)
	}
}

// A worker told to stop finishes its running row, gives its queue back
// (no attempt spent), and leaves as stopped, promptly.
func TestGracefulStopFinishesRunningRowAndGivesQueueBack(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 10, nil)
	c.job.Step.Command = c.sh(`touch "started.$PAMPA_TASK_ID"; sleep 2; ` + appendRun)
	c.dispatcher()
	r := c.worker("local.1")
	poll.Until(t, "a row to start", 30*time.Second, func() string {
		if _, err := os.Stat(filepath.Join(r.cfg.WorkDir, "started.1")); err != nil {
			return err.Error()
		}
		return ""
	})
	began := time.Now()
	if err := r.stop(); err != nil {
		t.Fatalf("graceful stop returned %v", err)
	}
	if took := time.Since(began); took > 8*time.Second {
		t.Fatalf("stopping took %s", took)
	}
	if n := c.count(`select count(*) from numbers where value = 1 and odd_checking_success`); n != 1 {
		t.Fatal("the running row did not finish during the grace period")
	}
	if n := c.count(`select count(*) from numbers where value > 1 and odd_checking_reservation_id is null
  and odd_checking_start_time is null and odd_checking_end_time is null and coalesce(odd_checking_reservation_times, 0) = 0`); n != 9 {
		t.Fatalf("%d of the 9 other rows available again with no attempt spent", n)
	}
	if runs := c.runsByKey(); len(runs) != 1 {
		t.Fatalf("steps ran for %d rows, want only the one running at the stop", len(runs))
	}
	if n := r.w.Unacked(); n != 0 {
		t.Fatalf("the worker left with %d outcomes unacknowledged", n)
	}
	poll.Until(t, "the stop to be recorded", 10*time.Second, func() string {
		if n := c.count(`select count(*) from pampa_workers where id = 'local.1' and state = 'stopped' and job is null`); n != 1 {
			return "not stopped"
		}
		return ""
	})
}

// A worker stopped while rows flow fast (a refill is usually on its way)
// gives back everything it was sent, promptly, and leaves as stopped.
func TestStopWhileRowsFlow(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 20000, nil)
	c.dispatcher()
	quick := func(ctx context.Context, task *worker.Task) (any, error) { return nil, nil }
	r := c.worker("local.1", func(cfg *worker.Config) { cfg.Handlers = map[string]worker.Handler{jobName: quick} })
	poll.Until(t, "rows to flow", 30*time.Second, func() string {
		if n, _ := c.ended(); n < 200 {
			return fmt.Sprintf("%d ended", n)
		}
		return ""
	})
	began := time.Now()
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("stopping took %s", took)
	}
	if n := c.count(`select count(*) from numbers where odd_checking_reservation_id = 'local.1' and odd_checking_end_time is null`); n != 0 {
		t.Fatalf("the stopped worker still holds %d rows", n)
	}
	poll.Until(t, "the stop to be recorded", 10*time.Second, func() string {
		if n := c.count(`select count(*) from pampa_workers where id = 'local.1' and state = 'stopped'`); n != 1 {
			return "not stopped"
		}
		return ""
	})
}

// A worker with nothing to do stops at once, and is recorded as stopped.
func TestIdleWorkerStopsAtOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 0, nil)
	c.job.Step.Command = c.sh(appendRun)
	c.dispatcher()
	r := c.worker("local.1")
	poll.Until(t, "the worker to register", 10*time.Second, func() string {
		if n := c.count(`select count(*) from pampa_workers where id = 'local.1' and state = 'alive'`); n != 1 {
			return "not registered"
		}
		return ""
	})
	began := time.Now()
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("stopping an idle worker took %s", took)
	}
	poll.Until(t, "the stop to be recorded", 10*time.Second, func() string {
		if n := c.count(`select count(*) from pampa_workers where id = 'local.1' and state = 'stopped'`); n != 1 {
			return "not stopped"
		}
		return ""
	})
}

// Fencing: the dispatcher relaunches an attempt that runs past its
// max_job_duration while the worker, whose own limit is longer, still runs
// it. The late outcome is refused (and acknowledged all the same); the
// newer attempt is the row's, start mark included.
func TestLateOutcomeIsRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, func(j *dispatcher.Job) {
		j.MaxJobDuration = 2 * time.Second
		j.ResultSQL = `update numbers set result = $2 where value = $1::bigint`
	})
	c.job.Step.Command = c.sh(appendRun + `
if [ "$PAMPA_ATTEMPT" = 1 ]; then sleep 5; else sleep 1; fi
echo "attempt $PAMPA_ATTEMPT"`)
	c.dispatcher()
	r := c.worker("local.1", func(cfg *worker.Config) { cfg.Jobs[0].MaxJobDuration = time.Minute })
	poll.Until(t, "the dispatcher to relaunch the late attempt", 30*time.Second, func() string {
		if n := c.count(`select count(*) from numbers where odd_checking_reservation_times = 1
  and odd_checking_start_time is null and odd_checking_error_description like '%max_job_duration%'`); n != 1 {
			return "not relaunched"
		}
		return ""
	})
	poll.Until(t, "the second attempt to be marked running", 30*time.Second, func() string {
		if n := c.count(`select count(*) from numbers where odd_checking_reservation_times = 2
  and odd_checking_start_time is not null and odd_checking_end_time is null`); n != 1 {
			return "not running"
		}
		return ""
	})
	c.waitEnded(1, 30*time.Second)
	var result string
	var times int
	if err := c.pool.QueryRow(context.Background(), `select result, odd_checking_reservation_times from numbers
where odd_checking_success`).Scan(&result, &times); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(result) != "attempt 2" || times != 2 {
		t.Fatalf("row ended with result %q after %d attempts; want the second attempt's", result, times)
	}
	if l := c.runsByKey()["1"]; len(l) != 2 {
		t.Fatalf("runs %q, want both attempts to have run", l)
	}
	if l := c.log.saw("late outcome refused", "attempt=1"); len(l) != 1 {
		t.Fatalf("want the first attempt's outcome refused once, log says %q", l)
	}
	if n := c.count(`select rows_done from pampa_workers where id = 'local.1'`); n != 1 {
		t.Fatalf("the worker counted %d rows done, want 1", n)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := r.w.Unacked(); n != 0 {
		t.Fatalf("the worker ended with %d outcomes unacknowledged", n)
	}
}

// PostgreSQL restarts while rows flow: the dispatcher reconnects and the
// workers' outcomes wait for it; every row succeeds, each step runs once.
// The test has a server of its own, so it runs beside the others.
func TestPostgresRestartMidRun(t *testing.T) {
	t.Parallel()
	if os.Getenv(pgtest.EnvDatabaseURL) != "" {
		t.Skipf("%s is set: this test needs to restart a server of its own", pgtest.EnvDatabaseURL)
	}
	ctx := context.Background()
	srv, err := pgserver.Start(ctx)
	if errors.Is(err, pgserver.ErrNoBinaries) || errors.Is(err, pgserver.ErrNoUser) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	pool, err := pgxpool.New(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	const rows = 3000
	c := setUp(t, pool, srv.URL(), rows, func(j *dispatcher.Job) { j.QueueSize = 20 })
	c.job.Step.Command = c.sh(appendRun)
	c.dispatcher()
	for i := 1; i <= 4; i++ {
		c.worker(fmt.Sprintf("local.%d", i))
	}
	poll.Until(t, "some rows to end", 60*time.Second, func() string {
		if n, _ := c.ended(); n < rows/5 {
			return fmt.Sprintf("%d ended", n)
		}
		return ""
	})
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	c.waitEnded(rows, 60*time.Second)
	c.onceEach(rows)
	if n := c.count(`select count(*) from numbers where odd_checking_success and odd_checking_reservation_times = 1`); n != rows {
		t.Fatalf("%d of %d rows succeeded at their first attempt", n, rows)
	}
	if n := c.count(`select count(*) from numbers where odd_checking_reservation_id is not null and odd_checking_end_time is null`); n != 0 {
		t.Fatalf("%d rows still queued or running", n)
	}
	if l := c.log.saw("dispatcher cannot reach the database"); len(l) == 0 {
		if l := c.log.saw("dispatcher step failed"); len(l) == 0 {
			t.Fatal("the dispatcher never noticed the restart: the test tested nothing")
		}
	}
}

// The dispatcher restarts on the same address while the workers run: they
// reconnect with what they hold and send their outcomes again; every row
// succeeds, each step runs once.
func TestDispatcherRestartMidRun(t *testing.T) {
	t.Parallel()
	const rows = 2000
	c := newCluster(t, rows, func(j *dispatcher.Job) { j.QueueSize = 10 })
	c.job.Step.Command = c.sh(appendRun)
	first := c.dispatcher()
	for i := 1; i <= 3; i++ {
		c.worker(fmt.Sprintf("local.%d", i))
	}
	poll.Until(t, "some rows to end", 60*time.Second, func() string {
		if n, _ := c.ended(); n < rows/5 {
			return fmt.Sprintf("%d ended", n)
		}
		return ""
	})
	first.stop()
	c.dispatcher()
	c.waitEnded(rows, 60*time.Second)
	c.onceEach(rows)
	if n := c.count(`select count(*) from numbers where odd_checking_success and odd_checking_reservation_times = 1`); n != rows {
		t.Fatalf("%d of %d rows succeeded at their first attempt", n, rows)
	}
	if n := c.count(`select count(*) from numbers where odd_checking_reservation_id is not null and odd_checking_end_time is null`); n != 0 {
		t.Fatalf("%d rows still queued or running", n)
	}
	if n := c.count(`select sum(rows_done) from pampa_workers`); n != rows {
		t.Fatalf("workers counted %d rows done, want %d", n, rows)
	}
}

// A worker without the cluster's secret is refused for good: Run returns
// an error wrapping protocol.ErrRefused that does not show the secret, and
// no row is touched.
func TestWrongSecretIsRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 10, nil)
	c.job.Step.Command = c.sh(appendRun)
	c.dispatcher()
	const wrong = "not-the-cluster-secret"
	r := c.worker("local.1", func(cfg *worker.Config) { cfg.Secret = []byte(wrong) })
	err, ok := r.wait(30 * time.Second)
	if !ok {
		t.Fatal("a refused worker keeps running")
	}
	if !errors.Is(err, protocol.ErrRefused) || strings.Contains(err.Error(), wrong) {
		t.Fatalf("Run returned %v; want protocol.ErrRefused, without the secret", err)
	}
	if n := c.count(`select count(*) from numbers where odd_checking_reservation_id is not null or odd_checking_reservation_times is not null`); n != 0 {
		t.Fatalf("%d rows touched", n)
	}
	if n := c.count(`select count(*) from pampa_workers`); n != 0 {
		t.Fatal("the refused worker was registered")
	}
}

// A second process under a worker id already connected is refused; the
// first goes on.
func TestSameWorkerIDTwiceIsRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 20, nil)
	c.job.Step.Command = c.sh(`if [ "$PAMPA_TASK_ID" = 1 ]; then sleep 1; fi; ` + appendRun)
	c.dispatcher()
	c.worker("local.1")
	poll.Until(t, "the first worker to register", 10*time.Second, func() string {
		if n := c.count(`select count(*) from pampa_workers where id = 'local.1'`); n != 1 {
			return "not registered"
		}
		return ""
	})
	err, ok := c.worker("local.1").wait(30 * time.Second)
	if !ok || !errors.Is(err, protocol.ErrRefused) {
		t.Fatalf("second worker under the same id: %v (ended %v); want protocol.ErrRefused", err, ok)
	}
	c.waitEnded(20, 60*time.Second)
	c.onceEach(20)
}

// TestKilledWorkerRowCompletesOnceElsewhere kills a worker process with
// SIGKILL in the middle of a row: once its heartbeat timeout passes, the
// row is relaunched (the killed attempt counts) and completed by another
// worker, and the killed step never completes.
func TestKilledWorkerRowCompletesOnceElsewhere(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, func(j *dispatcher.Job) { j.QueueSize = 1 })
	mid := filepath.Join(c.dir, "mid-row")
	c.job.Step.Command = c.sh(`if [ "$PAMPA_TASK_ID" = 1 ] && [ "$PAMPA_ATTEMPT" = 1 ]; then touch '` + mid + `'; exec sleep 30; fi
` + appendRun)
	c.dispatcher(func(cfg *dispatcher.Config) { cfg.HeartbeatTimeout = time.Second })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), asWorkerEnv+"=node1.1", "PAMPA_TEST_ADDR="+c.addr,
		"PAMPA_TEST_SCRIPT="+c.job.Step.Command[2], "PAMPA_TEST_DIR="+t.TempDir())
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
	poll.Until(t, "the worker process to be in the middle of row 1", 30*time.Second, func() string {
		if _, err := os.Stat(mid); err != nil {
			return err.Error()
		}
		if n := c.count(`select count(*) from numbers where value = 1 and odd_checking_reservation_id = 'node1.1'
  and odd_checking_start_time is not null and odd_checking_end_time is null`); n != 1 {
			return "row 1 not marked running"
		}
		return ""
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waited = true
	c.worker("node2.1")
	c.waitEnded(3, 60*time.Second)
	if n := c.count(`select count(*) from numbers where odd_checking_success and odd_checking_reservation_id = 'node2.1'`); n != 3 {
		t.Fatalf("%d of 3 rows completed by the survivor", n)
	}
	c.onceEach(3)
	if l := c.runsByKey()["1"]; len(l) != 1 || l[0] != "1 2 node2.1" {
		t.Fatalf("row 1 ran as %q, want once, as attempt 2 on node2.1", l)
	}
	if n := c.count(`select odd_checking_reservation_times from numbers where value = 1`); n != 2 {
		t.Fatalf("row 1 took %d attempts, want 2 (the killed one counts)", n)
	}
	if n := c.count(`select count(*) from pampa_workers where id = 'node1.1' and state = 'dead'`); n != 1 {
		t.Fatal("the killed worker is not marked dead")
	}
}

// A command exiting with a fatal exit code and a handler returning
// worker.Permanent end their rows at once, whatever tries are left; other
// failures are tried again.
func TestPermanentFailuresEndTheirRowsAtOnce(t *testing.T) {
	t.Parallel()
	t.Run("fatal exit code", func(t *testing.T) {
		t.Parallel()
		c := newCluster(t, 6, func(j *dispatcher.Job) { j.MaxTryTimes = 3; j.FatalExitCodes = []int{3} })
		c.job.Step.Command = c.sh(appendRun + `
case $PAMPA_TASK_ID in 2) exit 3;; 4) exit 4;; esac`)
		c.dispatcher()
		c.worker("local.1")
		c.waitEnded(6, 60*time.Second)
		runs := c.runsByKey()
		if len(runs["2"]) != 1 || len(runs["4"]) != 3 {
			t.Fatalf("row 2 (exit 3, fatal) ran %d times, row 4 (exit 4) %d; want 1 and 3", len(runs["2"]), len(runs["4"]))
		}
	})
	t.Run("worker.Permanent", func(t *testing.T) {
		t.Parallel()
		c := newCluster(t, 6, func(j *dispatcher.Job) { j.MaxTryTimes = 3 })
		var mu sync.Mutex
		runs := map[string]int{}
		handler := func(ctx context.Context, task *worker.Task) (any, error) {
			mu.Lock()
			runs[task.Key]++
			mu.Unlock()
			switch task.Key {
			case "2":
				return nil, worker.Permanent(fmt.Errorf("row %s: %w", task.Key, errors.ErrUnsupported))
			case "4":
				return nil, errors.New("try again")
			}
			return nil, nil
		}
		c.dispatcher()
		c.worker("local.1", func(cfg *worker.Config) { cfg.Handlers = map[string]worker.Handler{jobName: handler} })
		c.waitEnded(6, 60*time.Second)
		mu.Lock()
		defer mu.Unlock()
		if runs["2"] != 1 || runs["4"] != 3 {
			t.Fatalf("row 2 (permanent) ran %d times, row 4 %d; want 1 and 3", runs["2"], runs["4"])
		}
		var desc string
		if err := c.pool.QueryRow(context.Background(), `select odd_checking_error_description from numbers where value = 2`).Scan(&desc); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(desc, "row 2: unsupported operation") {
			t.Fatalf("row 2's error description is %q; want the handler's error", desc)
		}
	})
}

// rows cancel of a running `sleep 30` step stops it: the row ends failed
// "cancelled", for good, and its step ran once.
func TestCancelStopsARunningStep(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, func(j *dispatcher.Job) { j.MaxTryTimes = 3 })
	pidFile := filepath.Join(c.dir, "step.pid")
	c.job.Step.Command = c.sh(appendRun + `
echo $$ > '` + pidFile + `'
exec sleep 30`)
	c.dispatcher()
	c.worker("local.1")
	poll.Until(t, "the step to run", 20*time.Second, func() string {
		if _, err := os.Stat(pidFile); err != nil {
			return err.Error()
		}
		return ""
	})
	b, _ := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	kt, err := dispatcher.KeyType(context.Background(), c.pool, c.job)
	if err != nil {
		t.Fatal(err)
	}
	res, err := dispatcher.Cancel(context.Background(), c.pool, dispatcher.Postgres, dispatcher.NewQueries(c.job, kt), []string{"1"})
	if err != nil || len(res.Cancelled) != 1 {
		t.Fatalf("Cancel = %+v, %v", res, err)
	}
	// Well within sleep's 30 s.
	c.waitEnded(1, 15*time.Second)
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("the step's process %d still runs", pid)
	}
	var desc string
	var final bool
	if err := c.pool.QueryRow(context.Background(), `select odd_checking_error_description, odd_checking_final from numbers`).
		Scan(&desc, &final); err != nil {
		t.Fatal(err)
	}
	if desc != "cancelled" || !final {
		t.Fatalf("row 1: error %q, final %v; want cancelled, for good", desc, final)
	}
	time.Sleep(1500 * time.Millisecond) // a few dispatcher cycles: it must not come back
	if n := len(c.runsByKey()["1"]); n != 1 {
		t.Fatalf("the cancelled row ran %d times; want 1", n)
	}
}

// With slots = 3 a worker runs three rows at once, never more: handlers
// as goroutines, commands as processes.
func TestSlotsRunRowsAtOnce(t *testing.T) {
	t.Parallel()
	t.Run("handler", func(t *testing.T) {
		t.Parallel()
		c := newCluster(t, 9, func(j *dispatcher.Job) { j.QueueSize = 5 })
		var mu sync.Mutex
		running, most := 0, 0
		full := make(chan struct{})
		handler := func(ctx context.Context, task *worker.Task) (any, error) {
			mu.Lock()
			running++
			most = max(most, running)
			if running == 3 {
				close(full)
				full = make(chan struct{})
			}
			wait := full
			mu.Unlock()
			select { // each waits for two others, so the rows run three by three
			case <-wait:
			case <-time.After(10 * time.Second):
			}
			mu.Lock()
			running--
			mu.Unlock()
			return nil, nil
		}
		c.dispatcher()
		c.worker("local.1", func(cfg *worker.Config) {
			cfg.Handlers = map[string]worker.Handler{jobName: handler}
			cfg.Jobs[0].Slots = 3
		})
		c.waitEnded(9, 25*time.Second)
		mu.Lock()
		defer mu.Unlock()
		if most != 3 {
			t.Fatalf("at most %d rows ran at once; want 3 (slots)", most)
		}
	})
	t.Run("command", func(t *testing.T) {
		t.Parallel()
		c := newCluster(t, 6, nil)
		dir := filepath.Join(c.dir, "running")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// Each step counts the steps running beside it.
		c.job.Step.Command = c.sh(`touch '` + dir + `'/$PAMPA_TASK_ID; ls '` + dir + `' | wc -l >> RUNS.n; sleep 0.5; rm '` + dir + `'/$PAMPA_TASK_ID`)
		c.dispatcher()
		c.worker("local.1", func(cfg *worker.Config) { cfg.Jobs[0].Slots = 2 })
		c.waitEnded(6, 30*time.Second)
		b, err := os.ReadFile(c.runs + ".n")
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(b)) {
			if n, _ := strconv.Atoi(f); n > 2 {
				t.Fatalf("%d command steps ran at once with slots = 2 (counts %q)", n, b)
			}
		}
	})
}

// max_ram kills a step whose processes outgrow it, by the kernel (a
// cgroup of the step's own) where the worker may make one, else by the
// worker's own watch; the row fails naming the limit, other rows succeed.
func TestMaxRAMStopsAStep(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		noKernel bool
		by, want string
	}{
		{"kernel", false, worker.ByKernel, "the kernel killed it"},
		{"worker", true, worker.ByWorker, "the worker killed them"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if !tc.noKernel {
				plan := worker.PlanLimits(worker.Limits{RAMMiB: 64}, t.TempDir())
				if plan[0].By != worker.ByKernel {
					if os.Getenv("CI") != "" && os.Geteuid() == 0 {
						t.Fatalf("CI runs as root, yet max_ram is not enforced by the kernel: %s", plan[0].Reason)
					}
					t.Skipf("no kernel limits here: %s", plan[0].Reason)
				}
			}
			c := newCluster(t, 4, func(j *dispatcher.Job) { j.MaxTryTimes = 1 })
			// Row 2 grows past 64 MiB: tail keeps all of a line-less input.
			c.job.Step.Command = c.sh(`if [ $PAMPA_TASK_ID = 2 ]; then head -c 400000000 /dev/zero | tail > /dev/null; fi`)
			c.dispatcher()
			c.worker("local.1", func(cfg *worker.Config) {
				cfg.Limits = worker.Limits{RAMMiB: 64}
				cfg.NoKernelLimits = tc.noKernel
			})
			c.waitEnded(4, 60*time.Second)
			var desc string
			if err := c.pool.QueryRow(context.Background(), `select odd_checking_error_description from numbers where value = 2`).Scan(&desc); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(desc, "max_ram 64 MiB") || !strings.Contains(desc, tc.want) {
				t.Fatalf("row 2 failed with %q; want max_ram 64 MiB and %q", desc, tc.want)
			}
			if n := c.count(`select count(*) from numbers where odd_checking_success`); n != 3 {
				t.Fatalf("%d rows succeeded; want the 3 others", n)
			}
			if len(c.log.saw("resource limit", "max_ram", "by="+tc.by)) == 0 {
				t.Errorf("the worker did not log how it enforces max_ram")
			}
		})
	}
}

// max_cpu by the kernel caps a busy step: two seconds of a spinning loop
// at 20% of one CPU use at most about 0.4 s of CPU, whatever else runs.
func TestMaxCPUCapsAStep(t *testing.T) {
	t.Parallel()
	plan := worker.PlanLimits(worker.Limits{CPUPercent: 20}, t.TempDir())
	if plan[0].By != worker.ByKernel {
		if os.Getenv("CI") != "" && os.Geteuid() == 0 {
			t.Fatalf("CI runs as root, yet max_cpu is not enforced by the kernel: %s", plan[0].Reason)
		}
		t.Skipf("no kernel limits here: %s", plan[0].Reason)
	}
	c := newCluster(t, 1, func(j *dispatcher.Job) {
		j.MaxTryTimes = 1
		j.ResultSQL = `update numbers set result = $2 where value = $1::bigint`
	})
	// The step spins for 2 s, then prints the CPU ticks its children used
	// (fields 16 and 17 of /proc/self/stat: cutime, cstime).
	c.job.Step.Command = c.sh(`timeout 2 sh -c 'while :; do :; done'
read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ cu cs _ < /proc/$$/stat; echo $((cu + cs))`)
	c.dispatcher()
	c.worker("local.1", func(cfg *worker.Config) { cfg.Limits = worker.Limits{CPUPercent: 20} })
	c.waitEnded(1, 60*time.Second)
	var out string
	if err := c.pool.QueryRow(context.Background(), `select coalesce(result, '') from numbers where value = 1`).Scan(&out); err != nil {
		t.Fatal(err)
	}
	ticks, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("step output %q: %v", out, err)
	}
	if cpu := float64(ticks) / 100; cpu > 0.7 || cpu < 0.05 {
		t.Fatalf("the step used %.2f s of CPU in 2 s at max_cpu 20%%; want about 0.4 (at most 0.7)", cpu)
	}
}

// blockDir returns a directory on a block device the io controller can
// throttle: a temporary directory if it is on one, else an ext4 file
// system on a loop device, mounted for the test (as root).
func blockDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err == nil && unix.Major(st.Dev) != 0 {
		if _, err := os.Stat(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))); err == nil {
			return dir
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("the temporary directory is not on a block device, and a loop device needs root")
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	dev := run("losetup", "--find", "--show", img)
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	run("mkfs.ext4", "-q", dev)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run("mount", dev, mnt)
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	return mnt
}

// max_disk_io by the kernel throttles a step's writes on the work dir's
// device: 6 MB written directly (past the page cache) at 2 MB/s take
// about 3 s, where unthrottled they take a fraction of one.
func TestMaxDiskIOThrottlesAStep(t *testing.T) {
	t.Parallel()
	work := blockDir(t)
	plan := worker.PlanLimits(worker.Limits{DiskMBps: 2}, work)
	if plan[0].By != worker.ByKernel {
		if os.Getenv("CI") != "" && os.Geteuid() == 0 {
			t.Fatalf("CI runs as root, yet max_disk_io is not enforced by the kernel: %s", plan[0].Reason)
		}
		t.Skipf("no kernel limits here: %s", plan[0].Reason)
	}
	c := newCluster(t, 1, func(j *dispatcher.Job) {
		j.MaxTryTimes = 1
		j.ResultSQL = `update numbers set result = $2 where value = $1::bigint`
	})
	c.job.Step.Command = c.sh(`began=$(date +%s%N)
dd if=/dev/zero of=io.test bs=1M count=6 oflag=direct 2>/dev/null || exit 1
echo $(( ($(date +%s%N) - began) / 1000000 ))`)
	c.dispatcher()
	c.worker("local.1", func(cfg *worker.Config) {
		cfg.Limits = worker.Limits{DiskMBps: 2}
		cfg.WorkDir = work
	})
	c.waitEnded(1, 60*time.Second)
	var out string
	if err := c.pool.QueryRow(context.Background(), `select coalesce(result, '') from numbers where value = 1`).Scan(&out); err != nil {
		t.Fatal(err)
	}
	ms, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("step output %q (%d rows failed): %v", out, c.count(`select count(*) from numbers where not odd_checking_success`), err)
	}
	if ms < 2000 {
		t.Fatalf("6 MB took %d ms at max_disk_io 2 MB/s; want about 3000 (at least 2000)", ms)
	}
	if len(c.log.saw("resource limit", "max_disk_io", "by="+worker.ByKernel)) == 0 {
		t.Errorf("the worker did not log how it enforces max_disk_io")
	}
}
