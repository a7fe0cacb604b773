package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pampa-go/pampa/protocol"
)

// rowsPerMessage bounds one rows message: a queue of thousands goes out in
// several.
const rowsPerMessage = 500

// resync closes the streams of the workers a failed reservation was for:
// it may have committed without its reply arriving, leaving rows reserved
// for them that they never got. Their reconnect's hello says what they
// hold, and the rest goes back. A statement the server refused rolled the
// batch back (one implicit transaction): nothing was reserved then.
func (d *Dispatcher) resync(rs []*reservation, err error) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return
	}
	for _, r := range rs {
		for _, p := range r.ps {
			if p.sess != nil {
				p.sess.Close()
			}
		}
	}
}

// reservation is one job's reservation round, queued on a batch and read
// back by reserved.
type reservation struct {
	q      *Queries
	ps     []*peer
	asked  []int
	got    [][]protocol.Row
	last   any // the highest integer key reserved, an int64; nil for none
	resume bool
}

// reservations queues on b a reservation round for every job with hungry
// workers, one statement per job for all of them. It resumes after the last
// key reserved; reserved serves the workers left short once more from the
// first key. With onlyUrgent it queues nothing, and says it deferred, unless
// some worker has room for at least half of what it should hold: rounds
// for a few rows each would cost the database a statement per few rows.
func (d *Dispatcher) reservations(ctx context.Context, b *pgx.Batch, onlyUrgent bool) (rs []*reservation, deferred bool) {
	type hunger struct {
		q    *Queries
		ps   []*peer
		room []int
	}
	var hungers []hunger
	urgent := false
	for _, q := range d.queries {
		j := q.job
		if j.Step.SQL != "" || d.isPaused(j.Name) {
			continue
		}
		h := hunger{q: q}
		for _, p := range d.assignedTo(j.Name) {
			if p.sess == nil || p.fresh || p.leave {
				continue
			}
			d.queueSpares(p, j)
			target := j.QueueSize + d.spareWanted(p, j)
			if n := target - p.queued(j.Name) - p.spare.size(); n > 0 {
				h.ps, h.room = append(h.ps, p), append(h.room, n)
				urgent = urgent || 2*n >= target
			}
		}
		if len(h.ps) > 0 {
			hungers = append(hungers, h)
		}
	}
	if onlyUrgent && !urgent && len(hungers) > 0 {
		return nil, true
	}
	for _, h := range hungers {
		if len(h.q.job.Snippets.workerSnippets()) > 0 {
			h.ps, h.room = d.workerSnippets(ctx, h.q, h.ps, h.room)
		}
		if len(h.ps) == 0 {
			continue
		}
		after, resume := d.after[h.q.job.Name]
		rs = append(rs, d.queueReservation(b, h.q, h.ps, h.room, after, resume && h.q.ReserveManyAfter != ""))
	}
	return rs, false
}

// workerSnippets asks the job's allowing_sql, queue_slots_sql and
// occupied_sql about each hungry worker, in one round trip, and returns
// the workers that may get rows with how many each. A snippet that fails
// keeps the job's rows back this round, logged: the snippet decides.
func (d *Dispatcher) workerSnippets(ctx context.Context, q *Queries, ps []*peer, room []int) ([]*peer, []int) {
	sn := q.job.Snippets
	allowed := make([]bool, len(ps))
	slots, occupied := make([]*int64, len(ps)), make([]*int64, len(ps))
	b := &pgx.Batch{}
	for i, p := range ps {
		allowed[i] = true
		if sn.AllowingSQL != "" {
			b.Queue(sn.AllowingSQL, p.id).QueryRow(func(row pgx.Row) error {
				var ok *bool
				err := noRow(row.Scan(&ok))
				allowed[i] = ok != nil && *ok
				return err
			})
		}
		if sn.QueueSlotsSQL != "" {
			b.Queue(sn.QueueSlotsSQL, p.id).QueryRow(func(row pgx.Row) error { return noRow(row.Scan(&slots[i])) })
		}
		if sn.OccupiedSQL != "" {
			b.Queue(sn.OccupiedSQL, p.id).QueryRow(func(row pgx.Row) error { return noRow(row.Scan(&occupied[i])) })
		}
	}
	if err := d.rconn.SendBatch(ctx, b).Close(); err != nil {
		d.log.Warn("a worker snippet failed; the job gets no rows this round", "job", q.job.Name, "err", err)
		return nil, nil
	}
	var outPs []*peer
	var outRoom []int
	for i, p := range ps {
		n := int64(room[i])
		if occupied[i] != nil {
			n = int64(q.job.QueueSize) - *occupied[i]
		}
		if slots[i] != nil {
			n = min(n, *slots[i])
		}
		if allowed[i] && n > 0 {
			outPs, outRoom = append(outPs, p), append(outRoom, int(n))
		}
	}
	return outPs, outRoom
}

// noRow takes a snippet that returns no row for null.
func noRow(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	return err
}

func (d *Dispatcher) queueReservation(b *pgx.Batch, q *Queries, ps []*peer, room []int, after any, resume bool) *reservation {
	j := q.job
	r := &reservation{q: q, ps: ps, asked: make([]int, len(ps)), got: make([][]protocol.Row, len(ps)), resume: resume}
	ids := make([]string, len(ps))
	for i, p := range ps {
		r.asked[i] = room[i]
		ids[i] = p.id
	}
	if j.Limits.Any() && d.cfg.Flavor != CockroachDB {
		// Limited reservations of a job take turns, even across
		// dispatchers: each counts what the one before reserved. The lock
		// lasts the batch's implicit transaction.
		b.Queue(`select pg_advisory_xact_lock(hashtext('pampa reserve'), hashtext($1))`, q.limitLock)
	}
	// read takes the rows of a statement that reserved for ps[base:base+n].
	read := func(base, n int) func(pgx.Rows) error {
		return func(rows pgx.Rows) error {
			for rows.Next() {
				var row protocol.Row
				var data []byte
				var w int32
				if err := rows.Scan(&row.Key, &row.Attempt, &data, &w); err != nil {
					return fmt.Errorf("job %q: reserve rows: %w", j.Name, err)
				}
				if w < 1 || int(w) > n {
					return fmt.Errorf("job %q: reserve rows: a row went to worker %d of %d", j.Name, w, n)
				}
				i := base + int(w) - 1
				row.Job, row.Data = j.Name, json.RawMessage(data)
				r.got[i] = append(r.got[i], row)
				if q.intKey && q.ReserveManyAfter != "" {
					if k, err := strconv.ParseInt(row.Key, 10, 64); err == nil && (r.last == nil || k > r.last.(int64)) {
						r.last = k
					}
				}
			}
			return rows.Err()
		}
	}
	switch {
	case q.ReserveMany == "": // a selecting_sql snippet: its own choice per worker
		for i, p := range ps {
			b.Queue(q.Reserve, r.asked[i], p.id, j.MaxTryTimes).Query(read(i, 1))
		}
	case resume:
		b.Queue(q.ReserveManyAfter, ids, slots(r.asked), j.MaxTryTimes, after).Query(read(0, len(ps)))
	default:
		b.Queue(q.ReserveMany, ids, slots(r.asked), j.MaxTryTimes).Query(read(0, len(ps)))
	}
	return r
}

// slots is ReserveMany's $2 for workers asking counts[i] rows each: i+1,
// counts[i] times over.
func slots(counts []int) []int32 {
	n := 0
	for _, c := range counts {
		n += c
	}
	s := make([]int32, 0, n)
	for i, c := range counts {
		for range c {
			s = append(s, int32(i+1))
		}
	}
	return s
}

// reserved hands the rows of sent reservation rounds to their workers and
// walks once more from the first key for the workers a resumed walk left
// short. cursor says whether the rounds may move the reservation cursor:
// not when it was reset since they were sent.
func (d *Dispatcher) reserved(ctx context.Context, rs []*reservation, stats map[string]Stats, cursor bool) error {
	for _, r := range rs {
		j := r.q.job
		if r.last != nil && cursor {
			d.after[j.Name] = r.last
		}
		var short []*peer
		var shortBy []int
		s := stats[j.Name]
		for i, p := range r.ps {
			rows := r.got[i]
			s.Reserved += int64(len(rows))
			if p.leave {
				// It said it is leaving while they were on their way: they
				// go back unseen, and it goes once they are.
				for _, row := range rows {
					d.marks.give(p.id, protocol.Ref{Job: row.Job, Key: row.Key, Attempt: row.Attempt})
				}
				d.marks.leave(p.id)
				continue
			}
			if len(rows) < r.asked[i] {
				short, shortBy = append(short, p), append(shortBy, r.asked[i]-len(rows))
			}
			// The queue first; what is left over is spare (see spareWanted).
			if room := j.QueueSize - p.queued(j.Name) - p.spare.unabsorbed(); d.spareWanted(p, j) > 0 && len(rows) > room {
				p.spare.add(rows[max(room, 0):])
				rows = rows[:max(room, 0)]
			}
			now := time.Now()
			for _, row := range rows {
				p.held[rowID{row.Job, row.Key}] = hold{attempt: row.Attempt, reserved: now}
			}
			for len(rows) > 0 {
				n := min(len(rows), rowsPerMessage)
				p.sess.Send(protocol.Message{Kind: protocol.KindRows, Rows: rows[:n]})
				rows = rows[n:]
			}
		}
		stats[j.Name] = s
		if len(short) == 0 || !r.resume {
			continue
		}
		delete(d.after, j.Name)
		b := &pgx.Batch{}
		again := d.queueReservation(b, r.q, short, shortBy, nil, false)
		if err := d.rconn.SendBatch(ctx, b).Close(); err != nil {
			d.resync([]*reservation{again}, err)
			return fmt.Errorf("job %q: reserve rows: %w", j.Name, err)
		}
		if err := d.reserved(ctx, []*reservation{again}, stats, cursor); err != nil {
			return err
		}
	}
	return nil
}

// resetCursor makes the next reservation walk from the first key: rows
// may have become free anywhere.
func (d *Dispatcher) resetCursor() {
	clear(d.after)
	d.cursorGen++
}
