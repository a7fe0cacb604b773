package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pampa-go/pampa/protocol"
)

// pendingMarks is what the workers said since the last flush, waiting to
// be written: every worker's marks go out together, a few set-based
// statements per flush.
type pendingMarks struct {
	starts   map[string][]mark // by job
	outcomes map[string][]mark
	giveBack map[string]map[string][]string // job → worker → keys
	leaving  map[string]bool                // workers that said they are leaving
	stopped  []string                       // workers that left cleanly
	seen     map[outcomeID]bool             // outcomes pending, against resends
	// Emptied slices of starts and outcomes, by job.
	startRoom, outcomeRoom map[string][]mark
}

// reset empties m for the next flush, keeping the room of its maps and
// slices: a quick fleet fills them again at once, and growing them anew
// each flush was a visible part of the dispatcher loop's CPU.
func (m *pendingMarks) reset() {
	keep := func(byJob map[string][]mark, room *map[string][]mark) {
		if *room == nil {
			*room = map[string][]mark{}
		}
		for job, ms := range byJob {
			clear(ms) // let go of what the marks point to
			(*room)[job] = ms[:0]
		}
		clear(byJob)
	}
	keep(m.starts, &m.startRoom)
	keep(m.outcomes, &m.outcomeRoom)
	clear(m.giveBack)
	clear(m.leaving)
	clear(m.seen)
	m.stopped = nil
}

// add appends to a job's marks, in room an earlier flush left.
func add(byJob, room map[string][]mark, job string, mk mark) {
	ms, ok := byJob[job]
	if !ok {
		ms = room[job]
	}
	byJob[job] = append(ms, mk)
}

type mark struct {
	worker   string
	instance string // the worker process: sequence numbers are its own
	protocol.Outcome
}

type outcomeID struct {
	instance string
	seq      uint64
}

func (m *pendingMarks) any() bool {
	return len(m.starts) > 0 || len(m.outcomes) > 0 || len(m.giveBack) > 0 || len(m.leaving) > 0 || len(m.stopped) > 0
}

// leave notes that a worker gave its rows back, if it had any, and is
// leaving: it is let go once they are written.
func (m *pendingMarks) leave(worker string) {
	if m.leaving == nil {
		m.leaving = map[string]bool{}
	}
	m.leaving[worker] = true
}

func (m *pendingMarks) start(worker string, r protocol.Ref) {
	if m.starts == nil {
		m.starts = map[string][]mark{}
	}
	add(m.starts, m.startRoom, r.Job, mark{worker: worker, Outcome: protocol.Outcome{Ref: r}})
}

func (m *pendingMarks) outcome(worker, instance string, o protocol.Outcome) {
	if m.outcomes == nil {
		m.outcomes, m.seen = map[string][]mark{}, map[outcomeID]bool{}
	}
	if m.seen[outcomeID{instance, o.Seq}] {
		return // sent again on a new stream before the first was written
	}
	m.seen[outcomeID{instance, o.Seq}] = true
	add(m.outcomes, m.outcomeRoom, o.Job, mark{worker: worker, instance: instance, Outcome: o})
}

func (m *pendingMarks) give(worker string, r protocol.Ref) {
	if m.giveBack == nil {
		m.giveBack = map[string]map[string][]string{}
	}
	if m.giveBack[r.Job] == nil {
		m.giveBack[r.Job] = map[string][]string{}
	}
	m.giveBack[r.Job][worker] = append(m.giveBack[r.Job][worker], r.Key)
}

// maxErrorDescription bounds what an error description stores.
const maxErrorDescription = 4000

func errorText(desc string) string {
	if len(desc) > maxErrorDescription {
		desc = "…" + desc[len(desc)-maxErrorDescription:]
	}
	// PostgreSQL's text takes no NUL byte.
	return strings.ReplaceAll(strings.ToValidUTF8(desc, "?"), "\x00", "")
}

// flush writes, in one transaction: new workers' registrations and the
// reconciliation of what they hold, rows given back, start marks, fenced
// end marks with the workers' counters and any result_sql; then it
// reserves rows for the hungry workers. Without result_sql to run, all of
// it is one round trip. Outcomes are acknowledged once the transaction
// commits, both those that ended their rows and those refused as late. A
// failed flush keeps everything for the next one.
func (d *Dispatcher) flush(ctx context.Context, stats map[string]Stats, reserve bool) error {
	var fresh []*peer
	for _, p := range d.peers {
		if p.fresh {
			fresh = append(fresh, p)
		}
	}
	if !d.marks.any() && len(fresh) == 0 {
		if !reserve {
			return nil
		}
		return d.reserve(ctx, stats)
	}
	applied, rs, err := d.writeMarks(ctx, fresh, false, reserve)
	var late reserveError
	if errors.As(err, &late) {
		err = nil // the marks committed; the reservation's error ends the flush below
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// A statement of the user's (result_sql) or a bad value failed: go
		// again with each result in a savepoint, so one row's error fails
		// that row only.
		d.log.Warn("writing marks failed; writing them again row by row", "err", err)
		applied, _, err = d.writeMarks(ctx, fresh, true, false)
	}
	if err != nil {
		if rs != nil {
			err = errors.Join(err, d.reserved(ctx, rs, stats))
		}
		return fmt.Errorf("write start and end marks: %w", err)
	}
	for _, p := range fresh {
		p.fresh = false
	}
	// Rows first, then acks: both reach a worker in one write of its stream.
	switch {
	case rs != nil:
		err = d.reserved(ctx, rs, stats)
	case reserve:
		err = d.reserve(ctx, stats)
	}
	type sender struct{ worker, instance string }
	acks := map[sender][]uint64{}
	for job, ms := range d.marks.outcomes {
		for i, m := range ms {
			k := sender{m.worker, m.instance}
			acks[k] = append(acks[k], m.Seq)
			if !applied[job][i] {
				d.log.Warn("late outcome refused: the row was relaunched or ended meanwhile", "worker", m.worker, "job", job,
					"key", m.Key, "attempt", m.Attempt, "ok", m.OK)
			} else {
				d.obs.RowEnded(job, m.OK, time.Duration(m.Millis)*time.Millisecond)
				d.ended.Add(1)
			}
		}
	}
	for k, seqs := range acks {
		// Only to the process that sent them: another under the same id
		// numbers its outcomes anew. A worker whose stream is down sends
		// them again when it is back.
		if p := d.peers[k.worker]; p != nil && p.sess != nil && p.hello.Instance == k.instance {
			p.sess.Send(protocol.Message{Kind: protocol.KindAcks, Acks: seqs})
		}
	}
	// Every worker that said it is leaving, also one that had nothing to
	// give back: it waits for its stream to close before it exits.
	for w := range d.marks.leaving {
		if p := d.peers[w]; p != nil && p.leave && p.sess != nil && len(p.held) == 0 {
			p.sess.Close() // its rows are back: it may go
		}
	}
	d.marks.reset()
	if late.error != nil {
		return fmt.Errorf("reserve rows: %w", late.error)
	}
	return err
}

// reserveError is a reservation that failed beside marks that committed.
type reserveError struct{ error }

func (e reserveError) Unwrap() error { return e.error }

// writeMarks runs the flush's transaction and returns, per job, which of
// d.marks' outcomes it applied.
// When no result_sql has to run after the end marks, the reservations ride
// in the same batch, after the commit, and are returned for reserved.
func (d *Dispatcher) writeMarks(ctx context.Context, fresh []*peer, careful, reserve bool) (map[string][]bool, []*reservation, error) {
	b := &pgx.Batch{}
	b.Queue("begin")
	// Start marks first: a start heard from a process that a new one under
	// its id has replaced since must count before the reconciliation
	// below frees the row, or its attempt would be handed out again.
	for job, ms := range d.marks.starts {
		// A row whose outcome is here too needs no start mark: its end
		// mark sets the start from the step's duration.
		type attempt struct {
			worker, key string
			n           int
		}
		ended := map[attempt]bool{}
		for _, o := range d.marks.outcomes[job] {
			ended[attempt{o.worker, o.Key, o.Attempt}] = true
		}
		var keys, workers []string
		var attempts []int32
		for _, m := range ms {
			if !ended[attempt{m.worker, m.Key, m.Attempt}] {
				keys, workers, attempts = append(keys, m.Key), append(workers, m.worker), append(attempts, int32(m.Attempt))
			}
		}
		if len(keys) > 0 {
			b.Queue(d.byJob[job].Start, keys, workers, attempts)
		}
	}
	if len(fresh) > 0 {
		var ids, nodes, hosts []string
		var pids []int32
		for _, p := range fresh {
			ids, nodes, hosts = append(ids, p.id), append(nodes, p.hello.Node), append(hosts, p.hello.Hostname)
			pids = append(pids, int32(p.hello.PID))
		}
		b.Queue(`insert into pampa_workers (id, node, hostname, pid)
select * from unnest($1::text[], $2::text[], $3::text[], $4::int[])
on conflict (id) do update set node = excluded.node, hostname = excluded.hostname, pid = excluded.pid,
  state = 'alive', started_at = now(), heartbeat_at = now(), stopped_at = null`, ids, nodes, hosts, pids)
		for _, p := range fresh {
			for _, q := range d.queries {
				// What it said it held as it connected: rows whose outcome
				// arrived since are in hand too, and are ended below.
				keys := []string{}
				for _, h := range p.hello.InHand {
					if h.Job == q.job.Name {
						keys = append(keys, h.Key)
					}
				}
				// Outcomes and give-backs left held when they were
				// received, and a reconnecting worker sends its outcomes
				// right after its hello: their rows are the worker's
				// still, for the statements below to end or free.
				for _, m := range d.marks.outcomes[q.job.Name] {
					if m.worker == p.id {
						keys = append(keys, m.Key)
					}
				}
				keys = append(keys, d.marks.giveBack[q.job.Name][p.id]...)
				b.Queue(q.ReconcileQueued, p.id, keys)
				b.Queue(q.ReconcileRunning, p.id, keys, q.job.MaxTryTimes)
				b.Queue(q.ReconcileFail, p.id, keys, q.job.MaxTryTimes)
			}
		}
	}
	for job, ws := range d.marks.giveBack {
		for w, keys := range ws {
			b.Queue(d.byJob[job].GiveBack, w, keys)
		}
	}
	if len(d.marks.stopped) > 0 {
		b.Queue(`update pampa_workers set state = 'stopped', stopped_at = now(), job = null, assigned_at = null
where id = any($1)`, d.marks.stopped)
	}
	// applied[job][i]: the end mark of d.marks.outcomes[job][i] was written.
	applied := make(map[string][]bool, len(d.marks.outcomes))
	results := false // some result_sql must run once the end marks are known
	// Jobs whose end marks are counted in the second round, with their
	// result_sql: a row that fails it counts as failed.
	countLater := map[string]bool{}
	for job, ms := range d.marks.outcomes {
		q := d.byJob[job]
		n := len(ms)
		keys, workers, errs := make([]string, n), make([]string, n), make([]*string, n)
		attempts, oks, millis, finals := make([]int32, n), make([]bool, n), make([]float64, n), make([]bool, n)
		for i, m := range ms {
			keys[i], workers[i], attempts[i], oks[i], millis[i] = m.Key, m.worker, int32(m.Attempt), m.OK, float64(m.Millis)
			if !m.OK {
				e := m.Error
				if finals[i] = q.job.final(m.Outcome); finals[i] {
					e += " (permanent: not tried again)"
				}
				e = errorText(e)
				errs[i] = &e
			}
			countLater[job] = countLater[job] || (m.OK && q.job.ResultSQL != "")
		}
		results = results || countLater[job]
		stmt := q.EndCounted
		if countLater[job] {
			stmt = q.End // counted below: result_sql may fail a row
		}
		// The statement returns the index of each outcome it applied.
		index, done := make([]int32, n), make([]bool, n)
		for i := range index {
			index[i] = int32(i)
		}
		applied[job] = done
		b.Queue(stmt, keys, workers, attempts, oks, errs, millis, finals, index).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var i int32
				dst := []any{&i}
				if stmt == q.End {
					dst = append(dst, nil, nil) // w and ok, for EndCounted
				}
				if err := rows.Scan(dst...); err != nil {
					return err
				}
				if i < 0 || int(i) >= n {
					return fmt.Errorf("job %q: end marks: applied outcome %d of %d", job, i, n)
				}
				done[i] = true
			}
			return rows.Err()
		})
	}
	var rs []*reservation
	var reserving chan error
	if !results {
		b.Queue("commit")
		if reserve {
			// While the marks commit on one session, the next rows are
			// reserved on the other.
			rb := &pgx.Batch{}
			if rs = d.reservations(ctx, rb); len(rs) > 0 {
				reserving = make(chan error, 1)
				go func() { reserving <- d.rconn.SendBatch(ctx, rb).Close() }()
			}
		}
	}
	err := d.conn.SendBatch(ctx, b).Close()
	var rerr error
	if reserving != nil {
		if rerr = <-reserving; rerr != nil {
			d.resync(rs, rerr)
			rs = nil
		}
	}
	if err != nil {
		d.rollback(ctx)
		// Rows reserved all the same go to their workers.
		return nil, rs, err
	}
	if rerr != nil {
		return applied, nil, reserveError{rerr} // the marks are in
	}
	if !results {
		return applied, rs, nil
	}

	// Second round: results of the rows that ended well, and counters.
	b = &pgx.Batch{}
	counts := map[string][2]int64{}
	for job, ms := range d.marks.outcomes {
		q := d.byJob[job]
		if !countLater[job] {
			continue // EndCounted counted them
		}
		for i, m := range ms {
			if !applied[job][i] {
				continue
			}
			ok := m.OK
			if m.OK {
				if !careful {
					b.Queue(q.job.ResultSQL, q.resultParams(m)...)
				} else {
					failed, err := d.resultCarefully(ctx, q, m)
					if err != nil {
						d.rollback(ctx)
						return nil, nil, err
					}
					ok = !failed // a row its result_sql failed counts as failed
				}
			}
			c := counts[m.worker]
			if ok {
				c[0]++
			} else {
				c[1]++
			}
			counts[m.worker] = c
		}
	}
	if len(counts) > 0 {
		var ids []string
		var done, failed []int64
		for id, c := range counts {
			ids, done, failed = append(ids, id), append(done, c[0]), append(failed, c[1])
		}
		b.Queue(`update pampa_workers as w set rows_done = w.rows_done + u.d, rows_failed = w.rows_failed + u.f
from unnest($1::text[], $2::bigint[], $3::bigint[]) as u(id, d, f) where w.id = u.id`, ids, done, failed)
	}
	b.Queue("commit")
	if err := d.conn.SendBatch(ctx, b).Close(); err != nil {
		d.rollback(ctx)
		return nil, nil, err
	}
	return applied, nil, nil
}

// rollback ends a failed transaction of the batch; a broken session is
// dropped by the caller anyway.
func (d *Dispatcher) rollback(ctx context.Context) {
	_, _ = d.conn.Exec(context.WithoutCancel(ctx), "rollback")
}

// resultCarefully runs one row's result_sql in a savepoint; if it fails,
// the row ends failed with the error instead, and failed says so.
func (d *Dispatcher) resultCarefully(ctx context.Context, q *Queries, m mark) (failed bool, err error) {
	tx := d.conn
	if _, err := tx.Exec(ctx, "savepoint pampa_result"); err != nil {
		return false, err
	}
	_, err = tx.Exec(ctx, q.job.ResultSQL, q.resultParams(m)...)
	if err == nil {
		_, err = tx.Exec(ctx, "release savepoint pampa_result")
		return false, err
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false, err
	}
	if _, err := tx.Exec(ctx, "rollback to savepoint pampa_result"); err != nil {
		return false, err
	}
	desc := errorText("result_sql: " + err.Error())
	_, err = tx.Exec(ctx, q.FailResult, m.Key, desc, m.worker, m.Attempt)
	return true, err
}

// resultParams are the key and the output, as many as result_sql takes.
func (q *Queries) resultParams(m mark) []any {
	return []any{m.Key, m.Output}[:q.resultArgs]
}

// ended names the attempt an end mark applied to: a late outcome for the
// same row, from another worker or an older attempt, is not it.
