package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pampa-go/pampa/internal/backoff"
)

// SQLWorker is the field_id of rows whose sql step the dispatcher ran.
const SQLWorker = "dispatcher"

// maxSQLChunk bounds the rows of one sql step transaction.
const maxSQLChunk = 1000

// A sqlRunner runs the sql steps of every sql job on a session of its own.
// The step and its rows' marks commit in one transaction: rows are locked,
// stepped and marked done at once, so a crash anywhere leaves them as they
// were. That is why sql steps run here, beside the database, and not on
// the workers: a worker would need a database session of its own for them.
type sqlRunner struct {
	d     *Dispatcher
	jobs  []*Queries
	wake  chan struct{}
	after map[string]any
}

func (d *Dispatcher) startSQLRunners(ctx context.Context) {
	var jobs []*Queries
	for _, q := range d.queries {
		if q.job.Step.SQL != "" {
			jobs = append(jobs, q)
		}
	}
	if len(jobs) == 0 {
		return
	}
	for range d.cfg.SQLSessions {
		r := &sqlRunner{d: d, jobs: jobs, wake: make(chan struct{}, 1), after: map[string]any{}}
		d.sqlRun = append(d.sqlRun, r)
		d.bg.Add(1)
		go func() { defer d.bg.Done(); r.run(ctx) }()
	}
}

func (r *sqlRunner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *sqlRunner) run(ctx context.Context) {
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		err := r.session(ctx, bo)
		if ctx.Err() != nil {
			return
		}
		r.d.log.Warn("sql step session lost; reconnecting", "err", err, "in", bo.Peek())
		bo.Wait(ctx)
	}
}

func (r *sqlRunner) session(ctx context.Context, bo *backoff.Backoff) error {
	conn, err := r.d.open(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	bo.Reset()
	for ctx.Err() == nil {
		if !r.d.leading.Load() {
			r.idle(ctx)
			continue
		}
		did := 0
		for _, q := range r.jobs {
			if r.d.isPaused(q.job.Name) {
				continue
			}
			n, err := r.chunk(ctx, conn, q)
			if err != nil {
				return err
			}
			did += n
		}
		if did == 0 {
			r.idle(ctx)
		}
	}
	return nil
}

func (r *sqlRunner) idle(ctx context.Context) {
	t := time.NewTimer(r.d.cfg.Delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
		clear(r.after)
	case <-r.wake:
		clear(r.after)
	}
}

// chunk steps up to a queue's worth of rows in one transaction; if one row
// fails, they run again one by one so that the others are not failed.
func (r *sqlRunner) chunk(ctx context.Context, conn *pgx.Conn, q *Queries) (int, error) {
	j := q.job
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// Each row's statement gets max_job_duration, enforced by the server:
	// its error keeps the session, and the row fails, as a late command's.
	if _, err := tx.Exec(ctx, q.timeout()); err != nil {
		return 0, err
	}
	var rows pgx.Rows
	size := min(j.QueueSize, maxSQLChunk)
	if after, ok := r.after[j.Name]; ok {
		rows, err = tx.Query(ctx, q.TakeAfter, size, j.MaxTryTimes, after)
	} else {
		rows, err = tx.Query(ctx, q.Take, size, j.MaxTryTimes)
	}
	if err != nil {
		return 0, fmt.Errorf("job %q: take rows: %w", j.Name, err)
	}
	var keys []any
	var texts []string
	for rows.Next() {
		var k any
		var t string
		if err := rows.Scan(&k, &t); err != nil {
			return 0, err
		}
		keys, texts = append(keys, k), append(texts, t)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("job %q: take rows: %w", j.Name, err)
	}
	if len(keys) == size && q.intKey {
		r.after[j.Name] = keys[len(keys)-1] // rows come in key order
	} else {
		delete(r.after, j.Name)
	}
	if len(keys) == 0 {
		return 0, nil
	}
	b := &pgx.Batch{}
	for _, k := range keys {
		b.Queue(j.Step.SQL, k)
	}
	b.Queue(q.Done, texts, SQLWorker)
	err = tx.SendBatch(ctx, b).Close()
	if err == nil {
		err = tx.Commit(ctx)
	}
	var pgErr *pgconn.PgError
	if err == nil || !errors.As(err, &pgErr) {
		return len(keys), err
	}
	tx.Rollback(context.WithoutCancel(ctx))
	for i := range keys {
		if err := r.one(ctx, conn, q, keys[i], texts[i]); err != nil {
			return 0, err
		}
	}
	return len(keys), nil
}

// one steps one row in its own transaction, or marks it failed.
func (r *sqlRunner) one(ctx context.Context, conn *pgx.Conn, q *Queries, key any, text string) error {
	j := q.job
	stepErr := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, q.timeout()); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, q.LockOne, text)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errTaken
		}
		if _, err := tx.Exec(ctx, j.Step.SQL, key); err != nil {
			return err
		}
		tag, err = tx.Exec(ctx, q.Done, []string{text}, SQLWorker)
		if err == nil && tag.RowsAffected() == 0 {
			return errTaken
		}
		return err
	})
	var pgErr *pgconn.PgError
	switch {
	case stepErr == nil, errors.Is(stepErr, errTaken):
		return nil
	case !errors.As(stepErr, &pgErr):
		return stepErr
	case pgErr.Code == "57014": // query_canceled: the statement timeout
		stepErr = fmt.Errorf("ran past max_job_duration (%s): %w", j.MaxJobDuration, stepErr)
	}
	r.d.log.Warn("sql step failed", "job", j.Name, "key", text, "err", stepErr)
	_, err := conn.Exec(ctx, q.FailOne, text, SQLWorker, errorText(stepErr.Error()))
	return err
}

// errTaken: the row was taken by another session between the two tries.
var errTaken = errors.New("row taken meanwhile")

// timeout bounds each statement of a sql step's transaction by the job's
// max_job_duration.
func (q *Queries) timeout() string {
	return fmt.Sprintf("set local statement_timeout = %d", max(q.job.MaxJobDuration.Milliseconds(), 1))
}
