package dispatcher

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/protocol"
)

// rowsPerMessage bounds one rows message: a queue of thousands goes out in
// several.
const rowsPerMessage = 500

// reserve fills the queue of every connected worker that has room, one
// statement per hungry worker and one round trip per job, and pushes the
// rows down their streams. It resumes after the last key it reserved; a
// worker left short is served once more from the first key.
func (d *Dispatcher) reserve(ctx context.Context, stats map[string]Stats) error {
	for _, q := range d.queries {
		j := q.job
		if j.Step.SQL != "" {
			continue
		}
		var hungry []*peer
		for _, p := range d.assignedTo(j.Name) {
			if p.sess != nil && !p.fresh && !p.leave && p.queued(j.Name) < j.QueueSize {
				hungry = append(hungry, p)
			}
		}
		if len(hungry) == 0 {
			continue
		}
		after, resume := d.after[j.Name]
		resume = resume && q.ReserveAfter != ""
		short, err := d.reserveFor(ctx, q, hungry, after, resume, stats)
		if err == nil && len(short) > 0 && resume {
			delete(d.after, j.Name)
			_, err = d.reserveFor(ctx, q, short, nil, false, stats)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *Dispatcher) reserveFor(ctx context.Context, q *Queries, ps []*peer, after any, resume bool, stats map[string]Stats) (short []*peer, err error) {
	j := q.job
	b := &pgx.Batch{}
	got := make([][]protocol.Row, len(ps))
	asked := make([]int, len(ps))
	var last any
	for i, p := range ps {
		n := j.QueueSize - p.queued(j.Name)
		asked[i] = n
		args := []any{n, p.id, j.MaxTryTimes}
		stmt := q.Reserve
		if resume {
			stmt, args = q.ReserveAfter, append(args, after)
		}
		b.Queue(stmt, args...).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var r protocol.Row
				var key any
				var data []byte
				if err := rows.Scan(&key, &r.Key, &r.Attempt, &data); err != nil {
					return err
				}
				r.Job, r.Data = j.Name, json.RawMessage(data)
				got[i] = append(got[i], r)
				if q.ReserveAfter != "" && isInt(key) && (last == nil || greater(key, last)) {
					last = key
				}
			}
			return rows.Err()
		})
	}
	if err := d.conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("job %q: reserve rows: %w", j.Name, err)
	}
	if last != nil {
		d.after[j.Name] = last
	}
	s := stats[j.Name]
	for i, p := range ps {
		rows := got[i]
		s.Reserved += int64(len(rows))
		if len(rows) < asked[i] {
			short = append(short, p)
		}
		for _, r := range rows {
			p.held[rowID{r.Job, r.Key}] = hold{attempt: r.Attempt}
		}
		for len(rows) > 0 {
			n := min(len(rows), rowsPerMessage)
			p.sess.Send(protocol.Message{Kind: protocol.KindRows, Rows: rows[:n]})
			rows = rows[n:]
		}
	}
	stats[j.Name] = s
	return short, nil
}

// greater compares two integer keys as pgx decodes them. Other keys keep
// the cursor at the first one seen, which is only slower: Go's string order
// is not the column's collation.
func greater(a, b any) bool {
	switch x := a.(type) {
	case int64:
		y, ok := b.(int64)
		return ok && x > y
	case int32:
		y, ok := b.(int32)
		return ok && x > y
	case int16:
		y, ok := b.(int16)
		return ok && x > y
	}
	return false
}

func isInt(k any) bool {
	switch k.(type) {
	case int64, int32, int16:
		return true
	}
	return false
}
