package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pampa-go/pampa/internal/backoff"
)

// Config configures a Dispatcher.
type Config struct {
	DatabaseURL      string
	Flavor           Flavor
	Jobs             []Job
	Delay            time.Duration // idle poll period; 0 means 1s
	HeartbeatTimeout time.Duration // a worker silent this long is dead; 0 means 30s
	StartSQL         string        // run once after each connect
	Holder           string        // lease holder name; default hostname:pid
	Logger           *slog.Logger
}

func (c *Config) validate() error {
	if c.DatabaseURL == "" {
		return errors.New("dispatcher: no database URL")
	}
	if c.Flavor == "" {
		c.Flavor = Postgres
	}
	if c.Delay <= 0 {
		c.Delay = time.Second
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Holder == "" {
		host, _ := os.Hostname()
		c.Holder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	for i := range c.Jobs {
		if err := c.Jobs[i].Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Dispatcher is the one loop that reserves rows for workers, relaunches
// failed and late rows, takes rows back from dead workers and assigns
// workers to jobs. It holds a single database connection.
type Dispatcher struct {
	cfg     Config
	queries []*Queries
	log     *slog.Logger

	conn       *pgx.Conn
	channel    string
	namespace  string
	leader     bool
	lastFull   time.Time
	lastReport map[string]Stats
	// after is, per job, the highest key reserved since the last full
	// cycle: reservation resumes there instead of walking again past every
	// row taken since the last VACUUM. Rows that become free below it
	// (relaunched, released, inserted, edited by hand) are found by the
	// walk from the start that every full cycle and every short
	// reservation makes.
	after map[string]any
	// alive is the last cycle's list of live workers and their jobs, which
	// only assign changes: a worker's request between full cycles needs
	// nothing else to be served.
	alive []*worker
}

// Stats counts what one cycle did, per job.
type Stats struct {
	Reserved, Relaunched, Released, Failed int64
	Assigned                               int
}

// New validates cfg and returns a dispatcher; nothing is written until Run.
func New(cfg Config) (*Dispatcher, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &Dispatcher{cfg: cfg, log: cfg.Logger, after: map[string]any{}}
	for _, j := range cfg.Jobs {
		d.queries = append(d.queries, NewQueries(j))
	}
	return d, nil
}

// leaseTTL is how long a dispatcher stays leader without renewing; a second
// dispatcher stands by until the lease expires.
func (d *Dispatcher) leaseTTL() time.Duration { return max(10*time.Second, 5*d.cfg.Delay) }

// Run loops until ctx ends: a cycle, then a wait of at most Delay that a
// worker's request or a new row cuts short. Database errors are logged and
// retried with backoff; only ctx ends the loop.
func (d *Dispatcher) Run(ctx context.Context) error {
	defer d.close()
	bo := backoff.New(100*time.Millisecond, 30*time.Second)
	var req requests
	for ctx.Err() == nil {
		if err := d.connect(ctx); err != nil {
			if errors.Is(err, ErrNotSetUp) {
				return err // retrying cannot fix the schema
			}
			d.log.Error("dispatcher cannot reach the database; retrying", "err", err, "in", bo.Peek())
			bo.Wait(ctx)
			continue
		}
		if _, err := d.cycle(ctx, req); err != nil {
			if ctx.Err() != nil {
				break
			}
			d.log.Error("dispatcher cycle failed; reconnecting", "err", err, "in", bo.Peek())
			d.drop()
			bo.Wait(ctx)
			continue
		}
		bo.Reset()
		var err error
		if req, err = d.wait(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("lost the database connection while waiting", "err", err)
			d.drop()
		}
	}
	d.resign()
	return nil
}

// RunOnce connects, runs one cycle and returns what it did.
func (d *Dispatcher) RunOnce(ctx context.Context) (map[string]Stats, error) {
	defer d.close()
	if err := d.connect(ctx); err != nil {
		return nil, err
	}
	d.lastFull = time.Time{}
	stats, err := d.Cycle(ctx)
	d.resign()
	return stats, err
}

func (d *Dispatcher) connect(ctx context.Context) error {
	if d.conn != nil {
		return nil
	}
	conn, err := pgx.Connect(ctx, d.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	fail := func(err error) error { conn.Close(context.Background()); return err }
	if err := Check(ctx, conn, d.cfg.Jobs); err != nil {
		return fail(err)
	}
	ns, err := Namespace(ctx, conn)
	if err != nil {
		return fail(err)
	}
	d.namespace, d.channel = ns, DispatcherChannel(ns)
	if d.cfg.Flavor == Postgres {
		if _, err := conn.Exec(ctx, "listen "+quote(d.channel)); err != nil {
			return fail(fmt.Errorf("listen for workers: %w", err))
		}
	}
	if d.cfg.StartSQL != "" {
		if _, err := conn.Exec(ctx, d.cfg.StartSQL); err != nil {
			return fail(fmt.Errorf("dispatcher start_sql: %w", err))
		}
	}
	d.conn = conn
	d.lastFull = time.Time{}
	d.log.Info("dispatcher connected", "schema", ns, "jobs", len(d.queries), "flavor", d.cfg.Flavor)
	return nil
}

func (d *Dispatcher) drop() {
	if d.conn != nil {
		d.conn.Close(context.Background())
		d.conn, d.leader, d.alive = nil, false, nil
	}
}

func (d *Dispatcher) close() { d.drop() }

// resign gives up the lease so a standby dispatcher takes over at once.
func (d *Dispatcher) resign() {
	if d.conn == nil || !d.leader {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = d.conn.Exec(ctx, `delete from pampa_leases where name = 'dispatcher' and holder = $1`, d.cfg.Holder)
	d.leader = false
}

// requests is what woke the dispatcher: the ids of workers that asked for
// rows, or anything else (new rows, a retry, the poll delay), which calls
// for a normal cycle.
type requests struct {
	workers map[string]bool
	other   bool
	// freed: rows may have become available anywhere (a retry, a worker
	// that stopped and gave its rows back), so reservation must walk from
	// the first key, not resume after the last. New rows ("insert") come
	// with new keys, usually above it.
	freed bool
}

// wait blocks until a notification arrives or Delay passes, and gathers
// the notifications that arrived meanwhile.
func (d *Dispatcher) wait(ctx context.Context) (requests, error) {
	req := requests{workers: map[string]bool{}}
	if d.cfg.Flavor != Postgres {
		select {
		case <-ctx.Done():
		case <-time.After(d.cfg.Delay):
		}
		req.other = true
		return req, nil
	}
	wctx, cancel := context.WithTimeout(ctx, d.cfg.Delay)
	defer cancel()
	n, err := d.conn.WaitForNotification(wctx)
	if err != nil {
		req.other = true
		if wctx.Err() != nil {
			return req, nil // timeout or shutdown; pgx leaves the connection usable
		}
		return req, err
	}
	// Those that came during the last cycle are buffered by pgx: an ended
	// context returns them, then stops at once without reading.
	done, stop := context.WithCancel(ctx)
	stop()
	for ; n != nil; n, _ = d.conn.WaitForNotification(done) {
		if id, ok := strings.CutPrefix(n.Payload, requestPrefix); ok {
			req.workers[id] = true
		} else {
			req.other = true // new rows, a retry, a worker that stopped
			req.freed = req.freed || n.Payload != "insert"
		}
	}
	return req, nil
}

const requestPrefix = "rows "

// RequestPayload is what a worker sends on DispatcherChannel when it took
// the rows of its queue and wants more.
func RequestPayload(workerID string) string { return requestPrefix + workerID }

// lease takes or renews the dispatcher lease; false means another dispatcher
// holds it and this one stands by.
func (d *Dispatcher) lease(ctx context.Context) (bool, error) {
	var holder string
	err := d.conn.QueryRow(ctx, `insert into pampa_leases (name, holder, expires_at)
values ('dispatcher', $1, now() + $2::float8 * interval '1 second')
on conflict (name) do update set holder = excluded.holder, expires_at = excluded.expires_at
where pampa_leases.holder = excluded.holder or pampa_leases.expires_at < now()
returning holder`, d.cfg.Holder, d.leaseTTL().Seconds()).Scan(&holder)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take dispatcher lease: %w", err)
	}
	return true, nil
}

type worker struct {
	id, job string
	queued  int64
}

// Cycle runs one pass: lease, liveness, relaunch (at most once per Delay),
// elastic assignment and reservation. It returns per-job statistics.
func (d *Dispatcher) Cycle(ctx context.Context) (map[string]Stats, error) {
	return d.cycle(ctx, requests{other: true})
}

func (d *Dispatcher) cycle(ctx context.Context, req requests) (map[string]Stats, error) {
	if d.conn == nil {
		return nil, errors.New("dispatcher: not connected")
	}
	full := time.Since(d.lastFull) >= d.cfg.Delay
	stats := map[string]Stats{}
	if req.freed {
		clear(d.after)
	}
	if !full && d.leader && !req.other && d.canTopUp(req.workers) {
		return stats, d.topUp(ctx, req.workers, stats)
	}
	if full || !d.leader {
		leader, err := d.lease(ctx)
		if err != nil {
			return nil, err
		}
		if leader != d.leader {
			if leader {
				d.log.Info("dispatcher is the leader", "holder", d.cfg.Holder)
			} else {
				d.log.Warn("another dispatcher holds the lease; standing by")
			}
		}
		d.leader = leader
		if !leader {
			return stats, nil
		}
	}
	if full {
		d.lastFull = time.Now()
		clear(d.after)
		if err := d.releaseDead(ctx, stats); err != nil {
			return nil, err
		}
		for _, q := range d.queries {
			if err := d.relaunch(ctx, q, stats); err != nil {
				return nil, err
			}
		}
	}
	alive, err := d.aliveWorkers(ctx)
	if err != nil {
		return nil, err
	}
	d.alive = alive // assign updates its workers in place
	for _, q := range d.queries {
		// A worker's wake-up between full cycles only needs its queue topped
		// up; assignment is revisited every Delay, or at once for a job that
		// has no worker (new rows must not wait for the poll).
		assigned := assignedTo(alive, q.job.Name)
		if full || len(assigned) == 0 {
			err = d.assign(ctx, q, alive, stats)
		} else {
			err = d.queueCounts(ctx, q, assigned)
		}
		if err != nil {
			return nil, err
		}
		if err := d.reserve(ctx, q, alive, stats); err != nil {
			return nil, err
		}
	}
	for name, s := range stats {
		if s != (Stats{}) {
			d.log.Debug("dispatcher cycle", "job", name, "reserved", s.Reserved, "relaunched", s.Relaunched,
				"released", s.Released, "failed", s.Failed, "assigned", s.Assigned)
		}
	}
	return stats, nil
}

// releaseDead takes rows back from workers that stopped heart-beating: queued
// rows cost no attempt; running rows count the attempt they were in.
func (d *Dispatcher) releaseDead(ctx context.Context, stats map[string]Stats) error {
	rows, err := d.conn.Query(ctx, `update pampa_workers set state = 'dead', job = null, assigned_at = null
where state = 'alive' and heartbeat_at < now() - $1::float8 * interval '1 second'
returning id`, d.cfg.HeartbeatTimeout.Seconds())
	if err != nil {
		return fmt.Errorf("find dead workers: %w", err)
	}
	dead, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(dead) == 0 {
		return err
	}
	d.log.Warn("workers stopped heart-beating; taking their rows back", "workers", dead)
	for _, q := range d.queries {
		s := stats[q.job.Name]
		for _, step := range []struct {
			sql   string
			args  []any
			count *int64
		}{
			{q.ReleaseQueued, []any{dead}, &s.Released},
			{q.ReleaseRunning, []any{dead, q.job.MaxTryTimes}, &s.Relaunched},
			{q.FailRunning, []any{dead, q.job.MaxTryTimes}, &s.Failed},
		} {
			tag, err := d.conn.Exec(ctx, step.sql, step.args...)
			if err != nil {
				return fmt.Errorf("job %q: release rows of dead workers: %w", q.job.Name, err)
			}
			*step.count += tag.RowsAffected()
		}
		stats[q.job.Name] = s
	}
	return nil
}

func (d *Dispatcher) relaunch(ctx context.Context, q *Queries, stats map[string]Stats) error {
	j := q.job
	s := stats[j.Name]
	failedArg := any(j.MaxTryTimes)
	if j.Snippets.RelaunchingSQL != "" {
		failedArg = 1000
	}
	b := &pgx.Batch{}
	b.Queue(q.RelaunchFailed, failedArg)
	b.Queue(q.RelaunchLate, j.MaxTryTimes, j.MaxJobDuration.Seconds())
	b.Queue(q.FailLate, j.MaxTryTimes, j.MaxJobDuration.Seconds())
	res := d.conn.SendBatch(ctx, b)
	defer res.Close()
	for _, count := range []*int64{&s.Relaunched, &s.Relaunched, &s.Failed} {
		tag, err := res.Exec()
		if err != nil {
			return fmt.Errorf("job %q: relaunch rows: %w", j.Name, err)
		}
		*count += tag.RowsAffected()
	}
	stats[j.Name] = s
	return res.Close()
}

func (d *Dispatcher) aliveWorkers(ctx context.Context) ([]*worker, error) {
	rows, err := d.conn.Query(ctx, `select id, coalesce(job, '') from pampa_workers
where state = 'alive' and heartbeat_at >= now() - $1::float8 * interval '1 second' order by id`,
		d.cfg.HeartbeatTimeout.Seconds())
	if err != nil {
		return nil, fmt.Errorf("list alive workers: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (*worker, error) {
		w := &worker{}
		return w, r.Scan(&w.id, &w.job)
	})
}

func assignedTo(alive []*worker, job string) []*worker {
	var ws []*worker
	for _, w := range alive {
		if w.job == job {
			ws = append(ws, w)
		}
	}
	return ws
}

func ids(ws []*worker) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.id
	}
	return out
}

// queueCounts fills w.queued for the given workers of a job.
func (d *Dispatcher) queueCounts(ctx context.Context, q *Queries, ws []*worker) error {
	if len(ws) == 0 {
		return nil
	}
	rows, err := d.conn.Query(ctx, q.QueueCounts, ids(ws))
	if err != nil {
		return fmt.Errorf("job %q: count queued rows: %w", q.job.Name, err)
	}
	counts := map[string]int64{}
	var id string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { counts[id] = n; return nil }); err != nil {
		return fmt.Errorf("job %q: count queued rows: %w", q.job.Name, err)
	}
	for _, w := range ws {
		w.queued = counts[w.id]
	}
	return nil
}

// desiredWorkers is the elastic rule: one worker per max_pending_tasks
// available rows, at least one while any row waits, at most
// max_assigned_workers; workers still holding queued rows are kept.
func desiredWorkers(j Job, pending int64, busy int) int {
	if pending == 0 {
		return busy
	}
	n := int(math.Ceil(float64(pending) / float64(j.MaxPendingTasks)))
	if j.MaxAssignedWorkers > 0 {
		n = min(n, j.MaxAssignedWorkers)
	}
	return max(n, busy, 1)
}

func (d *Dispatcher) assign(ctx context.Context, q *Queries, alive []*worker, stats map[string]Stats) error {
	j := q.job
	limit := j.MaxPendingTasks*max(j.MaxAssignedWorkers, len(alive)) + 1
	var pending int64
	if err := d.conn.QueryRow(ctx, q.PendingCount, limit, j.MaxTryTimes).Scan(&pending); err != nil {
		return fmt.Errorf("job %q: count pending rows: %w", j.Name, err)
	}
	assigned := assignedTo(alive, j.Name)
	if err := d.queueCounts(ctx, q, assigned); err != nil {
		return err
	}
	busy := 0
	for _, w := range assigned {
		if w.queued > 0 {
			busy++
		}
	}
	want := desiredWorkers(j, pending, busy)
	if j.MaxAssignedWorkers > 0 {
		want = min(want, max(j.MaxAssignedWorkers, busy))
	}
	s := stats[j.Name]
	switch {
	case len(assigned) < want:
		for _, w := range alive {
			if len(assigned) >= want {
				break
			}
			if w.job != "" || !j.WorkerMatches(w.id) {
				continue
			}
			tag, err := d.conn.Exec(ctx, `update pampa_workers set job = $1, assigned_at = now()
where id = $2 and job is null and state = 'alive'`, j.Name, w.id)
			if err != nil {
				return fmt.Errorf("job %q: assign worker %s: %w", j.Name, w.id, err)
			}
			if tag.RowsAffected() == 1 {
				w.job = j.Name
				assigned = append(assigned, w)
				s.Assigned++
				d.log.Info("worker assigned", "job", j.Name, "worker", w.id, "pending", pending)
			}
		}
	case len(assigned) > want:
		// Let go of the workers with the fewest queued rows first.
		sort.SliceStable(assigned, func(a, b int) bool { return assigned[a].queued < assigned[b].queued })
		surplus := assigned[:len(assigned)-want]
		if _, err := d.conn.Exec(ctx, `update pampa_workers set job = null, assigned_at = null
where id = any($1) and job = $2`, ids(surplus), j.Name); err != nil {
			return fmt.Errorf("job %q: unassign workers: %w", j.Name, err)
		}
		tag, err := d.conn.Exec(ctx, q.ReleaseQueued, ids(surplus))
		if err != nil {
			return fmt.Errorf("job %q: release rows of unassigned workers: %w", j.Name, err)
		}
		s.Released += tag.RowsAffected()
		for _, w := range surplus {
			w.job = ""
			d.log.Info("worker unassigned", "job", j.Name, "worker", w.id, "pending", pending)
		}
	}
	stats[j.Name] = s
	return nil
}

// reserve tops up the queue of every worker of the job to queue_size, in one
// round trip, and wakes the workers that received rows. It resumes after
// the last key it reserved; if that leaves a worker short, it walks once
// more from the first key.
func (d *Dispatcher) reserve(ctx context.Context, q *Queries, alive []*worker, stats map[string]Stats) error {
	j := q.job
	after, resume := d.after[j.Name]
	resume = resume && q.ReserveAfterAndWake != "" && d.cfg.Flavor == Postgres
	short, err := d.reserveFrom(ctx, q, assignedTo(alive, j.Name), after, resume, stats)
	if err == nil && short && resume {
		delete(d.after, j.Name)
		_, err = d.reserveFrom(ctx, q, assignedTo(alive, j.Name), nil, false, stats)
	}
	return err
}

// reserveFrom runs one reservation round for ws (w.queued was read by
// assign or Cycle) and reports whether a worker got fewer rows than asked.
func (d *Dispatcher) reserveFrom(ctx context.Context, q *Queries, ws []*worker, after any, resume bool, stats map[string]Stats) (short bool, err error) {
	j := q.job
	pg := d.cfg.Flavor == Postgres
	b := &pgx.Batch{}
	var hungry []*worker
	var asked []int64
	for _, w := range ws {
		n := int64(j.QueueSize) - w.queued
		if n <= 0 {
			continue
		}
		switch {
		case !pg:
			b.Queue(q.Reserve, n, w.id, j.MaxTryTimes)
		case resume:
			b.Queue(q.ReserveAfterAndWake, n, w.id, j.MaxTryTimes, WorkerChannel(d.namespace, w.id), j.Name, after)
		default:
			b.Queue(q.ReserveAndWake, n, w.id, j.MaxTryTimes, WorkerChannel(d.namespace, w.id), j.Name)
		}
		hungry = append(hungry, w)
		asked = append(asked, n)
	}
	if len(hungry) == 0 {
		return false, nil
	}
	res := d.conn.SendBatch(ctx, b)
	defer res.Close()
	s := stats[j.Name]
	for i, w := range hungry {
		var n int64
		var last any
		if pg {
			err = res.QueryRow().Scan(&n, &last)
		} else {
			var tag pgconn.CommandTag
			tag, err = res.Exec()
			n = tag.RowsAffected()
		}
		if err != nil {
			return false, fmt.Errorf("job %q: reserve rows for worker %s: %w", j.Name, w.id, err)
		}
		s.Reserved += n
		w.queued += n
		short = short || n < asked[i]
		if last != nil && q.ReserveAfterAndWake != "" {
			d.after[j.Name] = last // the rounds' keys only grow: each starts above the last
		}
	}
	stats[j.Name] = s
	if err := res.Close(); err != nil {
		return false, fmt.Errorf("job %q: reserve rows: %w", j.Name, err)
	}
	return short, nil
}

// canTopUp says whether the workers that asked can be served by topUp:
// all known from the last cycle, on PostgreSQL, no selecting_sql snippet.
func (d *Dispatcher) canTopUp(ids map[string]bool) bool {
	if len(ids) == 0 || d.alive == nil || d.cfg.Flavor != Postgres {
		return false
	}
	for _, q := range d.queries {
		if q.TopUp == "" {
			return false
		}
	}
	known := 0
	for _, w := range d.alive {
		if ids[w.id] {
			known++
		}
	}
	return known == len(ids)
}

// topUp refills the queues of the workers that asked, one statement each
// that counts the queue itself, all in one round trip; a worker left short
// by the resumed walk gets a second walk from the first key.
func (d *Dispatcher) topUp(ctx context.Context, ids map[string]bool, stats map[string]Stats) error {
	for _, q := range d.queries {
		var ws []*worker
		for _, w := range assignedTo(d.alive, q.job.Name) {
			if ids[w.id] {
				ws = append(ws, w)
			}
		}
		if len(ws) == 0 {
			continue
		}
		after, resume := d.after[q.job.Name]
		short, err := d.topUpFrom(ctx, q, ws, after, resume, stats)
		if err == nil && len(short) > 0 && resume {
			delete(d.after, q.job.Name)
			_, err = d.topUpFrom(ctx, q, short, nil, false, stats)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *Dispatcher) topUpFrom(ctx context.Context, q *Queries, ws []*worker, after any, resume bool, stats map[string]Stats) (short []*worker, err error) {
	j := q.job
	b := &pgx.Batch{}
	for _, w := range ws {
		if resume {
			b.Queue(q.TopUpAfter, j.QueueSize, w.id, j.MaxTryTimes, WorkerChannel(d.namespace, w.id), j.Name, after)
		} else {
			b.Queue(q.TopUp, j.QueueSize, w.id, j.MaxTryTimes, WorkerChannel(d.namespace, w.id), j.Name)
		}
	}
	res := d.conn.SendBatch(ctx, b)
	defer res.Close()
	s := stats[j.Name]
	for _, w := range ws {
		var n, wanted int64
		var last any
		if err := res.QueryRow().Scan(&n, &last, &wanted); err != nil {
			return nil, fmt.Errorf("job %q: reserve rows for worker %s: %w", j.Name, w.id, err)
		}
		s.Reserved += n
		if n < wanted {
			short = append(short, w)
		}
		if last != nil {
			d.after[j.Name] = last
		}
	}
	stats[j.Name] = s
	if err := res.Close(); err != nil {
		return nil, fmt.Errorf("job %q: reserve rows: %w", j.Name, err)
	}
	return short, nil
}

// Jobs returns the names of the dispatcher's jobs in config order.
func (d *Dispatcher) Jobs() []string {
	names := make([]string, len(d.queries))
	for i, q := range d.queries {
		names[i] = q.job.Name
	}
	return slices.Clip(names)
}
