package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pampa-go/pampa/protocol"
)

// pendingMarks is what the workers said since the last marks left, waiting
// to be written: every worker's marks go out together, a few set-based
// statements per write.
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

// reset empties m for another use, keeping the room of its maps and
// slices: a quick fleet fills them again at once, and growing them anew
// each write was a visible part of the dispatcher loop's CPU.
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

// add appends to a job's marks, in room an earlier write left.
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

// absorb appends later's marks to m's: the marks of a write that failed
// go out again ahead of those received since.
func (m *pendingMarks) absorb(later *pendingMarks) {
	for _, ms := range later.starts {
		for _, s := range ms {
			m.start(s.worker, s.Ref)
		}
	}
	for _, ms := range later.outcomes {
		for _, o := range ms {
			m.outcome(o.worker, o.instance, o.Outcome)
		}
	}
	for job, ws := range later.giveBack {
		for w, keys := range ws {
			for _, k := range keys {
				m.give(w, protocol.Ref{Job: job, Key: k})
			}
		}
	}
	for w := range later.leaving {
		m.leave(w)
	}
	m.stopped = append(m.stopped, later.stopped...)
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

// writeMarks writes m in one transaction: new workers' registrations and
// the reconciliation of what they hold, rows given back, start marks,
// fenced end marks with the workers' counters and any result_sql. Without
// result_sql to run, it is one round trip. It returns, per job, which of
// m's outcomes it applied. careful runs each result_sql in a savepoint, so
// that one row's error fails that row only. It touches only m, fresh and
// d.conn: it runs while the loop goes on (see marksFlight).
func (d *Dispatcher) writeMarks(ctx context.Context, m *pendingMarks, fresh []*peer, careful bool) (map[string][]bool, error) {
	b := &pgx.Batch{}
	b.Queue("begin")
	// Start marks first: a start heard from a process that a new one under
	// its id has replaced since must count before the reconciliation
	// below frees the row, or its attempt would be handed out again.
	for job, ms := range m.starts {
		// A row whose outcome is here too needs no start mark: its end
		// mark sets the start from the step's duration.
		type attempt struct {
			worker, key string
			n           int
		}
		ended := map[attempt]bool{}
		for _, o := range m.outcomes[job] {
			ended[attempt{o.worker, o.Key, o.Attempt}] = true
		}
		var keys, workers []string
		var attempts []int32
		for _, s := range ms {
			if !ended[attempt{s.worker, s.Key, s.Attempt}] {
				keys, workers, attempts = append(keys, s.Key), append(workers, s.worker), append(attempts, int32(s.Attempt))
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
				for _, o := range m.outcomes[q.job.Name] {
					if o.worker == p.id {
						keys = append(keys, o.Key)
					}
				}
				keys = append(keys, m.giveBack[q.job.Name][p.id]...)
				b.Queue(q.ReconcileQueued, p.id, keys)
				b.Queue(q.ReconcileRunning, p.id, keys, q.job.MaxTryTimes)
				b.Queue(q.ReconcileFail, p.id, keys, q.job.MaxTryTimes)
			}
		}
	}
	for job, ws := range m.giveBack {
		for w, keys := range ws {
			b.Queue(d.byJob[job].GiveBack, w, keys)
		}
	}
	if len(m.stopped) > 0 {
		b.Queue(`update pampa_workers set state = 'stopped', stopped_at = now(), job = null, assigned_at = null
where id = any($1)`, m.stopped)
	}
	// applied[job][i]: the end mark of m.outcomes[job][i] was written.
	applied := make(map[string][]bool, len(m.outcomes))
	results := false // some result_sql must run once the end marks are known
	// Jobs whose end marks are counted in the second round, with their
	// result_sql: a row that fails it counts as failed.
	countLater := map[string]bool{}
	for job, ms := range m.outcomes {
		q := d.byJob[job]
		n := len(ms)
		keys, workers, errs := make([]string, n), make([]string, n), make([]*string, n)
		attempts, oks, millis, finals := make([]int32, n), make([]bool, n), make([]float64, n), make([]bool, n)
		for i, o := range ms {
			keys[i], workers[i], attempts[i], oks[i], millis[i] = o.Key, o.worker, int32(o.Attempt), o.OK, float64(o.Millis)
			if !o.OK {
				e := o.Error
				if finals[i] = q.job.final(o.Outcome); finals[i] {
					e += " (permanent: not tried again)"
				}
				e = errorText(e)
				errs[i] = &e
			}
			countLater[job] = countLater[job] || (o.OK && q.job.ResultSQL != "")
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
	if !results {
		b.Queue("commit")
	}
	if err := d.conn.SendBatch(ctx, b).Close(); err != nil {
		d.rollback(ctx)
		return nil, err
	}
	if !results {
		return applied, nil
	}

	// Second round: results of the rows that ended well, and counters.
	b = &pgx.Batch{}
	counts := map[string][2]int64{}
	for job, ms := range m.outcomes {
		q := d.byJob[job]
		if !countLater[job] {
			continue // EndCounted counted them
		}
		for i, o := range ms {
			if !applied[job][i] {
				continue
			}
			ok := o.OK
			if o.OK {
				if !careful {
					b.Queue(q.job.ResultSQL, q.resultParams(o)...)
				} else {
					failed, err := d.resultCarefully(ctx, q, o)
					if err != nil {
						d.rollback(ctx)
						return nil, err
					}
					ok = !failed // a row its result_sql failed counts as failed
				}
			}
			c := counts[o.worker]
			if ok {
				c[0]++
			} else {
				c[1]++
			}
			counts[o.worker] = c
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
		return nil, err
	}
	return applied, nil
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
