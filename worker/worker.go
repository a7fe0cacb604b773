package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/backoff"
)

// Handler processes one task of a job. A nil error marks the row successful;
// an error marks it failed with the error's text as its description. The
// context ends when the task outlives max_job_duration or the worker stops
// past its grace period.
type Handler func(ctx context.Context, t *Task) error

// Task is one row handed to a Handler.
type Task struct {
	Job      string
	WorkerID string
	Key      any            // primary key as decoded by pgx
	KeyText  string         // primary key as text
	Attempt  int            // 1 on the first try
	Row      map[string]any // the row, decoded from JSON (numbers are json.Number)
	DB       *pgxpool.Pool  // the worker's pool, for handlers that write back
}

// Config configures a Worker.
type Config struct {
	ID                string // "node.N"
	Node              string
	DatabaseURL       string
	Flavor            dispatcher.Flavor
	Jobs              []dispatcher.Job
	Handlers          map[string]Handler // Go steps by job name
	Delay             time.Duration      // idle poll period; default 1s
	HeartbeatInterval time.Duration      // default 5s
	GracePeriod       time.Duration      // time the running task gets after stop; default 30s
	WorkDir           string             // where command steps run
	StartSQL          string             // run once after connecting
	StartCommand      []string           // run once after connecting
	MaxChunk          int                // rows per transaction for sql steps; default 1000
	Logger            *slog.Logger
}

func (c *Config) validate() error {
	if err := validateWorkerID(c.ID); err != nil {
		return err
	}
	if c.DatabaseURL == "" {
		return errors.New("worker: no database URL")
	}
	if c.Flavor == "" {
		c.Flavor = dispatcher.Postgres
	}
	if c.Delay <= 0 {
		c.Delay = time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 5 * time.Second
	}
	if c.GracePeriod <= 0 {
		c.GracePeriod = 30 * time.Second
	}
	if c.MaxChunk <= 0 {
		c.MaxChunk = 1000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	for _, j := range c.Jobs {
		if err := j.Validate(); err != nil {
			return err
		}
	}
	return nil
}

func validateWorkerID(id string) error {
	node, n, ok := strings.Cut(id, ".")
	if !ok || node == "" || n == "" || strings.ContainsAny(id, " \t\n/'\"") {
		return fmt.Errorf("worker id %q: want node.N, like node1.3", id)
	}
	return nil
}

// Worker takes the rows the dispatcher reserved for it and runs its job's step
// on each, marking start, end, success and error description.
type Worker struct {
	cfg  Config
	log  *slog.Logger
	jobs map[string]*dispatcher.Queries
	all  []*dispatcher.Queries
	pool *pgxpool.Pool

	wake      chan string
	namespace string
}

// New validates cfg; nothing connects until Run.
func New(cfg Config) (*Worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, log: cfg.Logger.With("worker", cfg.ID), jobs: map[string]*dispatcher.Queries{},
		wake: make(chan string, 1)}
	for _, j := range cfg.Jobs {
		q := dispatcher.NewQueries(j)
		w.jobs[j.Name], w.all = q, append(w.all, q)
	}
	return w, nil
}

// Run works until ctx ends, then stops gracefully: it takes no new rows,
// lets the running task finish within GracePeriod, gives back the rows it
// had reserved but not started, records its stop and returns nil.
// Lost connections are retried with backoff; Run returns an error only when
// it cannot start (bad start hook, unreachable database with ctx ending).
func (w *Worker) Run(ctx context.Context) error {
	// Work outlives ctx by the grace period so the running task can end well.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopGrace := context.AfterFunc(ctx, func() {
		w.log.Info("stopping: finishing the running task", "grace", w.cfg.GracePeriod)
		t := time.AfterFunc(w.cfg.GracePeriod, cancelWork)
		context.AfterFunc(work, func() { t.Stop() })
	})
	defer stopGrace()

	if err := w.start(ctx); err != nil {
		return err
	}
	defer w.pool.Close()

	var wg sync.WaitGroup
	bg, stopBG := context.WithCancel(work)
	wg.Add(2)
	go func() { defer wg.Done(); w.heartbeat(bg) }()
	go func() { defer wg.Done(); w.listen(bg) }()

	w.loop(ctx, work)

	w.release(work)
	stopBG()
	wg.Wait()
	return nil
}

func (w *Worker) start(ctx context.Context) error {
	pcfg, err := pgxpool.ParseConfig(w.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("worker %s: database URL: %w", w.cfg.ID, err)
	}
	pcfg.MaxConns = 3
	pcfg.MinConns = 0
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("worker %s: %w", w.cfg.ID, err)
	}
	bo := backoff.New(200*time.Millisecond, 30*time.Second)
	for {
		err = w.register(ctx, pool)
		if err == nil || errors.Is(err, dispatcher.ErrNotSetUp) || ctx.Err() != nil {
			break
		}
		w.log.Error("cannot register with the database; retrying", "err", err, "in", bo.Peek())
		bo.Wait(ctx)
	}
	if err != nil {
		pool.Close()
		return err
	}
	w.pool = pool
	if w.cfg.StartSQL != "" {
		if _, err := pool.Exec(ctx, w.cfg.StartSQL); err != nil {
			pool.Close()
			return fmt.Errorf("worker %s: start_sql: %w", w.cfg.ID, err)
		}
	}
	if len(w.cfg.StartCommand) > 0 {
		res := runCommand(ctx, w.cfg.StartCommand, nil, w.cfg.WorkDir, os.Environ(), w.cfg.GracePeriod, w.log)
		if res != nil {
			pool.Close()
			return fmt.Errorf("worker %s: start_command: %w", w.cfg.ID, res)
		}
	}
	w.log.Info("worker started", "pid", os.Getpid(), "jobs", len(w.all))
	return nil
}

func (w *Worker) register(ctx context.Context, pool *pgxpool.Pool) error {
	if err := dispatcher.Check(ctx, pool, w.cfg.Jobs); err != nil {
		return err
	}
	ns, err := dispatcher.Namespace(ctx, pool)
	if err != nil {
		return err
	}
	w.namespace = ns
	host, _ := os.Hostname()
	return dispatcher.RegisterWorker(ctx, pool, dispatcher.WorkerInfo{
		ID: w.cfg.ID, Node: w.cfg.Node, Hostname: host, PID: os.Getpid()}, w.all)
}

// loop takes chunks of rows until stop ends; work bounds database calls.
func (w *Worker) loop(stop, work context.Context) {
	bo := backoff.New(100*time.Millisecond, 30*time.Second)
	job := ""
	refresh := true
	orphans := false // a chunk failed midway: its started rows are still ours
	for stop.Err() == nil {
		if orphans {
			// Rows a failed chunk started go back to the queue, their attempt
			// refunded: a lost connection is not the task's fault.
			if err := w.requeueRunning(work); err != nil {
				w.log.Error("cannot requeue interrupted rows; retrying", "err", err, "in", bo.Peek())
				bo.Wait(stop)
				continue
			}
			orphans = false
		}
		if refresh {
			j, err := dispatcher.AssignedJob(work, w.pool, w.cfg.ID)
			if err != nil {
				w.log.Error("cannot read my assignment; retrying", "err", err, "in", bo.Peek())
				if errors.Is(err, dispatcher.ErrUnknownWorker) {
					_ = w.register(work, w.pool)
				}
				bo.Wait(stop)
				continue
			}
			job, refresh = j, false
		}
		q := w.jobs[job]
		if q == nil {
			if job != "" {
				w.log.Error("assigned a job this worker does not know; check that dispatcher and workers share one config", "job", job)
			}
			job, refresh = w.idle(stop), true
			continue
		}
		n, drained, err := w.chunk(stop, work, q)
		if err != nil {
			if work.Err() != nil {
				return
			}
			w.log.Error("database error; retrying", "job", job, "err", err, "in", bo.Peek())
			orphans = true
			bo.Wait(stop)
			refresh = true
			continue
		}
		bo.Reset()
		if n == 0 || drained {
			if j := w.idle(stop); j != "" {
				job = j
			} else {
				refresh = true
			}
		}
	}
}

// idle waits for a wake-up from the dispatcher or the poll delay; it returns
// the job named by the wake-up, or "" when the assignment must be re-read.
func (w *Worker) idle(stop context.Context) string {
	t := time.NewTimer(w.cfg.Delay)
	defer t.Stop()
	select {
	case <-stop.Done():
	case <-t.C:
	case job := <-w.wake:
		return job
	}
	return ""
}

// started is a row whose attempt has begun.
type started struct {
	key     any
	keyText string
	attempt int
	row     json.RawMessage
}

// chunk starts up to a chunk of the worker's queued rows and processes them.
// It returns how many rows it started, and whether that emptied the queue:
// then only the dispatcher can refill it, and it wakes the worker when it
// does, so asking the database again at once would find nothing. (Whether
// it emptied the queue is counted, not guessed from queue_size: the queue
// can hold more, after a config change or rows put back after an error.)
func (w *Worker) chunk(stop, work context.Context, q *dispatcher.Queries) (n int, drained bool, err error) {
	j := q.Job()
	size, withRows := 1, true
	if j.Step.SQL != "" {
		size, withRows = min(w.cfg.MaxChunk, j.QueueSize), false
	}
	rows, queued, err := w.startChunk(work, q, size, withRows)
	if err != nil || len(rows) == 0 {
		return 0, false, err
	}
	drained = w.cfg.Flavor == dispatcher.Postgres && queued <= int64(len(rows))
	if j.Step.SQL != "" {
		return len(rows), drained, w.runSQLChunk(work, q, rows)
	}
	for _, r := range rows {
		if err := w.runOne(stop, work, q, r); err != nil {
			return len(rows), drained, err
		}
	}
	return len(rows), drained, nil
}

// startChunk marks the start of the next rows and asks the dispatcher to
// refill the queue while they run, in one round trip. It also returns how
// many rows were queued before, the started ones included.
func (w *Worker) startChunk(ctx context.Context, q *dispatcher.Queries, size int, withRows bool) ([]started, int64, error) {
	b := &pgx.Batch{}
	stmt := q.StartChunk
	if withRows {
		stmt = q.StartChunkRows
	}
	var out []started
	var queued int64
	b.Queue(stmt, w.cfg.ID, size).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var s started
			dst := []any{&s.key, &s.keyText, &s.attempt, &queued}
			if withRows {
				dst = append(dst, &s.row)
			}
			if err := rows.Scan(dst...); err != nil {
				return err
			}
			out = append(out, s)
		}
		return rows.Err()
	})
	if w.cfg.Flavor == dispatcher.Postgres {
		b.Queue(`select pg_notify($1, $2)`, dispatcher.DispatcherChannel(w.namespace), dispatcher.RequestPayload(w.cfg.ID))
	}
	if err := w.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, 0, fmt.Errorf("start rows of job %q: %w", q.Job().Name, err)
	}
	return out, queued, nil
}

// runSQLChunk runs the sql step of every row and marks them all successful
// in one transaction and one round trip: the step's effects commit if and
// only if the rows are marked done. If anything fails, rows run one by one
// so that one bad row does not fail the others.
func (w *Worker) runSQLChunk(ctx context.Context, q *dispatcher.Queries, rows []started) error {
	j := q.Job()
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue("begin")
	for _, r := range rows {
		b.Queue(j.Step.SQL, r.key)
	}
	b.Queue(q.EndChunk, w.cfg.ID, len(rows))
	b.Queue(`update pampa_workers set rows_done = rows_done + $2 where id = $1`, w.cfg.ID, len(rows))
	b.Queue("commit")
	err = conn.SendBatch(ctx, b).Close()
	if err == nil {
		return nil
	}
	if _, rbErr := conn.Exec(ctx, "rollback"); rbErr != nil {
		return fmt.Errorf("roll back chunk of job %q: %w", j.Name, rbErr)
	}
	if isConnError(err) {
		return err
	}
	for _, r := range rows {
		if err := w.runSQLOne(ctx, conn.Conn(), q, r); err != nil {
			return err
		}
	}
	return nil
}

// runSQLOne runs one row's sql step in its own transaction.
func (w *Worker) runSQLOne(ctx context.Context, conn *pgx.Conn, q *dispatcher.Queries, r started) error {
	j := q.Job()
	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue(j.Step.SQL, r.key)
	b.Queue(q.EndOneGuarded, w.cfg.ID, r.key)
	b.Queue(`update pampa_workers set rows_done = rows_done + 1 where id = $1`, w.cfg.ID)
	b.Queue("commit")
	res := conn.SendBatch(ctx, b)
	_, err := res.Exec() // begin
	var stepErr error
	if err == nil {
		_, stepErr = res.Exec()
		err = stepErr
	}
	closeErr := res.Close()
	if err == nil {
		err = closeErr
	}
	if err == nil {
		return nil
	}
	if _, rbErr := conn.Exec(ctx, "rollback"); rbErr != nil {
		return fmt.Errorf("roll back row of job %q: %w", j.Name, rbErr)
	}
	if isConnError(err) {
		return err
	}
	if stepErr == nil {
		// The guard failed: the row was taken from this worker meanwhile.
		w.log.Warn("row was taken back before it ended; its work was rolled back", "job", j.Name, "key", r.keyText)
		return nil
	}
	return w.fail(ctx, conn, q, r, stepErr.Error())
}

// runOne runs the command or Go step of one started row.
func (w *Worker) runOne(stop, work context.Context, q *dispatcher.Queries, r started) error {
	j := q.Job()
	ctx, cancel := context.WithTimeout(work, j.MaxJobDuration)
	defer cancel()
	var stepErr error
	switch {
	case len(j.Step.Command) > 0:
		env := append(os.Environ(),
			"PAMPA_TASK_ID="+r.keyText, "PAMPA_JOB="+j.Name,
			"PAMPA_WORKER_ID="+w.cfg.ID, fmt.Sprintf("PAMPA_ATTEMPT=%d", r.attempt))
		stepErr = runCommand(ctx, j.Step.Command, r.row, w.cfg.WorkDir, env, 5*time.Second, w.log.With("job", j.Name, "key", r.keyText))
	case w.cfg.Handlers[j.Name] != nil:
		t := &Task{Job: j.Name, WorkerID: w.cfg.ID, Key: r.key, KeyText: r.keyText, Attempt: r.attempt, DB: w.pool}
		if err := decodeRow(r.row, &t.Row); err != nil {
			stepErr = err
		} else {
			stepErr = safeCall(ctx, w.cfg.Handlers[j.Name], t)
		}
	default:
		stepErr = fmt.Errorf("job %q has no sql, no command and no Go handler registered in this worker binary", j.Name)
	}
	if stepErr != nil && work.Err() != nil {
		// Stopped past the grace period: not the task's fault, give it back.
		return work.Err()
	}
	if stepErr != nil && ctx.Err() == context.DeadlineExceeded {
		stepErr = fmt.Errorf("ran past max_job_duration (%s): %w", j.MaxJobDuration, stepErr)
	}
	conn, err := w.pool.Acquire(work)
	if err != nil {
		return err
	}
	defer conn.Release()
	if stepErr != nil {
		return w.fail(work, conn.Conn(), q, r, stepErr.Error())
	}
	tag, err := conn.Exec(work, q.EndOne, w.cfg.ID, r.key)
	if err != nil {
		return fmt.Errorf("mark row %s of job %q done: %w", r.keyText, j.Name, err)
	}
	if tag.RowsAffected() == 0 {
		w.log.Warn("row was taken back before it ended", "job", j.Name, "key", r.keyText)
		return nil
	}
	_, err = conn.Exec(work, `update pampa_workers set rows_done = rows_done + 1 where id = $1`, w.cfg.ID)
	return err
}

const maxErrorDescription = 4000

func (w *Worker) fail(ctx context.Context, conn *pgx.Conn, q *dispatcher.Queries, r started, desc string) error {
	if len(desc) > maxErrorDescription {
		desc = "…" + desc[len(desc)-maxErrorDescription:]
	}
	desc = strings.ToValidUTF8(desc, "?")
	w.log.Warn("task failed", "job", q.Job().Name, "key", r.keyText, "attempt", r.attempt, "err", desc)
	b := &pgx.Batch{}
	b.Queue(q.FailOne, w.cfg.ID, r.key, desc)
	b.Queue(`update pampa_workers set rows_failed = rows_failed + 1 where id = $1`, w.cfg.ID)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("mark row %s of job %q failed: %w", r.keyText, q.Job().Name, err)
	}
	return nil
}

func safeCall(ctx context.Context, h Handler, t *Task) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return h(ctx, t)
}

func decodeRow(raw json.RawMessage, dst *map[string]any) error {
	if len(raw) == 0 {
		return nil
	}
	d := json.NewDecoder(strings.NewReader(string(raw)))
	d.UseNumber()
	if err := d.Decode(dst); err != nil {
		return fmt.Errorf("decode row: %w", err)
	}
	return nil
}

func (w *Worker) requeueRunning(ctx context.Context) error {
	for _, q := range w.all {
		if _, err := w.pool.Exec(ctx, q.Unstart, w.cfg.ID); err != nil {
			return err
		}
	}
	return nil
}

// release gives back what this worker holds when it stops: running rows that
// were interrupted return to the queue with their attempt refunded, then all
// queued rows return to the pool.
func (w *Worker) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	ids := []string{w.cfg.ID}
	for _, q := range w.all {
		if _, err := w.pool.Exec(ctx, q.Unstart, w.cfg.ID); err != nil {
			w.log.Error("cannot give back interrupted rows", "job", q.Job().Name, "err", err)
		}
		if _, err := w.pool.Exec(ctx, q.ReleaseQueued, ids); err != nil {
			w.log.Error("cannot give back queued rows", "job", q.Job().Name, "err", err)
		}
	}
	if err := dispatcher.StopWorker(ctx, w.pool, w.cfg.ID); err != nil {
		w.log.Error("cannot record the stop", "err", err)
	}
	if w.cfg.Flavor == dispatcher.Postgres {
		_, _ = w.pool.Exec(ctx, `select pg_notify($1, $2)`, dispatcher.DispatcherChannel(w.namespace), w.cfg.ID)
	}
	w.log.Info("worker stopped")
}

func (w *Worker) heartbeat(ctx context.Context) {
	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := dispatcher.Heartbeat(ctx, w.pool, w.cfg.ID)
		if errors.Is(err, dispatcher.ErrUnknownWorker) {
			err = w.register(ctx, w.pool)
		}
		if err != nil && ctx.Err() == nil {
			w.log.Warn("heartbeat failed", "err", err)
		}
	}
}

// listen holds a dedicated connection on the worker's channel and forwards
// wake-ups; on CockroachDB the worker polls instead.
func (w *Worker) listen(ctx context.Context) {
	if w.cfg.Flavor != dispatcher.Postgres {
		return
	}
	channel := dispatcher.WorkerChannel(w.namespace, w.cfg.ID)
	bo := backoff.New(100*time.Millisecond, 30*time.Second)
	for ctx.Err() == nil {
		err := w.listenOnce(ctx, channel, bo)
		if ctx.Err() != nil {
			return
		}
		w.log.Warn("lost the notification connection; polling until it is back", "err", err, "in", bo.Peek())
		bo.Wait(ctx)
	}
}

func (w *Worker) listenOnce(ctx context.Context, channel string, bo *backoff.Backoff) error {
	conn, err := pgx.Connect(ctx, w.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "listen "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	bo.Reset()
	w.nudge("") // anything sent while we were away is re-read
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		w.nudge(n.Payload)
	}
}

func (w *Worker) nudge(job string) {
	select {
	case w.wake <- job:
	default:
	}
}

func isConnError(err error) bool {
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr)
}
