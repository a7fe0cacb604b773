package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/worker"
)

// dispatcherDelay is the dispatcher's idle poll period in every scenario.
const dispatcherDelay = 200 * time.Millisecond

// benchJobName is the job of every Pampa scenario; the no-op Go handler of
// the in-process workers and of benchctl is registered under it.
const benchJobName = "bench"

// noop is the no-op step.
func noop(context.Context, *worker.Task) (any, error) { return nil, nil }

// connCounter is a slog.Handler that counts the protocol server's
// "worker connected" and "worker disconnected" records on their way to the
// real handler: how the harness knows every worker stream is up while the
// dispatcher itself is blocked (see lockTasks).
type connCounter struct {
	inner  slog.Handler
	n      *atomic.Int64
	leader *atomic.Bool // the dispatcher took the lease and accepts workers
}

func newConnCounter(inner slog.Handler) connCounter {
	return connCounter{inner: inner, n: new(atomic.Int64), leader: new(atomic.Bool)}
}

// Messages of the dispatcher and of the protocol server the harness
// watches for.
const (
	msgConnected    = "worker connected"
	msgDisconnected = "worker disconnected"
	msgLeader       = "dispatcher is the leader; serving workers"
)

func (h connCounter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.inner.Enabled(ctx, l)
}

func (h connCounter) Handle(ctx context.Context, r slog.Record) error {
	switch r.Message {
	case msgConnected:
		h.n.Add(1)
	case msgDisconnected:
		h.n.Add(-1)
	case msgLeader:
		h.leader.Store(true)
	}
	if h.inner.Enabled(ctx, r.Level) {
		return h.inner.Handle(ctx, r)
	}
	return nil
}

func (h connCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return connCounter{inner: h.inner.WithAttrs(as), n: h.n, leader: h.leader}
}

func (h connCounter) WithGroup(g string) slog.Handler {
	return connCounter{inner: h.inner.WithGroup(g), n: h.n, leader: h.leader}
}

// cluster is a dispatcher serving the worker protocol on a loopback port
// and workers that connect to it over TCP, all goroutines of this process:
// each worker has its own protocol client, HTTP/2 connection and stream,
// as a `pampactl worker run` process would.
type cluster struct {
	d         *dispatcher.Dispatcher
	addr      string
	connected *atomic.Int64 // worker streams the dispatcher accepted
	stopD     context.CancelFunc
	dDone     chan error
	stopW     context.CancelFunc
	wg        sync.WaitGroup
	errs      chan error
	workDir   string
	stopped   bool
}

// secret is the worker secret of the in-process clusters.
func newSecret() []byte {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return []byte(hex.EncodeToString(b))
}

// startCluster starts the dispatcher on a free loopback port, then n
// workers running handler for job.
func startCluster(ctx context.Context, dbURL string, job dispatcher.Job, n int, handler worker.Handler, log *slog.Logger) (*cluster, error) {
	counter := newConnCounter(log.Handler())
	secret := newSecret()
	d, err := dispatcher.New(dispatcher.Config{DatabaseURL: dbURL, Jobs: []dispatcher.Job{job},
		Delay: dispatcherDelay, Holder: "bench", Secret: secret,
		Logger: slog.New(counter).With("component", "dispatcher")})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pampabench-workers-")
	if err != nil {
		ln.Close()
		return nil, err
	}
	// A worker that stops logs, as its stream closes, that it reconnects:
	// only errors of the workers are worth the harness's output.
	wlog := log
	if !log.Enabled(ctx, slog.LevelInfo) {
		wlog = slog.New(levelAtLeast{log.Handler(), slog.LevelError})
	}
	c := &cluster{d: d, addr: ln.Addr().String(), connected: counter.n, dDone: make(chan error, 1),
		errs: make(chan error, n), workDir: dir}
	dctx, stopD := context.WithCancel(context.WithoutCancel(ctx))
	c.stopD = stopD
	go func() { c.dDone <- d.Serve(dctx, ln, nil) }()
	// Workers that came before the dispatcher took the lease would be
	// refused and back off: start them once it serves.
	lctx, lcancel := context.WithTimeout(ctx, 30*time.Second)
	err = waitFor(lctx, time.Millisecond, func() (bool, error) {
		select {
		case err := <-c.dDone:
			return false, fmt.Errorf("dispatcher ended: %v", err)
		default:
		}
		return counter.leader.Load(), nil
	})
	lcancel()
	if err != nil {
		stopD()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("wait for the dispatcher to lead: %w", err)
	}

	wctx, stopW := context.WithCancel(context.WithoutCancel(ctx))
	c.stopW = stopW
	for i := 1; i <= n; i++ {
		w, err := worker.New(worker.Config{
			ID: fmt.Sprintf("local.%d", i), Node: "local", Dispatchers: []string{c.addr}, Secret: secret,
			Jobs:        []worker.Job{{Name: job.Name, MaxJobDuration: job.MaxJobDuration}},
			Handlers:    map[string]worker.Handler{job.Name: handler},
			GracePeriod: 5 * time.Second, WorkDir: dir,
			Logger: wlog,
		})
		if err != nil {
			c.stop()
			return nil, err
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := w.Run(wctx); err != nil {
				c.errs <- err
			}
		}()
	}
	return c, nil
}

// waitConnected waits until the dispatcher has accepted n worker streams.
func (c *cluster) waitConnected(ctx context.Context, n int, limit time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err := waitFor(wctx, 5*time.Millisecond, func() (bool, error) {
		select {
		case err := <-c.errs:
			return false, fmt.Errorf("worker: %w", err)
		case err := <-c.dDone:
			return false, fmt.Errorf("dispatcher ended: %v", err)
		default:
		}
		return c.connected.Load() >= int64(n), nil
	})
	if err != nil {
		return fmt.Errorf("wait for %d worker streams (%d up): %w", n, c.connected.Load(), err)
	}
	return nil
}

// stop ends the workers first (they give their rows back and wait for the
// dispatcher to let them go), then the dispatcher.
func (c *cluster) stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	c.stopW()
	c.wg.Wait()
	c.stopD()
	select {
	case <-c.dDone:
	case <-time.After(30 * time.Second):
	}
	os.RemoveAll(c.workDir)
}

// lockTasks holds an EXCLUSIVE lock on the tasks table in a transaction of
// its own: the dispatcher's first statement that writes the table (the
// first cycle's relaunch) waits for it, while reads, the lease and the
// worker streams go on. That is how a run starts with every worker
// connected and every row available at once: release lifts it.
type tableLock struct {
	conn *pgx.Conn
	tx   pgx.Tx
}

func lockTasks(ctx context.Context, dbURL string) (*tableLock, error) {
	conn, err := connectHarness(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	tx, err := conn.Begin(ctx)
	if err == nil {
		_, err = tx.Exec(ctx, "lock table tasks in exclusive mode")
	}
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("lock the tasks table: %w", err)
	}
	return &tableLock{conn: conn, tx: tx}, nil
}

// release lifts the lock; it may be called more than once.
func (l *tableLock) release(ctx context.Context) error {
	if l.tx == nil {
		return nil
	}
	err := l.tx.Rollback(ctx)
	l.tx = nil
	l.conn.Close(context.WithoutCancel(ctx))
	return err
}

// rowsDone is the cheap progress counter: the dispatcher adds to it in the
// transaction that writes the rows' end marks.
func rowsDone(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var n int64
	err := conn.QueryRow(ctx, `select coalesce(sum(rows_done), 0)::bigint from pampa_workers`).Scan(&n)
	return n, err
}

// pampaScenario is one throughput run of Pampa.
type pampaScenario struct {
	workers, queueSize int
	feature            *feature // nil: the plain job
}

// feature is a job setting whose cost the bench shows beside the plain
// scenario of the same shape.
type feature struct {
	name string
	edit func(*dispatcher.Job)
}

// features are measured at 8 workers, queue_size 5 (a reservation round
// per 5 rows: what costs per round shows most) and 1000.
var features = []feature{
	{"allowing_sql, queue_slots_sql and occupied_sql", func(j *dispatcher.Job) {
		j.Snippets.AllowingSQL = "select $1::text <> ''"
		j.Snippets.QueueSlotsSQL = "select length($1::text) + 1000"
		j.Snippets.OccupiedSQL = "select count(*) from tasks where bench_reservation_id = $1 and bench_start_time is null"
	}},
	{"limit_key (id % 100), max_running_per_key 50", func(j *dispatcher.Job) {
		j.Limits = dispatcher.Limits{Key: "id % 100", MaxRunningPerKey: 50}
	}},
}

func (s pampaScenario) name() string {
	n := fmt.Sprintf("Pampa %d worker(s), queue_size %d", s.workers, s.queueSize)
	if s.feature != nil {
		n += ", " + s.feature.name
	}
	return n
}

// runPampa measures rows per second from available to ended. The tasks
// table is locked (lockTasks) while the dispatcher starts and every worker
// connects; the clock starts as the lock is lifted and stops when the
// dispatcher has written the end marks of all rows. When the scenario's
// timeout comes first, the rate over the rows ended so far is reported and
// marked partial.
func runPampa(ctx context.Context, e *env, s pampaScenario, rows int, log *slog.Logger) (result, error) {
	res := result{Kind: kindPampa, Name: s.name(), Workers: s.workers, QueueSize: s.queueSize}
	schema := fmt.Sprintf("bench_w%d_q%d", s.workers, s.queueSize)
	if s.feature != nil {
		res.Kind, schema = kindPampaFeature, schema+"_f"
	}
	dbURL, err := e.freshSchema(ctx, schema)
	if err != nil {
		return res, err
	}
	defer e.dropSchema(schema)
	job := benchJob(s.queueSize)
	if s.feature != nil {
		s.feature.edit(&job)
	}
	if err := prepareTasks(ctx, dbURL, "", rows, job); err != nil {
		return res, err
	}
	conn, err := connectHarness(ctx, dbURL)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	lock, err := lockTasks(ctx, dbURL)
	if err != nil {
		return res, err
	}
	defer lock.release(context.WithoutCancel(ctx))
	c, err := startCluster(ctx, dbURL, job, s.workers, noop, log)
	if err != nil {
		return res, err
	}
	defer c.stop()
	if err := c.waitConnected(ctx, s.workers, time.Minute); err != nil {
		return res, err
	}

	tctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	if err := e.resetPGStats(ctx); err != nil {
		return res, err
	}
	cpu0 := readCPU()
	if err := lock.release(ctx); err != nil {
		return res, err
	}
	start := time.Now()
	var done int64
	var samples []sample
	err = waitFor(tctx, 10*time.Millisecond, func() (bool, error) {
		n, _, _ := c.d.Progress() // in memory: a query every 10 ms would cost the run
		done = n
		samples = append(samples, sample{time.Since(start), n})
		return n >= int64(rows), nil
	})
	res.Elapsed = time.Since(start)
	res.CPU = readCPU().since(cpu0)
	res.Rows = done
	if err := e.printPGStats(ctx, s.name()); err != nil {
		return res, err
	}
	res.Note = rateSpread(samples, int64(rows))
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		res.Partial = true
		n, _, _ := c.d.Progress()
		res.Rows = n
		res.Note = fmt.Sprintf("timed out after %s with %d of %d rows ended; %s", e.timeout, n, rows, res.Note)
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("wait for the rows to end: %w", err)
	}
	c.stop()
	// Report is the authority; the dispatcher's count was the trigger.
	st, err := dispatcher.Report(ctx, conn, []dispatcher.Job{job})
	if err != nil {
		return res, err
	}
	if st[0].Completed != int64(rows) {
		return res, fmt.Errorf("report says %d of %d rows completed (%+v)", st[0].Completed, rows, st[0])
	}
	var retried, busy int64
	if err := conn.QueryRow(ctx, `select count(*) filter (where bench_reservation_times <> 1),
  count(distinct bench_reservation_id) from tasks`).Scan(&retried, &busy); err != nil {
		return res, err
	}
	if busy != int64(s.workers) {
		res.Note += fmt.Sprintf("; rows ended by %d of the %d workers", busy, s.workers)
	}
	if retried > 0 {
		res.Note += fmt.Sprintf("; %d rows took more than one attempt", retried)
	}
	return res, nil
}

// latencyResult is the insert-to-start latency of rows inserted one by one
// while workers idle.
type latencyResult struct {
	Inserts, Workers int
	// Median, P99 and Max: from the row's insert (clock_timestamp() in the
	// inserting statement) to the start of its Go handler on a worker.
	Median, P99, Max time.Duration
	// MarkMedian, MarkP99: to the start mark the dispatcher writes
	// (now() of the flush transaction that records the worker's "starts").
	MarkMedian, MarkP99 time.Duration
}

// runLatency inserts rows one at a time, spaced, with idle workers
// connected and queue_size 5, and measures from each insert to the start of
// the handler that runs the row. Both clocks are the host's realtime clock
// (the database's clock_timestamp() and Go's time.Now()).
func runLatency(ctx context.Context, e *env, inserts, workers int, spacing time.Duration, log *slog.Logger) (latencyResult, error) {
	res := latencyResult{Inserts: inserts, Workers: workers}
	const schema = "bench_latency"
	dbURL, err := e.freshSchema(ctx, schema)
	if err != nil {
		return res, err
	}
	defer e.dropSchema(schema)
	job := benchJob(dispatcher.DefaultQueueSize)
	if err := prepareTasks(ctx, dbURL, ", inserted_at timestamptz not null default clock_timestamp()", 0, job); err != nil {
		return res, err
	}
	conn, err := connectHarness(ctx, dbURL)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var started sync.Map // key → time.Time
	handler := func(_ context.Context, t *worker.Task) (any, error) {
		started.LoadOrStore(t.Key, time.Now())
		return nil, nil
	}
	c, err := startCluster(ctx, dbURL, job, workers, handler, log)
	if err != nil {
		return res, err
	}
	defer c.stop()
	if err := c.waitConnected(ctx, workers, time.Minute); err != nil {
		return res, err
	}
	// Registered: the dispatcher has written them and reconciled their
	// (empty) hands, so no statement of a first flush lands in the
	// measurement.
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	if err := waitFor(rctx, 10*time.Millisecond, func() (bool, error) {
		var n int
		err := conn.QueryRow(rctx, `select count(*) from pampa_workers where state = 'alive'`).Scan(&n)
		return n == workers, err
	}); err != nil {
		return res, fmt.Errorf("wait for %d workers to register: %w", workers, err)
	}

	tctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	insert := func(id int) error {
		_, err := conn.Exec(tctx, `insert into tasks (id) values ($1)`, id)
		return err
	}
	// Warm up connections and statement caches; these rows are not counted.
	const warmup = 10
	for i := 1; i <= warmup; i++ {
		if err := insert(-i); err != nil {
			return res, fmt.Errorf("insert: %w", err)
		}
		if err := sleep(tctx, spacing); err != nil {
			return res, err
		}
	}
	t := time.NewTicker(spacing)
	defer t.Stop()
	for i := 1; i <= inserts; i++ {
		if err := insert(i); err != nil {
			return res, fmt.Errorf("insert: %w", err)
		}
		select {
		case <-tctx.Done():
			return res, tctx.Err()
		case <-t.C:
		}
	}
	err = waitFor(tctx, 10*time.Millisecond, func() (bool, error) {
		n, err := rowsDone(tctx, conn)
		return n >= int64(inserts+warmup), err
	})
	if err != nil {
		return res, fmt.Errorf("wait for the inserted rows to end: %w", err)
	}
	rows, err := conn.Query(ctx, `select id::text, inserted_at, bench_start_time from tasks where id > 0`)
	if err != nil {
		return res, err
	}
	var toStep, toMark []time.Duration
	for rows.Next() {
		var key string
		var ins, mark time.Time
		if err := rows.Scan(&key, &ins, &mark); err != nil {
			return res, err
		}
		v, ok := started.Load(key)
		if !ok {
			return res, fmt.Errorf("row %s ended but no handler ran it", key)
		}
		toStep = append(toStep, v.(time.Time).Sub(ins))
		toMark = append(toMark, mark.Sub(ins))
	}
	if err := rows.Err(); err != nil {
		return res, err
	}
	if len(toStep) != inserts {
		return res, fmt.Errorf("%d rows measured, want %d", len(toStep), inserts)
	}
	res.Median, res.P99, res.Max = percentile(toStep, 0.5), percentile(toStep, 0.99), percentile(toStep, 1)
	res.MarkMedian, res.MarkP99 = percentile(toMark, 0.5), percentile(toMark, 0.99)
	return res, nil
}

// sample is the progress at a moment of a run.
type sample struct {
	at   time.Duration
	done int64
}

// rateSpread compares the rate over the first and the last quarter of the
// rows: a rate that falls as rows are processed points at per-cycle costs
// that grow with the rows already done (dead index entries, say).
func rateSpread(samples []sample, total int64) string {
	q1, ok1 := reached(samples, total/4)
	q3, ok3 := reached(samples, total*3/4)
	end, ok4 := reached(samples, total)
	if !ok1 || q1 <= 0 {
		return ""
	}
	first := fmt.Sprintf("first quarter %.0f rows/s", float64(total/4)/q1.Seconds())
	if !ok3 || !ok4 || end <= q3 {
		return first
	}
	return fmt.Sprintf("%s, last quarter %.0f rows/s", first, float64(total-total*3/4)/(end-q3).Seconds())
}

// reached is when the progress first reached n.
func reached(samples []sample, n int64) (time.Duration, bool) {
	for _, s := range samples {
		if s.done >= n {
			return s.at, true
		}
	}
	return 0, false
}

// steadyRate is the rate between 10% and 90% of total: the start (workers
// registered, first reservations) and the tail left out.
func steadyRate(samples []sample, total int64) float64 {
	a, ok1 := reached(samples, total/10)
	b, ok2 := reached(samples, total*9/10)
	if !ok1 || !ok2 || b <= a {
		return 0
	}
	var na, nb int64
	for _, s := range samples {
		if s.at == a {
			na = s.done
		}
		if s.at == b {
			nb = s.done
		}
	}
	return float64(nb-na) / (b - a).Seconds()
}

// levelAtLeast drops records below min.
type levelAtLeast struct {
	slog.Handler
	min slog.Level
}

func (h levelAtLeast) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h levelAtLeast) WithAttrs(as []slog.Attr) slog.Handler {
	return levelAtLeast{h.Handler.WithAttrs(as), h.min}
}

func (h levelAtLeast) WithGroup(g string) slog.Handler {
	return levelAtLeast{h.Handler.WithGroup(g), h.min}
}
