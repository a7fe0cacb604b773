package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/protocol"
)

// ControlNote is the notification payload of pause, resume, cancel and
// retry: the dispatcher reads the jobs' state and the cancelled rows at
// once instead of at its next full cycle.
const ControlNote = "control"

// SetPaused pauses or resumes jobs. The state is stored in pampa_jobs, so
// a restarted dispatcher keeps it; on PostgreSQL the dispatcher hears of it
// at once. A paused job gets no new reservations, its queued rows go back
// and its running rows finish.
func SetPaused(ctx context.Context, db DB, flavor Flavor, jobs []string, paused bool, by string) error {
	if _, err := db.Exec(ctx, `insert into pampa_jobs (name, paused, changed_at, changed_by)
select j, $2, now(), $3 from unnest($1::text[]) as j
on conflict (name) do update set paused = excluded.paused, changed_at = excluded.changed_at, changed_by = excluded.changed_by`,
		jobs, paused, by); err != nil {
		return fmt.Errorf("record the jobs' state: %w", err)
	}
	return wake(ctx, db, flavor)
}

// wake tells the dispatcher of an order (CockroachDB's polls every delay).
func wake(ctx context.Context, db DB, flavor Flavor) error {
	if flavor == CockroachDB {
		return nil
	}
	return WakeDispatcher(ctx, db, ControlNote)
}

// Paused returns the names of the paused jobs.
func Paused(ctx context.Context, db DB) (map[string]bool, error) {
	rows, err := db.Query(ctx, `select name from pampa_jobs where paused`)
	if err != nil {
		return nil, fmt.Errorf("read paused jobs: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read paused jobs: %w", err)
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}

// CancelResult says what Cancel did to each key it was given.
type CancelResult struct {
	Cancelled []string // ended failed with "cancelled", or held by a worker that is told to stop
	Finished  []string // already completed or failed for good: left as they are
	Unknown   []string // no such row
}

// Cancel cancels rows by key: an available, scheduled or failed row ends
// failed with the error "cancelled" at once; a queued or running one is
// marked, and the dispatcher tells its worker to drop it or stop its step.
// A cancelled row is not tried again (until rows retry).
func Cancel(ctx context.Context, db DB, flavor Flavor, q *Queries, keys []string) (CancelResult, error) {
	var res CancelResult
	rows, err := db.Query(ctx, q.CancelKeys, keys, q.job.MaxTryTimes)
	if err != nil {
		return res, fmt.Errorf("job %q: cancel rows: %w", q.job.Name, err)
	}
	touched, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return res, fmt.Errorf("job %q: cancel rows: %w", q.job.Name, err)
	}
	found, err := q.existing(ctx, db, keys)
	if err != nil {
		return res, err
	}
	for _, k := range keys {
		switch {
		case slices.Contains(touched, k):
			res.Cancelled = append(res.Cancelled, k)
		case found[k]:
			res.Finished = append(res.Finished, k)
		default:
			res.Unknown = append(res.Unknown, k)
		}
	}
	if len(res.Cancelled) > 0 {
		return res, wake(ctx, db, flavor)
	}
	return res, nil
}

// Retry makes failed rows (for good or waiting out their retry delay)
// available again at once with a new series of attempts; it returns the
// keys it reset. Other rows are left as they are.
func Retry(ctx context.Context, db DB, flavor Flavor, q *Queries, keys []string) ([]string, error) {
	rows, err := db.Query(ctx, q.RetryKeys, keys)
	if err != nil {
		return nil, fmt.Errorf("job %q: retry rows: %w", q.job.Name, err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("job %q: retry rows: %w", q.job.Name, err)
	}
	if len(done) > 0 {
		return done, wake(ctx, db, flavor)
	}
	return done, nil
}

// existing says which of keys are rows of the job's table.
func (q *Queries) existing(ctx context.Context, db DB, keys []string) (map[string]bool, error) {
	rows, err := db.Query(ctx, q.Existing, keys)
	if err != nil {
		return nil, fmt.Errorf("job %q: look rows up: %w", q.job.Name, err)
	}
	ks, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("job %q: look rows up: %w", q.job.Name, err)
	}
	out := make(map[string]bool, len(ks))
	for _, k := range ks {
		out[k] = true
	}
	return out, nil
}

// control applies what operators asked since the last full cycle: it
// reads which jobs are paused and takes their queued rows back from the
// workers, and tells workers to stop the rows cancelled under them.
func (d *Dispatcher) control(ctx context.Context) error {
	paused, err := Paused(ctx, d.conn)
	if err != nil {
		return err
	}
	for name := range paused {
		if !d.isPaused(name) && d.byJob[name] != nil {
			d.log.Info("job paused: no new reservations; its queued rows go back", "job", name)
		}
	}
	for name := range d.pausedNow() {
		if !paused[name] {
			d.log.Info("job resumed", "job", name)
		}
	}
	d.paused.Store(&paused)
	for _, p := range d.peers {
		if p.sess == nil {
			continue
		}
		var back []protocol.Ref
		for id, h := range p.held {
			if paused[id.job] && !h.started && !h.told {
				back = append(back, protocol.Ref{Job: id.job, Key: id.key, Attempt: h.attempt})
				h.told = true
				p.held[id] = h
			}
		}
		if len(back) > 0 {
			p.sess.Send(protocol.Message{Kind: protocol.KindRevoke, Refs: back})
		}
		d.giveBackSpares(p, func(r protocol.Row) bool { return paused[r.Job] })
	}
	var errs []error
	for _, q := range d.queries {
		if q.job.Step.SQL != "" {
			continue // a sql step's rows are never held: Cancel ended them
		}
		if err := d.cancelHeld(ctx, q); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cancelHeld ends the cancelled rows no worker holds any longer and tells
// the workers holding the others to stop them.
func (d *Dispatcher) cancelHeld(ctx context.Context, q *Queries) error {
	if _, err := d.conn.Exec(ctx, q.EndCancelled); err != nil {
		return fmt.Errorf("job %q: end cancelled rows: %w", q.job.Name, err)
	}
	rows, err := d.conn.Query(ctx, q.CancelledHeld)
	if err != nil {
		return fmt.Errorf("job %q: read cancelled rows: %w", q.job.Name, err)
	}
	type heldRow struct{ Key, Worker string }
	held, err := pgx.CollectRows(rows, pgx.RowToStructByPos[heldRow])
	if err != nil {
		return fmt.Errorf("job %q: read cancelled rows: %w", q.job.Name, err)
	}
	byWorker := map[string][]protocol.Ref{}
	for _, r := range held {
		p := d.peers[r.Worker]
		if p == nil || p.sess == nil {
			continue // its rows are taken back when it is judged dead, and ended then
		}
		id := rowID{q.job.Name, r.Key}
		h, ok := p.held[id]
		if !ok {
			// A spare: back to the table, where EndCancelled ends it. Or
			// a row of the reservation in flight: it is told at the next
			// full cycle, like one reserved just after this one.
			d.giveBackSpares(p, func(s protocol.Row) bool { return s.Job == id.job && s.Key == id.key })
			continue
		}
		if h.cancelled {
			continue
		}
		h.cancelled = true
		p.held[id] = h
		byWorker[r.Worker] = append(byWorker[r.Worker], protocol.Ref{Job: id.job, Key: id.key, Attempt: h.attempt})
	}
	for w, refs := range byWorker {
		d.log.Info("telling a worker to stop cancelled rows", "worker", w, "job", q.job.Name, "rows", len(refs),
			"keys", strings.Join(keysOf(refs), " "))
		d.peers[w].sess.Send(protocol.Message{Kind: protocol.KindCancel, Refs: refs})
	}
	return nil
}

func keysOf(refs []protocol.Ref) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.Key
	}
	return out
}

// isPaused is safe from any goroutine (sql runners ask it).
func (d *Dispatcher) isPaused(job string) bool { return d.pausedNow()[job] }

func (d *Dispatcher) pausedNow() map[string]bool {
	if m := d.paused.Load(); m != nil {
		return *m
	}
	return nil
}
