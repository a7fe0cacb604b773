package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pampa-go/pampa/protocol"
)

// Flights. The marks (on d.conn) and the reservations (on d.rconn) go to
// the database on goroutines of their own while the loop goes on
// receiving outcomes and handing out rows: each session takes up its next
// statement as soon as the last one lands, with everything that came in
// meanwhile, instead of both waiting for the slower of the two and then
// for the loop. Only the loop touches the fleet's state: a flight carries
// what it writes and what it read back, and the loop applies it when it
// lands. Who is connected changes only while nothing is in flight
// (applyInbox): a flight was built for the fleet as it was.

// marksFlight is a batch of marks on its way to the database.
type marksFlight struct {
	marks   *pendingMarks
	fresh   []*peer
	applied map[string][]bool
	err     error
	done    chan struct{}
}

// reservationFlight is a reservation round on its way.
type reservationFlight struct {
	rs     []*reservation
	cursor int // d.cursorGen when it left: a cursor reset since wins
	err    error
	done   chan struct{}
}

// coming counts the rows asked for in each worker's peer.coming, sign +1
// as the flight leaves and -1 as it lands.
func (f *reservationFlight) coming(sign int) {
	for _, r := range f.rs {
		for i, p := range r.ps {
			p.coming += sign * r.asked[i]
		}
	}
}

// landed says whether a flight's done channel is closed.
func landed(done chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// pump lands the flights that are back and sends off the next ones.
func (d *Dispatcher) pump(ctx context.Context, stats map[string]Stats) error {
	var err error
	if d.mflight != nil && landed(d.mflight.done) {
		err = d.landMarks(ctx)
	}
	if d.rflight != nil && landed(d.rflight.done) {
		err = errors.Join(err, d.landReservation(ctx, stats))
	}
	if err != nil {
		return err
	}
	d.sendReservation(ctx) // first: it sees whether marks are in flight
	d.sendMarks(ctx)
	return nil
}

// settle waits for both flights and lands them.
func (d *Dispatcher) settle(ctx context.Context, stats map[string]Stats) error {
	return errors.Join(d.landMarks(ctx), d.landReservation(ctx, stats))
}

// writeMarksNow writes the marks pending, waiting for them.
func (d *Dispatcher) writeMarksNow(ctx context.Context) error {
	if err := d.landMarks(ctx); err != nil {
		return err
	}
	d.sendMarks(ctx)
	return d.landMarks(ctx)
}

// sendMarks sends off what the workers said since the last marks, unless
// marks are in flight already.
func (d *Dispatcher) sendMarks(ctx context.Context) {
	if d.mflight != nil {
		return
	}
	var fresh []*peer
	for _, p := range d.peers {
		if p.fresh {
			fresh = append(fresh, p)
		}
	}
	if !d.marks.any() && len(fresh) == 0 {
		return
	}
	f := &marksFlight{marks: d.marks, fresh: fresh, done: make(chan struct{})}
	d.marks, d.marksRoom = d.marksRoom, nil
	if d.marks == nil {
		d.marks = &pendingMarks{}
	}
	d.mflight = f
	go func() {
		defer close(f.done)
		f.applied, f.err = d.writeMarks(ctx, f.marks, f.fresh, false)
	}()
}

// landMarks waits for the marks in flight, if any, and applies them.
func (d *Dispatcher) landMarks(ctx context.Context) error {
	f := d.mflight
	if f == nil {
		return nil
	}
	<-f.done
	d.mflight = nil
	return d.applyMarks(ctx, f)
}

// applyMarks acknowledges the outcomes that landed marks committed, both
// those that ended their rows and those refused as late. Marks that failed
// are kept for the next write.
func (d *Dispatcher) applyMarks(ctx context.Context, f *marksFlight) error {
	applied, err := f.applied, f.err
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// A statement of the user's (result_sql) or a bad value failed: go
		// again with each result in a savepoint, so one row's error fails
		// that row only.
		d.log.Warn("writing marks failed; writing them again row by row", "err", err)
		applied, err = d.writeMarks(ctx, f.marks, f.fresh, true)
	}
	if err != nil {
		d.keepMarks(f)
		return fmt.Errorf("write start and end marks: %w", err)
	}
	for _, p := range f.fresh {
		p.fresh = false
	}
	d.reserveDue = true // the fresh are reserved for from now on
	type sender struct{ worker, instance string }
	acks := map[sender][]uint64{}
	for job, ms := range f.marks.outcomes {
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
	for w := range f.marks.leaving {
		if p := d.peers[w]; p != nil && p.leave && p.sess != nil && len(p.held) == 0 && p.coming == 0 {
			p.sess.Close() // its rows are back: it may go
		}
	}
	f.marks.reset()
	d.marksRoom = f.marks
	return nil
}

// keepMarks puts the marks of a flight that failed back ahead of those
// received since: they go out again with the next write.
func (d *Dispatcher) keepMarks(f *marksFlight) {
	f.marks.absorb(d.marks)
	d.marks = f.marks
}

// sendReservation sends off a reservation round for the hungry workers,
// unless one is in flight or nothing changed since the last. While marks
// are in flight it goes only for a worker running short; otherwise it
// leaves with the next marks, for all that made room meanwhile.
func (d *Dispatcher) sendReservation(ctx context.Context) {
	if d.rflight != nil || !d.reserveDue {
		return
	}
	b := &pgx.Batch{}
	rs, deferred := d.reservations(ctx, b, d.mflight != nil)
	d.reserveDue = deferred
	if len(rs) == 0 {
		return
	}
	f := &reservationFlight{rs: rs, cursor: d.cursorGen, done: make(chan struct{})}
	d.rflight = f
	f.coming(+1)
	go func() {
		defer close(f.done)
		f.err = d.rconn.SendBatch(ctx, b).Close()
	}()
}

// landReservation waits for the reservation in flight, if any, and hands
// its rows to their workers.
func (d *Dispatcher) landReservation(ctx context.Context, stats map[string]Stats) error {
	f := d.rflight
	if f == nil {
		return nil
	}
	<-f.done
	d.rflight = nil
	f.coming(-1)
	err := f.err
	if err != nil {
		d.resync(f.rs, err)
		err = fmt.Errorf("reserve rows: %w", err)
	} else {
		err = d.reserved(ctx, f.rs, stats, f.cursor == d.cursorGen)
	}
	if err != nil && d.columnsDropped(ctx, err) {
		d.reserveDue = true // the queues are as short as before
		return nil
	}
	return err
}

// abandon waits for the flights of a session being dropped: marks go out
// again on the next one, rows reserved go to their workers all the same.
func (d *Dispatcher) abandon() {
	if f := d.mflight; f != nil {
		<-f.done
		d.mflight = nil
		if f.err != nil {
			d.keepMarks(f)
		} else {
			_ = d.applyMarks(context.Background(), f)
		}
	}
	if f := d.rflight; f != nil {
		<-f.done
		d.rflight = nil
		f.coming(-1)
		if f.err != nil {
			d.resync(f.rs, f.err)
			return
		}
		for _, r := range f.rs {
			r.resume = false // no walk again on a session that is going
		}
		_ = d.reserved(context.Background(), f.rs, map[string]Stats{}, f.cursor == d.cursorGen)
	}
}
