package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/worker"
)

// Poll periods of the in-process dispatcher and workers.
const (
	dispatcherDelay = 200 * time.Millisecond
	workerDelay     = 200 * time.Millisecond
)

// cluster is a dispatcher and local workers running as goroutines of this
// process, each worker with its own pool, as `pampactl` would run them in
// separate processes.
type cluster struct {
	url     string
	job     dispatcher.Job
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    chan error
	workers int
}

// startWorkers starts n workers and waits until all are registered.
func startWorkers(ctx context.Context, dbURL string, job dispatcher.Job, n int, log *slog.Logger) (*cluster, error) {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &cluster{url: dbURL, job: job, cancel: cancel, errs: make(chan error, n+1), workers: n}
	for i := 1; i <= n; i++ {
		w, err := worker.New(worker.Config{
			ID: fmt.Sprintf("bench.%d", i), Node: "bench", DatabaseURL: dbURL,
			Jobs: []dispatcher.Job{job}, Delay: workerDelay, GracePeriod: 5 * time.Second,
			Logger: log.With("worker", i),
		})
		if err != nil {
			c.stop()
			return nil, err
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := w.Run(runCtx); err != nil {
				c.errs <- err
			}
		}()
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		c.stop()
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	err = waitFor(wctx, 20*time.Millisecond, func() (bool, error) {
		select {
		case err := <-c.errs:
			return false, fmt.Errorf("worker: %w", err)
		default:
		}
		var alive int
		err := conn.QueryRow(wctx, `select count(*) from pampa_workers where state = 'alive'`).Scan(&alive)
		return alive == n, err
	})
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("wait for %d workers to register: %w", n, err)
	}
	return c, nil
}

// startDispatcher runs the dispatcher until the cluster stops.
func (c *cluster) startDispatcher(log *slog.Logger) error {
	d, err := dispatcher.New(dispatcher.Config{DatabaseURL: c.url, Jobs: []dispatcher.Job{c.job},
		Delay: dispatcherDelay, Holder: "bench", Logger: log.With("component", "dispatcher")})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	prev := c.cancel
	c.cancel = func() { prev(); cancel() }
	c.wg.Add(1)
	go func() { defer c.wg.Done(); _ = d.Run(runCtx) }()
	return nil
}

// stop ends the dispatcher and the workers and waits for them.
func (c *cluster) stop() {
	c.cancel()
	c.wg.Wait()
}

// rowsDone is the cheap progress counter: workers add to it in the
// transaction that ends their rows.
func rowsDone(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var n int64
	err := conn.QueryRow(ctx, `select coalesce(sum(rows_done), 0)::bigint from pampa_workers`).Scan(&n)
	return n, err
}

// pampaScenario is one throughput run of Pampa.
type pampaScenario struct {
	workers, queueSize int
}

func (s pampaScenario) name() string {
	return fmt.Sprintf("Pampa %d worker(s), queue_size %d", s.workers, s.queueSize)
}

// runPampa measures rows per second from reserved to ended: workers start
// and register first; the clock runs from the dispatcher's start until the
// workers have ended all rows. When the scenario's timeout comes first, the
// rate over the rows ended so far is reported and marked partial.
func runPampa(ctx context.Context, e *env, s pampaScenario, log *slog.Logger) (result, error) {
	res := result{Kind: kindPampa, Name: s.name(), Workers: s.workers, QueueSize: s.queueSize}
	schema := fmt.Sprintf("bench_w%d_q%d", s.workers, s.queueSize)
	dbURL, err := e.freshSchema(ctx, schema)
	if err != nil {
		return res, err
	}
	defer e.dropSchema(schema)
	job := benchJob(s.queueSize)
	if err := prepareTasks(ctx, dbURL, "", e.rows, job); err != nil {
		return res, err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	c, err := startWorkers(ctx, dbURL, job, s.workers, log)
	if err != nil {
		return res, err
	}
	defer c.stop()

	tctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	if err := e.resetPGStats(ctx); err != nil {
		return res, err
	}
	cpu0 := readCPU()
	start := time.Now()
	if err := c.startDispatcher(log); err != nil {
		return res, err
	}
	var done int64
	var samples []sample
	err = waitFor(tctx, 20*time.Millisecond, func() (bool, error) {
		n, err := rowsDone(tctx, conn)
		done = n
		samples = append(samples, sample{time.Since(start), n})
		return n >= int64(e.rows), err
	})
	res.Elapsed = time.Since(start)
	if err := e.printPGStats(ctx, s.name()); err != nil {
		return res, err
	}
	res.Note = rateSpread(samples, int64(e.rows))
	res.CPU = readCPU().since(cpu0)
	res.Rows = done
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		res.Partial = true
		n, _ := rowsDone(ctx, conn)
		res.Rows = n
		res.Note = fmt.Sprintf("timed out after %s with %d of %d rows ended; %s", e.timeout, n, e.rows, res.Note)
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("wait for the rows to end: %w", err)
	}
	c.stop()
	rssKB, _ := vmRSS("self")
	res.RSSKB = rssKB
	// Report is the authority; rows_done was the cheap trigger.
	st, err := dispatcher.Report(ctx, conn, []dispatcher.Job{job})
	if err != nil {
		return res, err
	}
	if st[0].Completed != int64(e.rows) {
		return res, fmt.Errorf("report says %d of %d rows completed (%+v)", st[0].Completed, e.rows, st[0])
	}
	var retried int64
	if err := conn.QueryRow(ctx, `select count(*) from tasks where bench_reservation_times <> 1`).Scan(&retried); err != nil {
		return res, err
	}
	if retried > 0 {
		res.Note += fmt.Sprintf("; %d rows took more than one attempt", retried)
	}
	return res, nil
}

// latencyResult is the insert-to-start latency of rows inserted one by one
// while workers idle.
type latencyResult struct {
	Inserts          int
	Median, P99, Max time.Duration
	Note             string
}

// runLatency inserts rows one at a time, spaced, with 2 idle workers and
// queue_size 5, and measures start_time - inserted_at in the database.
func runLatency(ctx context.Context, e *env, inserts int, spacing time.Duration, log *slog.Logger) (latencyResult, error) {
	res := latencyResult{Inserts: inserts}
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
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	c, err := startWorkers(ctx, dbURL, job, 2, log)
	if err != nil {
		return res, err
	}
	defer c.stop()
	if err := c.startDispatcher(log); err != nil {
		return res, err
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
		time.Sleep(spacing)
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
	err = waitFor(tctx, 20*time.Millisecond, func() (bool, error) {
		n, err := rowsDone(tctx, conn)
		return n >= int64(inserts+warmup), err
	})
	if err != nil {
		return res, fmt.Errorf("wait for the inserted rows to end: %w", err)
	}
	var median, p99, maxMS float64
	err = conn.QueryRow(ctx, `select
  percentile_cont(0.5) within group (order by ms),
  percentile_cont(0.99) within group (order by ms),
  max(ms)
from (select extract(epoch from bench_start_time - inserted_at) * 1000 as ms from tasks where id > 0) s`).
		Scan(&median, &p99, &maxMS)
	if err != nil {
		return res, fmt.Errorf("compute latency: %w", err)
	}
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	res.Median, res.P99, res.Max = ms(median), ms(p99), ms(maxMS)
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
	at := func(n int64) (time.Duration, bool) {
		for _, s := range samples {
			if s.done >= n {
				return s.at, true
			}
		}
		return 0, false
	}
	q1, ok1 := at(total / 4)
	q3, ok3 := at(total * 3 / 4)
	end, ok4 := at(total)
	if !ok1 || q1 <= 0 {
		return ""
	}
	first := fmt.Sprintf("first quarter %.0f rows/s", float64(total/4)/q1.Seconds())
	if !ok3 || !ok4 || end <= q3 {
		return first
	}
	return fmt.Sprintf("%s, last quarter %.0f rows/s", first, float64(total-total*3/4)/(end-q3).Seconds())
}
